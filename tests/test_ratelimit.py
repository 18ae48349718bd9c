"""The shared limiter: one budget for every worker, per-address keys, channel pauses."""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise

import pytest
import redis

from channels.base import RateRule
from dispatcher.engine import ratelimit
from dispatcher.engine.ratelimit import Deferred, MemoryLimiter, RedisLimiter, acquire, limits_for

TELEGRAM = (RateRule(per_second=2, burst=3), RateRule(per_second=1, burst=1, per_address=True))


@pytest.fixture(params=["redis", "memory"])
def make_limiter(request: pytest.FixtureRequest, redis_url: str, redis_client: redis.Redis):
    made: list[ratelimit.Limiter] = []

    def make() -> ratelimit.Limiter:
        # Every Redis limiter is a separate client, as separate worker processes would be;
        # in-memory limiters share nothing, so the "memory" leg uses one instance.
        if request.param == "memory":
            if not made:
                made.append(MemoryLimiter())
            return made[0]
        limiter = RedisLimiter(redis_url, "test")
        made.append(limiter)
        return limiter

    return make


def test_the_budget_is_shared_between_workers(make_limiter) -> None:
    async def go() -> list[tuple[bool, float]]:
        first, second = make_limiter(), make_limiter()
        channel_wide = limits_for("telegram", "", TELEGRAM[:1], {})
        taken = [await first.reserve("telegram", channel_wide, 60) for _ in range(2)]
        taken.append(await second.reserve("telegram", channel_wide, 60))
        taken.append(await second.reserve("telegram", channel_wide, 60))
        return taken

    taken = asyncio.run(go())
    assert [t[0] for t in taken] == [True] * 4
    assert [t[1] for t in taken[:3]] == [0.0, 0.0, 0.0], "a burst of 3 goes at once"
    assert 0.45 < taken[3][1] <= 0.51, "the fourth slot is one emission interval (0.5 s) away"


def test_per_address_limits_are_separate(make_limiter) -> None:
    async def go() -> tuple[float, float, float]:
        limiter = make_limiter()
        chat_a = limits_for("telegram", "1001", TELEGRAM, {})
        chat_b = limits_for("telegram", "1002", TELEGRAM, {})
        first = (await limiter.reserve("telegram", chat_a, 60))[1]
        again = (await limiter.reserve("telegram", chat_a, 60))[1]
        other = (await limiter.reserve("telegram", chat_b, 60))[1]
        return first, again, other

    first, again, other = asyncio.run(go())
    assert first == 0.0
    assert 0.95 < again <= 1.01, "one message a second per chat"
    assert other < again, "another chat is not held by the first chat's limit"


def test_a_pause_holds_the_channel_for_everyone(make_limiter) -> None:
    async def go() -> tuple[bool, bool, tuple[bool, float], tuple[bool, float]]:
        one, two = make_limiter(), make_limiter()
        started = await one.pause("zalo", 5)
        shorter = await two.pause("zalo", 1)
        zalo = await two.reserve("zalo", limits_for("zalo", "u", (RateRule(100, 100),), {}), 60)
        email = await two.reserve("email", limits_for("email", "e", (RateRule(100, 100),), {}), 60)
        return started, shorter, zalo, email

    started, shorter, zalo, email = asyncio.run(go())
    assert started and not shorter, "a shorter pause never cuts a longer one"
    assert zalo[0] is False and 4.0 < zalo[1] <= 5.0, "nothing reserved while paused"
    assert email == (True, 0.0)


def test_an_operator_ends_a_pause_for_everyone(make_limiter) -> None:
    async def go() -> tuple[bool, bool, tuple[bool, float], bool]:
        one, two = make_limiter(), make_limiter()
        await one.pause("vssid", 3600)
        await two.refresh("vssid")
        ended = await one.resume("vssid")
        rules = limits_for("vssid", "a", (RateRule(100, 100),), {})
        after = await two.reserve("vssid", rules, 0)
        again = await one.resume("vssid")  # nothing left to end
        await two.refresh("vssid")
        return ended, again, after, two.paused_locally("vssid") == 0

    ended, again, after, forgotten = asyncio.run(go())
    assert ended and not again
    assert after == (True, 0.0), "the channel takes sends again at once"
    assert forgotten, "no worker remembers the pause after its next refresh"


def test_a_slot_too_far_away_is_not_taken(make_limiter) -> None:
    async def go() -> list[tuple[bool, float]]:
        limiter = make_limiter()
        slow = limits_for("zalo", "", (RateRule(per_second=1, burst=1),), {})
        return [
            await limiter.reserve("zalo", slow, 60),
            await limiter.reserve("zalo", slow, 0.1),  # refused: 1 s away
            await limiter.reserve("zalo", slow, 60),
        ]

    first, refused, third = asyncio.run(go())
    assert first == (True, 0.0)
    assert refused[0] is False and 0.9 < refused[1] <= 1.0
    assert third[0] is True and 0.9 < third[1] <= 1.0, "the refused call reserved nothing"


def test_reservations_are_evenly_spaced_and_never_early(make_limiter) -> None:
    """Sixty senders asking at once get slots exactly 1/29 s apart: no burst leaks through."""

    async def go() -> list[tuple[float, float, float]]:
        limiter = make_limiter()
        limits = limits_for("telegram", "", (RateRule(per_second=29, burst=1),), {})
        calls = []
        for _ in range(60):
            before = time.monotonic()
            wait = (await limiter.reserve("telegram", limits, 60))[1]
            calls.append((before, wait, time.monotonic()))
        return calls

    calls = asyncio.run(go())
    waits = [wait for _, wait, _ in calls]
    assert waits[0] == 0.0
    first_before, _, first_after = calls[0]
    for i, (before, wait, after) in enumerate(calls):
        # Each slot is i/29 s after the first. A slot is its call's moment plus its wait, and
        # that moment lies within the call: the bounds widen by the calls' own durations, not
        # by how long all the calls before took (a busy machine slows the calls, not the slots).
        assert (
            before + wait - first_after - 0.002 <= i / 29 <= after + wait - first_before + 0.002
        ), (
            i,
            wait,
        )
    assert all(b > a for a, b in pairwise(waits))


def test_acquire_defers_rather_than_sit_through_a_long_pause(make_limiter) -> None:
    async def go() -> None:
        limiter = make_limiter()
        await limiter.pause("facebook", 60)
        await acquire(limiter, "facebook", limits_for("facebook", "x", (), {}), max_wait=5)

    with pytest.raises(Deferred) as caught:
        asyncio.run(go())
    assert 55 < caught.value.seconds <= 60


def test_settings_override_the_channel_rate_and_addresses_are_hashed() -> None:
    limits = limits_for("telegram", "+84 912 345 678", TELEGRAM, {"telegram": 10})
    assert limits[0].emission_ms == pytest.approx(100.0)
    assert limits[1].emission_ms == pytest.approx(1000.0), (
        "per-chat limits keep the provider's rate"
    )
    assert "912" not in limits[1].key and "+84" not in limits[1].key
