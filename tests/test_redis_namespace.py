"""Two services on one Redis database: each keeps its queues and keys under its own namespace."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from dispatcher.core.config import Settings, get_settings, load_settings
from dispatcher.engine import backends, jobs
from dispatcher.engine.ratelimit import RedisLimiter, limits_for, take_now
from workers.scheduler import Leadership, leader_key


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("DISPATCHER_") and not key.startswith("DISPATCHER_TEST_"):
            monkeypatch.delenv(key)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def service(settings: Settings) -> backends.Backends:
    """One service's job queue, as ``dispatcher worker`` or ``serve`` builds it."""
    return backends.Backends(
        backends.create_redis_broker(settings),
        backends.RedisMarkers(backends.redis_client(settings), settings.redis_namespace),
        settings,
    )


@pytest.mark.usefixtures("clean_env")
def test_each_database_has_its_own_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    here = load_settings(database_url="sqlite:///dispatcher.db")
    assert here.redis_namespace.startswith("dispatcher-")
    assert (
        load_settings(database_url=f"sqlite:///{tmp_path / 'dispatcher.db'}").redis_namespace
        == here.redis_namespace
    ), "the same file, spelled relative or absolute, is the same service"
    assert (
        load_settings(database_url=f"sqlite:///{tmp_path / 'other.db'}").redis_namespace
        != here.redis_namespace
    )
    pg = load_settings(database_url="postgresql://app:secret@db.internal/dispatcher")
    same = load_settings(database_url="postgresql://other:changed@db.internal:5432/dispatcher")
    assert same.redis_namespace == pg.redis_namespace, "the user and password do not count"
    assert (
        load_settings(database_url="postgresql://app@db.internal/dispatcher_test").redis_namespace
        != pg.redis_namespace
    )
    assert "secret" not in pg.redis_namespace
    monkeypatch.setenv("DISPATCHER_REDIS_NAMESPACE", "bhxh-prod")
    assert load_settings().redis_namespace == "bhxh-prod"


@pytest.mark.usefixtures("clean_env")
def test_two_services_on_one_redis_see_nothing_of_each_other(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    one = load_settings(database_url=f"sqlite:///{tmp_path / 'one.db'}", redis_url=redis_url)
    two = load_settings(database_url=f"sqlite:///{tmp_path / 'two.db'}", redis_url=redis_url)
    assert one.redis_namespace != two.redis_namespace
    first, second = service(one), service(two)
    try:
        queue = one.queue_urgent
        assert queue == two.queue_urgent, "both services use the default queue names"
        job = jobs.Job(
            jobs.actor_name(jobs.SEND_BATCH, queue), queue, (1, [1, 2], "b1"), batch_id="b1"
        )
        first.enqueue([job])

        # Jobs: the second service's queue is empty and its consumer gets nothing.
        assert (first.markers.waiting(queue), second.markers.waiting(queue)) == (1, 0)
        assert (first.markers.alive(["b1"]), second.markers.alive(["b1"])) == ([True], [False])
        theirs = second.broker.consume(queue, prefetch=1, timeout=200)
        assert next(theirs) is None, "the second service's worker must not get the first's job"
        theirs.close()
        ours = first.broker.consume(queue, prefetch=1, timeout=5000)
        got = next(ours)
        assert got is not None and list(got.args) == [1, [1, 2], "b1"]
        ours.ack(got)
        ours.close()

        # Rate limits: the first service's budget and pauses are not the second's.
        client = backends.redis_client(one)
        assert take_now(client, one.redis_namespace, "api-key:1", 1.0, 1) == 0.0
        assert take_now(client, one.redis_namespace, "api-key:1", 1.0, 1) > 0.0
        assert take_now(client, two.redis_namespace, "api-key:1", 1.0, 1) == 0.0

        async def pauses() -> tuple[bool, bool, bool]:
            a = RedisLimiter(redis_url, one.redis_namespace)
            b = RedisLimiter(redis_url, two.redis_namespace)
            try:
                started = await a.pause("telegram", 60)
                limits = limits_for("telegram", "", [], {})
                free, _ = await b.reserve("telegram", limits, 0)
                blocked, _ = await a.reserve("telegram", limits, 0)
                return started, free, blocked
            finally:
                await a.close()
                await b.close()

        assert asyncio.run(pauses()) == (True, True, False)

        # The scheduler lock: each service has its own leader.
        leaders = [Leadership(client, 5, key=leader_key(s.redis_namespace)) for s in (one, two)]
        assert [leader.hold() for leader in leaders] == [True, True]

        # Every key either service wrote is under its namespace.
        keys = [k.decode() if isinstance(k, bytes) else k for k in redis_client.keys("*")]
        assert keys
        stray = [
            k
            for k in keys
            if not k.startswith((f"{one.redis_namespace}:", f"{two.redis_namespace}:"))
        ]
        assert stray == []
    finally:
        first.broker.close()
        second.broker.close()
