"""Per-channel rate limits shared by every worker, in Redis.

Each adapter declares its provider's published limits (``channels.base.RateRule``); every
send first takes a slot from the shared limiter. The algorithm is GCRA (a token bucket kept as
one timestamp per key), run atomically in Redis with Redis's own clock, so hosts' clocks do not
matter. A provider's "slow down" answer *pauses* the channel for everyone for the wait it asked
for; an auth failure pauses it too, so that a bad credential is one loud event rather than
thousands of failed deliveries.

Per-address limits (Telegram's one message a second per chat) use a hashed address in the
key: Redis never holds a citizen's address.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from channels.base import RateRule

PREFIX = "dispatcher:rate:"

# Returns the milliseconds to wait before a send may go (0: go, slots taken).
# KEYS[1] = the channel's pause key; KEYS[2..] = one GCRA key per rule.
# ARGV = emission interval ms, tolerance ms, per rule.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = redis.call('PTTL', KEYS[1])
if paused > 0 then return paused end
local wait = 0
local tats = {}
for i = 2, #KEYS do
  local emission = tonumber(ARGV[(i - 2) * 2 + 1])
  local tolerance = tonumber(ARGV[(i - 2) * 2 + 2])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat + emission
  local need = tat - now - tolerance
  if need > wait then wait = need end
end
if wait > 0 then return wait end
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], tats[i], 'PX', math.ceil(math.max(1, tats[i] - now)) + 1000)
end
return 0
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
    key: str
    emission_ms: float
    tolerance_ms: float


def limits_for(
    channel: str, address: str, rules: Sequence[RateRule], overrides: dict[str, float]
) -> list[Limit]:
    out = []
    for rule in rules:
        rate = rule.per_second
        if not rule.per_address and channel in overrides:
            rate = overrides[channel]
        emission = 1000.0 / rate
        if rule.per_address:
            digest = hashlib.blake2b(address.encode(), digest_size=8).hexdigest()
            key = f"{PREFIX}{channel}:a:{digest}"
        else:
            key = f"{PREFIX}{channel}"
        out.append(Limit(key, emission, emission * max(0, rule.burst - 1)))
    return out


class Limiter(Protocol):
    async def wait_needed(self, channel: str, limits: Sequence[Limit]) -> float:
        """Seconds to wait before sending (0.0: a slot was taken)."""
        ...

    async def pause(self, channel: str, seconds: float) -> bool:
        """Pause the channel for everyone (never shortening a pause); True only if this call
        started it, so that a pause is reported once, not by every worker that hits it."""
        ...


class RedisLimiter:
    def __init__(self, url: str) -> None:
        self.url = url
        self._client: aioredis.Redis | None = None
        self._script: object | None = None

    def _redis(self) -> aioredis.Redis:
        # Created lazily on the event loop that uses it.
        if self._client is None:
            self._client = aioredis.Redis.from_url(self.url, socket_timeout=10)
        return self._client

    async def wait_needed(self, channel: str, limits: Sequence[Limit]) -> float:
        client = self._redis()
        keys = [f"{PREFIX}{channel}:pause", *(limit.key for limit in limits)]
        args: list[float] = []
        for limit in limits:
            args += [round(limit.emission_ms, 3), round(limit.tolerance_ms, 3)]
        waited = await client.eval(_ACQUIRE, len(keys), *keys, *args)
        return max(0.0, float(waited) / 1000.0)

    async def pause(self, channel: str, seconds: float) -> bool:
        started = await self._redis().eval(
            _PAUSE, 1, f"{PREFIX}{channel}:pause", max(1, int(seconds * 1000))
        )
        return bool(started)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class MemoryLimiter:
    """The same rules inside one process (``dispatcher dev`` without Redis, and tests)."""

    def __init__(self) -> None:
        self._tats: dict[str, float] = {}
        self._paused: dict[str, float] = {}
        self._lock = threading.Lock()

    async def wait_needed(self, channel: str, limits: Sequence[Limit]) -> float:
        now = time.monotonic() * 1000
        with self._lock:
            paused = self._paused.get(channel, 0.0) - now
            if paused > 0:
                return paused / 1000
            wait = 0.0
            tats = {}
            for limit in limits:
                tat = max(self._tats.get(limit.key, now), now)
                tats[limit.key] = tat + limit.emission_ms
                wait = max(wait, tat - now - limit.tolerance_ms)
            if wait > 0:
                return wait / 1000
            self._tats.update(tats)
            return 0.0

    async def pause(self, channel: str, seconds: float) -> bool:
        now = time.monotonic() * 1000
        until = now + seconds * 1000
        with self._lock:
            current = self._paused.get(channel, 0.0)
            self._paused[channel] = max(current, until)
            return current <= now

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
    waited = 0.0
    while True:
        need = await limiter.wait_needed(channel, limits)
        if need <= 0:
            return waited
        if waited + need > max_wait:
            raise Deferred(need)
        await asyncio.sleep(need)
        waited += need
