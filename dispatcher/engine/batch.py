"""A batch, top to bottom: claim, render, send, record (the worker actor's whole job).

1. **Claim** the batch (its batch row, or its rows) and its lease
   (:mod:`dispatcher.engine.claim`); a thread of the process renews the lease while the batch
   is worked on (:mod:`dispatcher.engine.leases`).
2. **Render** each message from the run's frozen template version (:mod:`.render`).
3. **Send** them concurrently on the process's event loop through the channel adapters, with
   quick in-call retries for blips (:mod:`.send`).
4. **Record** every outcome in one transaction, retries queued once it commits, the lease
   ended in the same transaction (a batch row's deliveries inserted there, once, with their
   outcomes); a batch whose lease was taken over writes nothing
   (:mod:`.record`). A database outage does not lose the outcomes: the record is tried again,
   the lease renewed meanwhile, until the database answers.

Between its first send and the commit of its record a batch is in the *crash window*: killed
there, its worker leaves messages that went out but are not written, and the batch is sent
again (flagged ``possible_duplicate``) once the sweeper has seen its lease go unrenewed for a
whole lease. A process lets one batch at a time per queue into that window (its *send gate*);
its other threads claim and render the next batches meanwhile. So a ``kill -9`` re-sends at
most one batch per queue the process serves, however many threads it runs. A live worker's
batch is never taken over, however long it waits for the database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import datetime

import structlog
from sqlalchemy.exc import InterfaceError, OperationalError

from channels.pool import AdapterPool
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine import jobs, leases, ratelimit
from dispatcher.engine.accounts import AccountResolver
from dispatcher.engine.adapters import adapter_pool
from dispatcher.engine.backends import Backends
from dispatcher.engine.bulk import write_turns
from dispatcher.engine.claim import Claim, ClaimedBatch, Claims, LeaseStampTaken, lease_stamp
from dispatcher.engine.leases import LeaseLost, LeaseState
from dispatcher.engine.loop import LoopThread
from dispatcher.engine.record import Recorder
from dispatcher.engine.render import render
from dispatcher.engine.retry import RetryPolicy
from dispatcher.engine.send import Sender
from dispatcher.engine.work import BatchReport, Work
from dispatcher.kit.clock import utcnow
from dispatcher.tables.campaigns import Campaign, Run
from dispatcher.tables.deliveries import Outcome

log = structlog.get_logger(__name__)

# Claims made again when another process's claim of the run took the same lease stamp.
LEASE_STAMP_TRIES = 5

# A batch queued again waits this much longer than asked: never before its rows are due.
REQUEUE_MARGIN = 0.05


class BatchProcessor:
    """Everything a worker process needs to process batches, built once per process."""

    def __init__(
        self,
        *,
        db: Database,
        settings: Settings,
        queue: Backends,
        loop: LoopThread,
        adapters: AdapterPool | None = None,
        policy: RetryPolicy | None = None,
        limiter: ratelimit.Limiter | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.queue = queue
        self.loop = loop
        self.adapters = adapters or adapter_pool(settings, db)
        self.policy = policy or RetryPolicy.from_settings(settings)
        self.limiter = limiter or queue.limiter
        self.turns = write_turns(db)
        self.accounts = AccountResolver(db, settings)
        # The send gates (see the module's note), one per queue: urgent and bulk.
        self._gates = {True: threading.Lock(), False: threading.Lock()}
        # Renews the leases of the batches this process is working on.
        self.heartbeat = leases.Heartbeat(
            interval=leases.heartbeat_seconds(settings),
            transaction=lambda: self.turns.transaction(first=True),
        )
        self.claims = Claims(db=db, settings=settings, turns=self.turns, heartbeat=self.heartbeat)
        self.sender = Sender(
            settings=settings, adapters=self.adapters, policy=self.policy, limiter=self.limiter
        )
        self.recorder = Recorder(db=db, settings=settings, turns=self.turns, policy=self.policy)

    def process(
        self,
        run_id: int,
        delivery_ids: Sequence[int],
        batch_id: str | None,
        *,
        urgent: bool = False,
    ) -> BatchReport:
        """Claim, render, send and record one batch (the worker actor's whole job).

        An ``urgent`` batch (from the urgent queue) writes ahead of bulk batches on SQLite.
        """
        # Half the lease is left for sending and recording: a batch that waited longer at the
        # gate gives its rows back. Timed on this process's own clock, from the claim: a
        # lease stamp may lie ahead of the wall clock (stamps only grow, across a clock step).
        gate_deadline = time.monotonic() + self.settings.lease_seconds / 2
        token = leases.new_token()
        for tries_left in range(LEASE_STAMP_TRIES - 1, -1, -1):
            lease_until = lease_stamp(self.settings.lease_seconds)
            try:
                claim = self._claim(
                    run_id, delivery_ids, batch_id, lease_until, token=token, urgent=urgent
                )
                break
            except LeaseStampTaken:
                # Another process stamped a claim of this run in the same microsecond; this
                # process's next stamp is later.
                if not tries_left:
                    raise
                log.info("lease_stamp_taken", run_id=run_id, batch_id=batch_id)
        try:
            return self._process_claimed(
                claim, run_id, delivery_ids, batch_id, lease_until, urgent, gate_deadline
            )
        finally:
            # This process works on the batch no more. A lease still held (an error after
            # the sends) is no longer renewed: the sweeper takes its rows back once it lapses.
            self.heartbeat.drop(token)

    def _process_claimed(
        self,
        claim: Claim,
        run_id: int,
        delivery_ids: Sequence[int],
        batch_id: str | None,
        lease_until: datetime,
        urgent: bool,
        gate_deadline: float,
    ) -> BatchReport:
        campaign, run, work = claim.campaign, claim.run, claim.work
        if not work or campaign is None or run is None:
            if claim.due is not None and campaign is not None:
                wait = max(0.0, (claim.due - utcnow()).total_seconds())
                self._requeue(run_id, delivery_ids, batch_id, campaign, wait)
            elif batch_id:
                self.queue.markers.delete(batch_id)
            return BatchReport()
        try:
            self._render(claim)
            self.accounts.assign(work, campaign.unit_id)
        except BaseException:
            self.claims.release(run_id, work, lease_until, claim.batch)
            raise
        gate = self._gates[urgent]
        # A batch held up at the gate (behind batches slowed by rate limits) past its deadline
        # gives its rows back unsent.
        if not gate.acquire(timeout=max(0.0, gate_deadline - time.monotonic())):
            log.warning("send_gate_timeout", run_id=run_id, batch_id=batch_id, rows=len(work))
            self.claims.release(run_id, work, lease_until, claim.batch)
            self._requeue(run_id, delivery_ids, batch_id, campaign)
            return BatchReport()
        try:
            if self._lease_state_through_outage(run.id, lease_until) is not LeaseState.held:
                # Taken over while this process was held up (starved for a whole lease):
                # the new holder sends them; nothing was sent here.
                return self._lost(work, run, lease_until)
            try:
                self.loop.run(self._send_all(work))
            except BaseException:
                if not any(w.tries for w in work):
                    self.claims.release(run_id, work, lease_until, claim.batch)
                raise
            self.accounts.keep_dead(work)
            report = self._record_through_outage(work, campaign, run, lease_until, claim.batch)
        finally:
            gate.release()
        if batch_id:
            self.queue.markers.delete(batch_id)
        log.info(
            "batch_done",
            run_id=run_id,
            campaign_id=campaign.id,
            claimed=report.claimed,
            sent=report.sent,
            failed=report.failed,
            retrying=report.retrying,
            skipped=report.skipped,
            lost=report.lost,
        )
        return report

    # One method per step, so that a step can be watched or held up on its own.

    def _claim(
        self,
        run_id: int,
        delivery_ids: Sequence[int],
        batch_id: str | None,
        lease_until: datetime,
        *,
        token: str,
        urgent: bool = False,
    ) -> Claim:
        return self.claims.take(
            run_id, delivery_ids, batch_id, lease_until, token=token, urgent=urgent
        )

    def _render(self, claim: Claim) -> None:
        render(claim, settings=self.settings, signing_key=self.claims.signing_key)

    async def _send_all(self, work: list[Work]) -> None:
        await self.sender.send_all(work)

    def _record(
        self,
        work: list[Work],
        campaign: Campaign,
        run: Run,
        lease_until: datetime,
        batch: ClaimedBatch | None = None,
    ) -> BatchReport:
        return self.recorder.record(work, campaign, run, lease_until, batch)

    def _record_through_outage(
        self,
        work: list[Work],
        campaign: Campaign,
        run: Run,
        lease_until: datetime,
        batch: ClaimedBatch | None = None,
    ) -> BatchReport:
        """:meth:`_record`, tried again while the database cannot be reached (a restart, a
        failover), however long that lasts. The sends have happened: given up, their outcomes
        would be lost and every row sent again. The lease is renewed meanwhile, so nobody takes
        the rows over; once the database answers, the record is written if the lease is still
        ours and not yet ended (a commit whose answer was lost is not written twice)."""
        while True:
            try:
                return self._record(work, campaign, run, lease_until, batch)
            except LeaseLost:
                return self._lost(work, run, lease_until)
            except (OperationalError, InterfaceError) as exc:
                log.warning("record_failed", run_id=run.id, error=str(exc)[:300])
            lease = self._lease_state_through_outage(run.id, lease_until, wait_first=True)
            if lease is LeaseState.ended:
                # The commit went through; only its answer was lost.
                report = BatchReport(claimed=len(work))
                for item in work:
                    report.count(item.status)
                return report
            if lease is LeaseState.lost:
                return self._lost(work, run, lease_until)

    def _lease_state_through_outage(
        self, run_id: int, lease_until: datetime, *, wait_first: bool = False
    ) -> LeaseState:
        """The lease's state, once the database answers (the heartbeat renews it meanwhile)."""
        delay = 0.5
        while True:
            if wait_first:
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
            try:
                return self.recorder.lease_state(run_id, lease_until)
            except (OperationalError, InterfaceError) as exc:
                log.warning("database_unreachable", run_id=run_id, error=str(exc)[:300])
            wait_first = True

    def _lost(self, work: list[Work], run: Run, lease_until: datetime) -> BatchReport:
        """The lease was taken over before our record: nothing of ours is written. The rows
        are flagged, so the new holder's send of any we had sent is audited as a possible
        duplicate."""
        sent = sum(1 for w in work if any(t.outcome is Outcome.sent for t in w.tries))
        log.warning(
            "lease_lost",
            run_id=run.id,
            lease_until=lease_until.isoformat(),
            rows=len(work),
            sent_unrecorded=sent,
        )
        return BatchReport(claimed=len(work), lost=len(work))

    def _requeue(
        self,
        run_id: int,
        delivery_ids: Sequence[int],
        batch_id: str | None,
        campaign: Campaign,
        wait: float = 0.0,
    ) -> None:
        """Queue the same batch again, ``wait`` seconds from now (and a little more: never
        before its rows are due)."""
        self.queue.enqueue(
            [
                jobs.send_batch(
                    run_id=run_id,
                    ids=delivery_ids,
                    batch_id=batch_id,
                    priority=campaign.priority,
                    settings=self.settings,
                    delay=wait + REQUEUE_MARGIN,
                )
            ]
        )
