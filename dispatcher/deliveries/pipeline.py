"""Process one batch of deliveries: claim, render, send concurrently, record in bulk.

1. **Claim** the batch's rows with one conditional UPDATE: only rows still pending/retrying
   and due, or claimed by a worker whose lease expired (that row is flagged: the send may be a
   repeat). Rows of a paused or cancelled run are left alone.
2. **Render** each message from the run's frozen template version (compiled once, cached).
3. **Send** them concurrently on the process's event loop through the channel adapters, with
   quick in-call retries for blips.
4. **Record** every outcome in one transaction: the deliveries' new states (executemany), one
   attempts row per try, dead addresses; rows to retry get a new delayed batch job, queued
   only once that transaction commits.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Table, bindparam, case, func, select, update

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
from dispatcher import audit, ratelimit, secrets
from dispatcher.campaigns.models import Campaign, Run
from dispatcher.campaigns.planner import Rows, complete_if_done, enqueue_batch
from dispatcher.campaigns.service import queue_for
from dispatcher.channel_state import DatabaseState
from dispatcher.clock import utcnow
from dispatcher.config import Settings
from dispatcher.consent import service as consent
from dispatcher.content import service as content
from dispatcher.content.render import (
    TemplateProblem,
    VariantData,
    choose_variant,
    renderer,
)
from dispatcher.db import Database
from dispatcher.deliveries.models import (
    CLAIMABLE_STATUSES,
    Attempt,
    Delivery,
    DeliveryStatus,
    Outcome,
)
from dispatcher.deliveries.retry import RetryPolicy
from dispatcher.inbox.stores import DatabaseDevices, DatabaseInbox
from dispatcher.jobs import (
    SEND_BATCH,
    Job,
    JobQueue,
    MemoryMarkers,
    actor_name,
    enqueue_after_commit,
    new_batch_id,
)
from dispatcher.loop import LoopThread
from dispatcher.metrics import (
    AUTH_FAILURES,
    CHANNEL_PAUSES,
    DELIVERY_OUTCOMES,
    RATE_LIMIT_WAIT_SECONDS,
    SEND_SECONDS,
)
from dispatcher.recipients.models import Address, Recipient
from dispatcher.scheduling import windows
from dispatcher.scheduling.rules import calendar_variables

log = structlog.get_logger(__name__)

WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"
# Retries for these wait as asked and do not count against the delivery's attempt budget.
NO_BUDGET = ("rate_limited", "auth", "deferred", "send_window")
MAX_RATE_ROUNDS = 5
deliveries_t: Table = Delivery.__table__  # type: ignore[assignment]
attempts_t: Table = Attempt.__table__  # type: ignore[assignment]
addresses_t: Table = Address.__table__  # type: ignore[assignment]


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
            else ratelimit.RedisLimiter(settings.redis_url)
        )
        self._signing_key: bytes | None = None

    # -- 1. claim ---------------------------------------------------------------------------

    def _claim(
        self,
        run_id: int,
        delivery_ids: Sequence[int],
        batch_id: str | None,
        lease_until: datetime,
    ) -> Claim:
        now = utcnow()
        with self.db.transaction() as session:
            run = session.get(Run, run_id)
            if run is None or run.status not in ("planning", "running"):
                return Claim(run=run)
            campaign = session.get(Campaign, run.campaign_id)
            assert campaign is not None
            d = deliveries_t.c
            claimable = d.status.in_([s.value for s in CLAIMABLE_STATUSES]) | (
                (d.status == DeliveryStatus.claimed.value) & (d.lease_until < now)
            )
            # Rows carry the id of the batch meant to claim them (the planner, a retry or the
            # sweeper set it), so the indexed batch id picks them, not a list of 500 ids.
            which = d.batch_id == batch_id if batch_id else d.id.in_(list(delivery_ids))
            rows = session.execute(
                update(deliveries_t)
                .where(which, d.run_id == run_id, d.available_at <= now, claimable)
                .values(
                    status=DeliveryStatus.claimed.value,
                    lease_until=lease_until,
                    updated_at=now,
                    reclaimed=case(
                        (d.status == DeliveryStatus.claimed.value, True), else_=d.reclaimed
                    ),
                )
                .returning(d.id, d.recipient_id, d.channel, d.attempts, d.failures, d.reclaimed)
            ).all()
            claim = Claim(
                work=[Work(r[0], r[1], r[2], r[3], r[4], bool(r[5])) for r in rows],
                campaign=campaign,
                run=run,
            )
            work, people = claim.work, claim.people
            if not work:
                # A job that arrives before its rows are due (clock skew between hosts, an
                # early broker) is put back for when they are, rather than dropped.
                due = session.scalar(
                    select(func.min(Delivery.available_at)).where(
                        Delivery.id.in_(list(delivery_ids)),
                        Delivery.status.in_(CLAIMABLE_STATUSES),
                        Delivery.available_at > now,
                    )
                )
                claim.due = due
            if work:
                recipient_ids = list({w.recipient_id for w in work})
                for person in session.execute(
                    select(
                        Recipient.id,
                        Recipient.external_id,
                        Recipient.full_name,
                        Recipient.kind,
                        Recipient.province,
                        Recipient.birth_date,
                        Recipient.language,
                        Recipient.attributes,
                    ).where(Recipient.id.in_(recipient_ids))
                ):
                    people[person.id] = {**person._mapping, "addresses": {}}
                for rid, channel, value, dead_at in session.execute(
                    select(
                        Address.recipient_id, Address.channel, Address.value, Address.dead_at
                    ).where(Address.recipient_id.in_(recipient_ids))
                ):
                    if dead_at is None and rid in people:
                        people[rid]["addresses"][channel] = value
                if self._signing_key is None:
                    self._signing_key = secrets.signing_key(session, self.settings)
                version_id = run.template_version_id or campaign.template_version_id
                assert version_id is not None, f"run {run.id} has no template version"
                claim.defaults, claim.variants = content.versions.get(session, version_id)
            return claim

    # -- 2. render --------------------------------------------------------------------------

    def _render(self, claim: Claim) -> None:
        campaign, run, people = claim.campaign, claim.run, claim.people
        defaults, variants = claim.defaults, claim.variants
        assert campaign is not None and run is not None
        kind = Category(campaign.kind)
        variables = {
            **calendar_variables(run.scheduled_for),
            **(campaign.variables or {}),
            **(run.variables or {}),
        }
        views: dict[tuple[int, str], Any] = {}
        for item in claim.work:
            person = people.get(item.recipient_id)
            address = person["addresses"].get(item.channel) if person else None
            if person is None or address is None:
                item.status = DeliveryStatus.skipped
                item.error_class = "no_address"
                item.error_reason = f"no live {item.channel} address"
                continue
            variant: VariantData | None = choose_variant(variants, item.channel, person["language"])
            if variant is None:
                item.status = DeliveryStatus.failed
                item.error_class = "template"
                item.error_reason = f"no variant for {item.channel}"
                continue
            item.locale = variant.locale
            key = (item.recipient_id, variant.locale)
            view = views.get(key)
            if view is None:
                view = views[key] = content.recipient_view(person, variant.locale)
            unsubscribe = None
            if kind is not Category.transactional:
                assert self._signing_key is not None
                token = consent.token_for(
                    self._signing_key,
                    recipient_id=item.recipient_id,
                    channel=item.channel,
                    kind=kind.value,
                )
                unsubscribe = f"{self.settings.public_url}/u/{token}"
            context = content.build_context(
                view,
                defaults=defaults,
                variables=variables,
                channel=item.channel,
                locale=variant.locale,
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
                locale=variant.locale,
                unsubscribe_url=unsubscribe,
                campaign_id=campaign.id,
                recipient=person["external_id"],
            )

    # -- 3. send ----------------------------------------------------------------------------

    async def _send_one(self, item: Work, semaphore: asyncio.Semaphore) -> None:
        assert item.message is not None
        channel = item.channel
        async with semaphore:
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
        SEND_SECONDS.labels(channel).observe(elapsed)
        DELIVERY_OUTCOMES.labels(channel, "sent").inc()
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
        # Once per batch and channel: is it paused? (Rate-limited channels ask per send.)
        for channel in {w.channel for w in work if w.message}:
            await self.limiter.refresh(channel)
        semaphore = asyncio.Semaphore(self.settings.send_concurrency)
        await asyncio.gather(*(self._send_one(w, semaphore) for w in work if w.message))

    # -- 4. record --------------------------------------------------------------------------

    def _record(
        self,
        work: list[Work],
        campaign: Campaign,
        run: Run,
        lease_until: datetime,
    ) -> BatchReport:
        now = utcnow()
        report = BatchReport(claimed=len(work))
        updates: list[dict[str, Any]] = []
        tries: list[dict[str, Any]] = []
        dead: list[dict[str, Any]] = []
        retry_groups: dict[int, list[int]] = defaultdict(list)
        for item in work:
            available_at = now
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
                    available_at = item.not_before or now + timedelta(seconds=delay)
                    # Grouped by whole seconds, rounded up: a job never arrives before its rows.
                    retry_groups[max(1, math.ceil(delay))].append(item.delivery_id)
            report.count(item.status)
            updates.append(
                {
                    "b_id": item.delivery_id,
                    "b_lease": lease_until,
                    "b_status": item.status.value,
                    "b_attempts": item.attempts + len(item.tries),
                    "b_failures": item.failures,
                    "b_locale": item.locale,
                    "b_pmid": item.provider_message_id,
                    "b_error_class": item.error_class,
                    "b_error_reason": (item.error_reason or None) and item.error_reason[:2000],
                    "b_available_at": available_at,
                    "b_sent_at": now if item.status is DeliveryStatus.sent else None,
                    "b_updated_at": now,
                }
            )
            for index, t in enumerate(item.tries):
                tries.append(
                    {
                        "delivery_id": item.delivery_id,
                        "number": t.number,
                        "started_at": t.started_at,
                        "duration_ms": t.duration_ms,
                        "outcome": t.outcome.value,
                        "error_class": t.error_class,
                        "provider_code": t.provider_code,
                        "provider_reply": t.provider_reply and t.provider_reply[:2000],
                        "provider_message_id": t.provider_message_id,
                        "locale": item.locale,
                        "possible_duplicate": item.reclaimed and index == 0,
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
        with self.db.transaction() as session:
            connection = session.connection()
            if updates:
                connection.execute(
                    update(deliveries_t)
                    .where(
                        deliveries_t.c.id == bindparam("b_id"),
                        deliveries_t.c.status == DeliveryStatus.claimed.value,
                        deliveries_t.c.lease_until == bindparam("b_lease"),
                    )
                    .values(
                        status=bindparam("b_status"),
                        attempts=bindparam("b_attempts"),
                        failures=bindparam("b_failures"),
                        locale=bindparam("b_locale"),
                        provider_message_id=bindparam("b_pmid"),
                        error_class=bindparam("b_error_class"),
                        error_reason=bindparam("b_error_reason"),
                        available_at=bindparam("b_available_at"),
                        sent_at=bindparam("b_sent_at"),
                        updated_at=bindparam("b_updated_at"),
                        lease_until=None,
                        reclaimed=False,
                    ),
                    updates,
                )
            if tries:
                connection.execute(attempts_t.insert(), tries)
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
            fresh_run = session.get(Run, run.id)
            if campaign.channel_mode == "fallback" and fresh_run is not None:
                # The next channel in the campaign's order, for every delivery that ended
                # without reaching its recipient; each hop is its own delivery row.
                ended = [
                    (w.recipient_id, w.channel)
                    for w in work
                    if w.status in (DeliveryStatus.failed, DeliveryStatus.skipped)
                ]
                if ended:
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
            if fresh_run is not None:
                session.flush()
                complete_if_done(session=session, run=fresh_run)
            # Last in the transaction: appending holds the audit chain's head until commit.
            audit.record_attempts(connection, rows=tries, worker=WORKER_NAME, run_id=run.id)
        return report

    def _release(self, work: list[Work], lease_until: datetime) -> None:
        """Give claimed rows back after a crash inside the batch, so nobody waits a lease."""
        if not work:
            return
        with self.db.transaction() as session:
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

    def _requeue_early(
        self, run_id: int, delivery_ids: Sequence[int], batch_id: str | None, claim: Claim
    ) -> None:
        assert claim.campaign is not None and claim.due is not None
        wait = max(0.0, (claim.due - utcnow()).total_seconds())
        queue = queue_for(claim.campaign, self.settings)
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
        self, run_id: int, delivery_ids: Sequence[int], batch_id: str | None
    ) -> BatchReport:
        """Claim, render, send and record one batch (the worker actor's whole job)."""
        lease_until = utcnow() + timedelta(seconds=self.settings.lease_seconds)
        claim = self._claim(run_id, delivery_ids, batch_id, lease_until)
        campaign, run, work = claim.campaign, claim.run, claim.work
        if not work or campaign is None or run is None:
            if claim.due is not None and campaign is not None:
                self._requeue_early(run_id, delivery_ids, batch_id, claim)
            elif batch_id:
                self.queue.markers.delete(batch_id)
            return BatchReport()
        try:
            self._render(claim)
            self.loop.run(self._send_all(work))
        except BaseException:
            if not any(w.tries for w in work):
                self._release(work, lease_until)
            raise
        report = self._record(work, campaign, run, lease_until)
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
