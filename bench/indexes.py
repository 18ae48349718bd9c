"""What each index on the deliveries table costs an insert, at about a million rows.

    python -m bench.indexes                                    # SQLite, 1,000,000 rows
    python -m bench.indexes --database postgresql --rows 1000000 --insert 100000

The table is the service's ``deliveries`` (its columns, no index but the primary key), filled
with ``--rows`` final rows (``sent``), as a campaign leaves them. Then, for no extra index, for
each index alone, for the indexes the service had before batch rows, and for the ones it has now,
``--insert`` more final rows are inserted as the record path inserts them (500-row multi-row
INSERTs on SQLite, ``COPY`` of 500 rows on PostgreSQL) in a transaction that is then rolled
back, so every measurement starts from the same table. The figure per index is its extra
microseconds per inserted row over no index, each measured right before it (the fastest of
``--repeat`` runs of each, the figure least disturbed by other work on the machine). A partial index
whose predicate a final row does not meet (``WHERE status IN ('pending', ...)``) costs a final
row nothing, and holds nothing: that is why the open-work indexes are partial. Each index's size
over the ``--rows`` final rows is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

OPEN = "WHERE status IN ('pending', 'claimed', 'retrying')"
CLAIMABLE = "WHERE status IN ('pending', 'retrying')"

# (name, definition, which set it belongs to: "before", "now" or both)
INDEXES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "uq_deliveries_run_id_recipient_id_channel",
        "UNIQUE (run_id, recipient_id, channel)",
        ("before", "now"),
    ),
    ("ix_deliveries_campaign_id_status", "(campaign_id, status, channel)", ("before", "now")),
    ("ix_deliveries_recipient_id", "(recipient_id)", ("before", "now")),
    ("ix_deliveries_campaign_id_id", "(campaign_id, id)", ("before", "now")),
    ("ix_deliveries_run_id_id", "(run_id, id)", ("before", "now")),
    ("ix_deliveries_updated_at", "(updated_at)", ("before", "now")),
    ("ix_deliveries_run_id_status", "(run_id, status)", ("before",)),
    ("ix_deliveries_status_available_at", "(status, available_at)", ("before",)),
    ("ix_deliveries_batch_id", "(batch_id)", ("before",)),
    ("ix_deliveries_open_run_id", f"(run_id) {OPEN}", ("now",)),
    ("ix_deliveries_due", f"(available_at) {CLAIMABLE}", ("now",)),
    ("ix_deliveries_open_batch_id", f"(batch_id) {OPEN}", ("now",)),
)

COLUMNS = (
    "id",
    "run_id",
    "campaign_id",
    "recipient_id",
    "channel",
    "status",
    "batch_id",
    "available_at",
    "attempts",
    "failures",
    "reclaimed",
    "locale",
    "provider_message_id",
    "error_class",
    "error_reason",
    "created_at",
    "updated_at",
    "sent_at",
)
DDL = """CREATE TABLE bench_index_deliveries (
    id {bigint} PRIMARY KEY, run_id {bigint} NOT NULL, campaign_id {bigint} NOT NULL,
    recipient_id {bigint} NOT NULL, channel VARCHAR(32) NOT NULL, status VARCHAR(16) NOT NULL,
    batch_id VARCHAR(32), available_at {ts} NOT NULL, lease_until {ts},
    attempts INTEGER NOT NULL, failures INTEGER NOT NULL, reclaimed BOOLEAN NOT NULL,
    locale VARCHAR(16), provider_message_id VARCHAR(200), error_class VARCHAR(32),
    error_reason TEXT, created_at {ts} NOT NULL, updated_at {ts} NOT NULL, sent_at {ts})"""
CHUNK = 500
BASE = datetime(2026, 3, 10, 3, 0, tzinfo=UTC).replace(tzinfo=None)


def rows(first: int, count: int, *, run_id: int) -> Iterator[tuple[Any, ...]]:
    """Final rows as a campaign's batches leave them: ids, recipients and times ascending."""
    for i in range(first, first + count):
        at = BASE + timedelta(microseconds=i * 40)
        yield (
            i,
            run_id,
            run_id,
            i,
            "email",
            "sent",
            f"{i // CHUNK:032x}",
            at,
            1,
            0,
            False,
            "vi",
            f"<d{i}.abcdef@bhxh.example>",
            None,
            None,
            at,
            at,
            at,
        )


class Target:
    """One database: make the table, insert in the record's way, roll back, (un)index."""

    def __init__(self, kind: str, url: str | None) -> None:
        self.kind = kind
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        if kind == "sqlite":
            self.tmp = tempfile.TemporaryDirectory(prefix="bench-indexes-")
            self.conn: Any = sqlite3.connect(
                os.path.join(self.tmp.name, "indexes.db"), isolation_level=None
            )
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA cache_size=-262144")
            ddl = DDL.format(bigint="INTEGER", ts="DATETIME")
        else:
            import psycopg

            assert url is not None
            self.conn = psycopg.connect(url, autocommit=True)
            self.conn.execute("DROP TABLE IF EXISTS bench_index_deliveries")
            ddl = DDL.format(bigint="BIGINT", ts="TIMESTAMP")
        self.conn.execute(ddl)

    def close(self) -> None:
        if self.kind == "postgresql":
            self.conn.execute("DROP TABLE IF EXISTS bench_index_deliveries")
        self.conn.close()
        if self.tmp is not None:
            self.tmp.cleanup()

    def _insert(self, chunk: Sequence[tuple[Any, ...]]) -> None:
        if self.kind == "sqlite":
            one = "(" + ", ".join("?" * len(COLUMNS)) + ")"
            self.conn.execute(
                f"INSERT INTO bench_index_deliveries ({', '.join(COLUMNS)}) VALUES "
                + ", ".join([one] * len(chunk)),
                [value for row in chunk for value in row],
            )
            return
        with (
            self.conn.cursor() as cursor,
            cursor.copy(f"COPY bench_index_deliveries ({', '.join(COLUMNS)}) FROM STDIN") as copy,
        ):
            for row in chunk:
                copy.write_row(row)

    def fill(self, count: int) -> None:
        self._begin()
        batch: list[tuple[Any, ...]] = []
        for row in rows(1, count, run_id=1):
            batch.append(row)
            if len(batch) == CHUNK:
                self._insert(batch)
                batch = []
        if batch:
            self._insert(batch)
        self._commit()
        if self.kind == "postgresql":
            self.conn.execute("VACUUM ANALYZE bench_index_deliveries")

    def _begin(self) -> None:
        self.conn.execute("BEGIN")

    def _commit(self) -> None:
        self.conn.execute("COMMIT")

    def timed_insert(self, first: int, count: int) -> float:
        """Seconds to insert ``count`` rows in ``CHUNK``-row statements, then rolled back."""
        chunks: list[list[tuple[Any, ...]]] = []
        batch: list[tuple[Any, ...]] = []
        for row in rows(first, count, run_id=2):
            batch.append(row)
            if len(batch) == CHUNK:
                chunks.append(batch)
                batch = []
        if batch:
            chunks.append(batch)
        self._begin()
        started = time.perf_counter()
        for chunk in chunks:
            self._insert(chunk)
        elapsed = time.perf_counter() - started
        self.conn.execute("ROLLBACK")
        return elapsed

    def create(self, name: str, definition: str) -> None:
        if definition.startswith("UNIQUE"):
            columns = definition.removeprefix("UNIQUE ")
            self.conn.execute(f"CREATE UNIQUE INDEX {name} ON bench_index_deliveries {columns}")
        else:
            columns, _, where = definition.partition(")")
            self.conn.execute(f"CREATE INDEX {name} ON bench_index_deliveries {columns}){where}")

    def drop(self, name: str) -> None:
        self.conn.execute(f"DROP INDEX {name}")

    def size(self, name: str) -> int:
        """Bytes the index takes (on SQLite: the pages it added to the file)."""
        if self.kind == "postgresql":
            return int(self.conn.execute("SELECT pg_relation_size(%s)", (name,)).fetchone()[0])
        return int(self._pages()) - self._before

    def _pages(self) -> int:
        page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        free = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page_size)

    def mark(self) -> None:
        if self.kind == "sqlite":
            self._before = self._pages()


def measure(target: Target, first: int, count: int, repeat: int) -> float:
    return min(target.timed_insert(first, count) for _ in range(repeat))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "DISPATCHER_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows already in the table")
    parser.add_argument("--insert", type=int, default=100_000, help="rows inserted per figure")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    target = Target(args.database, args.postgres_url if args.database == "postgresql" else None)
    first = args.rows + 1
    results: dict[str, Any] = {
        "database": args.database,
        "rows": args.rows,
        "inserted": args.insert,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        started = time.perf_counter()
        target.fill(args.rows)
        print(f"{args.database}: {args.rows:,} rows in {time.perf_counter() - started:.1f} s")
        base = measure(target, first, args.insert, args.repeat)
        per_row = 1e6 / args.insert
        print(f"  no index but the key         {base * per_row:7.2f} µs/row")
        costs: dict[str, float] = {}
        sizes: dict[str, int] = {}
        for name, definition, _ in INDEXES:
            base = measure(target, first, args.insert, args.repeat)
            target.mark()
            target.create(name, definition)
            sizes[name] = target.size(name)
            seconds = measure(target, first, args.insert, args.repeat)
            target.drop(name)
            costs[name] = (seconds - base) * per_row
            print(
                f"  + {name:<42} {costs[name]:+7.2f} µs/row, "
                f"{sizes[name] / 2**20:6.1f} MiB at {args.rows:,} final rows"
            )
        sets: dict[str, float] = {}
        for which in ("before", "now"):
            chosen = [(n, d) for n, d, s in INDEXES if which in s]
            for name, definition in chosen:
                target.create(name, definition)
            seconds = measure(target, first, args.insert, args.repeat)
            for name, _ in chosen:
                target.drop(name)
            sets[which] = seconds * per_row
            print(
                f"  all {len(chosen)} indexes {which:<6}            {sets[which]:7.2f} µs/row "
                f"({args.insert / seconds:,.0f} rows/s)"
            )
        results.update(base_us=base * per_row, index_us=costs, index_bytes=sizes, sets_us=sets)
    finally:
        target.close()
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"indexes-{args.database}-{int(time.time())}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"  written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
