"""The shared limiter: one budget for every worker, per-address keys, channel pauses."""

from __future__ import annotations

import asyncio

import pytest
import redis

from channels.base import RateRule
from dispatcher import ratelimit
from dispatcher.ratelimit import Deferred, MemoryLimiter, RedisLimiter, acquire, limits_for

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
        limiter = RedisLimiter(redis_url)
        made.append(limiter)
        return limiter

    return make


def test_the_budget_is_shared_between_workers(make_limiter) -> None:
    async def go() -> list[float]:
        first, second = make_limiter(), make_limiter()
        channel_wide = limits_for("telegram", "", TELEGRAM[:1], {})
        needs = [await first.wait_needed("telegram", channel_wide) for _ in range(2)]
        needs.append(await second.wait_needed("telegram", channel_wide))
        needs.append(await second.wait_needed("telegram", channel_wide))
        return needs

    needs = asyncio.run(go())
    assert needs[:3] == [0.0, 0.0, 0.0], "a burst of 3 goes at once"
    assert 0.3 < needs[3] <= 0.5, "the fourth waits about one emission interval (0.5 s)"


def test_per_address_limits_are_separate(make_limiter) -> None:
    async def go() -> tuple[float, float, float]:
        limiter = make_limiter()
        chat_a = limits_for("telegram", "1001", TELEGRAM, {})
        chat_b = limits_for("telegram", "1002", TELEGRAM, {})
        first = await limiter.wait_needed("telegram", chat_a)
        again = await limiter.wait_needed("telegram", chat_a)
        other = await limiter.wait_needed("telegram", chat_b)
        return first, again, other

    first, again, other = asyncio.run(go())
    assert first == 0.0 and other == 0.0
    assert again > 0.5, "one message a second per chat"


def test_a_pause_holds_the_channel_for_everyone(make_limiter) -> None:
    async def go() -> tuple[bool, bool, float, float]:
        one, two = make_limiter(), make_limiter()
        started = await one.pause("zalo", 5)
        shorter = await two.pause("zalo", 1)
        zalo = await two.wait_needed("zalo", limits_for("zalo", "u", (RateRule(100, 100),), {}))
        email = await two.wait_needed("email", limits_for("email", "e", (RateRule(100, 100),), {}))
        return started, shorter, zalo, email

    started, shorter, zalo, email = asyncio.run(go())
    assert started and not shorter, "a shorter pause never cuts a longer one"
    assert 4.0 < zalo <= 5.0
    assert email == 0.0


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


def test_rates_that_do_not_divide_a_second_evenly(make_limiter) -> None:
    async def go() -> list[float]:
        limiter = make_limiter()
        limits = limits_for("telegram", "", (RateRule(per_second=29, burst=1),), {})
        return [await limiter.wait_needed("telegram", limits) for _ in range(2)]

    first, second = asyncio.run(go())
    assert first == 0.0
    assert 0.02 < second <= 1 / 29 + 0.001
