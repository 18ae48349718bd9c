"""Record: every outcome of a batch written in one short transaction, the rows and their values
all prepared before it begins.

The transaction holds, in this order:

1. the end of the batch's lease: only a holder whose lease is still its own writes anything
   (the whole transaction is rolled back otherwise; see :mod:`dispatcher.engine.leases`);
2. for a batch row: its close (``done``, fenced on its own lease stamp like the rows), and its
   deliveries *inserted*, each once with its outcome (``sent``, ``failed``, ``skipped``, or
   ``retrying`` with the batch id of its retry); for rows: their new states (one statement);
   then one attempts row per try (:mod:`dispatcher.engine.bulk`);
3. the addresses found dead, so later campaigns skip them;
4. the rows to retry, in new batches by delay, each queued only once the transaction commits
   (the delay is the retry policy's: :meth:`~dispatcher.engine.retry.RetryPolicy.next_delay`);
5. in fallback mode, the next channel's rows for every delivery that ended unreached;
6. last, the audit entry of the batch's attempts: the chain's head stays locked until commit.

Once it has committed, the run is closed if nothing of it is open any more.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, Table, bindparam, exists, select, update
from sqlalchemy.orm import Session

from dispatcher import audit
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine import batches, jobs, leases, planner
from dispatcher.engine.bulk import BulkWrites, WriteTurns
from dispatcher.engine.claim import ClaimedBatch
from dispatcher.engine.leases import LeaseLost, LeaseState
from dispatcher.engine.retry import RetryPolicy
from dispatcher.engine.work import WORKER_NAME, BatchReport, Work
from dispatcher.kit.clock import utcnow
from dispatcher.observability.metrics import record_outcomes
from dispatcher.tables.campaigns import Campaign, Run, RunStatus
from dispatcher.tables.deliveries import (
    Batch,
    BatchStatus,
    Delivery,
    DeliveryStatus,
    open_delivery,
)
from dispatcher.tables.recipients import Address

log = structlog.get_logger(__name__)

deliveries_t: Table = Delivery.__table__  # type: ignore[assignment]
batches_t: Table = Batch.__table__  # type: ignore[assignment]
runs_t: Table = Run.__table__  # type: ignore[assignment]
addresses_t: Table = Address.__table__  # type: ignore[assignment]


@dataclass(slots=True)
class Outcomes:
    """A batch's outcomes, ready to write."""

    report: BatchReport
    # The deliveries' new states, and their attempts, as the bulk writes take them.
    updates: list[tuple[Any, ...]] = field(default_factory=list)
    tries: list[tuple[Any, ...]] = field(default_factory=list)
    # The attempts and the deliveries' new states as the audit chain digests them, in the
    # order of audit.coverage's ATTEMPT_FIELDS and DELIVERY_FIELDS.
    audited: list[tuple[Any, ...]] = field(default_factory=list)
    stated: list[tuple[Any, ...]] = field(default_factory=list)
    dead: list[dict[str, Any]] = field(default_factory=list)
    # Rows to retry, by whole seconds of delay.
    retry_groups: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    # A batch row's deliveries as inserted (bulk.DELIVERY_INSERT_COLUMNS), and the batch id of
    # each retry group.
    inserts: list[tuple[Any, ...]] = field(default_factory=list)
    stamp_now: Any = None
    retry_jobs: dict[int, str] = field(default_factory=dict)


class Recorder:
    """Writes batches' outcomes for one worker process."""

    def __init__(
        self, *, db: Database, settings: Settings, turns: WriteTurns, policy: RetryPolicy
    ) -> None:
        self.db = db
        self.settings = settings
        self.turns = turns
        self.policy = policy
        self._bulk: BulkWrites | None = None

    def _bulk_writes(self) -> BulkWrites:
        if self._bulk is None:
            self._bulk = BulkWrites(self.db.engine.dialect)
        return self._bulk

    def record(
        self,
        work: list[Work],
        campaign: Campaign,
        run: Run,
        lease_until: datetime,
        batch: ClaimedBatch | None = None,
    ) -> BatchReport:
        """Write every outcome (raises :class:`LeaseLost`, having written nothing, when the
        lease was taken over), then close the run if that was its last open row."""
        now = utcnow()
        outcomes = self._prepare(work, campaign, run, now, batch)
        if batch is not None:
            return self._record_batch(work, campaign, run, lease_until, batch, outcomes, now)
        updates = outcomes.updates
        audit_entry = audit.batch_draft_of(
            attempts=outcomes.audited, deliveries=outcomes.stated, worker=WORKER_NAME, run_id=run.id
        )
        with self.turns.transaction(first=campaign.priority == "urgent") as session:
            connection = session.connection()
            # First, and in the same transaction: only a holder whose lease is still its own
            # writes anything (rolled back whole otherwise; see dispatcher.engine.leases).
            if not leases.end(connection, run_id=run.id, lease_until=lease_until):
                raise LeaseLost(f"run {run.id}: lease {lease_until.isoformat()} is not ours")
            written = self._write(
                connection, outcomes, now=now, lease_until=lease_until, period=run.period
            )
            self._queue_retries(session, outcomes.retry_groups, campaign, run)
            if campaign.channel_mode == "fallback" and any(
                w.status in (DeliveryStatus.failed, DeliveryStatus.skipped) for w in work
            ):
                planner.plan_next_hops(
                    session=session, work=work, campaign=campaign, run=run, settings=self.settings
                )
            # Last in the transaction: the chain's head stays locked until the commit. Rows
            # this batch no longer held are stated as their new holder left them.
            if audit_entry is not None:
                audit.append(
                    session, audit_entry, amend=audit.restate if written < len(updates) else None
                )
        record_outcomes(work)
        if written < len(updates):
            # Rows of our lease that something else closed meanwhile (a cancelled run).
            log.warning(
                "lease_lost", run_id=run.id, rows=len(updates) - written, claimed=len(updates)
            )
        self.close_run_if_done(run.id)
        return outcomes.report

    def _record_batch(
        self,
        work: list[Work],
        campaign: Campaign,
        run: Run,
        lease_until: datetime,
        batch: ClaimedBatch,
        outcomes: Outcomes,
        now: datetime,
    ) -> BatchReport:
        """A batch row's record: its deliveries inserted once, with their outcomes, and the
        batch closed, in the transaction that ends its lease (all of it, or nothing)."""
        bulk = self._bulk_writes()
        audit_entry = audit.batch_draft_of(
            attempts=outcomes.audited, deliveries=outcomes.stated, worker=WORKER_NAME, run_id=run.id
        )
        b = batches_t.c
        with self.turns.transaction(first=campaign.priority == "urgent") as session:
            connection = session.connection()
            if not leases.end(connection, run_id=run.id, lease_until=lease_until):
                raise LeaseLost(f"run {run.id}: lease {lease_until.isoformat()} is not ours")
            closed = connection.execute(
                update(batches_t)
                .where(
                    b.id == batch.id,
                    b.status == BatchStatus.claimed.value,
                    b.lease_until == lease_until,
                )
                .values(status=BatchStatus.done.value, lease_until=None, updated_at=now)
            ).rowcount
            if not closed:
                # Beneath the lease, the batch's own stamp fences it too.
                raise LeaseLost(f"run {run.id}: batch {batch.job_id} is no longer ours")
            bulk.insert_deliveries(connection, outcomes.inserts)
            bulk.insert_attempts(connection, outcomes.tries)
            self._write_dead(connection, outcomes)
            for delay, ids in outcomes.retry_groups.items():
                jobs.enqueue_after_commit(
                    session,
                    jobs.send_batch(
                        run_id=run.id,
                        ids=ids,
                        batch_id=outcomes.retry_jobs[delay],
                        priority=campaign.priority,
                        settings=self.settings,
                        delay=delay,
                    ),
                )
            if campaign.channel_mode == "fallback" and any(
                w.status in (DeliveryStatus.failed, DeliveryStatus.skipped) for w in work
            ):
                planner.plan_next_hops(
                    session=session, work=work, campaign=campaign, run=run, settings=self.settings
                )
            if audit_entry is not None:
                audit.append(session, audit_entry)
        record_outcomes(work)
        self.close_run_if_done(run.id)
        return outcomes.report

    def _prepare(
        self,
        work: list[Work],
        campaign: Campaign,
        run: Run,
        now: datetime,
        batch: ClaimedBatch | None = None,
    ) -> Outcomes:
        """Each delivery's new state (the retry decision made), attempts and audit lines: for a
        batch row its deliveries as inserted (bulk.DELIVERY_INSERT_COLUMNS), for rows their
        new states (bulk.update_deliveries)."""
        bulk = self._bulk_writes()
        stamp_now = bulk.stamp(now)
        out = Outcomes(report=BatchReport(claimed=len(work)), stamp_now=stamp_now)
        created = None if batch is None else bulk.stamp(batch.created_at)
        run_id, campaign_id, period = run.id, campaign.id, run.period
        for item in work:
            available_at = stamp_now
            job = None if batch is None else batch.job_id
            if item.status is DeliveryStatus.retrying:
                delay = self.policy.next_delay(
                    failures=item.failures,
                    error_class=item.error_class,
                    retry_after=item.retry_after,
                    not_before=item.not_before,
                    now=now,
                )
                if delay is None:
                    item.status = DeliveryStatus.failed
                    item.error_reason = f"gave up after {item.failures} failed attempts: " + (
                        item.error_reason or ""
                    )
                else:
                    available_at = bulk.stamp(item.not_before or now + timedelta(seconds=delay))
                    # Grouped by whole seconds, rounded up: a job never arrives before its rows.
                    group = max(1, math.ceil(delay))
                    out.retry_groups[group].append(item.delivery_id)
                    if batch is not None:
                        # Each group is a new batch (one job id), queued after the commit.
                        job = out.retry_jobs.get(group)
                        if job is None:
                            job = out.retry_jobs[group] = jobs.new_batch_id()
            status = item.status
            out.report.count(status)
            sent = status is DeliveryStatus.sent
            reason = (item.error_reason or None) and item.error_reason[:2000]
            attempts = item.attempts + len(item.tries)
            if batch is None:
                out.updates.append(
                    (
                        item.delivery_id,
                        status.value,
                        attempts,
                        item.failures,
                        item.locale,
                        item.provider_message_id,
                        item.error_class,
                        reason,
                        available_at,
                        stamp_now if sent else None,
                    )
                )
            else:
                out.inserts.append(
                    (
                        item.delivery_id,
                        run_id,
                        campaign_id,
                        item.recipient_id,
                        item.channel,
                        status.value,
                        job,
                        available_at,
                        attempts,
                        item.failures,
                        False,
                        item.locale,
                        item.provider_message_id,
                        item.error_class,
                        reason,
                        created,
                        stamp_now,
                        stamp_now if sent else None,
                        period,
                    )
                )
            out.stated.append(
                (
                    item.delivery_id,
                    run_id,
                    campaign_id,
                    item.recipient_id,
                    item.channel,
                    status.value,
                    attempts,
                    item.failures,
                    item.locale,
                    item.provider_message_id,
                    item.error_class,
                    reason,
                    now if sent else None,
                )
            )
            if item.tries:
                self._attempts(out, item, bulk, period)
            if item.address_dead:
                out.dead.append(
                    {
                        "b_recipient": item.recipient_id,
                        "b_channel": item.channel,
                        "b_at": now,
                        "b_reason": (item.error_reason or "")[:200],
                    }
                )
        return out

    @staticmethod
    def _attempts(out: Outcomes, item: Work, bulk: BulkWrites, period: int) -> None:
        for index, t in enumerate(item.tries):
            # The first try of a row taken back from a dead worker may repeat its send.
            duplicate = item.reclaimed and index == 0
            reply = t.provider_reply and t.provider_reply[:2000]
            started, started_text = bulk.stamps(t.started_at)
            out.tries.append(
                (
                    item.delivery_id,
                    t.number,
                    started,
                    t.duration_ms,
                    t.outcome.value,
                    t.error_class,
                    t.provider_code,
                    reply,
                    t.provider_message_id,
                    item.locale,
                    duplicate,
                    WORKER_NAME,
                    period,
                )
            )
            out.audited.append(
                (
                    item.delivery_id,
                    t.number,
                    started_text,
                    t.duration_ms,
                    t.outcome.value,
                    t.error_class,
                    t.provider_code,
                    reply,
                    t.provider_message_id,
                    item.locale,
                    duplicate,
                    WORKER_NAME,
                )
            )

    def _write(
        self,
        connection: Connection,
        out: Outcomes,
        *,
        now: datetime,
        lease_until: datetime,
        period: int,
    ) -> int:
        """The deliveries, their attempts and the dead addresses; returns the deliveries
        written (fewer than prepared when something else closed some of them meanwhile)."""
        bulk = self._bulk_writes()
        written = bulk.update_deliveries(
            connection, out.updates, updated_at=now, lease_until=lease_until, period=period
        )
        bulk.insert_attempts(connection, out.tries)
        self._write_dead(connection, out)
        return written

    @staticmethod
    def _write_dead(connection: Connection, out: Outcomes) -> None:
        if out.dead:
            connection.execute(
                update(addresses_t)
                .where(
                    addresses_t.c.recipient_id == bindparam("b_recipient"),
                    addresses_t.c.channel == bindparam("b_channel"),
                )
                .values(dead_at=bindparam("b_at"), dead_reason=bindparam("b_reason")),
                out.dead,
            )

    def _queue_retries(
        self, session: Session, groups: dict[int, list[int]], campaign: Campaign, run: Run
    ) -> None:
        """The rows to retry, in one new batch per delay, each queued after the commit."""
        connection = session.connection()
        for delay, ids in groups.items():
            batch_id = jobs.new_batch_id()
            connection.execute(
                update(deliveries_t).where(deliveries_t.c.id.in_(ids)).values(batch_id=batch_id)
            )
            jobs.enqueue_after_commit(
                session,
                jobs.send_batch(
                    run_id=run.id,
                    ids=ids,
                    batch_id=batch_id,
                    priority=campaign.priority,
                    settings=self.settings,
                    delay=delay,
                ),
            )

    def close_run_if_done(self, run_id: int) -> None:
        """Close the run when nothing of it is open any more. Checked after the record
        commits, so that the batch that closes the last rows always sees them closed; the
        write (and the lock it takes) happens only then."""
        d = deliveries_t.c
        # One statement (one round trip after every batch): the run's state, and whether it
        # has an open batch or an open row (each found through its partial index).
        open_batch_of_run = batches.open_in_run(run_id)
        open_row_of_run = exists().where(d.run_id == run_id, open_delivery(d.status))
        with self.db.reading() as session:
            state = session.execute(
                select(
                    runs_t.c.status,
                    runs_t.c.planned_at,
                    open_batch_of_run.label("open_batch"),
                    open_row_of_run.label("open_row"),
                ).where(runs_t.c.id == run_id)
            ).first()
        if state is None or state[0] != RunStatus.running or state[1] is None:
            return
        if state[2] or state[3]:
            return
        with self.turns.transaction() as session:
            run = session.get(Run, run_id)
            if run is not None:
                planner.complete_if_done(session=session, run=run)

    def lease_state(self, run_id: int, lease_until: datetime) -> LeaseState:
        with self.db.reading() as session:
            return leases.state(session, run_id=run_id, lease_until=lease_until)
