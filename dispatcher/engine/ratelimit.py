"""Per-account rate limits shared by every worker, in Redis.

Each adapter declares its provider's published limits (``channels.base.RateRule``); every
send first takes a slot from the shared limiter. The algorithm is GCRA (a token bucket kept as
one timestamp per key), run atomically in Redis with Redis's own clock, so hosts' clocks do not
matter. A provider's "slow down" answer *pauses* the channel for everyone for the wait it asked
for; an auth failure pauses it too, so that a bad credential is one loud event rather than
thousands of failed deliveries.

Limits and pauses are kept per channel *account* (:class:`channels.pool.Account`): the methods'
``channel`` argument is the account's key, which is the channel's name for the root account
(the environment's settings, so existing keys are unchanged) and ``zalo@HN`` for a unit's own.

Per-address limits (Telegram's one message a second per chat) use a hashed address in the
key: Redis never holds a citizen's address. The keys live under the service's Redis namespace
(``<namespace>:rate:...``), so another service on the same Redis keeps its own limits.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import redis
import redis.asyncio as aioredis

from channels.base import RateRule
from dispatcher.engine.jobs import redis_key

# Reserves the next slot of every rule and returns {1, ms to wait until it}; or, when the
# channel is paused or the slot is further away than ARGV[1] ms, reserves nothing and returns
# {0, ms to wait}. Waits are whole milliseconds rounded up (Redis truncates fractions, and a
# truncated wait would let a send go early). The caller sleeps once: one call per message.
# KEYS[1] = the channel's pause key; KEYS[2..] = one GCRA key per rule.
# ARGV[1] = longest wait to reserve; then emission interval ms, tolerance ms, per rule.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local paused = redis.call('PTTL', KEYS[1])
if paused > 0 then return {0, paused} end
local at = now
local tats = {}
for i = 2, #KEYS do
  local tolerance = tonumber(ARGV[(i - 2) * 2 + 3])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  if tat - tolerance > at then at = tat - tolerance end
end
local wait = math.ceil(at - now)
if wait > tonumber(ARGV[1]) then return {0, wait} end
for i = 2, #KEYS do
  local emission = tonumber(ARGV[(i - 2) * 2 + 2])
  local reserved = math.max(tats[i], at) + emission
  redis.call('SET', KEYS[i], tostring(reserved), 'PX', math.ceil(reserved - now) + 1000)
end
return {1, wait}
"""


# Starts a pause (returns 1), or lengthens a running one (returns 0): one event per pause.
_PAUSE = """
local current = redis.call('PTTL', KEYS[1])
if current > 0 then
  if current < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
  return 0
end
redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
return 1
"""


@dataclass(frozen=True, slots=True)
class Limit:
    key: str  # within the limiter: the Redis limiter puts it under its namespace
    emission_ms: float
    tolerance_ms: float


def limits_for(
    channel: str,
    address: str,
    rules: Sequence[RateRule],
    overrides: dict[str, float],
    account: str | None = None,
) -> list[Limit]:
    """The limits of one send, keyed by channel account (``account``: ``zalo@HN``; the
    channel's name for its root account, the environment's, as before accounts existed). The
    ``DISPATCHER_RATE_LIMITS`` override of a channel holds for each of its accounts."""
    scope = account or channel
    out = []
    for rule in rules:
        rate = rule.per_second
        if not rule.per_address and channel in overrides:
            rate = overrides[channel]
        emission = 1000.0 / rate
        if rule.per_address:
            digest = hashlib.blake2b(address.encode(), digest_size=8).hexdigest()
            key = f"{scope}:a:{digest}"
        else:
            key = scope
        out.append(Limit(key, emission, emission * max(0, rule.burst - 1)))
    return out


class Limiter(Protocol):
    async def reserve(
        self, channel: str, limits: Sequence[Limit], max_wait: float
    ) -> tuple[bool, float]:
        """Take the next slot no further than ``max_wait`` seconds away: (True, seconds until
        it). Otherwise (paused, or the slot is too far) take nothing: (False, seconds to wait)."""
        ...

    async def pause(self, channel: str, seconds: float) -> bool:
        """Pause the channel for everyone (never shortening a pause); True only if this call
        started it, so that a pause is reported once, not by every worker that hits it."""
        ...

    async def resume(self, channel: str) -> bool:
        """End the channel's pause now (an operator's word); True if it was paused."""
        ...

    async def refresh(self, channel: str) -> None:
        """Learn whether the channel is paused now (once per batch, for rule-less channels)."""
        ...

    def paused_locally(self, channel: str) -> float:
        """Seconds the channel is known to be paused, from what this process last saw."""
        ...

    async def close(self) -> None:
        """Release its connections."""
        ...


class _KnownPauses:
    """Pauses this process has seen, so rule-less sends need no Redis call each."""

    def __init__(self) -> None:
        self._known: dict[str, float] = {}

    def _saw(self, channel: str, seconds: float) -> None:
        self._known[channel] = time.monotonic() + seconds

    def paused_locally(self, channel: str) -> float:
        return max(0.0, self._known.get(channel, 0.0) - time.monotonic())


def _rate_key(namespace: str, key: str) -> str:
    return redis_key(namespace, "rate", key)


class RedisLimiter(_KnownPauses):
    def __init__(self, url: str, namespace: str) -> None:
        super().__init__()
        self.url = url
        self.namespace = namespace
        self._client: aioredis.Redis | None = None
        self._script: object | None = None

    def _redis(self) -> aioredis.Redis:
        # Created lazily on the event loop that uses it. A blocking pool: a burst of sends
        # waits for a connection instead of failing past the pool's size.
        if self._client is None:
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url, max_connections=64, timeout=20, socket_timeout=10
            )
            self._client = aioredis.Redis(connection_pool=pool)
        return self._client

    async def reserve(
        self, channel: str, limits: Sequence[Limit], max_wait: float
    ) -> tuple[bool, float]:
        keys = [
            _rate_key(self.namespace, f"{channel}:pause"),
            *(_rate_key(self.namespace, limit.key) for limit in limits),
        ]
        args: list[float] = [max(0, int(max_wait * 1000))]
        for limit in limits:
            args += [round(limit.emission_ms, 3), round(limit.tolerance_ms, 3)]
        reserved, wait_ms = await self._redis().eval(_ACQUIRE, len(keys), *keys, *args)
        wait = max(0.0, float(wait_ms) / 1000.0)
        if not reserved and not limits:
            self._saw(channel, wait)
        return bool(reserved), wait

    async def pause(self, channel: str, seconds: float) -> bool:
        self._saw(channel, max(seconds, self.paused_locally(channel)))
        started = await self._redis().eval(
            _PAUSE, 1, _rate_key(self.namespace, f"{channel}:pause"), max(1, int(seconds * 1000))
        )
        return bool(started)

    async def resume(self, channel: str) -> bool:
        self._saw(channel, 0.0)
        return bool(await self._redis().delete(_rate_key(self.namespace, f"{channel}:pause")))

    async def refresh(self, channel: str) -> None:
        remaining = await self._redis().pttl(_rate_key(self.namespace, f"{channel}:pause"))
        self._saw(channel, max(0, remaining or 0) / 1000)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class MemoryLimiter(_KnownPauses):
    """The same rules inside one process (``dispatcher dev`` without Redis, and tests)."""

    def __init__(self) -> None:
        super().__init__()
        self._tats: dict[str, float] = {}
        self._paused: dict[str, float] = {}
        self._lock = threading.Lock()

    async def reserve(
        self, channel: str, limits: Sequence[Limit], max_wait: float
    ) -> tuple[bool, float]:
        now = time.monotonic() * 1000
        with self._lock:
            paused = self._paused.get(channel, 0.0) - now
            if paused > 0:
                return False, paused / 1000
            tats = {limit.key: max(self._tats.get(limit.key, now), now) for limit in limits}
            at = max([now] + [tats[limit.key] - limit.tolerance_ms for limit in limits])
            if at - now > max_wait * 1000:
                return False, (at - now) / 1000
            for limit in limits:
                self._tats[limit.key] = max(tats[limit.key], at) + limit.emission_ms
            return True, (at - now) / 1000

    async def pause(self, channel: str, seconds: float) -> bool:
        now = time.monotonic() * 1000
        until = now + seconds * 1000
        with self._lock:
            current = self._paused.get(channel, 0.0)
            self._paused[channel] = max(current, until)
            self._saw(channel, (self._paused[channel] - now) / 1000)
            return current <= now

    async def resume(self, channel: str) -> bool:
        now = time.monotonic() * 1000
        with self._lock:
            until = self._paused.pop(channel, 0.0)
            self._saw(channel, 0.0)
            return until > now

    async def refresh(self, channel: str) -> None:
        now = time.monotonic() * 1000
        with self._lock:
            self._saw(channel, max(0.0, self._paused.get(channel, 0.0) - now) / 1000)

    async def close(self) -> None:
        return None


class Deferred(Exception):
    """The channel cannot take this message for a while: put it back until ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"channel busy for {seconds:.1f}s")
        self.seconds = seconds


async def acquire(
    limiter: Limiter, channel: str, limits: Sequence[Limit], *, max_wait: float
) -> float:
    """Wait for a slot and take it; returns the seconds waited.

    Raises :class:`Deferred` rather than wait longer than ``max_wait`` in total, so a worker
    never sits on a claimed batch through a long pause.
    """
    if not limits:
        # No rate to keep: only a pause can hold the send, and the batch learnt of pauses
        # when it began (and of any this process started since).
        paused = limiter.paused_locally(channel)
        if paused > max_wait:
            raise Deferred(paused)
        if paused > 0:
            await asyncio.sleep(paused)
        return paused
    waited = 0.0
    while True:
        reserved, wait = await limiter.reserve(channel, limits, max_wait - waited)
        if reserved:
            if wait > 0:
                await asyncio.sleep(wait)
                # A pause that began while we slept (a refused token, a 429) holds us too.
                free, paused = await limiter.reserve(channel, (), 0)
                if not free:
                    raise Deferred(paused)
            return waited + wait
        if waited + wait > max_wait:
            raise Deferred(wait)
        # Paused for a little while: wait it out, then ask again.
        await asyncio.sleep(wait)
        waited += wait


def take_now(client: redis.Redis, namespace: str, key: str, per_second: float, burst: int) -> float:
    """A synchronous GCRA check for request paths: 0 when a slot was taken now, else the
    seconds until one frees (nothing taken). Uses the same script as channel limits."""
    emission = 1000.0 / per_second
    tolerance = emission * max(0, burst - 1)
    reserved, wait_ms = client.eval(
        _ACQUIRE,
        2,
        _rate_key(namespace, f"{key}:pause"),
        _rate_key(namespace, key),
        0,
        emission,
        tolerance,
    )
    return 0.0 if reserved else max(0.001, float(wait_ms) / 1000.0)


class MemoryBucket:
    """``take_now`` inside one process (``dispatcher dev`` without Redis)."""

    def __init__(self) -> None:
        self._tats: dict[str, float] = {}
        self._lock = threading.Lock()

    def take_now(self, key: str, per_second: float, burst: int) -> float:
        now = time.monotonic()
        emission = 1.0 / per_second
        with self._lock:
            tat = max(self._tats.get(key, now), now)
            wait = tat - emission * max(0, burst - 1) - now
            if wait > 0:
                return wait
            self._tats[key] = tat + emission
            return 0.0
