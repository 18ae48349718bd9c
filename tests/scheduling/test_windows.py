"""Send windows: greetings wait for the morning and go when the window opens; warnings don't."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from dispatcher.core.config import Settings, get_settings
from dispatcher.core.db import Database
from dispatcher.engine.batch import BatchProcessor
from dispatcher.engine.batches import open_members
from dispatcher.engine.loop import get_loop
from dispatcher.engine.planner import plan_run
from dispatcher.kit.clock import clock
from dispatcher.scheduling.windows import next_open, state
from dispatcher.tables.campaigns import Run
from dispatcher.tables.deliveries import Batch, Delivery
from tests.support import approve

VN = ZoneInfo("Asia/Ho_Chi_Minh")


def vn(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=VN).astimezone(UTC)


WINDOWS = {"greeting": "07:00-21:00", "policy_news": "07:00-21:00"}


def test_window_arithmetic() -> None:
    assert next_open(vn(2026, 5, 4, 12), "greeting", "email", WINDOWS) is None
    assert next_open(vn(2026, 5, 4, 22), "greeting", "email", WINDOWS) == vn(2026, 5, 5, 7)
    assert next_open(vn(2026, 5, 4, 5), "greeting", "zalo", WINDOWS) == vn(2026, 5, 4, 7)
    assert next_open(vn(2026, 5, 4, 21), "greeting", "email", WINDOWS) == vn(2026, 5, 5, 7)
    assert next_open(vn(2026, 5, 4, 23), "fraud_warning", "email", WINDOWS) is None
    overnight = {"greeting:telegram": "20:00-02:00"}
    assert next_open(vn(2026, 5, 4, 1), "greeting", "telegram", overnight) is None
    assert next_open(vn(2026, 5, 4, 3), "greeting", "telegram", overnight) == vn(2026, 5, 4, 20)


def test_a_windows_answer_and_until_when_it_holds() -> None:
    """What a batch asks once per kind and channel: the answer, and the instant it changes."""
    assert state(vn(2026, 5, 4, 12), "greeting", "email", WINDOWS) == (None, vn(2026, 5, 4, 21))
    opens = vn(2026, 5, 5, 7)
    assert state(vn(2026, 5, 4, 22), "greeting", "email", WINDOWS) == (opens, opens)
    assert state(vn(2026, 5, 4, 23), "fraud_warning", "email", WINDOWS) == (None, None)
    overnight = {"greeting:telegram": "20:00-02:00"}
    assert state(vn(2026, 5, 4, 23), "greeting", "telegram", overnight) == (None, vn(2026, 5, 5, 2))
    assert state(vn(2026, 5, 4, 1), "greeting", "telegram", overnight) == (None, vn(2026, 5, 4, 2))
    # Every minute of a day: while the answer holds it is next_open's, and it changes there.
    for minute in range(0, 24 * 60, 7):
        now = vn(2026, 5, 4, minute // 60, minute % 60)
        for windows in (WINDOWS, overnight):
            opening, until = state(now, "greeting", "telegram", windows)
            assert opening == next_open(now, "greeting", "telegram", windows)
            assert until is not None and until > now
            before = until - timedelta(microseconds=1)
            assert next_open(before, "greeting", "telegram", windows) == opening
            assert (next_open(until, "greeting", "telegram", windows) is None) != (opening is None)


@pytest.fixture()
def windowed(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    monkeypatch.setenv("DISPATCHER_SEND_WINDOWS", '{"greeting": "07:00-21:00"}')
    get_settings.cache_clear()
    yield get_settings()
    clock.reset()


def setup(client: Any, kind: str) -> int:
    people = [
        {"external_id": f"13{i:08d}", "full_name": f"Ngô {i}", "addresses": {"null": f"n{i}"}}
        for i in range(3)
    ]
    assert client.post("/v1/recipients", json=people).status_code == 200
    template = {"key": "loi_chuc", "variants": [{"channel": "default", "body": "Chúc mừng"}]}
    assert client.post("/v1/templates", json=template).status_code == 201
    created = client.post(
        "/v1/campaigns",
        json={
            "name": "Chúc",
            "kind": kind,
            "template": "loi_chuc",
            "audience": {"all": True},
            "channels": ["null"],
        },
    ).json()
    client.post(f"/v1/campaigns/{created['id']}/submit")
    approve(client, created["id"])
    return int(created["id"])


def statuses(db: Database, campaign_id: int) -> list[tuple[str, datetime, str | None]]:
    """Every delivery's (status, due, error class): its row, or its open batch's."""
    with db.transaction() as session:
        found = [
            (d.status, d.available_at, d.error_class)
            for d in session.scalars(select(Delivery).where(Delivery.campaign_id == campaign_id))
        ]
        found += [
            (m.status, m.available_at, m.error_class)
            for m in open_members(session, Batch.campaign_id == campaign_id)
        ]
    return found


def plan_and_process(db: Database, settings: Settings, job_queue: Any, campaign_id: int) -> None:
    with db.transaction() as session:
        run = session.scalar(select(Run).where(Run.campaign_id == campaign_id))
        assert run is not None
        run_id = run.id
    plan_run(db=db, run_id=run_id, settings=settings)
    process(db, settings, job_queue, campaign_id)


def process(db: Database, settings: Settings, job_queue: Any, campaign_id: int) -> None:
    """Work the campaign's open batches, then its rows (retries), as workers would."""
    with db.transaction() as session:
        rows = session.execute(
            select(Delivery.run_id, Delivery.id).where(Delivery.campaign_id == campaign_id)
        ).all()
        held = session.execute(
            select(Batch.run_id, Batch.job_id).where(
                Batch.campaign_id == campaign_id, Batch.status == "open"
            )
        ).all()
    assert rows or held
    processor = BatchProcessor(db=db, settings=settings, queue=job_queue, loop=get_loop())
    for run_id, job_id in held:
        processor.process(run_id, [], job_id)
    if rows:
        processor.process(rows[0][0], [r[1] for r in rows], None)


def test_a_greeting_planned_at_night_waits_for_the_morning_and_then_goes(
    client, db: Database, windowed: Settings, job_queue
) -> None:
    clock.shift(vn(2026, 5, 4, 22, 30) - clock.now())
    campaign_id = setup(client, "greeting")
    plan_and_process(db, windowed, job_queue, campaign_id)
    rows = statuses(db, campaign_id)
    assert {(s, a) for s, a, _ in rows} == {("pending", vn(2026, 5, 5, 7))}, "waiting, not failed"
    listed = client.get("/v1/deliveries", params={"campaign_id": campaign_id}).json()["items"]
    assert {d["next_attempt_at"] for d in listed} == {"2026-05-05T00:00:00Z"}
    # The window opens.
    clock.shift(vn(2026, 5, 5, 7, 0) - clock.now())
    process(db, windowed, job_queue, campaign_id)
    assert {s for s, _, _ in statuses(db, campaign_id)} == {"sent"}


def test_a_window_that_closes_mid_run_defers_without_spending_attempts(
    client, db: Database, windowed: Settings, job_queue
) -> None:
    clock.shift(vn(2026, 5, 4, 20, 59) - clock.now())
    campaign_id = setup(client, "greeting")
    with db.transaction() as session:
        run = session.scalar(select(Run).where(Run.campaign_id == campaign_id))
        assert run is not None
        run_id = run.id
    plan_run(db=db, run_id=run_id, settings=windowed)
    clock.shift(vn(2026, 5, 4, 21, 1) - clock.now())
    process(db, windowed, job_queue, campaign_id)
    rows = statuses(db, campaign_id)
    assert {(s, a, e) for s, a, e in rows} == {("retrying", vn(2026, 5, 5, 7), "send_window")}
    listed = client.get("/v1/deliveries", params={"campaign_id": campaign_id}).json()["items"]
    assert all(d["attempts"] == [] for d in listed), "nothing was sent, nothing counted"


def test_fraud_warnings_ignore_windows(client, db: Database, windowed: Settings, job_queue) -> None:
    clock.shift(vn(2026, 5, 4, 23, 30) - clock.now())
    campaign_id = setup(client, "fraud_warning")
    plan_and_process(db, windowed, job_queue, campaign_id)
    assert {s for s, _, _ in statuses(db, campaign_id)} == {"sent"}
