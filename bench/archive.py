"""Monthly partitions and archives at scale, on PostgreSQL: how long migration 0018 takes to
convert a database of ``--rows`` deliveries (and as many attempts), and how long
``dispatcher archive`` takes to export, verify and drop a month of them, with the peak memory of
the archiving process.

It makes a throwaway database on ``--postgres`` (the server's admin URL), fills it at revision
0017 (``--runs`` runs of one month, each to ``rows / runs`` recipients, one sent delivery and one
attempt per recipient, written by the server with ``INSERT ... SELECT``), times the upgrade to
0018, then times the archive of that month in this process, reading its peak resident memory
before and after (``ru_maxrss``). Run it on an otherwise idle machine:

    .venv/bin/python -m bench.archive --rows 1000000
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from alembic import command
from sqlalchemy import insert, select

from dispatcher.core import migrate
from dispatcher.core.db import Database
from dispatcher.deliveries import archive
from dispatcher.tables.campaigns import Campaign, Run
from dispatcher.tables.content import Template
from dispatcher.tables.recipients import Recipient

MONTH = datetime(2026, 10, 12, 3, 0, tzinfo=UTC)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fill(url: str, rows: int, runs: int) -> None:
    """Runs and recipients at the head revision, then down to 0017 and the rows there."""
    config = migrate.alembic_config(url)
    command.upgrade(config, "head")
    per_run = max(1, rows // runs)
    db = Database(url)
    with db.transaction() as session:
        template_id = session.execute(
            insert(Template).values(key="bench", kind="policy_news").returning(Template.id)
        ).scalar_one()
        campaign_id = session.execute(
            insert(Campaign)
            .values(
                name="Bench",
                kind="policy_news",
                template_id=template_id,
                audience={"all": True},
                channels=["email"],
                priority="bulk",
                status="completed",
            )
            .returning(Campaign.id)
        ).scalar_one()
        session.execute(
            insert(Run),
            [
                {
                    "campaign_id": campaign_id,
                    "scheduled_for": MONTH + timedelta(minutes=index),
                    "slot": f"bench-{index}",
                    "status": "completed",
                }
                for index in range(runs)
            ],
        )
        session.execute(
            insert(Recipient),
            [
                {"external_id": f"{index:010d}", "full_name": "Người nhận"}
                for index in range(per_run)
            ],
        )
        assert session.scalar(select(Run.id).limit(1)) is not None
    db.dispose()
    command.downgrade(config, "0017")
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO deliveries (run_id, campaign_id, recipient_id, channel, status, "
            "available_at, attempts, failures, reclaimed, created_at, updated_at, sent_at) "
            "SELECT r.id, r.campaign_id, p.id, 'email', 'sent', r.scheduled_for, 1, 0, false, "
            "r.scheduled_for, r.scheduled_for, r.scheduled_for FROM runs r CROSS JOIN recipients p"
        )
        connection.execute(
            "INSERT INTO attempts (delivery_id, number, started_at, duration_ms, outcome, "
            "possible_duplicate, worker) SELECT id, 1, created_at, 40, 'sent', false, 'bench' "
            "FROM deliveries"
        )
        connection.execute("VACUUM ANALYZE deliveries")
        connection.execute("VACUUM ANALYZE attempts")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="deliveries (and attempts)")
    parser.add_argument("--runs", type=int, default=100, help="runs of the month")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="the PostgreSQL server's admin URL (a database is made and dropped on it)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    name = f"dispatcher_bench_{uuid.uuid4().hex[:8]}"
    base = args.postgres.rsplit("/", 1)[0]
    url = f"{base}/{name}"
    with psycopg.connect(args.postgres, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        started = time.perf_counter()
        _fill(url, args.rows, args.runs)
        with psycopg.connect(url) as connection:
            (deliveries,) = connection.execute("SELECT count(*) FROM deliveries").fetchone() or (0,)
        print(
            f"filled {deliveries} deliveries and attempts in {time.perf_counter() - started:.1f} s"
        )

        started = time.perf_counter()
        command.upgrade(migrate.alembic_config(url), "0018")
        converted = time.perf_counter() - started
        print(
            f"migration 0018 (partitioning) of {deliveries} deliveries and attempts: "
            f"{converted:.1f} s ({deliveries / converted:,.0f} deliveries/s)"
        )

        db = Database(url)
        before = _peak_mib()
        with tempfile.TemporaryDirectory() as directory:
            started = time.perf_counter()
            result = archive.archive_month(db, 202610, Path(directory), current=202612)
            took = time.perf_counter() - started
            size = sum(p.stat().st_size for p in (Path(directory) / "2026-10").iterdir())
        db.dispose()
        print(
            f"archive of 2026-10 ({result.rows}): {took:.1f} s "
            f"({deliveries / took:,.0f} deliveries/s), files {size / 2**20:.1f} MiB; "
            f"peak RSS {before:.0f} MiB before, {_peak_mib():.0f} MiB after"
        )
    finally:
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
