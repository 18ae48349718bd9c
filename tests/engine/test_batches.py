"""Batch rows: a planned delivery has no row until it is sent, and is written once, with its
outcome; until then every reader finds it through the open batch that holds it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, text

from channels.base import Message, PermanentError, SendResult
from channels.email import EmailAdapter
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine import batches
from dispatcher.engine.batch import BatchProcessor
from dispatcher.engine.loop import get_loop
from dispatcher.engine.work import BatchReport
from dispatcher.tables.deliveries import Attempt, Batch, Delivery
from tests.support import SmtpServer, run_batches
from tests.test_end_to_end import campaign_status, plan_campaign


def test_ids_and_recipients_encode_compactly_and_decode_back() -> None:
    recipients = [3, 4, 5, 40, 1_000_000, 1_000_001]
    assert batches.decode_recipients(batches.encode_recipients(recipients)) == recipients
    assert batches.encode_ids([7, 8, 9, 12, 20, 21]) == "7-9,12,20-21"
    assert batches.decode_ids("7-9,12,20-21") == [7, 8, 9, 12, 20, 21]
    assert batches.decode_ids(batches.encode_ids([5])) == [5]


def _search(client: Any, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/v1/deliveries", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def test_a_planned_delivery_is_found_through_its_batch_then_written_once_when_sent(
    client, smtp: SmtpServer, db: Database, settings: Settings, job_queue
) -> None:
    campaign_id, run_id = plan_campaign(client, db, settings)
    [(job_id, ids)] = run_batches(db, run_id)
    with db.reading() as session:
        assert session.scalar(select(func.count()).select_from(Delivery)) == 0, "no row yet"
    # "Did citizen X get message Y?": pending, under the id the batch reserved for them.
    [found] = _search(client, recipient="0100000001", campaign_id=campaign_id)
    assert found["status"] == "pending" and found["id"] in ids and found["attempts"] == []
    assert found["address"] != "" and "@" in found["address"]
    assert len(_search(client, campaign_id=campaign_id)) == len(ids)
    assert _search(client, campaign_id=campaign_id, status="sent") == []
    counts = campaign_status(client, campaign_id)["counts"]
    assert counts["by_status"] == {"pending": len(ids)}
    report = client.get(f"/v1/campaigns/{campaign_id}/report").json()
    assert report["by_status"] == {"pending": len(ids)} and report["total"] == len(ids)
    export = client.get(f"/v1/campaigns/{campaign_id}/deliveries.csv")
    assert export.status_code == 200
    assert export.text.count("\r\n") == 1 + len(ids)
    assert ",pending," in export.text

    processor = BatchProcessor(db=db, settings=settings, queue=job_queue, loop=get_loop())
    assert processor.process(run_id, [], job_id).sent == len(ids)
    assert smtp.mailbox.count() == len(ids)
    with db.reading() as session:
        rows = session.execute(
            select(Delivery.id, Delivery.status, Delivery.attempts).order_by(Delivery.id)
        ).all()
        assert session.scalar(select(func.count()).select_from(Attempt)) == len(ids)
        assert session.scalar(select(Batch.status).where(Batch.job_id == job_id)) == "done"
    assert [tuple(r) for r in rows] == [(i, "sent", 1) for i in ids]
    [sent] = _search(client, recipient="0100000001", campaign_id=campaign_id)
    assert sent["id"] == found["id"] and sent["status"] == "sent"
    assert len(sent["attempts"]) == 1
    assert campaign_status(client, campaign_id)["status"] == "completed"


def _process_the_batch(
    client: Any, db: Database, settings: Settings, job_queue: Any
) -> tuple[list[int], BatchReport]:
    """Plan the test campaign and process its one batch: its delivery ids and the report."""
    _, run_id = plan_campaign(client, db, settings)
    [(job_id, ids)] = run_batches(db, run_id)
    processor = BatchProcessor(db=db, settings=settings, queue=job_queue, loop=get_loop())
    return ids, processor.process(run_id, [], job_id)


def test_a_plugins_numeric_provider_ids_are_recorded_as_text(
    client, db: Database, settings: Settings, job_queue, monkeypatch
) -> None:
    """The contract says text; a plugin that answers with numbers (a provider's JSON ids) is
    still recorded, as text. PostgreSQL's binary COPY would refuse a number for a text column
    and lose the batch's record."""

    async def numeric(self: EmailAdapter, message: Message) -> SendResult:
        return SendResult(provider_message_id=9000 + message.delivery_id, provider_code=250)  # type: ignore[arg-type]

    monkeypatch.setattr(EmailAdapter, "send", numeric)
    ids, report = _process_the_batch(client, db, settings, job_queue)
    assert report.sent == len(ids)
    with db.reading() as session:
        sent = session.execute(select(Delivery.id, Delivery.provider_message_id)).all()
        codes = session.scalars(select(Attempt.provider_code)).all()
    assert sorted(tuple(r) for r in sent) == [(i, str(9000 + i)) for i in ids]
    assert codes == ["250"] * len(ids)


def test_a_plugins_raw_reply_bytes_and_numeric_code_are_recorded_as_text(
    client, db: Database, settings: Settings, job_queue, monkeypatch
) -> None:
    """A refusal whose reply is the provider's raw bytes (invalid UTF-8 among them) and whose
    code is a number is recorded, as text, with the delivery failed; PostgreSQL's binary COPY
    would refuse bytes for a text column and lose the batch's record."""

    async def refused(self: EmailAdapter, message: Message) -> SendResult:
        raise PermanentError("mailbox gone", code=550, reply=b"5.1.1 h\xc3\xb4p th\xff")  # type: ignore[arg-type]

    monkeypatch.setattr(EmailAdapter, "send", refused)
    ids, report = _process_the_batch(client, db, settings, job_queue)
    assert report.failed == len(ids)
    with db.reading() as session:
        statuses = session.scalars(select(Delivery.status)).all()
        words = session.execute(select(Attempt.provider_code, Attempt.provider_reply)).all()
    assert statuses == ["failed"] * len(ids)
    assert [tuple(r) for r in words] == [("550", "5.1.1 h\u00f4p th\ufffd")] * len(ids)


def test_cancelling_writes_an_open_batchs_deliveries_as_cancelled_rows(
    client, db: Database, settings: Settings
) -> None:
    campaign_id, run_id = plan_campaign(client, db, settings)
    [(_, ids)] = run_batches(db, run_id)
    assert client.post(f"/v1/campaigns/{campaign_id}/cancel").status_code == 200
    with db.reading() as session:
        rows = session.execute(
            select(Delivery.id, Delivery.status, Delivery.error_reason).order_by(Delivery.id)
        ).all()
        assert set(session.scalars(select(Batch.status))) == {"cancelled"}
    assert [tuple(r) for r in rows] == [(i, "cancelled", "campaign cancelled") for i in ids]
    assert campaign_status(client, campaign_id)["counts"]["by_status"] == {"cancelled": len(ids)}


def test_ids_reserved_by_a_batch_are_never_given_to_another_row(
    client, db: Database, settings: Settings
) -> None:
    """A one-off message accepted while a batch waits takes an id after the batch's."""
    _, run_id = plan_campaign(client, db, settings)
    [(_, ids)] = run_batches(db, run_id)
    body = {"recipient": "0100000001", "template": "canh_bao_test", "channels": ["email"]}
    assert client.post("/v1/messages", json=body).status_code == 202
    with db.reading() as session:
        [message_id] = session.scalars(select(Delivery.id)).all()
    assert message_id > max(ids)
    with db.engine.begin() as connection:
        more = batches.reserve_ids(connection, 3)
        assert connection.execute(text("SELECT MAX(id) FROM deliveries")).scalar_one() < more[0]
    assert more[0] > message_id and more == list(range(more[0], more[0] + 3))
