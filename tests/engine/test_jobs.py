"""The typed jobs: each kind picks its queue from the work's priority."""

from __future__ import annotations

from dispatcher.core.config import load_settings
from dispatcher.engine import jobs


def test_urgent_work_goes_to_the_urgent_queue_and_the_rest_to_bulk() -> None:
    settings = load_settings()
    urgent = jobs.send_batch(
        run_id=1, ids=[3, 4], batch_id="b", priority="urgent", settings=settings
    )
    bulk = jobs.plan_run(run_id=2, priority="bulk", settings=settings)
    assert (urgent.queue, urgent.actor_name) == (
        settings.queue_urgent,
        jobs.actor_name(jobs.SEND_BATCH, settings.queue_urgent),
    )
    assert urgent.args == (1, [3, 4], "b") and urgent.batch_id == "b"
    assert (bulk.queue, bulk.actor_name, bulk.args) == (
        settings.queue_bulk,
        jobs.actor_name(jobs.PLAN_RUN, settings.queue_bulk),
        (2,),
    )


def test_a_delayed_batch_never_arrives_before_its_rows() -> None:
    settings = load_settings()

    def delay_ms(seconds: float) -> int | None:
        job = jobs.send_batch(
            run_id=1, ids=[1], batch_id="b", priority="bulk", settings=settings, delay=seconds
        )
        return job.delay_ms

    assert delay_ms(0) is None
    assert delay_ms(1.0001) == 1001
    assert delay_ms(30) == 30_000
