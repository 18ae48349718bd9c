"""Transactional messages: one recipient, at once, on the urgent queue, idempotent."""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from dispatcher.auth.service import Caller, Role, create_key
from dispatcher.campaigns import messages as service
from dispatcher.campaigns.schemas import MessageIn
from dispatcher.core.config import Settings, get_settings
from dispatcher.core.db import Database
from dispatcher.kit.clock import clock
from dispatcher.kit.errors import Invalid
from dispatcher.tables.auth import PrincipalKind
from dispatcher.tables.campaigns import Run
from tests.conftest import make_key
from tests.support import SmtpServer, parts, wait_for
from tests.test_end_to_end import add_people, publish_template


def test_idempotency_key_sends_once(client, worker, smtp: SmtpServer) -> None:
    add_people(client)
    publish_template(client)
    body = {"recipient": "0100000001", "template": "canh_bao_test", "channels": ["email"]}
    headers = {"Idempotency-Key": "nop-tien-2026-11-0100000001"}
    first = client.post("/v1/messages", json=body, headers=headers)
    assert first.status_code == 202, first.text
    again = client.post("/v1/messages", json=body, headers=headers)
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    message_id = first.json()["id"]

    done = wait_for(
        lambda: (
            (m := client.get(f"/v1/messages/{message_id}").json())["status"] == "completed" and m
        )
    )
    assert [d["status"] for d in done["deliveries"]] == ["sent"]
    assert len(smtp.mailbox.to("an.nguyen@example.vn")) == 1
    # Transactional mail carries no unsubscribe header.
    assert smtp.mailbox.to("an.nguyen@example.vn")[0]["List-Unsubscribe"] is None

    # A different key is a different message.
    other = client.post("/v1/messages", json=body, headers={"Idempotency-Key": "other"})
    assert other.json()["id"] != message_id
    wait_for(lambda: len(smtp.mailbox.to("an.nguyen@example.vn")) == 2)


def test_message_to_unknown_recipient_or_channel_is_refused(client) -> None:
    add_people(client)
    publish_template(client)
    response = client.post(
        "/v1/messages", json={"recipient": "nobody", "template": "canh_bao_test"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "recipient"]
    response = client.post(
        "/v1/messages",
        json={"recipient": "0100000001", "template": "canh_bao_test", "channels": ["null"]},
    )
    assert response.status_code == 422
    assert "no live address" in response.text or "no variant" in response.text


def test_the_stream_of_one_off_messages_has_no_audience_to_count(client) -> None:
    """A template's one-off messages hang under a standing campaign with no audience filter:
    asking how many it reaches is a conflict that says so, not a complaint about the request."""
    add_people(client)
    publish_template(client)
    sent = client.post(
        "/v1/messages",
        json={"recipient": "0100000001", "template": "canh_bao_test", "channels": ["email"]},
    )
    assert sent.status_code == 202, sent.text
    stream = sent.json()["campaign_id"]
    assert client.get(f"/v1/campaigns/{stream}").json()["stream"] is True
    response = client.get(f"/v1/campaigns/{stream}/audience")
    assert response.status_code == 409, response.text
    assert "one-off messages" in response.text and "no audience" in response.text


# -- Idempotency like a payment API: scoped per API key, bound to the request, expiring ---------

BODY = {
    "recipient": "0100000001",
    "template": "canh_bao_test",
    "channels": ["email"],
    "variables": {"amount": 1250000, "period": "11/2026"},
}


def _bearer(db: Database, role: str, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(db, role, name)}"}


def _messages(db: Database) -> list[tuple[int, int | None]]:
    with db.transaction() as session:
        rows = session.execute(
            select(Run.id, Run.created_by).where(Run.slot.is_(None)).order_by(Run.id)
        ).all()
    return [(i, c) for i, c in rows]


@pytest.fixture()
def ready(client: Any) -> Any:
    add_people(client)
    publish_template(client)
    return client


def test_the_same_key_with_another_request_is_refused(ready: Any, db: Database) -> None:
    system = _bearer(db, "sender", "Cổng dịch vụ công")
    key = {"Idempotency-Key": "nop-tien-2026-11-0100000001", **system}
    first = ready.post("/v1/messages", json=BODY, headers=key)
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers

    other_amount = {**BODY, "variables": {"amount": 9900000, "period": "11/2026"}}
    for changed in (
        other_amount,
        {**BODY, "recipient": "0100000002"},
        {**BODY, "channels": ["email", "null"]},
    ):
        refused = ready.post("/v1/messages", json=changed, headers=key)
        assert refused.status_code == 422, refused.text
        [problem] = refused.json()["detail"]
        assert problem["loc"] == ["header", "Idempotency-Key"]
        assert "different request" in problem["msg"] and str(first.json()["id"]) in problem["msg"]

    # The same request, written another way (key order, spaces, the default channel): a retry.
    same = {"variables": {"period": "11/2026", "amount": 1250000}, "template": "canh_bao_test"}
    again = ready.post("/v1/messages", json={**same, "recipient": " 0100000001 "}, headers=key)
    assert again.status_code == 202, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert len(_messages(db)) == 1


def test_two_sender_keys_with_the_same_idempotency_key_send_two_messages(
    ready: Any, db: Database
) -> None:
    portal = _bearer(db, "sender", "Cổng dịch vụ công")
    vssid = _bearer(db, "sender", "Ứng dụng VssID")
    key = {"Idempotency-Key": "2026-11-0100000001"}
    first = ready.post("/v1/messages", json=BODY, headers={**key, **portal})
    second = ready.post("/v1/messages", json=BODY, headers={**key, **vssid})
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    assert "Idempotent-Replayed" not in second.headers
    assert first.json()["id"] != second.json()["id"]
    # Each key's retry finds its own message.
    for headers, original in ((portal, first), (vssid, second)):
        retry = ready.post("/v1/messages", json=BODY, headers={**key, **headers})
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert retry.json()["id"] == original.json()["id"]
    assert len(_messages(db)) == 2


def test_an_idempotency_key_expires_and_then_sends_a_new_message(
    ready: Any, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = _bearer(db, "sender", "Cổng dịch vụ công")
    key = {"Idempotency-Key": "nhac-han-the-2026", **system}
    start = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    clock.freeze(start)
    first = ready.post("/v1/messages", json=BODY, headers=key).json()["id"]

    clock.freeze(start + timedelta(hours=24) - timedelta(seconds=1))
    inside = ready.post("/v1/messages", json=BODY, headers=key)
    assert inside.headers["Idempotent-Replayed"] == "true" and inside.json()["id"] == first

    # Past the default 24 hours the key is free: a new message, even with another body.
    clock.freeze(start + timedelta(hours=24))
    renewed = ready.post("/v1/messages", json={**BODY, "recipient": "0100000002"}, headers=key)
    assert renewed.status_code == 202, renewed.text
    assert "Idempotent-Replayed" not in renewed.headers
    second = renewed.json()["id"]
    assert second != first
    # The new message holds the key from now on.
    retry = ready.post("/v1/messages", json={**BODY, "recipient": "0100000002"}, headers=key)
    assert retry.headers["Idempotent-Replayed"] == "true" and retry.json()["id"] == second
    assert ready.post("/v1/messages", json=BODY, headers=key).status_code == 422

    # The window is a setting.
    monkeypatch.setenv("DISPATCHER_IDEMPOTENCY_KEY_HOURS", "2")
    get_settings.cache_clear()
    clock.freeze(start + timedelta(hours=26, minutes=1))
    third = ready.post("/v1/messages", json=BODY, headers=key)
    assert "Idempotent-Replayed" not in third.headers and third.json()["id"] not in (first, second)
    assert [i for i, _ in _messages(db)] == [first, second, third.json()["id"]]


def test_a_message_is_read_only_by_its_sender_operators_and_admins(
    ready: Any, db: Database
) -> None:
    portal = _bearer(db, "sender", "Cổng dịch vụ công")
    vssid = _bearer(db, "sender", "Ứng dụng VssID")
    sent = ready.post("/v1/messages", json=BODY, headers=portal)
    assert sent.status_code == 202, sent.text
    message = sent.json()["id"]
    url = f"/v1/messages/{message}"

    # Another system's key: exactly what a message that does not exist answers.
    stranger = ready.get(url, headers=vssid)
    missing = ready.get("/v1/messages/999999", headers=vssid)
    assert stranger.status_code == missing.status_code == 404
    assert stranger.json()["detail"] == f"message {message} does not exist"
    own = ready.get(url, headers=portal)
    assert own.status_code == 200 and own.json()["id"] == message
    [(_, sender_key)] = _messages(db)
    assert own.json()["created_by"] == sender_key is not None
    operator = ready.get(url, headers=_bearer(db, "operator", "Trực vận hành"))
    assert operator.status_code == 200 and operator.json()["id"] == message
    assert ready.get(url).status_code == 200  # the client's own key is an admin's


MALFORMED_KEYS = [
    ("a" * 256, "256 characters long; at most 255"),
    ('"' + "a" * 256 + '"', "256 characters long"),
    ("", "is empty"),
    ('""', "is empty"),
    ("nộp tiền", "the character"),
    ("a b", "the character ' '"),
    ("a;b", "the character ';'"),
]


def test_a_malformed_idempotency_key_is_refused(ready: Any, db: Database) -> None:
    for value, problem in MALFORMED_KEYS:
        response = ready.post(
            "/v1/messages", json=BODY, headers={"Idempotency-Key": value.encode()}
        )
        assert response.status_code == 422, (value, response.text)
        [detail] = response.json()["detail"]
        assert detail["loc"] == ["header", "Idempotency-Key"], value
        assert problem in detail["msg"], (value, detail)
    assert _messages(db) == []


def test_the_quoted_form_of_a_key_is_the_same_key(ready: Any, db: Database) -> None:
    uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324"
    longest = "k" * 255
    first = ready.post("/v1/messages", json=BODY, headers={"Idempotency-Key": f'"{uuid}"'})
    again = ready.post("/v1/messages", json=BODY, headers={"Idempotency-Key": uuid})
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert ready.post("/v1/messages", json=BODY, headers={"Idempotency-Key": longest}).is_success


def test_concurrent_duplicates_make_one_message_per_sender_key(ready: Any, db: Database) -> None:
    portal = _bearer(db, "sender", "Cổng dịch vụ công")
    vssid = _bearer(db, "sender", "Ứng dụng VssID")
    other = {**BODY, "recipient": "0100000002"}
    requests = [(portal, BODY)] * 4 + [(portal, other)] * 2 + [(vssid, BODY)] * 3
    barrier = threading.Barrier(len(requests))

    def send(headers: dict[str, str], body: dict[str, Any]) -> Any:
        barrier.wait(timeout=30)
        return ready.post(
            "/v1/messages", json=body, headers={"Idempotency-Key": "cung-mot-khoa", **headers}
        )

    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda r: send(*r), requests))

    assert all(a.status_code in (202, 422) for a in answers), [a.text for a in answers]
    for headers in (portal, vssid):
        mine = [(a, body) for a, (h, body) in zip(answers, requests, strict=True) if h is headers]
        firsts = [
            (a, body)
            for a, body in mine
            if a.status_code == 202 and "Idempotent-Replayed" not in a.headers
        ]
        assert len(firsts) == 1, [a.text for a, _ in mine]
        [(winner, winning_body)] = firsts
        for answer, body in mine:
            if body == winning_body:
                assert answer.status_code == 202 and answer.json()["id"] == winner.json()["id"]
            else:
                assert answer.status_code == 422, answer.text
                assert "different request" in answer.text
    assert len(_messages(db)) == 2


def test_a_duplicate_in_flight_waits_for_the_first_and_gets_its_answer(
    db: Database, settings: Settings, job_queue: Any, ready: Any
) -> None:
    """The second request's insert meets the first's on the unique index while the first has
    not committed (PostgreSQL makes it wait; SQLite queues the whole transaction): it then
    answers like a retry, never with a 500."""
    portal, vssid = (_caller(db, "Cổng dịch vụ công"), _caller(db, "Ứng dụng VssID"))
    # The template's standing campaign exists already, as it does after the first message.
    assert ready.post("/v1/messages", json=BODY).status_code == 202
    key = "dang-xu-ly"
    outcomes: dict[str, Any] = {}

    def send(session: Session, caller: Caller, body: dict[str, Any]) -> tuple[Run, bool]:
        return service.send_message(
            session=session,
            data=MessageIn.model_validate(body),
            settings=settings,
            caller=caller,
            idempotency_key=key,
        )

    def second(name: str, caller: Caller, body: dict[str, Any]) -> None:
        try:
            with db.transaction() as session:
                run, new = send(session, caller, body)
                outcomes[name] = (run.id, new)
        except Exception as exc:
            outcomes[name] = exc

    with db.transaction() as first_session:
        first, new = send(first_session, portal, BODY)
        assert new
        threads = {
            "retry": threading.Thread(target=second, args=("retry", portal, BODY)),
            "changed": threading.Thread(
                target=second, args=("changed", portal, {**BODY, "recipient": "0100000002"})
            ),
        }
        for thread in threads.values():
            thread.start()
        if not db.is_sqlite:
            # Both wait on the first's uncommitted row in the unique index.
            wait_for(lambda: _waiting_on_locks(db) >= 2, what="the duplicates to wait")
        first_id = first.id
    for thread in threads.values():
        thread.join(timeout=60)
    # Another sender's same key is a message of its own. (Sent after the first commits: every
    # message's audit entry takes the chain's head, so it would wait for the first anyway.)
    second("other sender", vssid, BODY)

    assert outcomes["retry"] == (first_id, False)
    refused = outcomes["changed"]
    assert isinstance(refused, Invalid) and "different request" in refused.message
    other_id, other_new = outcomes["other sender"]
    assert other_new and other_id != first_id
    assert [i for i, _ in _messages(db)][1:] == sorted([first_id, other_id])


def _caller(db: Database, name: str) -> Caller:
    with db.transaction() as session:
        row, _ = create_key(session, role="sender", name=name)
        owner = row.principal
        return Caller(
            key_id=row.id,
            name=name,
            role=Role.sender,
            principal_id=owner.id,
            principal_name=owner.name,
            principal_kind=PrincipalKind(owner.kind),
        )


def _waiting_on_locks(db: Database) -> int:
    with db.engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def test_the_readme_transactional_example_says_the_amount_once(
    client: Any, worker: Any, smtp: SmtpServer, db: Database, repo_root: Path
) -> None:
    """The README's request, as written there, with the built-in template."""
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    example = re.search(r"Idempotency-Key: (contribution-[\w-]+)'.*?-d '(\{.*?\})'", readme, re.S)
    assert example is not None, "the README has a transactional example"
    key, body = example.group(1), json.loads(example.group(2))
    add_people(client)
    sender = _bearer(db, "sender", "Hệ thống thu BHXH")
    headers = {"Idempotency-Key": key, **sender}
    sent = client.post("/v1/messages", json=body, headers=headers)
    assert sent.status_code == 202, sent.text
    again = client.post("/v1/messages", json=body, headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true"

    [mail] = wait_for(lambda: smtp.mailbox.to("an.nguyen@example.vn"))
    rendered = parts(mail)
    for part in (rendered["text"], rendered["html"]):
        assert part.count("1.250.000 đồng") == 1, part
        assert "đồng đồng" not in part
