"""Process one batch of deliveries: claim, render, send concurrently, record in bulk.

1. **Claim** the batch's rows with one conditional UPDATE: only rows still pending/retrying
   and due (rows another worker holds are never taken here). Rows of a paused or cancelled run
   are left alone. The claim writes a *lease* in the same transaction, which a thread of the
   process renews while the batch is worked on (:mod:`dispatcher.engine.leases`).
2. **Render** each message from the run's frozen template version (compiled once, cached).
3. **Send** them concurrently on the process's event loop through the channel adapters, with
   quick in-call retries for blips.
4. **Record** every outcome in one transaction: the deliveries' new states (executemany), one
   attempts row per try, dead addresses; rows to retry get a new delayed batch job, queued
   only once that transaction commits. The same transaction ends the lease; a batch whose
   lease was taken over writes nothing.

Between its first send and the commit of its record a batch is in the *crash window*: killed
there, its worker leaves messages that went out but are not written, and the batch is sent
again (flagged ``possible_duplicate``) once the sweeper has seen its lease go unrenewed for a
whole lease. A process lets one batch at a time per queue into that window (its *send gate*);
its other threads claim and render the next batches meanwhile. So a ``kill -9`` re-sends at
most one batch per queue the process serves, however many threads it runs. A live worker's
batch is never taken over, however long it waits for the database.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import ColumnElement, Table, and_, bindparam, func, select, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from channels import registry
from channels.base import (
    Adapter,
    AdapterContext,
    AuthError,
    Category,
    DeliveryError,
    Message,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from channels.pool import AdapterPool
from dispatcher import audit
from dispatcher.campaigns.launching import queue_for
from dispatcher.consent import service as consent
from dispatcher.content import service as content
from dispatcher.content.render import (
    TemplateProblem,
    VariantData,
    choose_variant,
    renderer,
)
from dispatcher.core import secrets
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine import leases, ratelimit
from dispatcher.engine.bulk import BulkWrites, write_turns
from dispatcher.engine.channel_state import DatabaseState
from dispatcher.engine.jobs import (
    SEND_BATCH,
    Job,
    JobQueue,
    MemoryMarkers,
    actor_name,
    enqueue_after_commit,
    new_batch_id,
)
from dispatcher.engine.leases import LeaseLost, LeaseState
from dispatcher.engine.loop import LoopThread
from dispatcher.engine.planner import Rows, complete_if_done, enqueue_batch
from dispatcher.engine.retry import RetryPolicy
from dispatcher.inbox.stores import DatabaseDevices, DatabaseInbox
from dispatcher.kit.clock import utcnow
from dispatcher.observability.metrics import (
    AUTH_FAILURES,
    CHANNEL_PAUSES,
    DELIVERY_OUTCOMES,
    RATE_LIMIT_WAIT_SECONDS,
    SEND_SECONDS,
    record_outcomes,
)
from dispatcher.scheduling import windows
from dispatcher.scheduling.rules import calendar_variables
from dispatcher.tables.campaigns import Campaign, Run
from dispatcher.tables.deliveries import (
    CLAIMABLE_STATUSES,
    OPEN_STATUSES,
    Delivery,
    DeliveryStatus,
    Outcome,
)
from dispatcher.tables.recipients import Address, Recipient

log = structlog.get_logger(__name__)

WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"
# Retries for these wait as asked and do not count against the delivery's attempt budget.
NO_BUDGET = ("rate_limited", "auth", "deferred", "send_window")
MAX_RATE_ROUNDS = 5
ACTIVE_RUN = ("planning", "running")
# What a template may see of a recipient, in the order the claim reads them.
PERSON_FIELDS = (
    "external_id",
    "full_name",
    "kind",
    "province",
    "birth_date",
    "language",
    "attributes",
)
deliveries_t: Table = Delivery.__table__  # type: ignore[assignment]
runs_t: Table = Run.__table__  # type: ignore[assignment]
recipients_t: Table = Recipient.__table__  # type: ignore[assignment]
addresses_t: Table = Address.__table__  # type: ignore[assignment]

_stamps = threading.Lock()
_last_stamp: datetime | None = None


def lease_stamp(seconds: float) -> datetime:
    """A claim's ``lease_until``: ``seconds`` from now, later than any other this process made
    (it identifies the claim among its run's, so two claims never share one)."""
    global _last_stamp
    with _stamps:
        stamp = utcnow() + timedelta(seconds=seconds)
        if _last_stamp is not None and stamp <= _last_stamp:
            stamp = _last_stamp + timedelta(microseconds=1)
        _last_stamp = stamp
        return stamp


@dataclass(slots=True)
class AttemptRecord:
    number: int
    started_at: datetime
    duration_ms: int
    outcome: Outcome
    error_class: str | None = None
    provider_code: str | None = None
    provider_reply: str | None = None
    provider_message_id: str | None = None


@dataclass(slots=True)
class Work:
    """A claimed delivery on its way through the batch."""

    delivery_id: int
    recipient_id: int
    channel: str
    attempts: int
    failures: int
    reclaimed: bool
    message: Message | None = None
    locale: str | None = None
    # The result, filled in as the batch goes.
    status: DeliveryStatus = DeliveryStatus.failed
    tries: list[AttemptRecord] = field(default_factory=list)
    provider_message_id: str | None = None
    error_class: str | None = None
    error_reason: str | None = None
    retry_after: float | None = None
    # An exact instant to wait for (a send window's opening), rather than a delay.
    not_before: datetime | None = None
    address_dead: bool = False


@dataclass(slots=True)
class Claim:
    """What a claim took, with what rendering it needs."""

    work: list[Work] = field(default_factory=list)
    campaign: Campaign | None = None
    run: Run | None = None
    people: dict[int, dict[str, Any]] = field(default_factory=dict)
    # Each claimed row's live address on its channel, by delivery id.
    addresses: dict[int, str] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    variants: dict[tuple[str, str], VariantData] = field(default_factory=dict)
    # Set when nothing was claimable yet: when the earliest row of the batch falls due.
    due: datetime | None = None


@dataclass(slots=True)
class BatchReport:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    skipped: int = 0
    # Rows whose lease was taken over before their outcomes were written: nothing was written.
    lost: int = 0

    def count(self, status: DeliveryStatus) -> None:
        name = status.value if status.value in ("sent", "retrying", "skipped") else "failed"
        setattr(self, name, getattr(self, name) + 1)


class BatchProcessor:
    """Everything a worker process needs to process batches, built once per process."""

    def __init__(
        self,
        *,
        db: Database,
        settings: Settings,
        queue: JobQueue,
        loop: LoopThread,
        adapters: AdapterPool | None = None,
        policy: RetryPolicy | None = None,
        limiter: ratelimit.Limiter | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.queue = queue
        self.loop = loop
        self.adapters = adapters or AdapterPool(
            settings,
            AdapterContext(
                state=DatabaseState(db),
                now=utcnow,
                services={"vssid.inbox": DatabaseInbox(db), "vssid.devices": DatabaseDevices(db)},
            ),
        )
        self.policy = policy or RetryPolicy.from_settings(settings)
        self.limiter: ratelimit.Limiter = limiter or (
            ratelimit.MemoryLimiter()
            if isinstance(queue.markers, MemoryMarkers)
            else ratelimit.RedisLimiter(settings.redis_url, settings.redis_namespace)
        )
        self._signing_key: bytes | None = None
        self.turns = write_turns(db)
        self._bulk: BulkWrites | None = None
        # The send gates (see the module's note), one per queue: urgent and bulk.
        self._gates = {True: threading.Lock(), False: threading.Lock()}
        # The labelled children of the per-send metrics, by channel.
        self._sent_metrics: dict[str, tuple[Any, Any]] = {}
        # Renews the leases of the batches this process is working on.
        self.heartbeat = leases.Heartbeat(
            interval=leases.heartbeat_seconds(settings),
            transaction=lambda: self.turns.transaction(first=True),
        )

    # -- 1. claim ---------------------------------------------------------------------------

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
        """Take the batch's claimable rows, then read what rendering them needs.

        The write transaction holds only the conditional UPDATE and the lease (on SQLite the
        writers take turns, and hold the lock for as little as possible). The rows it took are
        then read, with their recipients and addresses, as the rows of this batch that are
        claimed until exactly our ``lease_until``: the same test the record makes before it
        writes. From its commit on, the heartbeat renews the lease ``token``.
        """
        now = utcnow()
        d = deliveries_t.c
        # Rows carry the id of the batch meant to claim them (the planner, a retry or the
        # sweeper set it), so the indexed batch id picks them, not a list of 500 ids. The run
        # and the status are compared as expressions (``run_id + 0``, ``status || ''``) so that
        # no database walks the run's or the status's index instead: with a million rows
        # pending, SQLite took the run's index and PostgreSQL ANDed the batch's index with a
        # scan of every pending row's entry in the status index.
        # Claimed rows are never taken here, however old their lease: only the sweeper takes
        # rows back, from a holder it has seen stop renewing (dispatcher.engine.leases).
        claimable = (d.status + "").in_([s.value for s in CLAIMABLE_STATUSES])
        which = d.batch_id == batch_id if batch_id else d.id.in_(list(delivery_ids))
        active = (
            select(runs_t.c.id)
            .where(runs_t.c.id == run_id, runs_t.c.status.in_(ACTIVE_RUN))
            .exists()
        )
        claim_rows = (
            update(deliveries_t)
            .where(which, (d.run_id + 0) == run_id, d.available_at <= now, claimable, active)
            .values(status=DeliveryStatus.claimed.value, lease_until=lease_until, updated_at=now)
        )
        with self.turns.transaction(first=urgent) as session:
            connection = session.connection()
            claimed = connection.execute(claim_rows).rowcount
            if claimed:
                leases.take(
                    connection,
                    token=token,
                    run_id=run_id,
                    lease_until=lease_until,
                    batch_id=batch_id,
                    worker=WORKER_NAME,
                    now=now,
                )
                if self._signing_key is None:
                    self._signing_key = secrets.signing_key(session, self.settings)
        if claimed:
            self.heartbeat.hold(token)
        try:
            return self._read_claim(run_id, delivery_ids, which, lease_until, claimed, now)
        except BaseException:
            if claimed:
                # Nothing was sent: give the rows back now rather than when the lease lapses.
                self._unclaim(run_id, which, lease_until)
                self.heartbeat.drop(token)
            raise

    def _read_claim(
        self,
        run_id: int,
        delivery_ids: Sequence[int],
        which: ColumnElement[bool],
        lease_until: datetime,
        claimed: int,
        now: datetime,
    ) -> Claim:
        d = deliveries_t.c
        with self.db.reading() as session:
            run = session.get(Run, run_id)
            if run is None or (not claimed and run.status not in ACTIVE_RUN):
                return Claim(run=run)
            campaign = session.get(Campaign, run.campaign_id)
            assert campaign is not None
            claim = Claim(campaign=campaign, run=run)
            if not claimed:
                # A job that arrives before its rows are due (clock skew between hosts, an
                # early broker) is put back for when they are, rather than dropped.
                claim.due = session.scalar(
                    select(func.min(d.available_at)).where(
                        d.id.in_(list(delivery_ids)),
                        d.status.in_([s.value for s in CLAIMABLE_STATUSES]),
                        d.available_at > now,
                    )
                )
                return claim
            self._read_claimed(session, claim, which, lease_until)
            version_id = run.template_version_id or campaign.template_version_id
            assert version_id is not None, f"run {run.id} has no template version"
            claim.defaults, claim.variants = content.versions.get(session, version_id)
        return claim

    def _unclaim(self, run_id: int, which: ColumnElement[bool], lease_until: datetime) -> None:
        d = deliveries_t.c
        try:
            with self.turns.transaction() as session:
                if not leases.end(session.connection(), run_id=run_id, lease_until=lease_until):
                    return  # taken over meanwhile: the rows are not ours to give back
                session.connection().execute(
                    update(deliveries_t)
                    .where(
                        which,
                        d.status == DeliveryStatus.claimed.value,
                        d.lease_until == lease_until,
                    )
                    .values(status=DeliveryStatus.pending.value, lease_until=None)
                )
        except Exception:
            log.exception("unclaim_failed")

    @staticmethod
    def _read_claimed(
        session: Session, claim: Claim, which: ColumnElement[bool], lease_until: datetime
    ) -> None:
        """Our claimed rows, each with its recipient and its live address on its channel."""
        d, r, a = deliveries_t.c, recipients_t.c, addresses_t.c
        people, addresses, work = claim.people, claim.addresses, claim.work
        query = (
            select(
                d.id,
                d.recipient_id,
                d.channel,
                d.attempts,
                d.failures,
                d.reclaimed,
                r.external_id,
                r.full_name,
                r.kind,
                r.province,
                r.birth_date,
                r.language,
                r.attributes,
                a.value,
            )
            .select_from(
                deliveries_t.outerjoin(recipients_t, r.id == d.recipient_id).outerjoin(
                    addresses_t,
                    and_(
                        a.recipient_id == d.recipient_id,
                        a.channel == d.channel,
                        a.dead_at.is_(None),
                    ),
                )
            )
            # ``+ ''`` keeps SQLite on the batch's index rather than the status index.
            .where(
                which, (d.status + "") == DeliveryStatus.claimed.value, d.lease_until == lease_until
            )
            .order_by(d.id)
        )
        for row in session.connection().execute(query).all():
            delivery_id, recipient_id = row[0], row[1]
            work.append(Work(delivery_id, recipient_id, row[2], row[3], row[4], bool(row[5])))
            if recipient_id not in people and row[6] is not None:
                people[recipient_id] = dict(zip(PERSON_FIELDS, row[6:13], strict=True))
            if row[13] is not None:
                addresses[delivery_id] = row[13]

    # -- 2. render --------------------------------------------------------------------------

    def _render(self, claim: Claim) -> None:
        campaign, run, people = claim.campaign, claim.run, claim.people
        defaults, variants, addresses = claim.defaults, claim.variants, claim.addresses
        assert campaign is not None and run is not None
        kind = Category(campaign.kind)
        variables = {
            **calendar_variables(run.scheduled_for),
            **(campaign.variables or {}),
            **(run.variables or {}),
        }
        unsubscribe_base = f"{self.settings.public_url}/u/"
        signing_key = self._signing_key
        transactional = kind is Category.transactional
        chosen: dict[tuple[str, str | None], VariantData | None] = {}
        views: dict[tuple[int, str], Any] = {}
        for item in claim.work:
            person = people.get(item.recipient_id)
            address = addresses.get(item.delivery_id)
            if person is None or address is None:
                item.status = DeliveryStatus.skipped
                item.error_class = "no_address"
                item.error_reason = f"no live {item.channel} address"
                continue
            language = person["language"]
            key = (item.channel, language)
            if key in chosen:
                variant = chosen[key]
            else:
                variant = chosen[key] = choose_variant(variants, item.channel, language)
            if variant is None:
                item.status = DeliveryStatus.failed
                item.error_class = "template"
                item.error_reason = f"no variant for {item.channel}"
                continue
            item.locale = locale = variant.locale
            view = views.get((item.recipient_id, locale))
            if view is None:
                view = views[(item.recipient_id, locale)] = content.recipient_view(person, locale)
            unsubscribe = None
            if not transactional:
                assert signing_key is not None
                token = consent.token_for(
                    signing_key,
                    recipient_id=item.recipient_id,
                    channel=item.channel,
                    kind=kind.value,
                )
                unsubscribe = unsubscribe_base + token
            context = content.build_context(
                view,
                defaults=defaults,
                variables=variables,
                channel=item.channel,
                locale=locale,
                unsubscribe_url=unsubscribe,
            )
            try:
                rendered = renderer.render(variant, context)
            except TemplateProblem as problem:
                item.status = DeliveryStatus.failed
                item.error_class = "template"
                item.error_reason = str(problem)
                continue
            item.message = Message(
                delivery_id=item.delivery_id,
                address=address,
                body=rendered.body,
                kind=kind,
                subject=rendered.subject,
                html=rendered.html,
                locale=locale,
                unsubscribe_url=unsubscribe,
                campaign_id=campaign.id,
                recipient=person["external_id"],
            )

    # -- 3. send ----------------------------------------------------------------------------

    async def _send_one(self, item: Work) -> None:
        assert item.message is not None
        channel = item.channel
        now = utcnow()
        opening = windows.next_open(
            now, item.message.kind.value, channel, self.settings.send_windows
        )
        if opening is not None:
            # The window closed while the batch was on its way: wait for the morning.
            item.status = DeliveryStatus.retrying
            item.error_class = "send_window"
            item.error_reason = f"outside the send window; opens {opening.isoformat()}"
            item.not_before = opening
            return
        try:
            rules = registry.get(channel).rate_limits
        except registry.UnknownChannel as exc:
            # The campaign named a plugin that is no longer installed.
            item.status = DeliveryStatus.failed
            item.error_class, item.error_reason = "permanent", str(exc)
            return
        limits = ratelimit.limits_for(
            channel, item.message.address, rules, self.settings.rate_limits
        )
        for _ in range(MAX_RATE_ROUNDS):
            try:
                await self._send_round(item, limits)
                return
            except ratelimit.Deferred as deferred:
                # Nothing was sent: no attempt to record, no budget spent.
                item.status = DeliveryStatus.retrying
                item.error_class = "deferred"
                item.error_reason = f"{channel} paused; waiting {deferred.seconds:.0f}s"
                item.retry_after = deferred.seconds
                return
            except RateLimitedError as exc:
                wait = exc.retry_after if exc.retry_after is not None else 1.0
                self._note_failure(item, exc)
                item.status = DeliveryStatus.retrying
                if exc.scope == "channel" and await self.limiter.pause(channel, wait):
                    CHANNEL_PAUSES.labels(channel, "rate_limited").inc()
                    log.warning("channel_paused", channel=channel, seconds=wait)
                if exc.scope != "channel" or wait > self.settings.rate_wait_seconds:
                    item.retry_after = wait
                    return
                # A short pause: wait it out in the batch and try again.
            except AuthError as exc:
                self._note_failure(item, exc)
                item.status = DeliveryStatus.retrying
                item.retry_after = self.settings.auth_pause_seconds
                if await self.limiter.pause(channel, self.settings.auth_pause_seconds):
                    # Loud once per pause, not once per delivery.
                    AUTH_FAILURES.labels(channel).inc()
                    CHANNEL_PAUSES.labels(channel, "auth").inc()
                    log.error(
                        "channel_auth_failed",
                        channel=channel,
                        reason=exc.reason,
                        paused_seconds=self.settings.auth_pause_seconds,
                    )
                return
            except PermanentError as exc:
                self._note_failure(item, exc)
                item.status = DeliveryStatus.failed
                item.address_dead = exc.address_dead
                return
            except TransientError as exc:
                self._note_failure(item, exc)
                item.status = DeliveryStatus.retrying
                return
        item.retry_after = item.retry_after or 1.0

    async def _adapter(self, channel: str) -> Adapter:
        """The open adapter; opening fails by the same classes as a send (a getMe blip is
        transient), and a channel that cannot be built at all is a permanent failure."""
        try:
            return await self.adapters.get(channel)
        except DeliveryError:
            raise
        except Exception as exc:
            log.error("adapter_unavailable", channel=channel, error=str(exc))
            raise PermanentError(f"channel {channel} unavailable: {exc}") from None

    @staticmethod
    def _note_failure(item: Work, exc: DeliveryError) -> None:
        item.error_class = exc.error_class.value
        item.error_reason = exc.reason
        item.retry_after = exc.retry_after

    async def _send_round(self, item: Work, limits: list[ratelimit.Limit]) -> None:
        """One round of tries: the first goes straight out; after a blip, the policy's quick
        retries (tenacity), each behind a rate slot like the first."""
        try:
            await self._try_once(item, limits)
            return
        except TransientError:
            retrying = self.policy.quick_after_failure(item.failures)
            if retrying is None:
                raise
        await asyncio.sleep(self.policy.first_quick_wait())
        async for attempt in retrying:
            with attempt:
                await self._try_once(item, limits)

    async def _try_once(self, item: Work, limits: list[ratelimit.Limit]) -> None:
        """One try, audited. The adapter is opened behind the rate slot: opening calls the
        provider (getMe, a token grant), and a refused credential must pause the channel before
        others pile in."""
        assert item.message is not None
        channel = item.channel
        waited = await ratelimit.acquire(
            self.limiter, channel, limits, max_wait=self.settings.rate_wait_seconds
        )
        if waited:
            RATE_LIMIT_WAIT_SECONDS.labels(channel).inc(waited)
        number = item.attempts + len(item.tries) + 1
        started = utcnow()
        t0 = time.perf_counter()
        try:
            # Opening counts as part of the try: a refused token at getMe is audited.
            adapter = await self._adapter(channel)
            result = await adapter.send(item.message)
        except DeliveryError as exc:
            item.tries.append(_failed_try(number, started, t0, exc))
            DELIVERY_OUTCOMES.labels(channel, exc.error_class.value).inc()
            if isinstance(exc, TransientError):
                item.failures += 1
            raise
        except Exception as exc:
            # An adapter bug is not the citizen's fault: treat it as a blip.
            log.exception("adapter_crashed", channel=channel)
            error = TransientError(f"adapter error: {exc!r}")
            item.tries.append(_failed_try(number, started, t0, error))
            item.failures += 1
            raise error from None
        elapsed = time.perf_counter() - t0
        metrics = self._sent_metrics.get(channel)
        if metrics is None:
            metrics = self._sent_metrics[channel] = (
                SEND_SECONDS.labels(channel),
                DELIVERY_OUTCOMES.labels(channel, "sent"),
            )
        metrics[0].observe(elapsed)
        metrics[1].inc()
        item.tries.append(
            AttemptRecord(
                number=number,
                started_at=started,
                duration_ms=int(elapsed * 1000),
                outcome=Outcome.sent,
                provider_code=result.provider_code,
                provider_reply=result.provider_reply,
                provider_message_id=result.provider_message_id,
            )
        )
        item.status = DeliveryStatus.sent
        item.provider_message_id = result.provider_message_id
        item.error_class = item.error_reason = None

    async def _send_all(self, work: list[Work]) -> None:
        ready = [w for w in work if w.message]
        # Once per batch and channel: is it paused? (Rate-limited channels ask per send.)
        for channel in {w.channel for w in ready}:
            await self.limiter.refresh(channel)
        # At most send_concurrency sends in flight: that many senders share one queue of
        # messages (no task, no semaphore per message).
        queue = iter(ready)

        async def sender() -> None:
            for item in queue:
                structlog.contextvars.bind_contextvars(delivery_id=item.delivery_id)
                await self._send_one(item)

        senders = min(self.settings.send_concurrency, len(ready))
        await asyncio.gather(*(sender() for _ in range(senders)))

    # -- 4. record --------------------------------------------------------------------------

    def _bulk_writes(self) -> BulkWrites:
        if self._bulk is None:
            self._bulk = BulkWrites(self.db.engine.dialect)
        return self._bulk

    def _record(
        self,
        work: list[Work],
        campaign: Campaign,
        run: Run,
        lease_until: datetime,
    ) -> BatchReport:
        """Write every outcome in one short transaction; the rows and their values are all
        prepared before it begins."""
        now = utcnow()
        bulk = self._bulk_writes()
        stamp_now = bulk.stamp(now)
        report = BatchReport(claimed=len(work))
        updates: list[tuple[Any, ...]] = []
        tries: list[tuple[Any, ...]] = []
        # The attempts and the deliveries' new states as the audit chain digests them.
        audited: list[dict[str, Any]] = []
        stated: list[dict[str, Any]] = []
        dead: list[dict[str, Any]] = []
        retry_groups: dict[int, list[int]] = defaultdict(list)
        for item in work:
            available_at = stamp_now
            if item.status is DeliveryStatus.retrying:
                if item.not_before is not None:
                    delay = max(0.0, (item.not_before - now).total_seconds())
                elif item.error_class in NO_BUDGET:
                    delay = item.retry_after or self.policy.backoff(1)
                elif self.policy.exhausted(item.failures):
                    item.status = DeliveryStatus.failed
                    item.error_reason = f"gave up after {item.failures} failed attempts: " + (
                        item.error_reason or ""
                    )
                    delay = 0.0
                else:
                    delay = self.policy.backoff(item.failures)
                if item.status is DeliveryStatus.retrying:
                    available_at = bulk.stamp(item.not_before or now + timedelta(seconds=delay))
                    # Grouped by whole seconds, rounded up: a job never arrives before its rows.
                    retry_groups[max(1, math.ceil(delay))].append(item.delivery_id)
            report.count(item.status)
            sent = item.status is DeliveryStatus.sent
            reason = (item.error_reason or None) and item.error_reason[:2000]
            updates.append(
                (
                    item.delivery_id,
                    item.status.value,
                    item.attempts + len(item.tries),
                    item.failures,
                    item.locale,
                    item.provider_message_id,
                    item.error_class,
                    reason,
                    available_at,
                    stamp_now if sent else None,
                )
            )
            stated.append(
                {
                    "id": item.delivery_id,
                    "run_id": run.id,
                    "campaign_id": campaign.id,
                    "recipient_id": item.recipient_id,
                    "channel": item.channel,
                    "status": item.status.value,
                    "attempts": item.attempts + len(item.tries),
                    "failures": item.failures,
                    "locale": item.locale,
                    "provider_message_id": item.provider_message_id,
                    "error_class": item.error_class,
                    "error_reason": reason,
                    "sent_at": now if sent else None,
                }
            )
            for index, t in enumerate(item.tries):
                duplicate = item.reclaimed and index == 0
                reply = t.provider_reply and t.provider_reply[:2000]
                tries.append(
                    (
                        item.delivery_id,
                        t.number,
                        bulk.stamp(t.started_at),
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
                audited.append(
                    {
                        "delivery_id": item.delivery_id,
                        "number": t.number,
                        "started_at": t.started_at,
                        "duration_ms": t.duration_ms,
                        "outcome": t.outcome.value,
                        "error_class": t.error_class,
                        "provider_code": t.provider_code,
                        "provider_reply": reply,
                        "provider_message_id": t.provider_message_id,
                        "locale": item.locale,
                        "possible_duplicate": duplicate,
                        "worker": WORKER_NAME,
                    }
                )
            if item.address_dead:
                dead.append(
                    {
                        "b_recipient": item.recipient_id,
                        "b_channel": item.channel,
                        "b_at": now,
                        "b_reason": (item.error_reason or "")[:200],
                    }
                )
        fallback = campaign.channel_mode == "fallback" and any(
            w.status in (DeliveryStatus.failed, DeliveryStatus.skipped) for w in work
        )
        audit_entry = audit.batch_draft(
            attempts=audited, deliveries=stated, worker=WORKER_NAME, run_id=run.id
        )
        with self.turns.transaction(first=campaign.priority == "urgent") as session:
            connection = session.connection()
            # First, and in the same transaction: only a holder whose lease is still its own
            # writes anything (rolled back whole otherwise; see dispatcher.engine.leases).
            if not leases.end(connection, run_id=run.id, lease_until=lease_until):
                raise LeaseLost(f"run {run.id}: lease {lease_until.isoformat()} is not ours")
            written = bulk.update_deliveries(
                connection, updates, updated_at=now, lease_until=lease_until
            )
            bulk.insert_attempts(connection, tries)
            if dead:
                connection.execute(
                    update(addresses_t)
                    .where(
                        addresses_t.c.recipient_id == bindparam("b_recipient"),
                        addresses_t.c.channel == bindparam("b_channel"),
                    )
                    .values(dead_at=bindparam("b_at"), dead_reason=bindparam("b_reason")),
                    dead,
                )
            queue = queue_for(campaign, self.settings)
            for delay, ids in retry_groups.items():
                batch_id = new_batch_id()
                connection.execute(
                    update(deliveries_t).where(deliveries_t.c.id.in_(ids)).values(batch_id=batch_id)
                )
                enqueue_after_commit(
                    session,
                    Job(
                        actor_name(SEND_BATCH, queue),
                        queue,
                        (run.id, ids, batch_id),
                        delay_ms=delay * 1000,
                        batch_id=batch_id,
                    ),
                )
            if fallback:
                self._plan_next_hops(session, work, campaign, run)
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
        self._complete_if_done(run.id)
        return report

    def _plan_next_hops(
        self, session: Session, work: list[Work], campaign: Campaign, run: Run
    ) -> None:
        """Fallback: the next channel in the campaign's order, for every delivery that ended
        without reaching its recipient; each hop is its own delivery row."""
        fresh_run = session.get(Run, run.id)
        if fresh_run is None:
            return
        ended = [
            (w.recipient_id, w.channel)
            for w in work
            if w.status in (DeliveryStatus.failed, DeliveryStatus.skipped)
        ]
        rows = Rows(
            session=session,
            run=fresh_run,
            campaign=campaign,
            batch_id=new_batch_id(),
            settings=self.settings,
        )
        hops = rows.next_hops(ended)
        fresh_run.planned_count += len(hops)
        if hops:
            enqueue_batch(
                session=session,
                run=fresh_run,
                campaign=campaign,
                ids=hops,
                batch_id=rows.batch_id,
                settings=self.settings,
                delay=rows.wait(),
            )

    def _complete_if_done(self, run_id: int) -> None:
        """Close the run when nothing of it is open any more. Checked after the record
        commits, so that the batch that closes the last rows always sees them closed; the
        write (and the lock it takes) happens only then."""
        d = deliveries_t.c
        with self.db.reading() as session:
            state = session.execute(
                select(runs_t.c.status, runs_t.c.planned_at).where(runs_t.c.id == run_id)
            ).first()
            if state is None or state[0] != "running" or state[1] is None:
                return
            still_open = session.scalar(
                select(d.id)
                .where(
                    d.run_id == run_id,
                    d.status.in_([s.value for s in OPEN_STATUSES]),
                )
                .limit(1)
            )
        if still_open is not None:
            return
        with self.turns.transaction() as session:
            run = session.get(Run, run_id)
            if run is not None:
                complete_if_done(session=session, run=run)

    def _record_through_outage(
        self, work: list[Work], campaign: Campaign, run: Run, lease_until: datetime
    ) -> BatchReport:
        """:meth:`_record`, tried again while the database cannot be reached (a restart, a
        failover), however long that lasts. The sends have happened: given up, their outcomes
        would be lost and every row sent again. The lease is renewed meanwhile, so nobody takes
        the rows over; once the database answers, the record is written if the lease is still
        ours and not yet ended (a commit whose answer was lost is not written twice)."""
        while True:
            try:
                return self._record(work, campaign, run, lease_until)
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
                return self._lease_state(run_id, lease_until)
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

    def _lease_state(self, run_id: int, lease_until: datetime) -> LeaseState:
        with self.db.reading() as session:
            return leases.state(session, run_id=run_id, lease_until=lease_until)

    def _release(self, run_id: int, work: list[Work], lease_until: datetime) -> None:
        """Give claimed rows back after a crash inside the batch, so nobody waits a lease."""
        if not work:
            return
        with self.turns.transaction() as session:
            if not leases.end(session.connection(), run_id=run_id, lease_until=lease_until):
                return  # taken over meanwhile: the rows are not ours to give back
            session.execute(
                update(Delivery)
                .where(
                    Delivery.id.in_([w.delivery_id for w in work]),
                    Delivery.status == DeliveryStatus.claimed,
                    Delivery.lease_until == lease_until,
                )
                .values(status=DeliveryStatus.pending, lease_until=None),
                execution_options={"synchronize_session": False},
            )

    def _requeue(
        self,
        run_id: int,
        delivery_ids: Sequence[int],
        batch_id: str | None,
        campaign: Campaign,
        wait: float = 0.0,
    ) -> None:
        """Queue the same batch again, ``wait`` seconds from now."""
        queue = queue_for(campaign, self.settings)
        self.queue.enqueue(
            [
                Job(
                    actor_name(SEND_BATCH, queue),
                    queue,
                    (run_id, list(delivery_ids), batch_id),
                    delay_ms=math.ceil(wait * 1000) + 50,
                    batch_id=batch_id,
                )
            ]
        )

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
        lease_until = lease_stamp(self.settings.lease_seconds)
        token = leases.new_token()
        claim = self._claim(run_id, delivery_ids, batch_id, lease_until, token=token, urgent=urgent)
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
        except BaseException:
            self._release(run_id, work, lease_until)
            raise
        gate = self._gates[urgent]
        # A batch held up at the gate (behind batches slowed by rate limits) past its deadline
        # gives its rows back unsent.
        if not gate.acquire(timeout=max(0.0, gate_deadline - time.monotonic())):
            log.warning("send_gate_timeout", run_id=run_id, batch_id=batch_id, rows=len(work))
            self._release(run_id, work, lease_until)
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
                    self._release(run_id, work, lease_until)
                raise
            report = self._record_through_outage(work, campaign, run, lease_until)
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


def _ms(t0: float) -> int:
    return int((time.perf_counter() - t0) * 1000)


def _failed_try(
    number: int, started: datetime, t0: float, exc: DeliveryError, error_class: str | None = None
) -> AttemptRecord:
    cls = error_class or exc.error_class.value
    return AttemptRecord(
        number=number,
        started_at=started,
        duration_ms=_ms(t0),
        outcome=Outcome(cls),
        error_class="address_dead" if exc.address_dead else cls,
        provider_code=exc.code,
        provider_reply=exc.reply or exc.reason,
    )
