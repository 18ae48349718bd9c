"""Jobs through the broker, enqueued only after the transaction that made their rows commits.

There are two kinds of job, each made by one typed function that also picks its queue from the
work's priority (urgent work never waits behind bulk work):

- :func:`send_batch`: send one batch of delivery rows (:mod:`dispatcher.engine.batch`);
- :func:`plan_run`: turn a run's audience into rows (:mod:`dispatcher.engine.planner`).

A service buffers the jobs it wants on the session (:func:`enqueue_after_commit`); when that
session commits they go to the broker, and when it rolls back they are dropped. A batch job
also leaves a *marker* in Redis while it is alive; the sweeper re-enqueues pending rows whose
batch has no marker (Redis flushed, a job dead-lettered), which is how the database stays the
source of truth and Redis carries only wake-ups. The broker and the markers are the process's
:class:`~dispatcher.engine.backends.Backends`.

Every key the service keeps in Redis, dramatiq's queues included, lives under the settings'
``redis_namespace`` (:func:`redis_key`), so that two services on one Redis database never take
each other's jobs or share a lock.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
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


def queue_for(priority: str, settings: Settings) -> str:
    """The queue of work of this priority (a campaign's): urgent, or bulk."""
    return settings.queue_urgent if priority == "urgent" else settings.queue_bulk


def send_batch(
    *,
    run_id: int,
    ids: Sequence[int],
    batch_id: str | None,
    priority: str,
    settings: Settings,
    delay: float = 0.0,
) -> Job:
    """The job that sends the rows ``ids`` of batch ``batch_id``, ``delay`` seconds from now
    (rounded up to the millisecond: a job never arrives before its rows are due)."""
    queue = queue_for(priority, settings)
    return Job(
        actor_name(SEND_BATCH, queue),
        queue,
        (run_id, list(ids), batch_id),
        delay_ms=math.ceil(delay * 1000) if delay > 0 else None,
        batch_id=batch_id,
    )


def plan_run(
    *, run_id: int, priority: str, settings: Settings, delay: float = 0.0, waited: bool = False
) -> Job:
    """The job that plans (or goes on planning) a run; ``waited`` when its planner stopped
    itself to let the sends catch up (nothing of the run can be orphaned then)."""
    queue = queue_for(priority, settings)
    return Job(
        actor_name(PLAN_RUN, queue),
        queue,
        (run_id, True) if waited else (run_id,),
        delay_ms=math.ceil(delay * 1000) if delay > 0 else None,
    )


class Enqueuer(Protocol):
    """Where committed jobs go: this process's backends (:mod:`dispatcher.engine.backends`)."""

    def enqueue(self, jobs: Sequence[Job]) -> None: ...


_enqueuer: Enqueuer | None = None


def set_enqueuer(enqueuer: Enqueuer | None) -> None:
    global _enqueuer
    _enqueuer = enqueuer


def _get_enqueuer() -> Enqueuer:
    if _enqueuer is None:
        raise RuntimeError("no job queue configured in this process")
    return _enqueuer


def enqueue_after_commit(session: Session, job: Job) -> None:
    session.info.setdefault("jobs", []).append(job)


@event.listens_for(Session, "after_commit")
def _flush_jobs(session: Session) -> None:
    jobs = session.info.pop("jobs", None)
    if not jobs:
        return
    try:
        _get_enqueuer().enqueue(jobs)
    except Exception:
        # The rows are committed: the sweeper finds them without a live batch and re-enqueues.
        log.exception("enqueue_failed", jobs=len(jobs))


@event.listens_for(Session, "after_rollback")
def _drop_jobs(session: Session) -> None:
    session.info.pop("jobs", None)
