"""The backends of a process, made once at start-up: the broker, the batch markers, the shared
rate limiter and the Redis client they use (:func:`configure`).

In production they all live in Redis. ``dispatcher dev`` on a machine without Redis runs them
in the process instead (dramatiq's stub broker, markers and limits in memory); code that must
behave differently there reads :attr:`Backends.in_process`, never the type of a backend.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from dispatcher.core.config import Settings
from dispatcher.engine import ratelimit
from dispatcher.engine.jobs import Job, redis_key, set_enqueuer


class Markers(Protocol):
    def set_many(self, batch_ids: Sequence[str], ttl_seconds: int) -> None: ...
    def delete(self, batch_id: str) -> None: ...
    def alive(self, batch_ids: Sequence[str]) -> list[bool]: ...
    def waiting(self, queue: str) -> int | None:
        """Jobs waiting in ``queue`` for a worker; None when that cannot be known."""
        ...


class RedisMarkers:
    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.client = client
        self.namespace = namespace

    def key(self, batch_id: str) -> str:
        return redis_key(self.namespace, "batch", batch_id)

    def set_many(self, batch_ids: Sequence[str], ttl_seconds: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        for batch_id in batch_ids:
            pipe.set(self.key(batch_id), 1, ex=ttl_seconds)
        pipe.execute()

    def delete(self, batch_id: str) -> None:
        self.client.delete(self.key(batch_id))

    def alive(self, batch_ids: Sequence[str]) -> list[bool]:
        pipe = self.client.pipeline(transaction=False)
        for batch_id in batch_ids:
            pipe.exists(self.key(batch_id))
        return [bool(n) for n in pipe.execute()]

    def waiting(self, queue: str) -> int | None:
        return int(self.client.llen(redis_key(self.namespace, queue)))


class MemoryMarkers:
    """For the in-process broker of ``dispatcher dev`` without Redis."""

    def __init__(self) -> None:
        self._alive: set[str] = set()
        self._lock = threading.Lock()

    def set_many(self, batch_ids: Sequence[str], ttl_seconds: int) -> None:
        with self._lock:
            self._alive.update(batch_ids)

    def delete(self, batch_id: str) -> None:
        with self._lock:
            self._alive.discard(batch_id)

    def alive(self, batch_ids: Sequence[str]) -> list[bool]:
        with self._lock:
            return [b in self._alive for b in batch_ids]

    def waiting(self, queue: str) -> int | None:
        return None  # the in-process broker's queues are not visible here


class Backends:
    """The broker, the batch markers and the shared rate limiter of this process, with the Redis
    client behind them (None when they run in the process: ``dispatcher dev`` without Redis)."""

    def __init__(
        self,
        broker: dramatiq.Broker,
        markers: Markers,
        settings: Settings,
        *,
        in_process: bool = False,
        client: redis.Redis | None = None,
        limiter: ratelimit.Limiter | None = None,
    ) -> None:
        self.broker = broker
        self.markers = markers
        self.settings = settings
        self.in_process = in_process
        self.redis: redis.Redis | None = None
        if not in_process:
            self.redis = client or redis_client(settings)
        self.limiter: ratelimit.Limiter = limiter or (
            ratelimit.MemoryLimiter()
            if in_process
            else ratelimit.RedisLimiter(settings.redis_url, settings.redis_namespace)
        )

    def enqueue(self, jobs: Iterable[Job]) -> None:
        jobs = list(jobs)
        if not jobs:
            return
        markers = [
            (job.batch_id, (job.delay_ms or 0) // 1000 + self.settings.batch_marker_ttl_seconds)
            for job in jobs
            if job.batch_id
        ]
        for ttl in {t for _, t in markers}:
            self.markers.set_many([b for b, t in markers if t == ttl and b], ttl)
        for job in jobs:
            message: dramatiq.Message[Any] = dramatiq.Message(
                queue_name=job.queue,
                actor_name=job.actor_name,
                args=job.args,
                kwargs={},
                options={},
            )
            self.broker.enqueue(message, delay=job.delay_ms)


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
    )


def redis_reachable(settings: Settings) -> bool:
    try:
        return bool(redis_client(settings).ping())
    except (redis.RedisError, OSError):
        return False


def create_redis_broker(settings: Settings) -> RedisBroker:
    # The defaults minus AgeLimit: a batch may wait long behind a big campaign and must still run.
    from dramatiq.middleware import (
        Callbacks,
        Pipelines,
        Retries,
        ShutdownNotifications,
        TimeLimit,
    )

    middleware = [TimeLimit(), ShutdownNotifications(), Callbacks(), Pipelines(), Retries()]
    return RedisBroker(
        client=redis_client(settings), middleware=middleware, namespace=settings.redis_namespace
    )


def create_stub_broker() -> StubBroker:
    from dramatiq.middleware import Callbacks, Pipelines, Retries, ShutdownNotifications, TimeLimit

    broker = StubBroker(
        middleware=[TimeLimit(), ShutdownNotifications(), Callbacks(), Pipelines(), Retries()]
    )
    broker.emit_after("process_boot")
    return broker


def configure(settings: Settings, *, allow_stub: bool = False) -> Backends:
    """Make this process's backends: in Redis, or in the process when allowed and needed."""
    if allow_stub and not redis_reachable(settings):
        backends = Backends(create_stub_broker(), MemoryMarkers(), settings, in_process=True)
    else:
        client = redis_client(settings)
        backends = Backends(
            create_redis_broker(settings),
            RedisMarkers(client, settings.redis_namespace),
            settings,
            client=client,
        )
    dramatiq.set_broker(backends.broker)
    set_current(backends)
    return backends


_current: Backends | None = None


def set_current(backends: Backends | None) -> None:
    """Make ``backends`` this process's: committed jobs go to its broker."""
    global _current
    _current = backends
    set_enqueuer(backends)


def current() -> Backends:
    """This process's backends (:func:`configure` made them)."""
    if _current is None:
        raise RuntimeError("no job queue configured in this process")
    return _current
