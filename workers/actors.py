"""The actors: thin wrappers that call the engine's batch processor and planner.

Each verb exists once per queue (a dramatiq actor has exactly one queue), so urgent work is
served by ``--queues urgent`` workers and never waits behind bulk batches.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware
from sqlalchemy import select
from structlog.contextvars import bound_contextvars

from dispatcher.core.config import Settings, get_settings
from dispatcher.core.db import get_database
from dispatcher.engine import backends, jobs, planner, recovery
from dispatcher.engine.batch import BatchProcessor
from dispatcher.engine.loop import get_loop
from dispatcher.observability.metrics import JobMetrics
from dispatcher.tables.campaigns import Run

SWITCH_INTERVAL = 0.0005
_processor: BatchProcessor | None = None
_lock = threading.Lock()


def get_processor() -> BatchProcessor:
    global _processor
    with _lock:
        if _processor is None:
            # A thread holding the database's write turn must get the interpreter back soon
            # from threads that render: hand it over every 0.5 ms rather than every 5.
            sys.setswitchinterval(SWITCH_INTERVAL)
            _processor = BatchProcessor(
                db=get_database(),
                settings=get_settings(),
                queue=backends.current(),
                loop=get_loop(),
            )
        return _processor


def set_processor(processor: BatchProcessor | None) -> None:
    global _processor
    with _lock:
        _processor = processor


def _campaign_of(run_id: int) -> int | None:
    with get_database().reading() as session:
        return session.scalar(select(Run.campaign_id).where(Run.id == run_id))


def send_batch(run_id: int, delivery_ids: Sequence[int], batch_id: str | None = None) -> None:
    # Every log line of the batch (ours, the adapters', the libraries') names it.
    with bound_contextvars(campaign_id=_campaign_of(run_id), run_id=run_id, batch_id=batch_id):
        get_processor().process(run_id, delivery_ids, batch_id)


def send_urgent_batch(
    run_id: int, delivery_ids: Sequence[int], batch_id: str | None = None
) -> None:
    """A batch of the urgent queue: its writes go ahead of bulk batches' (SQLite's turns)."""
    with bound_contextvars(campaign_id=_campaign_of(run_id), run_id=run_id, batch_id=batch_id):
        get_processor().process(run_id, delivery_ids, batch_id, urgent=True)


def plan_run(run_id: int, waited: bool = False) -> None:
    settings = get_settings()
    db = get_database()
    with bound_contextvars(campaign_id=_campaign_of(run_id), run_id=run_id):
        fresh = waited or planner.unplanned(db=db, run_id=run_id)
        planner.plan_run(db=db, run_id=run_id, settings=settings)
        if fresh:
            # Each page's batch was queued as the page committed: nothing is orphaned yet (a
            # lost enqueue is the periodic sweeper's), and looking would walk every pending
            # row of a big run. The same after the planner waited for the sends to catch up.
            return
        # After a resume (or a planner restart) rows may wait with no live batch: queue them.
        recovery.requeue_orphans(
            db=db, settings=settings, markers=backends.current().markers, run_id=run_id, grace=0
        )


class CloseAdapters(Middleware):
    """Close the adapters' connections when the worker stops."""

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        processor = _processor
        if processor is not None:
            processor.loop.run(processor.adapters.close(), timeout=30)


def declare(broker: dramatiq.Broker, settings: Settings) -> dict[str, dramatiq.Actor[Any, Any]]:
    """Declare every actor on every queue of ``broker``; returns them by name."""
    declared: dict[str, dramatiq.Actor[Any, Any]] = {}
    for queue in (settings.queue_urgent, settings.queue_bulk):
        send = send_urgent_batch if queue == settings.queue_urgent else send_batch
        verbs: tuple[tuple[str, Callable[..., None]], ...] = (
            (jobs.SEND_BATCH, send),
            (jobs.PLAN_RUN, plan_run),
        )
        for verb, fn in verbs:
            name = jobs.actor_name(verb, queue)
            if name in broker.actors:
                declared[name] = broker.get_actor(name)
                continue
            declared[name] = dramatiq.actor(
                actor_name=name,
                queue_name=queue,
                broker=broker,
                # A crash inside a batch (database away) retries the whole batch; claims make
                # that safe. The sweeper is the backstop beyond these retries.
                max_retries=5,
                min_backoff=1_000,
                max_backoff=60_000,
                time_limit=30 * 60_000,
            )(fn)
    if not any(isinstance(m, CloseAdapters) for m in broker.middleware):
        broker.add_middleware(CloseAdapters())
    if not any(isinstance(m, JobMetrics) for m in broker.middleware):
        broker.add_middleware(JobMetrics())
    return declared
