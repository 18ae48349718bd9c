"""The scheduler against a real database and Redis: exactly-once firings, catch-up, failover."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
from sqlalchemy import func, select

from dispatcher.campaigns.firing import fire_due
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine.planner import plan_run
from dispatcher.kit.clock import clock
from dispatcher.tables.campaigns import Run
from tests.support import approve, planned_recipients, wait_for
from workers.scheduler import Leadership, leader_key

VN = ZoneInfo("Asia/Ho_Chi_Minh")
TEMPLATE = {
    "key": "chuc_mung",
    "variants": [{"channel": "default", "body": "Chúc mừng {{ year }}"}],
}


def vn(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, ss, tzinfo=VN).astimezone(UTC)


def recurring(client: Any, schedule: dict[str, Any], **extra: Any) -> int:
    if client.get("/v1/templates/chuc_mung").status_code == 404:
        assert client.post("/v1/templates", json=TEMPLATE).status_code == 201
    created = client.post(
        "/v1/campaigns",
        json={
            "name": "Định kỳ",
            "kind": "greeting",
            "template": "chuc_mung",
            "audience": {"all": True},
            "channels": ["null"],
            "schedule": schedule,
            **extra,
        },
    )
    assert created.status_code == 201, created.text
    campaign_id = int(created.json()["id"])
    client.post(f"/v1/campaigns/{campaign_id}/submit")
    approved = approve(client, campaign_id).json()
    assert approved["status"] == "scheduled"
    return campaign_id


def runs(db: Database, campaign_id: int) -> list[Run]:
    with db.transaction() as session:
        return list(
            session.scalars(
                select(Run).where(Run.campaign_id == campaign_id).order_by(Run.scheduled_for)
            )
        )


def test_missed_firings_run_late_within_grace_and_are_skipped_beyond(
    client, db: Database, settings: Settings, job_queue
) -> None:
    clock.freeze(vn(2026, 5, 4, 6, 0))
    campaign_id = recurring(client, {"type": "cron", "cron": "0 * * * *"})  # hourly
    assert (
        client.get(f"/v1/campaigns/{campaign_id}").json()["next_fire_at"] == "2026-05-04T00:00:00Z"
    )
    # The scheduler was down from 07:00 to 12:30; the grace period is two hours.
    settings = settings.model_copy(update={"schedule_grace_seconds": 2 * 3600})
    with db.transaction() as session:
        report = fire_due(session=session, settings=settings, now=vn(2026, 5, 4, 12, 30))
    assert (report.fired, report.late, report.skipped) == (2, 2, 4)
    history = [
        (r.scheduled_for.astimezone(VN).hour, r.status, r.late) for r in runs(db, campaign_id)
    ]
    assert history == [
        (7, "skipped", False),
        (8, "skipped", False),
        (9, "skipped", False),
        (10, "skipped", False),
        (11, "planning", True),
        (12, "planning", True),
    ]
    shown = client.get(f"/v1/campaigns/{campaign_id}").json()
    assert shown["next_fire_at"] == vn(2026, 5, 4, 13).isoformat().replace("+00:00", "Z")
    assert [r["status"] for r in shown["runs"]].count("skipped") == 4
    # Nothing fires twice: the same tick again finds nothing due.
    with db.transaction() as session:
        again = fire_due(session=session, settings=settings, now=vn(2026, 5, 4, 12, 30))
    assert (again.fired, again.skipped) == (0, 0)


def test_birthday_run_on_28_february_of_a_common_year(
    client, db: Database, settings: Settings, job_queue
) -> None:
    people = [
        {
            "external_id": "1200000001",
            "full_name": "Sinh 28/2",
            "birth_date": "1990-02-28",
            "addresses": {"null": "a"},
        },
        {
            "external_id": "1200000002",
            "full_name": "Sinh 29/2",
            "birth_date": "1992-02-29",
            "addresses": {"null": "b"},
        },
        {
            "external_id": "1200000003",
            "full_name": "Sinh 1/3",
            "birth_date": "1991-03-01",
            "addresses": {"null": "c"},
        },
        {"external_id": "1200000004", "full_name": "Không rõ", "addresses": {"null": "d"}},
    ]
    assert client.post("/v1/recipients", json=people).status_code == 200
    clock.freeze(vn(2027, 2, 27, 12))
    campaign_id = recurring(client, {"type": "birthday", "at": "08:00"})
    greeted: dict[str, list[str]] = {}
    for day in (vn(2027, 2, 28, 8, 0, 1), vn(2027, 3, 1, 8, 0, 1)):
        with db.transaction() as session:
            assert fire_due(session=session, settings=settings, now=day).fired == 1
        (run,) = [r for r in runs(db, campaign_id) if r.status == "planning"]
        plan_run(db=db, run_id=run.id, settings=settings)
        greeted[day.astimezone(VN).strftime("%d/%m")] = planned_recipients(db, run.id)
        with db.transaction() as session:
            session.get(Run, run.id).status = "completed"  # type: ignore[union-attr]
    assert greeted == {"28/02": ["1200000001", "1200000002"], "01/03": ["1200000003"]}


def test_two_schedulers_through_100_firings_fire_each_exactly_once(
    client, db: Database, settings: Settings, job_queue
) -> None:
    start = vn(2026, 6, 1, 9, 0)
    clock.freeze(start - timedelta(seconds=30))
    campaign_id = recurring(client, {"type": "cron", "cron": "* * * * *"})  # every minute
    ticks = [start + timedelta(minutes=i, seconds=1) for i in range(100)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def scheduler() -> None:
        try:
            for now in ticks:
                barrier.wait(timeout=30)  # both schedulers tick at the same instant
                with db.transaction() as session:
                    fire_due(session=session, settings=settings, now=now)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    with db.transaction() as session:
        per_slot = session.execute(
            select(Run.slot, func.count()).where(Run.campaign_id == campaign_id).group_by(Run.slot)
        ).all()
    assert len(per_slot) == 100
    assert {count for _, count in per_slot} == {1}


def test_the_standby_takes_over_within_the_ttl(redis_client: redis.Redis) -> None:
    ttl = 1.0
    key = leader_key("test")
    leader, standby = Leadership(redis_client, ttl, key=key), Leadership(redis_client, ttl, key=key)
    assert leader.hold() and not standby.hold()
    assert leader.hold() and not standby.hold(), "renewal keeps the lead"
    # The leader dies: it simply stops renewing.
    died = time.monotonic()
    wait_for(standby.hold, timeout=ttl * 3, interval=0.05, what="the standby to take over")
    assert time.monotonic() - died <= ttl + 0.5
    assert redis_client.get(key) == standby.token.encode()
    assert not leader.hold(), "a leader back from the dead does not steal the lead"


def test_upcoming_lists_a_year_of_firings_with_tet_where_it_belongs(client, job_queue) -> None:
    clock.freeze(vn(2026, 11, 24, 10))
    tet = recurring(client, {"type": "occasion", "occasion": "tet", "at": "07:00"})
    weekly = recurring(client, {"type": "cron", "cron": "0 9 * * 1"})
    listed = client.get("/v1/schedules/upcoming", params={"days": 366}).json()
    tet_firings = [f for f in listed if f["campaign_id"] == tet]
    assert [f["local_time"] for f in tet_firings] == ["2027-02-06 07:00 (giờ Việt Nam)"]
    assert len([f for f in listed if f["campaign_id"] == weekly]) == 52
    assert listed == sorted(listed, key=lambda f: f["at"])
    assert client.get("/v1/schedules/upcoming", params={"days": 0}).status_code == 422
    calendar = {o["key"]: o for o in client.get("/v1/occasions").json()}
    assert calendar["tet"]["next"] == "2027-02-06T00:00:00Z"
    assert calendar["hung_kings"]["calendar"] == "lunar"


def test_editing_a_rule_needs_a_new_approval_and_pause_resume(client, job_queue) -> None:
    clock.freeze(vn(2026, 11, 24, 10))
    campaign_id = recurring(client, {"type": "occasion", "occasion": "new_year"})
    edited = client.put(
        f"/v1/campaigns/{campaign_id}/schedule",
        json={"schedule": {"type": "occasion", "occasion": "new_year", "at": "06:30"}},
    ).json()
    assert edited["status"] == "submitted" and edited["next_fire_at"] is None
    assert "approval" in edited["status_reason"]
    approved = approve(client, campaign_id).json()
    assert approved["next_fire_at"] == vn(2027, 1, 1, 6, 30).isoformat().replace("+00:00", "Z")
    assert client.post(f"/v1/campaigns/{campaign_id}/pause").json()["status"] == "paused"
    resumed = client.post(f"/v1/campaigns/{campaign_id}/resume").json()
    assert resumed["status"] == "scheduled"
    bad = client.put(
        f"/v1/campaigns/{campaign_id}/schedule", json={"schedule": {"type": "cron", "cron": "x"}}
    )
    assert bad.status_code == 422
    both = client.post(
        "/v1/campaigns",
        json={
            "name": "x",
            "kind": "greeting",
            "template": "chuc_mung",
            "audience": {"all": True},
            "channels": ["null"],
            "schedule": {"type": "birthday"},
            "send_at": "2027-01-01T00:00:00Z",
        },
    )
    assert both.status_code == 422 and "not both" in both.text


@pytest.fixture(autouse=True)
def _reset_clock() -> Any:
    yield
    clock.reset()
