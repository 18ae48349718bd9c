"""Send: the batch's messages go out concurrently on the process's event loop, through the
channel adapters, each behind a slot of the channel's shared rate limit.

Each message goes through the channel *account* the batch resolved for it
(:mod:`dispatcher.engine.accounts`): the rate limits, the pauses below and the adapter (with its
state) are those of that account (``zalo@HN``), so one unit's refused token pauses its own
account and not another's. The root account (the environment's settings) is keyed by the
channel's name, as before accounts existed.

Each delivery gets one *round*: a first try, then the retry policy's quick in-call retries after
a blip (:mod:`dispatcher.engine.retry`). What the adapter raises decides the outcome:

- rate limited: the channel is paused for everyone when the provider says so; a short pause is
  waited out in the batch, a long one puts the row back until it ends;
- auth: an account-wide fault (a refused credential, a permission the app or Page lost, a
  broken APNs key: each adapter's table names them). The channel is paused for
  ``auth_pause_seconds``, alerted once per pause (the ``channel_auth_failed`` log line and the
  auth-failure metric), and the delivery waits without spending its attempts. When the pause
  ends, the next send is the probe: it goes on, or pauses the channel again. An operator who
  fixed the account ends the pause at once (``dispatcher channels resume NAME``,
  :mod:`dispatcher.engine.pauses`);
- permanent: failed, with its reason (and the address marked dead when it is);
- transient: retried later by the record's backoff.

A message that meets a closed send window, or a paused channel, is put back without a try.
Every try is kept on its :class:`~dispatcher.engine.work.Work` for the record to audit.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import structlog

from channels import registry
from channels.base import (
    Adapter,
    AuthError,
    DeliveryError,
    ErrorClass,
    PermanentError,
    RateLimitedError,
    RateRule,
    TransientError,
    as_text,
)
from channels.pool import Account, AdapterPool
from dispatcher.core.config import Settings
from dispatcher.engine import ratelimit
from dispatcher.engine.retry import RetryPolicy
from dispatcher.engine.work import AttemptRecord, Work
from dispatcher.kit.clock import utcnow
from dispatcher.observability.metrics import (
    AUTH_FAILURES,
    CHANNEL_PAUSES,
    DELIVERY_OUTCOMES,
    RATE_LIMIT_WAIT_SECONDS,
    SEND_SECONDS,
    observe_many,
)
from dispatcher.scheduling import windows
from dispatcher.tables.deliveries import DeliveryStatus, Outcome

log = structlog.get_logger(__name__)

MAX_RATE_ROUNDS = 5


class Sender:
    """Sends batches' messages for one worker process (on its event loop)."""

    def __init__(
        self,
        *,
        settings: Settings,
        adapters: AdapterPool,
        policy: RetryPolicy,
        limiter: ratelimit.Limiter,
    ) -> None:
        self.settings = settings
        self.adapters = adapters
        self.policy = policy
        self.limiter = limiter
        # The labelled children of the per-send metrics, by channel.
        self._send_seconds: dict[str, Any] = {}

    async def _send_one(self, item: Work, batch: _BatchFacts) -> None:
        assert item.message is not None
        channel = item.channel
        account = item.account or Account.root(channel)
        key = account.key
        opening = batch.window(item.message.kind.value, channel)
        if opening is not None:
            # The window closed while the batch was on its way: wait for the morning.
            item.status = DeliveryStatus.retrying
            item.error_class = ErrorClass.send_window
            item.error_reason = f"outside the send window; opens {opening.isoformat()}"
            item.not_before = opening
            return
        try:
            limits = batch.limits(channel, item.message.address, key)
        except registry.UnknownChannel as exc:
            # The campaign named a plugin that is no longer installed.
            item.status = DeliveryStatus.failed
            item.error_class, item.error_reason = ErrorClass.permanent, str(exc)
            return
        for _ in range(MAX_RATE_ROUNDS):
            try:
                await self._send_round(item, limits, batch.durations)
                return
            except ratelimit.Deferred as deferred:
                # Nothing was sent: no attempt to record, no budget spent.
                item.status = DeliveryStatus.retrying
                item.error_class = ErrorClass.deferred
                item.error_reason = f"{key} paused; waiting {deferred.seconds:.0f}s"
                item.retry_after = deferred.seconds
                return
            except RateLimitedError as exc:
                wait = exc.retry_after if exc.retry_after is not None else 1.0
                self._note_failure(item, exc)
                item.status = DeliveryStatus.retrying
                if exc.scope == "channel" and await self.limiter.pause(key, wait):
                    CHANNEL_PAUSES.labels(channel, "rate_limited").inc()
                    log.warning("channel_paused", channel=channel, account=key, seconds=wait)
                if exc.scope != "channel" or wait > self.settings.rate_wait_seconds:
                    item.retry_after = wait
                    return
                # A short pause: wait it out in the batch and try again.
            except AuthError as exc:
                self._note_failure(item, exc)
                item.status = DeliveryStatus.retrying
                item.retry_after = self.settings.auth_pause_seconds
                if await self.limiter.pause(key, self.settings.auth_pause_seconds):
                    # Loud once per pause, not once per delivery.
                    AUTH_FAILURES.labels(channel).inc()
                    CHANNEL_PAUSES.labels(channel, "auth").inc()
                    log.error(
                        "channel_auth_failed",
                        channel=channel,
                        account=key,
                        code=exc.code,
                        reason=exc.reason,
                        paused_seconds=self.settings.auth_pause_seconds,
                        resume=f"dispatcher channels resume {key}",
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

    async def _adapter(self, channel: str, account: Account) -> Adapter:
        """The open adapter; opening fails by the same classes as a send (a getMe blip is
        transient), and a channel that cannot be built at all is a permanent failure. A unit's
        account whose settings cannot be read now (a secret that cannot be decrypted) is an
        account-wide fault: it pauses, as a refused credential does."""
        if account.problem is not None:
            raise AuthError(account.problem)
        try:
            if account.is_root:
                return await self.adapters.get(channel)
            return await self.adapters.get(channel, account)
        except DeliveryError:
            raise
        except Exception as exc:
            log.error("adapter_unavailable", channel=channel, account=account.key, error=str(exc))
            raise PermanentError(f"channel {account.key} unavailable: {exc}") from None

    @staticmethod
    def _note_failure(item: Work, exc: DeliveryError) -> None:
        item.error_class = exc.error_class.value
        item.error_reason = exc.reason
        item.retry_after = exc.retry_after

    async def _send_round(
        self, item: Work, limits: Sequence[ratelimit.Limit], durations: list[tuple[str, float]]
    ) -> None:
        """One round of tries: the first goes straight out; after a blip, the policy's quick
        retries (tenacity), each behind a rate slot like the first."""
        try:
            await self._try_once(item, limits, durations)
            return
        except TransientError:
            retrying = self.policy.quick_after_failure(item.failures)
            if retrying is None:
                raise
        await asyncio.sleep(self.policy.first_quick_wait())
        async for attempt in retrying:
            with attempt:
                await self._try_once(item, limits, durations)

    async def _try_once(
        self, item: Work, limits: Sequence[ratelimit.Limit], durations: list[tuple[str, float]]
    ) -> None:
        """One try, audited. The adapter is opened behind the rate slot: opening calls the
        provider (getMe, a token grant), and a refused credential must pause the channel before
        others pile in. A sent try's duration joins ``durations``, observed once per batch."""
        assert item.message is not None
        channel = item.channel
        account = item.account or Account.root(channel)
        if limits or self.limiter.paused_locally(account.key) > 0:
            waited = await ratelimit.acquire(
                self.limiter, account.key, limits, max_wait=self.settings.rate_wait_seconds
            )
            if waited:
                RATE_LIMIT_WAIT_SECONDS.labels(channel).inc(waited)
        number = item.attempts + len(item.tries) + 1
        started = utcnow()
        t0 = time.perf_counter()
        try:
            # Opening counts as part of the try: a refused token at getMe is audited.
            adapter = None if account.problem is not None else self.adapters.opened(account)
            if adapter is None:
                adapter = await self._adapter(channel, account)
            result = await adapter.send(item.message)
        except DeliveryError as exc:
            item.tries.append(_failed_try(number, started, t0, exc))
            DELIVERY_OUTCOMES.labels(channel, exc.error_class.value).inc()
            if isinstance(exc, TransientError):
                item.failures += 1
            raise
        except Exception as exc:
            # An adapter bug is not the citizen's fault: treat it as a blip.
            log.exception("adapter_crashed", channel=channel, account=account.key)
            error = TransientError(f"adapter error: {exc!r}")
            item.tries.append(_failed_try(number, started, t0, error))
            item.failures += 1
            raise error from None
        elapsed = time.perf_counter() - t0
        # Observed, and counted, once per batch (send_all), by channel.
        durations.append((channel, elapsed))
        # A plugin's number where the contract says text is stored as text.
        message_id = as_text(result.provider_message_id)
        item.tries.append(
            AttemptRecord(
                number=number,
                started_at=started,
                duration_ms=int(elapsed * 1000),
                outcome=Outcome.sent,
                provider_code=as_text(result.provider_code),
                provider_reply=as_text(result.provider_reply),
                provider_message_id=message_id,
            )
        )
        item.status = DeliveryStatus.sent
        item.provider_message_id = message_id
        item.error_class = item.error_reason = None

    async def send_all(self, work: list[Work]) -> None:
        """Send every rendered message of the batch, ``send_concurrency`` at a time."""
        ready = [w for w in work if w.message]
        # Once per batch and account: is it paused? (Rate-limited channels ask per send.)
        for key in {(w.account or Account.root(w.channel)).key for w in ready}:
            await self.limiter.refresh(key)
        batch = _BatchFacts(self.settings)
        # At most send_concurrency sends in flight: that many senders share one queue of
        # messages (no task, no semaphore per message).
        queue = iter(ready)
        bind = structlog.contextvars.bind_contextvars

        async def sender() -> None:
            for item in queue:
                bind(delivery_id=item.delivery_id)
                await self._send_one(item, batch)

        senders = min(self.settings.send_concurrency, len(ready))
        try:
            await asyncio.gather(*(sender() for _ in range(senders)))
        finally:
            self._observe(batch.durations)
        sent = Counter(w.channel for w in ready if w.status is DeliveryStatus.sent)
        for channel, count in sent.items():
            DELIVERY_OUTCOMES.labels(channel, "sent").inc(count)

    def _observe(self, durations: list[tuple[str, float]]) -> None:
        by_channel: dict[str, list[float]] = {}
        for channel, elapsed in durations:
            by_channel.setdefault(channel, []).append(elapsed)
        for channel, amounts in by_channel.items():
            histogram = self._send_seconds.get(channel)
            if histogram is None:
                histogram = self._send_seconds[channel] = SEND_SECONDS.labels(channel)
            observe_many(histogram, amounts)


class _BatchFacts:
    """What every message of a batch would otherwise work out for itself: whether its kind's
    send window is open on its channel (asked again only when the answer changes: the window's
    close or opening), and its channel account's rate limits (per message only for a rule per
    address)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._windows: dict[tuple[str, str], tuple[datetime | None, datetime | None]] = {}
        self._rules: dict[str, Sequence[RateRule]] = {}
        # Whether a channel has a rule per address (its limits are then worked out per send).
        self._per_address: dict[str, bool] = {}
        self._limits: dict[tuple[str, str], list[ratelimit.Limit]] = {}
        # (channel, seconds) of each sent try, for the send-time histogram.
        self.durations: list[tuple[str, float]] = []

    def window(self, kind: str, channel: str) -> datetime | None:
        """When the window opens next, or None when a message may go now."""
        now = utcnow()
        found = self._windows.get((kind, channel))
        if found is None or (found[1] is not None and now >= found[1]):
            found = self._windows[(kind, channel)] = windows.state(
                now, kind, channel, self.settings.send_windows
            )
        return found[0]

    def limits(self, channel: str, address: str, account: str) -> Sequence[ratelimit.Limit]:
        """The send's limits (raises registry.UnknownChannel for a plugin no longer there)."""
        rules = self._rules.get(channel)
        if rules is None:
            rules = self._rules[channel] = registry.get(channel).rate_limits
            self._per_address[channel] = any(rule.per_address for rule in rules)
        if self._per_address[channel]:
            return ratelimit.limits_for(
                channel, address, rules, self.settings.rate_limits, account=account
            )
        found = self._limits.get((channel, account))
        if found is None:
            found = self._limits[(channel, account)] = ratelimit.limits_for(
                channel, address, rules, self.settings.rate_limits, account=account
            )
        return found


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
        error_class=ErrorClass.address_dead if exc.address_dead else cls,
        provider_code=exc.code,
        provider_reply=exc.reply or exc.reason,
    )
