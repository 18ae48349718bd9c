"""Where a delivery's CPU goes: the engine's steps for one campaign, timed in one process.

    python -m bench.steps                         # 20,000 recipients, SQLite, 3 timed passes
    python -m bench.steps --database postgresql --recipients 50000 --repeat 5

Set-up (not timed) as ``bench.pipeline`` does it: a private Redis, a fresh database, the
service's migrations, N recipients with a ``null`` address each, the API to publish the
benchmark's greeting and to submit and approve its campaign. No worker runs. This process then
plans the run (the engine's planner) and works every batch through the engine's
:class:`~dispatcher.engine.batch.BatchProcessor`, one after the other on one thread, timing each
step on the process's CPU clock: the claim, the render (the messages, and each one's channel
account), the send (on the process's event loop, through the ``null`` adapter) and the record.
The first pass warms up (templates compiled, the adapter opened) and is not counted; before
each pass the run's deliveries, attempts and leases are deleted and its batches opened again.

Printed per delivery: each step's CPU microseconds, the rest of the batch's work (the send
gate, the lease checks, the run's completion check), and the total, as the fastest and the
mean of the timed passes; on PostgreSQL also the database's own CPU (the backends serving the
benchmark's database). Other processes' CPU and steal are printed for every pass: a pass
where they pass 0.25 cores is flagged. These are the figures ``docs/performance.md`` quotes as
"where a delivery's CPU goes"; the pipeline's workers spend more per delivery (the broker,
the planner beside the sends, two processes sharing the cores).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from bench.common import (
    DEFAULT_POSTGRES_URL,
    BenchError,
    Service,
    cpu_seconds_by_role,
    cpu_share,
    cpu_snapshot,
    create_postgres_database,
    disturbed,
    drop_postgres_database,
)
from bench.pipeline import (
    CAMPAIGN_VARIABLES,
    TEMPLATE,
    TEMPLATE_KEY,
    PostgresBackends,
    insert_recipients,
    run_of,
)

STEPS = ("claim", "render", "send", "record")
T = TypeVar("T")


def reset(url: str, run_id: int) -> list[str]:
    """The run as planned again: no deliveries, attempts or leases, every batch open. Returns
    the batches' job ids in order."""
    from sqlalchemy import text

    from dispatcher.core.db import create_db_engine

    engine = create_db_engine(url)
    try:
        with engine.begin() as connection:
            p = {"r": run_id}
            connection.execute(
                text(
                    "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries d"
                    " WHERE d.run_id = :r)"
                ),
                p,
            )
            connection.execute(text("DELETE FROM deliveries WHERE run_id = :r"), p)
            connection.execute(text("DELETE FROM leases WHERE run_id = :r"), p)
            connection.execute(
                text(
                    "UPDATE batches SET status = 'open', lease_until = NULL, reclaimed = false"
                    " WHERE run_id = :r"
                ),
                p,
            )
            connection.execute(text("UPDATE runs SET status = 'running' WHERE id = :r"), p)
            connection.execute(
                text(
                    "UPDATE campaigns SET status = 'running'"
                    " WHERE id = (SELECT campaign_id FROM runs WHERE id = :r)"
                ),
                p,
            )
            return [
                str(job)
                for job in connection.execute(
                    text("SELECT job_id FROM batches WHERE run_id = :r ORDER BY id"), p
                ).scalars()
            ]
    finally:
        engine.dispose()


class Stopwatch:
    """CPU seconds of this process spent in each step."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STEPS, 0.0)

    def wrap(self, step: str, fn: Callable[..., T]) -> Callable[..., T]:
        def timed(*args: Any, **kwargs: Any) -> T:
            started = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[step] += time.process_time() - started

        return timed


def timed_processor(watch: Stopwatch) -> Any:
    """The engine's batch processor, each step's method timed by ``watch``."""
    from dispatcher.core.config import get_settings
    from dispatcher.core.db import get_database
    from dispatcher.engine import backends
    from dispatcher.engine.batch import BatchProcessor
    from dispatcher.engine.loop import get_loop

    settings = get_settings()
    processor = BatchProcessor(
        db=get_database(), settings=settings, queue=backends.configure(settings), loop=get_loop()
    )
    processor._claim = watch.wrap("claim", processor._claim)  # type: ignore[method-assign]
    processor._render = watch.wrap("render", processor._render)  # type: ignore[method-assign]
    processor._record = watch.wrap("record", processor._record)  # type: ignore[method-assign]
    # The sends run on the event loop's thread; the process's clock counts them.
    run = processor.loop.run
    processor.loop.run = watch.wrap("send", run)  # type: ignore[method-assign]
    return processor


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.steps", description=__doc__)
    parser.add_argument("--recipients", type=int, default=20_000, help="N (default 20000)")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--batch-size", type=int, default=1000, help="(default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes (default 3)")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("DISPATCHER_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="admin URL allowed to CREATE DATABASE (PostgreSQL only)",
    )
    args = parser.parse_args(argv)
    if args.recipients < 1 or args.repeat < 1 or args.batch_size < 1:
        parser.error("--recipients, --repeat and --batch-size must be at least 1")
    n = args.recipients
    print(
        f"\n== engine steps: {n:,} recipients on {args.database}, batch size {args.batch_size}, "
        f"1 warm-up and {args.repeat} timed passes, one thread =="
    )
    with contextlib.ExitStack() as cleanup:
        service = Service("steps", cleanup)
        service.start_redis()
        backends: PostgresBackends | None = None
        if args.database == "sqlite":
            url = f"sqlite:///{service.workdir / 'bench.db'}"
        else:
            name, url = create_postgres_database(args.postgres_url)
            cleanup.callback(drop_postgres_database, args.postgres_url, name)
            backends = PostgresBackends(args.postgres_url, name)
        service.configure(url, {"DISPATCHER_BATCH_SIZE": str(args.batch_size)})
        service.migrate()
        insert_recipients(url, n)
        service.start_api(timeout=60)
        service.publish(TEMPLATE)
        campaign_id = service.submit(
            {
                "name": f"Chúc mừng năm mới — steps {n:,}",
                "kind": "greeting",
                "template": TEMPLATE_KEY,
                "audience": {"all": True},
                "channels": ["null"],
                "variables": CAMPAIGN_VARIABLES,
            }
        )
        service.approve(campaign_id)
        assert service.api is not None
        service.api.stop()
        run_id, _ = run_of(url, campaign_id)

        # This process is the worker from here: the service's settings, its engine.
        os.environ.update(service.env)
        from dispatcher.core.config import get_settings
        from dispatcher.core.db import get_database
        from dispatcher.engine import planner
        from dispatcher.observability.logging import configure_logging

        get_settings.cache_clear()
        # The service's warnings and errors only: a line per batch would be timed too.
        configure_logging("WARNING")
        watch = Stopwatch()
        # Made first: it configures the job queue, which the planner queues its batches on.
        processor = timed_processor(watch)
        planner.plan_run(db=get_database(), run_id=run_id, settings=get_settings(), ahead=False)
        passes: list[dict[str, float]] = []
        for number in range(args.repeat + 1):
            jobs = reset(url, run_id)
            watch.seconds = dict.fromkeys(STEPS, 0.0)
            before = cpu_snapshot([], backends)
            started = time.process_time()
            sent = 0
            for job in jobs:
                sent += processor.process(run_id, [], job).sent
            total = time.process_time() - started
            after = cpu_snapshot([], backends)
            if sent != n:
                raise BenchError(f"pass {number}: {sent:,} of {n:,} sent")
            if number == 0:
                continue
            share = cpu_share(before, after)
            figures = {step: watch.seconds[step] / n * 1e6 for step in STEPS}
            figures["rest"] = (total - sum(watch.seconds.values())) / n * 1e6
            figures["total"] = total / n * 1e6
            if backends is not None:
                figures["database"] = cpu_seconds_by_role(before, after).get("postgresql", 0.0)
                figures["database"] = figures["database"] / n * 1e6
            figures["others"] = share["others_cores"]
            figures["steal"] = share["steal_cores"]
            passes.append(figures)
            flag = "  ← disturbed" if disturbed(share) else ""
            print(
                f"  pass {number}: "
                + ", ".join(f"{k} {figures[k]:.1f}" for k in (*STEPS, "rest", "total"))
                + (f", database {figures['database']:.1f}" if backends is not None else "")
                + f" µs/delivery; other processes {share['others_cores']:.2f} cores, "
                f"steal {share['steal_cores']:.2f}{flag}",
                flush=True,
            )
    keys = [*STEPS, "rest", "total"] + (["database"] if backends is not None else [])
    print(f"\n-- results: engine steps, {args.database}, N={n:,}, {args.repeat} passes --")
    print(f"  {'µs per delivery':16s} {'fastest':>8s} {'mean':>8s}")
    for key in keys:
        values = [p[key] for p in passes]
        print(f"  {key:16s} {min(values):8.1f} {sum(values) / len(values):8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
