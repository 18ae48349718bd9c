"""The planner's pages: whole batches, several to a transaction, each page read through the
addresses' own index."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, func, select

from dispatcher import audit
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine import planner
from dispatcher.tables.audit import AuditEntry
from tests.support import run_batches
from tests.test_end_to_end import plan_campaign


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    seen: list[str] = []

    def note(*args: Any) -> None:
        seen.append(" ".join(str(args[2]).split()))

    event.listen(db.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", note)


def test_a_page_plans_several_whole_batches_in_one_transaction(
    client: Any, db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five people, batches of two, four deliveries to a page: two pages (one audit entry
    each), the first with two batches, and every batch whole but the last."""
    monkeypatch.setattr(settings, "batch_size", 2)
    monkeypatch.setattr(planner, "PAGE_DELIVERIES", 4)
    _, run_id = plan_campaign(client, db, settings)
    assert [len(ids) for _, ids in run_batches(db, run_id)] == [2, 2, 1]
    with db.reading() as session:
        pages = [
            [b["size"] for b in json.loads(data)["batches"]]
            for data in session.scalars(
                select(AuditEntry.data)
                .where(AuditEntry.action == audit.PLANNED, AuditEntry.subject == f"run:{run_id}")
                .order_by(AuditEntry.seq)
            )
        ]
    assert pages == [[2, 2], [1]]


def test_a_pages_reads_bound_the_addresses_by_the_pages_ids(
    client: Any, db: Database, settings: Settings
) -> None:
    """PostgreSQL carries an equality across a join, not a range: bounded on the recipients
    alone, each page's read of the addresses was a sequential scan of the whole table."""
    with statements(db) as seen:
        plan_campaign(client, db, settings)
    joins = [s for s in seen if "JOIN addresses" in s and "recipients.id >" in s]
    assert joins, seen
    for statement in joins:
        assert "addresses.recipient_id >" in statement, statement
        assert "addresses.recipient_id <=" in statement, statement


def test_a_pages_batches_are_named_once_however_many_entries_its_skipped_rows_take(
    client: Any, db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page's skipped rows are named DELIVERIES_PER_ENTRY to an audit entry; the page's
    batches are named in the first of them only."""
    from sqlalchemy import update

    from dispatcher.audit import coverage
    from dispatcher.tables.recipients import Address
    from tests.test_end_to_end import add_people, plan_launched, publish_template

    monkeypatch.setattr(coverage, "DELIVERIES_PER_ENTRY", 1)
    add_people(client)
    publish_template(client)
    with db.transaction() as session:
        dead = session.scalars(select(Address.id).order_by(Address.id).limit(3)).all()
        session.execute(update(Address).where(Address.id.in_(dead)).values(dead_at=func.now()))
    _, run_id = plan_launched(client, db, settings)
    with db.reading() as session:
        entries = [
            json.loads(data)
            for data in session.scalars(
                select(AuditEntry.data)
                .where(AuditEntry.action == audit.PLANNED, AuditEntry.subject == f"run:{run_id}")
                .order_by(AuditEntry.seq)
            )
        ]
    assert [e["skipped"] for e in entries] == [3, 3, 3]
    assert ["batches" in e for e in entries] == [True, False, False]
    assert [b["size"] for b in entries[0]["batches"]] == [2]


def test_a_page_reads_its_addresses_once_and_skips_the_ones_that_read_found(
    client: Any, db: Database, settings: Settings
) -> None:
    """One read of the page decides every address; the skipped rows are inserted by the ids of
    the addresses it found dead or opted out, not by reading the page again."""
    from sqlalchemy import update

    from dispatcher.tables.deliveries import Delivery
    from dispatcher.tables.recipients import Address
    from tests.test_end_to_end import add_people, plan_launched, publish_template

    add_people(client)
    publish_template(client)
    with db.transaction() as session:
        [dead] = session.scalars(select(Address.id).order_by(Address.id).limit(1)).all()
        session.execute(update(Address).where(Address.id == dead).values(dead_at=func.now()))
        dead_owner = session.scalar(select(Address.recipient_id).where(Address.id == dead))
    with statements(db) as seen:
        _, run_id = plan_launched(client, db, settings)
    page_reads = [s for s in seen if "JOIN addresses" in s and "recipients.id >" in s]
    inserts = [s for s in seen if s.startswith("INSERT INTO deliveries")]
    assert len(page_reads) == 1, page_reads
    assert len(inserts) == 1 and "addresses.id IN" in inserts[0], inserts
    with db.reading() as session:
        skipped = session.execute(
            select(Delivery.recipient_id, Delivery.status, Delivery.error_class).where(
                Delivery.run_id == run_id
            )
        ).all()
    assert [tuple(row) for row in skipped] == [(dead_owner, "skipped", "address_dead")]
    # The others are in the page's batch, the dead address's owner not.
    [(_, ids)] = run_batches(db, run_id)
    assert len(ids) == 4


class Collected:
    """An enqueuer that keeps the jobs committed, instead of sending them to Redis."""

    def __init__(self) -> None:
        self.jobs: list[Any] = []

    def enqueue(self, jobs: Any) -> None:
        self.jobs.extend(jobs)


def test_the_planner_stays_at_most_plan_ahead_batches_ahead_of_the_sends(
    client: Any, db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two batches queued and not taken: the planner stops there, its heartbeat fresh, and
    queues itself again in a second; each batch a worker takes makes room for one more."""
    from sqlalchemy import update

    from dispatcher.engine import jobs
    from dispatcher.tables.campaigns import Run
    from dispatcher.tables.deliveries import Batch
    from tests.test_end_to_end import add_people, launch, publish_template

    monkeypatch.setattr(settings, "batch_size", 1)
    monkeypatch.setattr(settings, "plan_ahead_batches", 2)
    collected = Collected()
    monkeypatch.setattr(jobs, "_enqueuer", collected)
    add_people(client)
    publish_template(client)
    campaign_id = launch(client)
    with db.reading() as session:
        run_id = session.scalar(select(Run.id).where(Run.campaign_id == campaign_id))
    assert run_id is not None
    collected.jobs.clear()

    def batch_statuses() -> list[str]:
        with db.reading() as session:
            return list(
                session.scalars(
                    select(Batch.status).where(Batch.run_id == run_id).order_by(Batch.id)
                )
            )

    def take(n: int) -> None:
        with db.transaction() as session:
            taken = session.scalars(
                select(Batch.id)
                .where(Batch.run_id == run_id, Batch.status == "open")
                .order_by(Batch.id)
                .limit(n)
            ).all()
            session.execute(update(Batch).where(Batch.id.in_(taken)).values(status="claimed"))

    def run_state() -> tuple[str, Any]:
        with db.reading() as session:
            run = session.get(Run, run_id)
            assert run is not None
            return str(run.status), run.planner_heartbeat_at

    assert planner.plan_run(db=db, run_id=run_id, settings=settings) == 2
    assert batch_statuses() == ["open", "open"]
    status, beat = run_state()
    assert status == "planning" and beat is not None
    sends = [j for j in collected.jobs if j.actor_name.startswith(jobs.SEND_BATCH)]
    [again] = [j for j in collected.jobs if j.actor_name.startswith(jobs.PLAN_RUN)]
    assert len(sends) == 2
    assert again.args == (run_id, True)
    assert again.delay_ms == planner.PLAN_AHEAD_WAIT_SECONDS * 1000

    # Nothing taken yet: it plans nothing more.
    assert planner.plan_run(db=db, run_id=run_id, settings=settings) == 0

    # Batches not due yet (a send window that opens later): it looks again when the first is
    # due, and at most half a lease later, its heartbeat fresh for the sweeper.
    def wait_when_due_in(seconds: float) -> float:
        from datetime import timedelta

        from dispatcher.kit.clock import utcnow

        with db.transaction() as session:
            session.execute(
                update(Batch)
                .where(Batch.run_id == run_id)
                .values(available_at=utcnow() + timedelta(seconds=seconds))
            )
        collected.jobs.clear()
        assert planner.plan_run(db=db, run_id=run_id, settings=settings) == 0
        [job] = collected.jobs
        return float(job.delay_ms) / 1000

    assert 15 <= wait_when_due_in(20) <= 20
    assert wait_when_due_in(10 * settings.lease_seconds) == settings.lease_seconds / 2
    assert wait_when_due_in(-60) == planner.PLAN_AHEAD_WAIT_SECONDS
    take(1)
    assert planner.plan_run(db=db, run_id=run_id, settings=settings) == 1
    assert batch_statuses() == ["claimed", "open", "open"]
    take(2)
    assert planner.plan_run(db=db, run_id=run_id, settings=settings) == 2
    take(2)
    # The last page is planned, and the planner finds no more: the run goes on running.
    assert planner.plan_run(db=db, run_id=run_id, settings=settings) == 0
    assert run_state()[0] == "running"
    assert len(batch_statuses()) == 5

    # Without ``ahead`` (the benchmark's planner alone), nothing holds it back.
    other = launch(client)
    with db.reading() as session:
        other_run = session.scalar(select(Run.id).where(Run.campaign_id == other))
    assert other_run is not None
    assert planner.plan_run(db=db, run_id=other_run, settings=settings, ahead=False) == 5


def test_a_campaign_planned_a_batch_ahead_of_its_sends_reaches_everyone_once(
    client: Any, worker: Any, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the broker: the planner stops a batch ahead, waits, goes on, and every
    recipient gets the message once."""
    from tests.support import wait_for
    from tests.test_end_to_end import PEOPLE, add_people, campaign_status, launch, publish_template

    monkeypatch.setattr(settings, "batch_size", 1)
    monkeypatch.setattr(settings, "plan_ahead_batches", 1)
    add_people(client)
    publish_template(client)
    campaign_id = launch(client)
    done = wait_for(
        lambda: (c := campaign_status(client, campaign_id))["status"] == "completed" and c,
        what="the campaign to complete",
        timeout=60,
    )
    assert done["counts"]["by_status"] == {"sent": len(PEOPLE)}
