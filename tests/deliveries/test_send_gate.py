"""The send gate: a worker process lets one batch at a time into the crash window (between its
first send and the commit of its record), so a ``kill -9`` re-sends at most one batch however
many threads the process runs. Its other threads claim and render meanwhile."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import redis

from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine.batch import BatchProcessor
from dispatcher.engine.jobs import redis_key
from dispatcher.engine.loop import get_loop
from dispatcher.engine.work import Work
from tests.support import SmtpServer, delivery_statuses, run_batches, wait_for
from tests.test_end_to_end import plan_campaign


def _batches(
    client: Any, db: Database, settings: Settings
) -> tuple[int, list[tuple[str, list[int]]]]:
    """A campaign to five people planned in batches of two: (run, [(batch id, ids)...])."""
    _, run_id = plan_campaign(client, db, settings.model_copy(update={"batch_size": 2}))
    batches = run_batches(db, run_id)
    assert [len(ids) for _, ids in batches] == [2, 2, 1]
    return run_id, batches


def _statuses(db: Database, ids: list[int]) -> set[str]:
    return set(delivery_statuses(db, ids))


class WatchedLock:
    """The gate, telling how many threads wait for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waiting = 0

    def acquire(self, timeout: float = -1) -> bool:
        self.waiting += 1
        try:
            return self._lock.acquire(timeout=timeout)
        finally:
            self.waiting -= 1

    def release(self) -> None:
        self._lock.release()


def test_a_second_batch_claims_and_renders_but_sends_only_after_the_first_is_recorded(
    client, smtp: SmtpServer, db: Database, settings: Settings, job_queue
) -> None:
    run_id, [(first_batch, first), (second_batch, second), _] = _batches(client, db, settings)
    processor = BatchProcessor(db=db, settings=settings, queue=job_queue, loop=get_loop())
    gate = processor._gates[False] = WatchedLock()  # type: ignore[assignment]
    send_all = processor._send_all
    release_first = threading.Event()
    sending: list[list[int]] = []

    async def observed(work: list[Work]) -> None:
        ids = [w.delivery_id for w in work]
        sending.append(ids)
        await send_all(work)
        # Sent, not yet recorded: the first batch stays inside the crash window.
        while ids == first and not release_first.is_set():
            await asyncio.sleep(0.01)

    processor._send_all = observed  # type: ignore[method-assign]
    threads = [
        threading.Thread(target=processor.process, args=(run_id, ids, batch_id))
        for batch_id, ids in ((first_batch, first), (second_batch, second))
    ]
    threads[0].start()
    wait_for(lambda: smtp.mailbox.count() == len(first), what="the first batch sent")
    threads[1].start()
    # The second batch is claimed and rendered, and waits at the gate ...
    wait_for(lambda: gate.waiting == 1, what="the second batch at the gate")
    assert _statuses(db, second) == {"claimed"}
    # ... sending nothing while the first batch's outcomes are unwritten.
    assert sending == [first]
    assert _statuses(db, first) == {"claimed"}
    release_first.set()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert sending == [first, second]
    assert _statuses(db, first + second) == {"sent"}
    assert smtp.mailbox.count() == len(first) + len(second)


def test_a_batch_that_waits_too_long_at_the_gate_gives_its_rows_back_unsent(
    client,
    smtp: SmtpServer,
    db: Database,
    settings: Settings,
    job_queue,
    redis_client: redis.Redis,
) -> None:
    run_id, [(batch_id, ids), *_] = _batches(client, db, settings)
    # Half of a 2-second lease is left for sending: the batch waits at most about a second.
    short = settings.model_copy(update={"lease_seconds": 2.0})
    processor = BatchProcessor(db=db, settings=short, queue=job_queue, loop=get_loop())
    delayed = redis_key(settings.redis_namespace, f"{settings.queue_urgent}.DQ")
    before = redis_client.llen(delayed)
    gate = processor._gates[False]
    gate.acquire()  # another thread's batch, held up in its sends
    try:
        report = processor.process(run_id, ids, batch_id)
    finally:
        gate.release()
    assert report.claimed == 0
    assert smtp.mailbox.count() == 0
    assert _statuses(db, ids) == {"pending"}, "given back at once, not when the lease ends"
    # The same batch is queued again, to be taken up at once (by way of the delay queue).
    assert redis_client.llen(delayed) == before + 1
    assert job_queue.markers.alive([batch_id]) == [True]
    # Processed again, it is sent once.
    assert processor.process(run_id, ids, batch_id).sent == len(ids)
    assert smtp.mailbox.count() == len(ids)
