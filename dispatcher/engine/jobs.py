"""Jobs through the broker, enqueued only after the transaction that made their rows commits.

A service buffers the jobs it wants on the session (:func:`enqueue_after_commit`); when that
session commits they go to the broker, and when it rolls back they are dropped. A batch job
also leaves a *marker* in Redis while it is alive; the sweeper re-enqueues pending rows whose
batch has no marker (Redis flushed, a job dead-lettered), which is how the database stays the
source of truth and Redis carries only wake-ups.

Every key the service keeps in Redis, dramatiq's queues included, lives under the settings'
``redis_namespace`` (:func:`redis_key`), so that two services on one Redis database never take
each other's jobs or share a lock.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import dramatiq
import redis
import structlog
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import event
from sqlalchemy.orm import Session

from dispatcher.core.config import Settings

log = structlog.get_logger(__name__)

SEND_BATCH = "deliveries.send_batch"
PLAN_RUN = "runs.plan"


def redis_key(namespace: str, *parts: str) -> str:
    """One of the service's keys in Redis: ``<namespace>:<part>:<part>...``. dramatiq names its
    own keys the same way (a queue is the list ``<namespace>:<queue>``)."""
    return ":".join((namespace, *parts))


def actor_name(verb: str, queue: str) -> str:
    """Actors exist once per queue (an actor has one queue); the name says which."""
    return f"{verb}.{queue}"


def new_batch_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class Job:
    actor_name: str
    queue: str
    args: tuple[Any, ...]
    delay_ms: int | None = None
    batch_id: str | None = None


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


class JobQueue:
    """The broker and the batch markers of this process."""

    def __init__(self, broker: dramatiq.Broker, markers: Markers, settings: Settings) -> None:
        self.broker = broker
        self.markers = markers
        self.settings = settings

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


_queue: JobQueue | None = None


def set_job_queue(queue: JobQueue | None) -> None:
    global _queue
    _queue = queue


def get_job_queue() -> JobQueue:
    if _queue is None:
        raise RuntimeError("no job queue configured in this process")
    return _queue


def enqueue_after_commit(session: Session, job: Job) -> None:
    session.info.setdefault("jobs", []).append(job)


@event.listens_for(Session, "after_commit")
def _flush_jobs(session: Session) -> None:
    jobs = session.info.pop("jobs", None)
    if not jobs:
        return
    try:
        get_job_queue().enqueue(jobs)
    except Exception:
        # The rows are committed: the sweeper finds them without a live batch and re-enqueues.
        log.exception("enqueue_failed", jobs=len(jobs))


@event.listens_for(Session, "after_rollback")
def _drop_jobs(session: Session) -> None:
    session.info.pop("jobs", None)


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


def configure(settings: Settings, *, allow_stub: bool = False) -> JobQueue:
    """Set up this process's broker and markers: Redis, or in-process when allowed and needed."""
    if allow_stub and not redis_reachable(settings):
        broker: dramatiq.Broker = create_stub_broker()
        markers: Markers = MemoryMarkers()
    else:
        broker = create_redis_broker(settings)
        markers = RedisMarkers(redis_client(settings), settings.redis_namespace)
    dramatiq.set_broker(broker)
    queue = JobQueue(broker, markers, settings)
    set_job_queue(queue)
    return queue
