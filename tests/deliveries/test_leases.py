"""Leases: a live worker keeps its batch however long it takes; only a dead worker's batch is
taken over, by the sweeper, once it has watched the lease go unrenewed for a whole lease; and a
worker whose lease was taken over writes nothing."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import func, inspect, select, update

from dispatcher.core import migrate
from dispatcher.core.config import Settings
from dispatcher.core.db import Database, create_db_engine
from dispatcher.engine.batch import BatchProcessor
from dispatcher.engine.batches import decode_ids
from dispatcher.engine.claim import lease_stamp
from dispatcher.engine.leases import LeaseWatch, new_token
from dispatcher.engine.loop import get_loop
from dispatcher.engine.work import Work
from dispatcher.kit.clock import clock
from dispatcher.tables.deliveries import Attempt, Batch, Delivery, Lease
from tests.support import SmtpServer, delivery_statuses, wait_for
from tests.test_chaos import _planned
from workers.sweeper import sweep


class Ticks:
    """The sweeper's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _processor(db: Database, settings: Settings, job_queue: Any) -> BatchProcessor:
    return BatchProcessor(db=db, settings=settings, queue=job_queue, loop=get_loop())


class HeldAfterSending:
    """Runs ``processor.process`` in a thread that stops between its sends and its record
    (the crash window) until released."""

    def __init__(self, processor: BatchProcessor, *args: Any) -> None:
        self.sent = threading.Event()
        self.release = threading.Event()
        self.report: Any = None
        send_all = processor._send_all

        async def held(work: list[Work]) -> None:
            await send_all(work)
            self.sent.set()
            while not self.release.is_set():
                await asyncio.sleep(0.01)

        processor._send_all = held  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self._run, args=(processor, *args))
        self.thread.start()
        wait_for(self.sent.is_set, what="the held batch sent")

    def _run(self, processor: BatchProcessor, *args: Any) -> None:
        self.report = processor.process(*args)

    def finish(self) -> Any:
        self.release.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        return self.report


@pytest.fixture()
def held() -> Iterator[list[HeldAfterSending]]:
    made: list[HeldAfterSending] = []
    yield made
    for batch in made:  # a failed assertion must not leave a thread behind
        batch.release.set()
        batch.thread.join(timeout=60)


def _statuses(db: Database, ids: list[int]) -> list[str]:
    return delivery_statuses(db, ids)


def _flags(db: Database) -> list[bool]:
    with db.reading() as session:
        return list(session.scalars(select(Attempt.possible_duplicate).order_by(Attempt.id)))


def _batch_of(db: Database, ids: list[int]) -> str:
    """The job id of the one open batch holding ``ids``."""
    with db.reading() as session:
        held = session.execute(
            select(Batch.job_id, Batch.delivery_ids).where(Batch.status.in_(["open", "claimed"]))
        ).all()
    batches = {job for job, members in held if set(ids) <= set(decode_ids(members))}
    assert len(batches) == 1 and None not in batches
    return str(batches.pop())


def test_a_live_holder_past_its_lease_keeps_its_batch(
    client, smtp: SmtpServer, db: Database, settings: Settings, job_queue, held
) -> None:
    run_id, ids, batch_id = _planned(client, db, settings)
    holder = _processor(db, settings, job_queue)
    held.append(batch := HeldAfterSending(holder, run_id, ids, batch_id))
    assert smtp.mailbox.count() == len(ids)
    # The holder lives but is held up (PostgreSQL restarting, a starved CPU) beyond the time
    # its claim was first given.
    clock.shift(timedelta(seconds=settings.lease_seconds + 1))
    # The same batch reaches another worker (a broker re-delivery): it takes nothing.
    other = _processor(db, settings, job_queue)
    assert other.process(run_id, ids, batch_id).claimed == 0
    assert smtp.mailbox.count() == len(ids), "not sent a second time"
    # The sweeper watches for longer than a lease: the holder renews, so it keeps its rows.
    ticks = Ticks()
    watch = LeaseWatch(settings.lease_seconds, clock=ticks)
    for _ in range(5):
        holder.heartbeat.beat()
        report = sweep(db=db, settings=settings, markers=job_queue.markers, leases=watch)
        assert report.leases_expired == 0 and report.requeued == 0
        ticks.now += settings.lease_seconds / 3
    assert _statuses(db, ids) == ["claimed"] * len(ids)
    report = batch.finish()
    assert report.sent == len(ids) and report.lost == 0
    assert _statuses(db, ids) == ["sent"] * len(ids)
    assert smtp.mailbox.count() == len(ids)
    assert _flags(db) == [False] * len(ids)


def test_a_dead_holders_batch_is_taken_over_once_its_lease_lapsed(
    client, smtp: SmtpServer, db: Database, settings: Settings, job_queue
) -> None:
    run_id, ids, batch_id = _planned(client, db, settings)
    dead = _processor(db, settings, job_queue)
    # A worker claimed the batch and was killed -9: nothing renews its lease any more.
    token = new_token()
    claim = dead._claim(run_id, ids, batch_id, lease_stamp(settings.lease_seconds), token=token)
    assert len(claim.work) == len(ids)
    dead.heartbeat.drop(token)
    ticks = Ticks()
    watch = LeaseWatch(settings.lease_seconds, clock=ticks)
    markers = job_queue.markers
    # Watched for less than a whole lease: left alone.
    for _ in range(3):
        assert sweep(db=db, settings=settings, markers=markers, leases=watch).leases_expired == 0
        ticks.now += settings.lease_seconds / 3 - 0.1
    # A whole lease without a renewal: taken over, flagged, and queued again.
    ticks.now += 0.3
    report = sweep(db=db, settings=settings, markers=markers, leases=watch)
    assert (report.leases_expired, report.requeued) == (len(ids), len(ids))
    assert _statuses(db, ids) == ["pending"] * len(ids)
    with db.reading() as session:
        lease = session.get(Lease, token)
        assert lease is not None and lease.lost_at is not None
    new_batch = _batch_of(db, ids)
    assert new_batch != batch_id
    # A live worker sends them; each send is audited as a possible duplicate.
    assert _processor(db, settings, job_queue).process(run_id, ids, new_batch).sent == len(ids)
    assert _flags(db) == [True] * len(ids)
    with db.reading() as session:
        assert (
            session.scalar(select(func.count()).select_from(Lease).where(Lease.lost_at.is_(None)))
            == 0
        )


def test_a_worker_whose_lease_was_taken_over_writes_nothing(
    client, smtp: SmtpServer, db: Database, settings: Settings, job_queue, held
) -> None:
    run_id, ids, batch_id = _planned(client, db, settings)
    # A worker starved for a whole lease: it sent, and did not renew (its heartbeat is slow).
    starved = _processor(
        db,
        settings.model_copy(update={"lease_seconds": 3600.0, "lease_heartbeat_seconds": 900.0}),
        job_queue,
    )
    held.append(batch := HeldAfterSending(starved, run_id, ids, batch_id))
    with db.reading() as session:
        stamp = session.scalar(select(Batch.lease_until).where(Batch.job_id == batch_id))
    assert stamp is not None
    ticks = Ticks()
    watch = LeaseWatch(settings.lease_seconds, clock=ticks)
    expired = []
    for _ in range(4):
        expired.append(
            sweep(db=db, settings=settings, markers=job_queue.markers, leases=watch).leases_expired
        )
        ticks.now += settings.lease_seconds / 3
    assert expired == [0, 0, 0, len(ids)]
    # The new holder sends again, flagged, and records.
    new_holder = _processor(db, settings, job_queue)
    assert new_holder.process(run_id, ids, _batch_of(db, ids)).sent == len(ids)
    assert smtp.mailbox.count() == 2 * len(ids)
    with db.reading() as session:
        recorded = session.execute(
            select(Delivery.status, Delivery.provider_message_id, Delivery.attempts)
            .where(Delivery.id.in_(ids))
            .order_by(Delivery.id)
        ).all()
    # The starved worker comes back: its record writes nothing, neither the rows nor attempts.
    report = batch.finish()
    assert report.lost == len(ids) and report.sent == 0
    with db.reading() as session:
        assert (
            session.execute(
                select(Delivery.status, Delivery.provider_message_id, Delivery.attempts)
                .where(Delivery.id.in_(ids))
                .order_by(Delivery.id)
            ).all()
            == recorded
        )
    assert _flags(db) == [True] * len(ids), "only the new holder's attempts, flagged"
    # Beneath the lease, the batch's own check fences it too: its stamp is no longer there.
    with db.transaction() as session:
        closed = (
            session.connection()
            .execute(
                update(Batch)
                .where(Batch.status == "claimed", Batch.lease_until == stamp)
                .values(status="done")
            )
            .rowcount
        )
    assert closed == 0
    assert _statuses(db, ids) == ["sent"] * len(ids)


def test_the_heartbeat_renews_while_the_batch_is_worked_on_and_stops_after(
    client, smtp: SmtpServer, db: Database, settings: Settings, job_queue, held
) -> None:
    run_id, ids, batch_id = _planned(client, db, settings)
    # Renewals every 0.25 s (a quarter of the lease).
    quick = settings.model_copy(update={"lease_seconds": 1.0})
    processor = _processor(db, quick, job_queue)
    held.append(batch := HeldAfterSending(processor, run_id, ids, batch_id))

    def beats() -> int:
        with db.reading() as session:
            return int(session.scalar(select(func.max(Lease.beats))) or 0)

    wait_for(lambda: beats() >= 3, what="the lease renewed three times")
    assert batch.finish().sent == len(ids)
    with db.reading() as session:
        assert session.scalar(select(func.count()).select_from(Lease)) == 0, "ended with its record"
    wait_for(lambda: processor.heartbeat._thread is None, what="the heartbeat thread to end")


def test_the_watch_starts_again_after_a_failed_look_or_a_gap() -> None:
    ticks = Ticks()
    watch = LeaseWatch(30.0, clock=ticks)
    assert watch.look([("a", 1)]) == []
    ticks.now += 20
    assert watch.look([("a", 1)]) == []
    # The database could not be read (PostgreSQL restarting): the holder could not renew
    # either, so the 20 s seen so far count for nothing.
    watch.forget()
    ticks.now += 15
    assert watch.look([("a", 1)]) == []
    ticks.now += 15
    assert watch.look([("a", 1)]) == []
    ticks.now += 15
    assert watch.look([("a", 1)]) == [("a", 1)], "30 s watched since the database answered"
    # The sweeper itself was held up for longer than half a lease: it did not watch.
    ticks.now += 16
    assert watch.look([("a", 1), ("b", 0)]) == []
    # A renewal starts the lease's watch again; a lease that ended is forgotten.
    ticks.now += 15
    assert watch.look([("a", 2), ("b", 0)]) == []
    ticks.now += 15
    assert watch.look([("a", 2), ("b", 0)]) == [("b", 0)]
    ticks.now += 15
    assert watch.look([("a", 2)]) == [("a", 2)]


@pytest.mark.timeout(120)
def test_the_leases_migration_goes_down_and_up_again(database_url: str) -> None:
    def tables() -> set[str]:
        engine = create_db_engine(database_url)
        try:
            return set(inspect(engine).get_table_names())
        finally:
            engine.dispose()

    config = migrate.alembic_config(database_url)
    assert "leases" in tables()
    command.downgrade(config, "0012-1")
    try:
        assert "leases" not in tables()
    finally:
        command.upgrade(config, "head")
    assert "leases" in tables()


def test_a_lease_stamp_another_process_made_in_the_same_microsecond_is_claimed_past(
    client, smtp: SmtpServer, db: Database, settings: Settings, job_queue, monkeypatch
) -> None:
    """Two worker processes can stamp claims of one run in the same microsecond (seen once in a
    10-million-recipient run); the leases' unique key refuses the second, which claims again
    with a later stamp rather than failing its job."""
    from dispatcher.engine import batch as batch_module
    from dispatcher.engine import leases
    from dispatcher.kit.clock import utcnow

    run_id, ids, batch_id = _planned(client, db, settings)
    taken = lease_stamp(settings.lease_seconds)
    with db.transaction() as session:
        # Another process's claim of the same run, stamped in that microsecond.
        leases.take(
            session.connection(),
            token=new_token(),
            run_id=run_id,
            lease_until=taken,
            batch_id="another-batch",
            worker="elsewhere",
            now=utcnow(),
        )
    stamps = iter([taken])
    real = batch_module.lease_stamp
    monkeypatch.setattr(
        batch_module, "lease_stamp", lambda seconds: next(stamps, None) or real(seconds)
    )
    report = _processor(db, settings, job_queue).process(run_id, ids, batch_id)
    assert report.sent == len(ids)
    assert _statuses(db, ids) == ["sent"] * len(ids)
    assert smtp.mailbox.count() == len(ids)
    with db.reading() as session:
        # The other claim's lease is untouched; ours ended with its record.
        assert session.scalars(select(Lease.worker)).all() == ["elsewhere"]
