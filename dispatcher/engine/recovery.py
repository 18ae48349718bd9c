"""Recovery: the database is the source of truth, so the sweeper finds here the work Redis lost
or a dead worker held (each step is one function, safe to run from several processes):

- a planner that stopped heartbeating is restarted (it resumes from its cursor);
- a claim whose lease this sweeper has watched go unrenewed for a whole lease (its worker was
  killed, or is wedged) goes back to pending, flagged so the next attempt is marked as a
  possible duplicate; a live worker's lease is renewed and never lapses, however long an
  outage lasts (see dispatcher.engine.leases);
- pending or retrying rows that are due and whose batch has no live marker in Redis (flushed,
  or the job was lost) are put into new batches and queued again; so are open batch rows
  (:mod:`dispatcher.engine.batches`), each under a new job id;
- so are rows whose marker lives on but whose job is gone: due for longer than a lease while
  nothing waits in their queue (a worker's connection to Redis broke and dramatiq dropped the
  delayed jobs it held; a job used up its retries);
- fully processed runs that nobody closed are completed.

The sweeper's loop (``workers.sweeper``) runs them in turn, with the campaigns' launches.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from sqlalchemy import ColumnElement, Table, delete, func, select, update
from sqlalchemy.orm import Session

from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine import jobs
from dispatcher.engine.backends import Markers
from dispatcher.engine.claim import ACTIVE_RUN
from dispatcher.engine.jobs import enqueue_after_commit, new_batch_id
from dispatcher.engine.leases import LeaseWatch
from dispatcher.engine.planner import complete_if_done
from dispatcher.kit.clock import utcnow
from dispatcher.tables.campaigns import Campaign, Run, RunStatus
from dispatcher.tables.deliveries import (
    Batch,
    BatchStatus,
    Delivery,
    DeliveryStatus,
    Lease,
    claimable_delivery,
    open_batch,
    open_delivery,
)

log = structlog.get_logger(__name__)

batches_t: Table = Batch.__table__  # type: ignore[assignment]

MAX_REQUEUE_PER_SWEEP = 200_000
# A lease taken over is kept this long, marked lost, so that its holder, should it come back,
# learns why it must write nothing.
LOST_LEASES_KEPT = timedelta(days=1)


def restart_stalled_planners(*, db: Database, settings: Settings, now: datetime) -> int:
    stale = now - timedelta(seconds=settings.lease_seconds)
    with db.transaction() as session:
        runs = session.scalars(
            select(Run)
            .where(Run.status == RunStatus.planning, Run.planner_heartbeat_at < stale)
            .limit(100)
        ).all()
        for run in runs:
            campaign = session.get(Campaign, run.campaign_id)
            assert campaign is not None
            run.planner_heartbeat_at = now
            enqueue_after_commit(
                session, jobs.plan_run(run_id=run.id, priority=campaign.priority, settings=settings)
            )
        return len(runs)


def expire_leases(
    *, db: Database, settings: Settings, watch: LeaseWatch | None = None, now: datetime
) -> int:
    """Give back the rows of every lease ``watch`` has seen go unrenewed for a whole lease
    (its holder died); returns the rows given back, flagged ``reclaimed``.

    ``watch`` is the sweeper's memory of what it saw at earlier sweeps: without one nothing
    has been watched long enough, and only rows claimed by a worker of the previous version
    (which wrote no lease) are given back, once their ``lease_until`` has passed.
    """
    watch = watch or LeaseWatch.from_settings(settings)
    try:
        with db.reading() as session:
            held = [
                (str(token), int(beats))
                for token, beats in session.execute(
                    select(Lease.token, Lease.beats).where(Lease.lost_at.is_(None))
                )
            ]
    except Exception:
        watch.forget()
        raise
    expired = 0
    for token, beats in watch.look(held):
        # One lease per transaction, taken only if it is still as we saw it: a holder that
        # renewed it, or recorded, since the look keeps its rows.
        with db.transaction() as session:
            lease = session.get(Lease, token)
            if lease is None:
                continue
            marked = session.execute(
                update(Lease)
                .where(Lease.token == token, Lease.beats == beats, Lease.lost_at.is_(None))
                .values(lost_at=now),
                execution_options={"synchronize_session": False},
            )
            if not getattr(marked, "rowcount", 0):
                continue
            rows = _give_back(
                session,
                (Delivery.run_id == lease.run_id) & (Delivery.lease_until == lease.lease_until),
                now,
            )
            rows += _give_back_batches(
                session,
                (batches_t.c.run_id == lease.run_id)
                & (batches_t.c.lease_until == lease.lease_until),
                now,
            )
            log.warning(
                "lease_expired",
                run_id=lease.run_id,
                batch_id=lease.batch_id,
                worker=lease.worker,
                rows=rows,
                beats=beats,
            )
            expired += rows
    with db.transaction() as session:
        # Claimed by a worker of the previous version (no lease row): the rule it knew.
        legacy = (
            select(Lease.token)
            .where(Lease.run_id == Delivery.run_id, Lease.lease_until == Delivery.lease_until)
            .exists()
        )
        expired += _give_back(session, (Delivery.lease_until < now) & ~legacy, now)
        b = batches_t.c
        legacy_batch = (
            select(Lease.token)
            .where(Lease.run_id == b.run_id, Lease.lease_until == b.lease_until)
            .exists()
        )
        expired += _give_back_batches(session, (b.lease_until < now) & ~legacy_batch, now)
        session.execute(delete(Lease).where(Lease.lost_at < now - LOST_LEASES_KEPT))
    return expired


def _give_back(session: Session, which: ColumnElement[bool], now: datetime) -> int:
    """Claimed rows back to pending, flagged: their next send may repeat one."""
    result = session.execute(
        update(Delivery)
        .where(which, open_delivery(Delivery.status), Delivery.status == DeliveryStatus.claimed)
        .values(
            status=DeliveryStatus.pending,
            lease_until=None,
            batch_id=None,
            reclaimed=True,
            updated_at=now,
        ),
        execution_options={"synchronize_session": False},
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _give_back_batches(session: Session, which: ColumnElement[bool], now: datetime) -> int:
    """Claimed batch rows open again, flagged, without a job (the re-queue gives them one);
    returns their deliveries."""
    b = batches_t.c
    where = (which, open_batch(b.status), b.status == BatchStatus.claimed.value)
    size = session.scalar(select(func.coalesce(func.sum(b.size), 0)).where(*where))
    session.execute(
        update(batches_t)
        .where(*where)
        .values(
            status=BatchStatus.open.value,
            lease_until=None,
            job_id=None,
            reclaimed=True,
            updated_at=now,
        )
    )
    return int(size or 0)


def stalled_batches(
    *,
    db: Database,
    settings: Settings,
    markers: Markers,
    run_id: int | None,
    now: datetime,
    skip: set[str],
) -> list[str]:
    """Batches whose marker is alive but whose job is not: due and unclaimed for longer than a
    lease, while their queue holds no waiting job (a waiting job would be in it).

    A live marker says a job was queued, not that it still exists. dramatiq drops the delayed
    jobs a worker holds in memory when its connection to Redis breaks; they stay in that
    worker's acks set, which dramatiq requeues only once the worker stops heartbeating. A
    queued-again batch gets a new id, so its old job, should it ever run, claims nothing.
    """
    stale = now - timedelta(seconds=settings.lease_seconds)
    query = (
        select(Delivery.batch_id, Campaign.priority)
        .join(Run, Run.id == Delivery.run_id)
        .join(Campaign, Campaign.id == Run.campaign_id)
        .where(
            claimable_delivery(Delivery.status),
            Delivery.available_at <= stale,
            Delivery.batch_id.is_not(None),
            Run.status.in_(ACTIVE_RUN),
        )
        .distinct()
    )
    b = batches_t.c
    batch_query = (
        select(b.job_id, Campaign.priority)
        .join(Run, Run.id == b.run_id)
        .join(Campaign, Campaign.id == Run.campaign_id)
        .where(
            open_batch(b.status),
            b.status == BatchStatus.open.value,
            b.available_at <= stale,
            b.job_id.is_not(None),
            Run.status.in_(ACTIVE_RUN),
        )
    )
    if run_id is not None:
        query = query.where(Delivery.run_id == run_id)
        batch_query = batch_query.where(b.run_id == run_id)
    # Reads only (the re-queue re-checks every condition under its write): no write lock.
    with db.reading() as session:
        rows = [(str(j), str(p)) for j, p in session.execute(query) if j not in skip]
        rows += [(str(j), str(p)) for j, p in session.execute(batch_query) if j not in skip]
    idle: dict[str, bool] = {}
    stalled: list[str] = []
    for batch_id, priority in rows:
        queue = jobs.queue_for(priority, settings)
        if queue not in idle:
            idle[queue] = markers.waiting(queue) == 0
        if idle[queue]:
            stalled.append(batch_id)
    if stalled:
        log.warning("stalled_batches", batches=len(stalled), run_id=run_id)
    return stalled


def requeue_orphans(
    *,
    db: Database,
    settings: Settings,
    markers: Markers,
    run_id: int | None = None,
    grace: float | None = None,
    now: datetime | None = None,
) -> int:
    """Queue again every due pending/retrying row whose batch is no longer alive."""
    now = now or utcnow()
    due = now - timedelta(seconds=settings.sweep_grace_seconds if grace is None else grace)
    base = (
        select(Delivery.batch_id)
        .join(Run, Run.id == Delivery.run_id)
        .where(
            claimable_delivery(Delivery.status),
            Delivery.available_at <= due,
            Run.status.in_(ACTIVE_RUN),
        )
        .distinct()
    )
    if run_id is not None:
        base = base.where(Delivery.run_id == run_id)
    bc = batches_t.c
    open_batches = (
        select(bc.job_id)
        .join(Run, Run.id == bc.run_id)
        .where(
            open_batch(bc.status),
            bc.status == BatchStatus.open.value,
            bc.available_at <= due,
            Run.status.in_(ACTIVE_RUN),
        )
    )
    if run_id is not None:
        open_batches = open_batches.where(bc.run_id == run_id)
    # A scan of every due row: read beside the workers; the re-queue below re-checks each row.
    with db.reading() as session:
        batch_ids = list(session.scalars(base))
        jobs_of_batches = list(session.scalars(open_batches))
    named = [b for b in batch_ids if b is not None]
    named += [j for j in jobs_of_batches if j is not None]
    dead = [b for b, alive in zip(named, markers.alive(named), strict=True) if not alive]
    dead += stalled_batches(
        db=db, settings=settings, markers=markers, run_id=run_id, now=now, skip=set(dead)
    )
    requeued = 0
    if dead or None in jobs_of_batches:
        requeued += _requeue_batches(
            db=db, settings=settings, dead=dead, run_id=run_id, due=due, now=now
        )
    include_unbatched = None in batch_ids
    if not dead and not include_unbatched:
        if requeued:
            log.warning("orphans_requeued", deliveries=requeued, run_id=run_id)
        return requeued
    last_id = 0
    while requeued < MAX_REQUEUE_PER_SWEEP:
        with db.transaction() as session:
            orphan = Delivery.batch_id.is_(None) if include_unbatched else None
            in_dead = Delivery.batch_id.in_(dead) if dead else None
            which = (
                in_dead | orphan
                if in_dead is not None and orphan is not None
                else (in_dead if in_dead is not None else orphan)
            )
            assert which is not None
            query = (
                select(Delivery.id, Delivery.run_id, Campaign.priority)
                .join(Run, Run.id == Delivery.run_id)
                .join(Campaign, Campaign.id == Run.campaign_id)
                .where(
                    which,
                    Delivery.id > last_id,
                    claimable_delivery(Delivery.status),
                    Delivery.available_at <= due,
                    Run.status.in_(ACTIVE_RUN),
                )
                .order_by(Delivery.id)
                .limit(settings.batch_size)
            )
            if run_id is not None:
                query = query.where(Delivery.run_id == run_id)
            rows = session.execute(query).all()
            if not rows:
                break
            last_id = rows[-1][0]
            groups: dict[tuple[int, str], list[int]] = {}
            for delivery_id, rid, priority in rows:
                groups.setdefault((rid, priority), []).append(delivery_id)
            for (rid, priority), ids in groups.items():
                batch_id = new_batch_id()
                session.execute(
                    update(Delivery).where(Delivery.id.in_(ids)).values(batch_id=batch_id),
                    execution_options={"synchronize_session": False},
                )
                enqueue_after_commit(
                    session,
                    jobs.send_batch(
                        run_id=rid,
                        ids=ids,
                        batch_id=batch_id,
                        priority=priority,
                        settings=settings,
                    ),
                )
            requeued += len(rows)
    if requeued:
        log.warning("orphans_requeued", deliveries=requeued, run_id=run_id)
    return requeued


def _requeue_batches(
    *,
    db: Database,
    settings: Settings,
    dead: list[str],
    run_id: int | None,
    due: datetime,
    now: datetime,
) -> int:
    """Give every due open batch row whose job is dead (or that has none) a new job id, and
    queue it; returns their deliveries. The new id voids the old job, should it ever run."""
    b = batches_t.c
    which: ColumnElement[bool] = b.job_id.is_(None)
    if dead:
        which = which | b.job_id.in_(dead)
    requeued = 0
    last_id = 0
    while requeued < MAX_REQUEUE_PER_SWEEP:
        with db.transaction() as session:
            query = (
                select(b.id, b.run_id, b.size, Campaign.priority)
                .join(Run, Run.id == b.run_id)
                .join(Campaign, Campaign.id == Run.campaign_id)
                .where(
                    which,
                    b.id > last_id,
                    open_batch(b.status),
                    b.status == BatchStatus.open.value,
                    b.available_at <= due,
                    Run.status.in_(ACTIVE_RUN),
                )
                .order_by(b.id)
                .limit(1000)
            )
            if run_id is not None:
                query = query.where(b.run_id == run_id)
            rows = session.execute(query).all()
            if not rows:
                break
            last_id = rows[-1][0]
            for batch_pk, rid, size, priority in rows:
                job_id = new_batch_id()
                session.execute(
                    update(batches_t).where(b.id == batch_pk).values(job_id=job_id, updated_at=now)
                )
                enqueue_after_commit(
                    session,
                    jobs.send_batch(
                        run_id=rid,
                        ids=[],
                        batch_id=job_id,
                        priority=priority,
                        settings=settings,
                    ),
                )
                requeued += int(size)
    return requeued


def complete_finished_runs(*, db: Database) -> int:
    completed = 0
    with db.transaction() as session:
        runs = session.scalars(
            select(Run)
            .where(Run.status == RunStatus.running, Run.planned_at.is_not(None))
            .order_by(Run.id)
            .limit(200)
        ).all()
        for run in runs:
            completed += complete_if_done(session=session, run=run)
    return completed
