"""End-to-end benchmark of the delivery pipeline, with its floors, CPU and peak memory.

    python -m bench.pipeline                          # 100,000 recipients, SQLite
    python -m bench.pipeline --recipients 1000000     # a million
    python -m bench.pipeline --database postgresql
    python -m bench.pipeline --compare 100000,1000000 # does peak memory grow with N?
    python -m bench.pipeline --recipients 1000000 --urgent 1000   # does urgent beat bulk?
    python -m bench.pipeline --database postgresql --recipients 10000000 --floors none

One measurement, from scratch each time:

1. *Setup (not timed).* A private ``redis-server`` on a free port (or ``--redis-url``), a fresh
   SQLite file in a temporary directory (or a throwaway PostgreSQL database, dropped at the end),
   ``dispatcher migrate``, N recipients with Vietnamese names and a ``null`` address each
   (``COPY`` on PostgreSQL, ``executemany`` on SQLite; not the API), two API keys written to the
   database (one submits, the other approves: the two-person rule), the API (``dispatcher
   serve``) and the bulk workers (``dispatcher worker --queues bulk``) as real subprocesses, and
   the templates published through the API. With ``--urgent``, urgent workers too
   (``dispatcher worker --queues urgent``, as in docker-compose).
2. *End to end (timed).* POST /v1/campaigns → submit → approve (the other key); the clock runs
   from the approve call until GET /v1/campaigns/{id} says ``completed`` with N sent (polled
   every 0.5 s, every 1 s from 500,000 recipients up), and on the server's clock from
   ``approved_at`` to ``completed_at``. Peak RSS of every process group (the API, the worker
   trees, Redis, the PostgreSQL backends of the run's database) is sampled every 0.2 s, and the
   CPU each group used is given per delivery.
3. *Urgent beats bulk* (``--urgent M``). Once a quarter of the bulk campaign is sent, a
   ``fraud_warning`` campaign (urgent priority) to M of the same recipients is created and
   approved; the urgent workers plan it in batches of ``--urgent-batch-size`` (100: 1,000
   recipients go in 10 batches, so the figure times sends, not one batch's write). The database
   then tells, on the server's clock, how long after its approval its first and its last
   delivery went (targets: 1 s and 5 s), and how many bulk deliveries went in that time.
4. *Disk.* On PostgreSQL, the size of the tables that grow (``deliveries``, ``attempts``, and
   ``batches``, ``leases`` when they exist) and of every partition ``pg_inherits`` lists under
   them, per million deliveries; on SQLite, the database file's.
5. *The planner alone.* An identical second campaign is created and launched with the service
   functions in a separate process whose job queue is a Redis queue nobody serves; that process
   then times ``planner.plan_run`` (its RSS sampled the same way) and cancels the campaign, so
   nothing sends it.
6. *The floors* (:mod:`bench.floors`, ``--floors``). The same deliveries with the service's own
   renderer, on copies of the run's own tables, from as many processes as the service has
   workers, checked for disturbance like the timed phase: today's write pattern (insert
   pending, claim, update with the outcome, insert the attempt) and the insert-only pattern
   (one row per delivery written once). The service's ratio to each is printed.

Figures are printed and written to ``bench/results/pipeline-<db>-<N>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx
import psutil

from bench.common import (
    DEFAULT_POSTGRES_URL,
    RESULT_TAG,
    BenchError,
    CpuSnapshot,
    Managed,
    MiB,
    Person,
    RssSampler,
    Service,
    check_redis,
    cpu_by_process,
    cpu_seconds_by_role,
    cpu_share,
    cpu_snapshot,
    create_postgres_database,
    dispatcher_command,
    disturbed,
    drop_postgres_database,
    iso,
    machine,
    parse_env,
    relative,
    run_main,
    wait_for_api,
    wait_until,
    write_json,
)
from bench.common import SURNAMES as COMMON_SURNAMES
from bench.common import person as common_person
from bench.floors import LABELS, PATTERNS, FloorResult, FloorSpec, Template, run_floor

POLL_SECONDS = 0.5
PROGRESS_SECONDS = 2.0

TEMPLATE_KEY = "bench_greeting"
SUBJECT = "Chúc mừng năm mới {{ year }} — {{ recipient.full_name }}"
BODY = (
    "Kính gửi {{ recipient.honorific }} {{ recipient.full_name }},\n\n"
    "Nhân dịp năm mới {{ year }}, Bảo hiểm xã hội Việt Nam kính chúc {{ recipient.honorific }} "
    "{{ recipient.given_name }} và gia đình một năm mới an khang, hạnh phúc.\n"
    "Mã số BHXH: {{ recipient.external_id }} · {{ recipient.province }}.\n"
    "Tra cứu quyền lợi trên ứng dụng VssID hoặc gọi Tổng đài {{ hotline }}."
    "{% if unsubscribe_url %}\n\nHủy đăng ký: {{ unsubscribe_url }}{% endif %}"
)
TEMPLATE: dict[str, Any] = {
    "key": TEMPLATE_KEY,
    "kind": "greeting",
    "description": "Benchmark greeting (bench.pipeline)",
    "defaults": {"year": "2026", "hotline": "1900 9068"},
    "variants": [{"channel": "default", "locale": "vi", "subject": SUBJECT, "body": BODY}],
}
CAMPAIGN_VARIABLES = {"year": "Bính Ngọ 2026"}
URGENT_TEMPLATE_KEY = "bench_fraud_warning"
URGENT_TEMPLATE: dict[str, Any] = {
    "key": URGENT_TEMPLATE_KEY,
    "kind": "fraud_warning",
    "description": "Benchmark fraud warning (bench.pipeline --urgent)",
    "defaults": {"hotline": "1900 9068"},
    "variants": [
        {
            "channel": "default",
            "locale": "vi",
            "subject": "Cảnh báo lừa đảo — {{ recipient.full_name }}",
            "body": (
                "Kính gửi {{ recipient.honorific }} {{ recipient.full_name }}: cơ quan BHXH không "
                "bao giờ gọi điện yêu cầu chuyển tiền. Mã số BHXH {{ recipient.external_id }}. "
                "Nghi ngờ lừa đảo, gọi {{ hotline }}."
                "{% if unsubscribe_url %} Hủy đăng ký: {{ unsubscribe_url }}{% endif %}"
            ),
        }
    ],
}
# The urgent campaign is approved once this share of the bulk campaign is sent.
URGENT_AFTER = 0.25
URGENT_POLL_SECONDS = 0.1


# -- recipients ---------------------------------------------------------------------------------

# The pipeline's recipients draw from the first 18 of the common surnames, as they always
# have: the same N recipients, so figures compare with earlier runs.
SURNAMES = COMMON_SURNAMES[:18]


def person(i: int) -> Person:
    """The i-th recipient (1-based), the same on every run: :func:`bench.common.person` with
    the pipeline's surnames."""
    return common_person(i, SURNAMES)


# -- the databases ------------------------------------------------------------------------------


class PostgresBackends:
    """Called, lists the server processes connected to database ``name``; :meth:`label` says
    what one of them was doing when last listed (its backend type, e.g. ``autovacuum worker``,
    and the start of its query).

    It keeps one admin connection (to the admin URL's database, so never one of the listed)
    for every call: the RSS sampler asks five times a second, and a new connection each time
    would have the server fork a backend each time. A broken connection is opened again."""

    def __init__(self, admin_url: str, name: str) -> None:
        self.admin_url = admin_url
        self.name = name
        self._lock = threading.Lock()
        self._held: list[Any] = []
        self._labels: dict[int, str] = {}

    def __call__(self) -> list[int]:
        import psycopg

        with self._lock:
            held = self._held
            try:
                if not held or held[0].closed:
                    held[:] = [psycopg.connect(self.admin_url, autocommit=True, connect_timeout=3)]
                rows = (
                    held[0]
                    .execute(
                        "SELECT pid, application_name, backend_type, left(query, 60) "
                        "FROM pg_stat_activity WHERE datname = %s",
                        (self.name,),
                    )
                    .fetchall()
                )
            except psycopg.Error:
                if held:
                    with contextlib.suppress(psycopg.Error):
                        held[0].close()
                held.clear()
                return []
            self._labels = {
                int(pid): f"{application or '-'} {kind}: {' '.join((query or '').split())}"
                for pid, application, kind, query in rows
            }
        return [int(row[0]) for row in rows]

    def label(self, pid: int) -> str:
        with self._lock:
            return self._labels.get(pid, "")


RECIPIENT_COLUMNS = (
    "id",
    "external_id",
    "full_name",
    "birth_date",
    "province",
    "language",
    "kind",
    "attributes",
    "created_at",
    "updated_at",
)
ADDRESS_COLUMNS = ("recipient_id", "channel", "value")


def recipient_rows(
    start: int, stop: int, now: Any
) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """(recipient row, address row) for ids start..stop-1, in the columns above."""
    for i in range(start, stop):
        p = person(i)
        yield (
            (i, p.external_id, p.full_name, p.birth_date, p.province, "vi", p.kind, "{}", now, now),
            (i, "null", f"null:{p.external_id}"),
        )


def insert_recipients(url: str, n: int, chunk: int = 50_000) -> None:
    """N recipients with a ``null`` address each (ids 1..N), with the driver's bulk paths:
    ``COPY`` on PostgreSQL, ``executemany`` in one transaction on SQLite (ten million take
    minutes, not hours)."""
    now_aware = datetime.now(UTC)
    if url.startswith("sqlite"):
        now = f"{now_aware.replace(tzinfo=None):%Y-%m-%d %H:%M:%S.%f}"
        connection = sqlite3.connect(url.split("///", 1)[1], isolation_level=None, timeout=60)
        try:
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("BEGIN IMMEDIATE")
            for start in range(1, n + 1, chunk):
                rows = list(recipient_rows(start, min(n + 1, start + chunk), now))
                connection.executemany(
                    f"INSERT INTO recipients ({', '.join(RECIPIENT_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(RECIPIENT_COLUMNS))})",
                    [r for r, _ in rows],
                )
                connection.executemany(
                    f"INSERT INTO addresses ({', '.join(ADDRESS_COLUMNS)}) VALUES (?, ?, ?)",
                    [a for _, a in rows],
                )
            connection.execute("COMMIT")
        finally:
            connection.close()
        return
    import psycopg

    from bench.floors import _pg_url

    with psycopg.connect(_pg_url(url)) as pg:
        naive = now_aware.replace(tzinfo=None)
        with pg.cursor() as cursor:
            recipients = f"COPY recipients ({', '.join(RECIPIENT_COLUMNS)}) FROM STDIN"
            with cursor.copy(recipients) as copy:
                for start in range(1, n + 1, chunk):
                    for row, _ in recipient_rows(start, min(n + 1, start + chunk), naive):
                        copy.write_row(row)
            with cursor.copy(f"COPY addresses ({', '.join(ADDRESS_COLUMNS)}) FROM STDIN") as copy:
                for i in range(1, n + 1):
                    copy.write_row((i, "null", f"null:{i:010d}"))
            cursor.execute("SELECT setval(pg_get_serial_sequence('recipients', 'id'), %s)", (n,))
        pg.commit()
        pg.execute("ANALYZE recipients")
        pg.execute("ANALYZE addresses")
        pg.commit()


ROLE_GROUPS = {
    "API": "api",
    "workers": "workers",
    "urgent workers": "urgent_workers",
    "redis-server": "redis",
    "postgresql": "database",
}


def service_cpu_us(
    before: CpuSnapshot, after: CpuSnapshot, n: int, database: str
) -> dict[str, Any]:
    """CPU microseconds per delivery of the timed phase, by process group: the API, the
    workers (the planner runs inside them), the database (PostgreSQL's backends serving the
    run's database; on SQLite the database works inside the workers), Redis; and their total
    (the benchmark's own polling left out)."""
    seconds = cpu_seconds_by_role(before, after)
    out: dict[str, Any] = {}
    for role, group in ROLE_GROUPS.items():
        if role in seconds:
            out[group] = round(seconds[role] / n * 1e6, 1)
    out["total"] = round(sum(v for v in out.values()), 1)
    out["planner"] = "inside the workers"
    if database == "sqlite":
        out["database"] = "inside the workers (SQLite is a library)"
    return out


def run_of(url: str, campaign_id: int) -> tuple[int, int]:
    """The id of the campaign's (first) run, and its month (``runs.period``)."""
    from sqlalchemy import text

    from dispatcher.core.db import create_db_engine

    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text(
                    "SELECT id, period FROM runs WHERE id ="
                    " (SELECT min(id) FROM runs WHERE campaign_id = :c)"
                ),
                {"c": campaign_id},
            ).first()
    finally:
        engine.dispose()
    if row is None:
        raise BenchError(f"campaign {campaign_id} has no run")
    return int(row[0]), int(row[1])


GROWING_TABLES = ("deliveries", "attempts", "batches", "leases")


def disk_layout(database: str, url: str, deliveries: int) -> dict[str, Any]:
    """Disk used by the tables that grow with deliveries, and per million deliveries.

    On PostgreSQL: ``pg_total_relation_size`` (table, indexes, TOAST) of ``deliveries``,
    ``attempts`` and (when they exist) ``batches`` and ``leases``, and of every partition
    ``pg_inherits`` lists under them, with its bounds; a partitioned parent holds nothing
    itself, so the sizes are its leaves'. On SQLite: the database file and its WAL.
    """
    per_million = 1e6 / max(1, deliveries)
    if database == "sqlite":
        path = Path(url.split("///", 1)[1])
        size = sum(
            q.stat().st_size for q in (path, path.with_name(path.name + "-wal")) if q.exists()
        )
        return {
            "database_file_bytes": size,
            "mib_per_million_deliveries": round(size / MiB * per_million, 1),
            "note": "the whole SQLite file (every table), with its WAL",
        }
    import psycopg

    from bench.floors import _pg_url

    query = """
        WITH RECURSIVE tree AS (
            SELECT c.oid, c.relname::text AS name, NULL::text COLLATE "C" AS parent, 0 AS level
            FROM pg_class c
            WHERE c.relname = ANY(%s) AND c.relnamespace = 'public'::regnamespace
              AND c.relkind IN ('r', 'p')
            UNION ALL
            SELECT i.inhrelid, ch.relname::text, tree.name, tree.level + 1
            FROM pg_inherits i JOIN tree ON i.inhparent = tree.oid
            JOIN pg_class ch ON ch.oid = i.inhrelid
        )
        SELECT t.name, t.parent, t.level, c.relkind, pg_total_relation_size(t.oid),
               pg_relation_size(t.oid), pg_get_expr(c.relpartbound, c.oid), c.reltuples
        FROM tree t JOIN pg_class c ON c.oid = t.oid
        ORDER BY t.level, t.name
    """
    with psycopg.connect(_pg_url(url), autocommit=True) as connection:
        rows = connection.execute(query, (list(GROWING_TABLES),)).fetchall()
    relations = [
        {
            "name": name,
            "parent": parent,
            "level": level,
            "partitioned": kind == "p",
            "total_bytes": int(total),
            "heap_bytes": int(heap),
            "bounds": bounds,
            "rows_estimate": int(max(0.0, tuples or 0.0)),
        }
        for name, parent, level, kind, total, heap, bounds, tuples in rows
    ]
    # Leaves only: a partitioned table's own size is zero, its partitions hold the rows.
    by_table: dict[str, int] = {}
    for relation in relations:
        if relation["partitioned"]:
            continue
        top = relation["name"]
        parents = {r["name"]: r["parent"] for r in relations}
        while parents.get(top):
            top = parents[top]
        by_table[top] = by_table.get(top, 0) + relation["total_bytes"]
    total = sum(by_table.values())
    return {
        "relations": relations,
        "bytes_by_table": by_table,
        "mib_per_million_deliveries": {
            table: round(size / MiB * per_million, 1) for table, size in by_table.items()
        },
        "total_mib_per_million_deliveries": round(total / MiB * per_million, 1),
        "partitioned": any(r["partitioned"] for r in relations),
    }


def floor_line(floor: FloorResult, rate: float) -> str:
    """One floor in a line: its rate, the service's ratio to it, how it was measured."""
    if floor.skipped:
        return f"{LABELS[floor.pattern]}: not run ({floor.skipped})"
    cpu = floor.cpu
    note = "  ← other processes or the hypervisor were busy: disturbed" if floor.disturbed else ""
    return (
        f"{floor.per_second:,.0f}/s ({floor.elapsed_s:.2f} s; render {floor.render_s:.1f} s, "
        f"database {floor.write_s:.1f} s over {floor.processes} processes; "
        f"CPU {floor.cpu_us_per_delivery.get('total', 0):.0f} µs/delivery); ours/floor "
        f"{rate / floor.per_second:.2f}; other processes {cpu.get('others_cores', 0):.2f} "
        f"cores, steal {cpu.get('steal_cores', 0):.2f}{note}"
    )


def database_checks(url: str, campaign_id: int) -> dict[str, Any]:
    """What the database holds for the campaign: deliveries by status, attempts, batches."""
    from sqlalchemy import func, select

    from dispatcher.core.db import create_db_engine
    from dispatcher.tables.deliveries import Attempt, Delivery

    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            by_status = dict(
                connection.execute(
                    select(Delivery.status, func.count())
                    .where(Delivery.campaign_id == campaign_id)
                    .group_by(Delivery.status)
                ).all()
            )
            attempts = connection.scalar(
                select(func.count())
                .select_from(Attempt)
                .join(Delivery, Delivery.id == Attempt.delivery_id)
                .where(Delivery.campaign_id == campaign_id)
            )
            duplicates = connection.scalar(
                select(func.count())
                .select_from(Attempt)
                .join(Delivery, Delivery.id == Attempt.delivery_id)
                .where(Delivery.campaign_id == campaign_id, Attempt.possible_duplicate)
            )
            # Batches as the rows name them (a column the write-once engine may drop).
            batch_column = Delivery.__table__.c.get("batch_id")
            batches = (
                connection.scalar(
                    select(func.count(func.distinct(batch_column))).where(
                        Delivery.campaign_id == campaign_id
                    )
                )
                if batch_column is not None
                else None
            )
        return {
            "deliveries_by_status": {str(k): int(v) for k, v in by_status.items()},
            "attempts": int(attempts or 0),
            "possible_duplicates": int(duplicates or 0),
            "batches": None if batches is None else int(batches),
        }
    finally:
        engine.dispose()


def open_rows(url: str, campaign_id: int) -> str:
    """Why rows are still open: how many, and when the earliest is due (a stall's hint)."""
    from sqlalchemy import func, select

    from dispatcher.core.db import create_db_engine
    from dispatcher.tables.deliveries import OPEN_STATUSES, Delivery

    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            count, due = connection.execute(
                select(func.count(), func.min(Delivery.available_at)).where(
                    Delivery.campaign_id == campaign_id, Delivery.status.in_(OPEN_STATUSES)
                )
            ).one()
    except Exception as exc:
        return f"(could not read the open rows: {exc})"
    finally:
        engine.dispose()
    return f"{count} open deliveries, the earliest due at {due} (now {datetime.now(UTC):%H:%M:%S})"


# -- the planner alone (runs in its own process) -------------------------------------------------


def planner_child(raw: str) -> int:
    """Create, submit and approve a campaign, time ``plan_run`` on its run, then cancel it.

    Started by the benchmark with DISPATCHER_* pointing at the benchmark's database and at
    queue names no worker serves; prints one ``BENCH_RESULT {json}`` line.
    """
    from sqlalchemy import distinct, select

    from dispatcher.campaigns import approval, lifecycle
    from dispatcher.campaigns.schemas import CampaignIn
    from dispatcher.core.config import get_settings
    from dispatcher.core.db import Database, set_database
    from dispatcher.engine import backends, jobs
    from dispatcher.engine.planner import plan_run
    from dispatcher.observability.logging import configure_logging
    from dispatcher.tables.campaigns import Run
    from dispatcher.tables.deliveries import Delivery

    campaign = json.loads(raw)
    configure_logging()
    settings = get_settings()
    backends.configure(settings)
    db = Database(settings.database_url)
    set_database(db)
    with db.transaction() as session:
        campaign_id = lifecycle.create(session=session, data=CampaignIn(**campaign)).id
    with db.transaction() as session:
        lifecycle.submit(session=session, campaign_id=campaign_id)
    with db.transaction() as session:
        approval.approve(session=session, campaign_id=campaign_id, settings=settings)
    with db.transaction() as session:
        run_id = session.scalar(select(Run.id).where(Run.campaign_id == campaign_id))
    assert run_id is not None
    me = psutil.Process()
    rss_before = me.memory_info().rss
    started = time.perf_counter()
    made = plan_run(db=db, run_id=run_id, settings=settings, ahead=False)
    elapsed = time.perf_counter() - started
    rss_after = me.memory_info().rss
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with db.transaction() as session:
        lifecycle.cancel(session=session, campaign_id=campaign_id, reason="benchmark: planner only")
    with db.transaction() as session:
        batch_ids = [
            b
            for b in session.scalars(
                select(distinct(Delivery.batch_id)).where(Delivery.campaign_id == campaign_id)
            )
            if b
        ]
    # Nobody serves these queues: remove their messages and the batch markers, nothing else.
    client = backends.redis_client(settings)
    for start in range(0, len(batch_ids), 1000):
        chunk = batch_ids[start : start + 1000]
        client.delete(*(jobs.redis_key(settings.redis_namespace, "batch", b) for b in chunk))
    for queue in (settings.queue_bulk, settings.queue_urgent):
        for key in client.scan_iter(match=jobs.redis_key(settings.redis_namespace, f"{queue}*")):
            client.delete(key)
    result = {
        "campaign_id": campaign_id,
        "run_id": run_id,
        "made": made,
        "elapsed_s": elapsed,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "ru_maxrss_bytes": max_rss,
    }
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


# -- one measurement ------------------------------------------------------------------------------


@dataclass(slots=True)
class Options:
    recipients: int
    database: str
    workers: int
    threads: int
    batch_size: int
    redis_url: str | None
    postgres_url: str
    prefetch: int | None
    extra_env: dict[str, str]
    timeout: float
    stuck_seconds: float
    stall_seconds: float
    keep: bool
    urgent: int = 0
    urgent_processes: int = 1
    urgent_threads: int = 4
    urgent_env: dict[str, str] = field(default_factory=dict)
    urgent_batch_size: int = 100
    floors: tuple[str, ...] = PATTERNS
    planner_alone: bool = True


@dataclass(slots=True)
class Outcome:
    completed: bool
    elapsed_s: float  # approve call -> the poll that saw completed (or all sent, if stuck)
    all_sent_s: float | None  # approve call -> the first poll that saw N sent
    server_elapsed_s: float | None  # campaigns.approved_at -> campaigns.completed_at
    planned_s: float | None  # campaigns.approved_at -> runs.planned_at
    final: dict[str, Any] = field(default_factory=dict)


def wait_for_campaign(
    client: httpx.Client,
    campaign_id: int,
    n: int,
    *,
    started: float,
    options: Options,
    watch: Sequence[Managed],
    diagnose: Callable[[], str],
    on_poll: Callable[[int], None] | None = None,
) -> Outcome:
    poll = poll_seconds(n)
    next_poll = started
    last_print, last_sent = started, 0
    progress_at, progress_sent = started, -1
    all_sent_at: float | None = None
    while True:
        next_poll += poll
        time.sleep(max(0.0, next_poll - time.perf_counter()))
        for process in watch:
            if not process.alive():
                raise process.dead_error()
        response = client.get(f"/v1/campaigns/{campaign_id}")
        now = time.perf_counter()
        elapsed = now - started
        if response.status_code != 200:
            raise BenchError(
                f"GET /v1/campaigns/{campaign_id}: {response.status_code} {response.text}"
            )
        data = response.json()
        status = data["status"]
        by_status: dict[str, int] = data["counts"]["by_status"]
        sent = by_status.get("sent", 0)
        if on_poll is not None:
            on_poll(sent)
        if sent >= n and all_sent_at is None:
            all_sent_at = elapsed
        if sent != progress_sent:
            progress_at, progress_sent = now, sent
        elif now - progress_at > options.stall_seconds:
            logs = "".join(f"\n  last lines of {p.log_path.name}:\n{p.tail(15)}" for p in watch)
            raise BenchError(
                f"nothing sent for {options.stall_seconds:.0f} s (counts {by_status}); "
                f"{diagnose()}{logs}"
            )
        if status == "completed" and sent == n:
            return _outcome(True, elapsed, all_sent_at, data)
        if status in ("completed", "cancelled", "paused"):
            raise BenchError(
                f"the campaign ended {status} with counts {by_status} (expected {n} sent)"
            )
        if all_sent_at is not None and elapsed - all_sent_at > options.stuck_seconds:
            print(
                f"  ! all {n:,} sent after {all_sent_at:.1f} s but the campaign is still "
                f"{status!r} {options.stuck_seconds:.0f} s later: not completed",
                flush=True,
            )
            return _outcome(False, all_sent_at, all_sent_at, data)
        if now - last_print >= PROGRESS_SECONDS:
            rate_now = (sent - last_sent) / (now - last_print)
            others = {k: v for k, v in by_status.items() if k != "sent"}
            print(
                f"  {elapsed:6.1f} s  sent {sent:>9,}/{n:,} ({100 * sent / n:5.1f}%)  "
                f"{rate_now:8,.0f}/s now  {sent / elapsed:8,.0f}/s overall  [{status}] {others}",
                flush=True,
            )
            last_print, last_sent = now, sent
        if elapsed > options.timeout:
            raise BenchError(
                f"timed out after {options.timeout:.0f} s with counts {by_status}; {diagnose()}"
            )


def poll_seconds(n: int) -> float:
    """How often the campaign is polled: its counts cost the API more as the campaign grows."""
    if n < 500_000:
        return POLL_SECONDS
    return 2 * POLL_SECONDS if n < 5_000_000 else 4 * POLL_SECONDS


def planner_alone(
    service: Service, sampler: RssSampler, campaign: dict[str, Any], n: int, timeout: float
) -> dict[str, Any] | None:
    """Plan an identical campaign in a process of its own (``--planner-child``), its RSS
    sampled; None, with the reason printed, when that process fails (it calls the engine's
    planner directly, so it follows the engine's changes: the run goes on without it)."""
    print("  planner alone: a second, identical campaign in its own process ...", flush=True)
    tag = uuid.uuid4().hex[:8]
    planner = service.start(
        "planner",
        [sys.executable, "-m", "bench.pipeline", "--planner-child", json.dumps(campaign)],
        {**service.env, **queue_settings((f"bench_plan_{tag}", f"bench_plan_{tag}_urgent"))},
        watch=False,
    )
    sampler.watch("planner", planner)
    wait_until(lambda: not planner.alive(), timeout=timeout, what="the planner", watch=[])
    sampler.unwatch("planner")
    planned = None
    for line in planner.log_path.read_text(errors="replace").splitlines():
        if line.startswith(RESULT_TAG):
            planned = json.loads(line[len(RESULT_TAG) :])
    if planner.proc.returncode != 0 or planned is None:
        print(f"  planner alone: FAILED, left out: {planner.dead_error()}", flush=True)
        return None
    if planned["made"] != n:
        print(f"  planner alone: made {planned['made']:,} deliveries, expected {n:,}", flush=True)
    print(
        f"  planner alone: {planned['made']:,} deliveries planned in "
        f"{planned['elapsed_s']:.2f} s = {planned['made'] / planned['elapsed_s']:,.0f}/s",
        flush=True,
    )
    return planned


def _outcome(
    completed: bool, elapsed: float, all_sent: float | None, data: dict[str, Any]
) -> Outcome:
    approved, done = iso(data.get("approved_at")), iso(data.get("completed_at"))
    runs = data.get("runs") or []
    planned = iso(runs[0].get("planned_at")) if runs else None
    return Outcome(
        completed=completed,
        elapsed_s=elapsed,
        all_sent_s=all_sent,
        server_elapsed_s=(done - approved).total_seconds() if approved and done else None,
        planned_s=(planned - approved).total_seconds() if approved and planned else None,
        final={"status": data["status"], "counts": data["counts"]},
    )


def log_problems(path: Path) -> dict[str, Any]:
    """Error lines in a process log (structlog JSON, dramatiq and Python tracebacks)."""
    pattern = re.compile(r'"level": "(error|critical)"|\[(ERROR|CRITICAL)\]|^Traceback')
    count, first = 0, list[str]()
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"errors": 0, "first": []}
    tracebacks: list[str] = []
    for index, line in enumerate(lines):
        if pattern.search(line):
            count += 1
            if len(first) < 3:
                tail = [x for x in lines[index + 1 : index + 40] if x and not x.startswith(" ")]
                cause = f"  ->  {tail[0][:200]}" if tail and line.startswith("Traceback") else ""
                exception = _logged_exception(line)
                if exception:
                    # A structlog line carries its traceback in one field: name its last line
                    # (the exception itself) and keep the whole of it in the results.
                    cause = f"  ->  {exception.strip().splitlines()[-1][:300]}"
                    tracebacks.append(exception[-8000:])
                first.append(line[:300] + cause)
    return {"errors": count, "first": first, "tracebacks": tracebacks}


def _logged_exception(line: str) -> str:
    """The ``exception`` field of a structlog JSON line, or ''."""
    if not line.startswith("{"):
        return ""
    try:
        fields = json.loads(line)
    except ValueError:
        return ""
    exception = fields.get("exception") if isinstance(fields, dict) else None
    return exception if isinstance(exception, str) else ""


def queue_settings(queues: tuple[str, str]) -> dict[str, str]:
    return {"DISPATCHER_QUEUE_BULK": queues[0], "DISPATCHER_QUEUE_URGENT": queues[1]}


def worker_command(queue: str, processes: int, threads: int) -> list[str]:
    return [
        *dispatcher_command(),
        "worker",
        "--queues",
        queue,
        "--processes",
        str(processes),
        "--threads",
        str(threads),
    ]


class UrgentProbe:
    """Launches the urgent campaign once ``threshold`` bulk deliveries are sent (called at each
    poll of the bulk campaign), then watches it until it completes."""

    def __init__(self, service: Service, *, size: int, population: int, threshold: int) -> None:
        if size > population:
            raise BenchError(f"--urgent {size} needs at least as many recipients")
        self.service = service
        self.size = size
        self.threshold = threshold
        # Recipients spread over the whole population, by external id.
        step = population / size
        self.external_ids = [person(1 + int(i * step)).external_id for i in range(size)]
        self.campaign_id: int | None = None
        self.bulk_sent_at_launch: int | None = None
        self.completed = False

    def __call__(self, bulk_sent: int) -> None:
        if self.campaign_id is None:
            if bulk_sent >= self.threshold:
                self.launch(bulk_sent)
        elif not self.completed:
            self.poll()

    def launch(self, bulk_sent: int) -> None:
        campaign = {
            "name": f"Cảnh báo lừa đảo — benchmark {self.size:,}",
            "kind": "fraud_warning",
            "template": URGENT_TEMPLATE_KEY,
            "audience": {"external_ids": self.external_ids},
            "channels": ["null"],
        }
        campaign_id = self.service.submit(campaign)
        self.service.approve(campaign_id)
        self.campaign_id, self.bulk_sent_at_launch = campaign_id, bulk_sent
        print(
            f"  urgent campaign {campaign_id} ({self.size:,} recipients) approved with "
            f"{bulk_sent:,} bulk deliveries sent",
            flush=True,
        )

    def poll(self) -> None:
        assert self.campaign_id is not None
        status = self.service.campaign(self.campaign_id)["status"]
        if status in ("cancelled", "paused"):
            raise BenchError(f"the urgent campaign ended {status}")
        self.completed = status == "completed"

    def finish(self, timeout: float) -> None:
        """After the bulk campaign: launch the urgent one if it never was, wait for it."""
        if self.campaign_id is None:
            self.launch(-1)
        deadline = time.monotonic() + timeout
        while not self.completed:
            if time.monotonic() > deadline:
                raise BenchError(f"the urgent campaign did not complete within {timeout:.0f} s")
            time.sleep(URGENT_POLL_SECONDS)
            self.poll()


def urgent_checks(url: str, urgent_id: int, bulk_id: int) -> dict[str, Any]:
    """On the database's clock: approval of the urgent campaign to its first and last
    delivery, and what the bulk campaign sent meanwhile and overall."""
    from sqlalchemy import func, select

    from dispatcher.core.db import create_db_engine
    from dispatcher.tables.campaigns import Campaign
    from dispatcher.tables.deliveries import Delivery

    def sent_span(campaign_id: int) -> Any:
        return select(
            func.min(Delivery.sent_at), func.max(Delivery.sent_at), func.count(Delivery.sent_at)
        ).where(Delivery.campaign_id == campaign_id)

    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            approved = connection.scalar(
                select(Campaign.approved_at).where(Campaign.id == urgent_id)
            )
            first, last, sent = connection.execute(sent_span(urgent_id)).one()
            bulk_first, bulk_last, bulk_sent = connection.execute(sent_span(bulk_id)).one()
            if approved is None or first is None or last is None:
                raise BenchError(f"the urgent campaign {urgent_id} sent nothing")
            meanwhile = connection.scalar(
                select(func.count()).where(
                    Delivery.campaign_id == bulk_id,
                    Delivery.sent_at >= approved,
                    Delivery.sent_at <= last,
                )
            )
    finally:
        engine.dispose()
    window = (last - approved).total_seconds()
    bulk_span = (bulk_last - bulk_first).total_seconds() if bulk_first and bulk_last else 0.0
    return {
        "campaign_id": urgent_id,
        "sent": int(sent),
        "first_after_approval_s": round((first - approved).total_seconds(), 3),
        "last_after_approval_s": round(window, 3),
        "bulk_sent_meanwhile": int(meanwhile or 0),
        "bulk_per_s_meanwhile": round(int(meanwhile or 0) / window, 1) if window > 0 else None,
        "bulk_per_s_overall": round(int(bulk_sent) / bulk_span, 1) if bulk_span > 0 else None,
    }


def print_urgent(u: dict[str, Any]) -> None:
    print(
        f"  urgent: {u['sent']:,} sent; first {u['first_after_approval_s']:.2f} s and last "
        f"{u['last_after_approval_s']:.2f} s after its approval; bulk sent "
        f"{u['bulk_sent_meanwhile']:,} meanwhile ({u['bulk_per_s_meanwhile'] or 0:,.0f}/s, "
        f"{u['bulk_per_s_overall'] or 0:,.0f}/s over the whole bulk campaign)",
        flush=True,
    )


def run_once(options: Options) -> dict[str, Any]:
    n = options.recipients
    print(
        f"\n== pipeline benchmark: {n:,} recipients on {options.database}, "
        f"{options.workers} worker process(es) × {options.threads} threads, "
        f"batch size {options.batch_size} ==",
        flush=True,
    )
    sampler = RssSampler()
    with contextlib.ExitStack() as cleanup:
        service = Service("pipeline", cleanup, keep=options.keep)
        cleanup.callback(sampler.stop)

        # -- Redis ------------------------------------------------------------------------------
        if options.redis_url:
            check_redis(options.redis_url)
            service.redis_url = options.redis_url
            # A shared Redis: queues of our own, so no other worker takes our jobs.
            tag = uuid.uuid4().hex[:8]
            queues = (f"bench_{tag}", f"bench_{tag}_urgent")
        else:
            service.start_redis()
            queues = ("bulk", "urgent")

        # -- the database -----------------------------------------------------------------------
        setup_started = time.perf_counter()
        backends: PostgresBackends | None = None
        if options.database == "sqlite":
            database_url = f"sqlite:///{service.workdir / 'bench.db'}"
        else:
            pg_name, database_url = create_postgres_database(options.postgres_url)
            if not options.keep:
                cleanup.callback(drop_postgres_database, options.postgres_url, pg_name)
            print(f"  throwaway PostgreSQL database {pg_name}")
            backends = PostgresBackends(options.postgres_url, pg_name)
        settings = {
            "DISPATCHER_BATCH_SIZE": str(options.batch_size),
            "DISPATCHER_WORKER_THREADS": str(options.threads),
            **queue_settings(queues),
        }
        if options.prefetch is not None:
            settings["dramatiq_queue_prefetch"] = str(options.prefetch)
        service.configure(database_url, {**settings, **options.extra_env})
        service.migrate()
        if len(service.keys) != 2:
            raise BenchError("the service has no API keys (dispatcher.auth, table api_keys)")
        t0 = time.perf_counter()
        insert_recipients(database_url, n)
        insert_s = time.perf_counter() - t0
        print(f"  setup: migrated, {n:,} recipients inserted in {insert_s:.1f} s", flush=True)

        # -- the API and the workers ------------------------------------------------------------
        api = service.start_api(name="API", timeout=60, wait=False)
        sampler.watch("api", api)
        if service.redis is not None:
            sampler.watch("redis", service.redis)
        if backends is not None:
            sampler.watch_pids("database", backends, private=True, label=backends.label)
        sampler.start()
        wait_for_api(service.client, api, timeout=60)
        for template in [TEMPLATE] + ([URGENT_TEMPLATE] if options.urgent else []):
            service.publish(template)

        already = service.heartbeats()
        workers = service.start(
            "workers", worker_command(queues[0], options.workers, options.threads)
        )
        sampler.watch("workers", workers)
        serving = [api, workers]
        expected = options.workers
        if options.urgent:
            urgent_workers = service.start(
                "urgent workers",
                worker_command(queues[1], options.urgent_processes, options.urgent_threads),
                {
                    **service.env,
                    "DISPATCHER_BATCH_SIZE": str(options.urgent_batch_size),
                    **options.urgent_env,
                },
            )
            sampler.watch("urgent_workers", urgent_workers)
            serving.append(urgent_workers)
            expected += options.urgent_processes
        service.wait_for_workers(expected, timeout=90, already=already, watch=serving)
        setup_s = time.perf_counter() - setup_started
        print(f"  setup done in {setup_s:.1f} s; API pid {api.pid}, workers pid {workers.pid}")

        # -- end to end (timed from the approve call) ----------------------------------------
        campaign = {
            "name": f"Chúc mừng năm mới — benchmark {n:,}",
            "kind": "greeting",
            "template": TEMPLATE_KEY,
            "audience": {"all": True},
            "channels": ["null"],
            "variables": CAMPAIGN_VARIABLES,
        }
        campaign_id = service.submit(campaign)
        probe = (
            UrgentProbe(
                service,
                size=options.urgent,
                population=n,
                threshold=max(1, int(n * URGENT_AFTER)),
            )
            if options.urgent
            else None
        )
        cpu_before = cpu_snapshot(service.processes, backends)
        started = time.perf_counter()
        service.approve(campaign_id)
        print(f"  campaign {campaign_id} approved; waiting for {n:,} sent", flush=True)
        outcome = wait_for_campaign(
            service.client,
            campaign_id,
            n,
            started=started,
            options=options,
            watch=serving,
            diagnose=lambda: open_rows(database_url, campaign_id),
            on_poll=probe,
        )
        sampler.sample()
        cpu_after = cpu_snapshot(service.processes, backends)
        cpu: dict[str, Any] = {
            **cpu_share(cpu_before, cpu_after),
            "ours_by_process": cpu_by_process(cpu_before, cpu_after),
        }
        cpu_us = service_cpu_us(cpu_before, cpu_after, n, options.database)
        rate = n / outcome.elapsed_s
        print(f"  done: {n:,} in {outcome.elapsed_s:.2f} s = {rate:,.0f} deliveries/s", flush=True)
        urgent: dict[str, Any] | None = None
        if probe is not None:
            probe.finish(timeout=120)
        # The service's memory is sampled until here: what follows is the benchmark's own
        # checks (at 10M they held 55 MiB in their PostgreSQL backend).
        sampler.sample()
        for role in ("api", "workers", "urgent_workers", "redis", "database"):
            sampler.unwatch(role)
        if probe is not None:
            assert probe.campaign_id is not None
            urgent = urgent_checks(database_url, probe.campaign_id, campaign_id)
            urgent["launched_at_bulk_sent"] = probe.bulk_sent_at_launch
            urgent["batch_size"] = options.urgent_batch_size
            urgent["batches"] = database_checks(database_url, probe.campaign_id)["batches"]
            print_urgent(urgent)
        checks = database_checks(database_url, campaign_id)
        run_id, period = run_of(database_url, campaign_id)
        # Before the planner alone adds its rows: the campaign's (and the urgent one's) only.
        disk = disk_layout(options.database, database_url, n + options.urgent)
        for process in reversed(serving):
            process.stop()
        problems = {process.name: log_problems(process.log_path) for process in serving}

        # -- the planner alone -------------------------------------------------------------------
        planned: dict[str, Any] | None = None
        if options.planner_alone:
            planned = planner_alone(service, sampler, campaign, n, options.timeout)

        # -- the floors --------------------------------------------------------------------------
        floors: dict[str, FloorResult] = {}
        for pattern in options.floors:
            print(f"  floor: {LABELS[pattern]}, {options.workers} process(es) ...", flush=True)
            spec = FloorSpec(
                pattern=pattern,
                database=options.database,
                url=database_url,
                recipients=n,
                batch_size=options.batch_size,
                processes=options.workers,
                run_id=run_id,
                period=period,
                campaign_id=campaign_id,
                template=Template(
                    subject=SUBJECT,
                    body=BODY,
                    defaults=dict(TEMPLATE["defaults"]),
                    variables=dict(CAMPAIGN_VARIABLES),
                    kind="greeting",
                    channel="null",
                    public_url=service.env["DISPATCHER_PUBLIC_URL"],
                ),
                env=service.env,
                lock_path=str(service.workdir / "floor-writers.lock"),
            )
            floor = run_floor(spec, backends=backends, timeout=options.timeout)
            floors[pattern] = floor
            print(f"    {floor_line(floor, rate)}", flush=True)
        sampler.stop()

        peaks = sampler.peaks
        result: dict[str, Any] = {
            "benchmark": "pipeline",
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "recipients": n,
            "database": options.database,
            "workers": options.workers,
            "threads": options.threads,
            "batch_size": options.batch_size,
            "dramatiq_queue_prefetch": options.prefetch,
            "extra_env": options.extra_env,
            "setup_s": round(setup_s, 2),
            "insert_recipients_s": round(insert_s, 2),
            "completed": outcome.completed,
            "elapsed_s": round(outcome.elapsed_s, 3),
            "deliveries_per_s": round(rate, 1),
            "all_sent_s": outcome.all_sent_s and round(outcome.all_sent_s, 3),
            "server_elapsed_s": outcome.server_elapsed_s and round(outcome.server_elapsed_s, 3),
            "server_deliveries_per_s": outcome.server_elapsed_s
            and round(n / outcome.server_elapsed_s, 1),
            "planned_within_s": outcome.planned_s and round(outcome.planned_s, 3),
            "floors": {pattern: floor.as_dict() for pattern, floor in floors.items()},
            "ratio_to_floor": {
                pattern: round(rate / floor.per_second, 4)
                for pattern, floor in floors.items()
                if floor.per_second
            },
            "cpu_us_per_delivery": cpu_us,
            "disk": disk,
            "disturbed": disturbed(cpu),
            "planner_elapsed_s": planned and round(planned["elapsed_s"], 3),
            "planner_per_s": planned and round(planned["made"] / planned["elapsed_s"], 1),
            "peak_rss_mib": {
                role: {
                    "total": round(peak.total_bytes / MiB, 1),
                    "largest_process": round(peak.single_bytes / MiB, 1),
                    "processes": peak.processes,
                    "samples": peak.samples,
                    **(
                        {
                            "largest_process_private": round(peak.private_single_bytes / MiB, 1),
                            "largest_process_private_was": peak.private_single_label,
                            "largest_private_by_kind": {
                                kind: round(size / MiB, 1)
                                for kind, size in sorted(
                                    peak.private_by_kind.items(), key=lambda item: -item[1]
                                )
                            },
                        }
                        if peak.private_single_bytes
                        else {}
                    ),
                }
                for role, peak in peaks.items()
            },
            "planner_rss_before_planning_mib": planned
            and round(planned["rss_before_bytes"] / MiB, 1),
            "planner_ru_maxrss_mib": planned and round(planned["ru_maxrss_bytes"] / MiB, 1),
            "cpu_during_timed_phase": cpu,
            "urgent": urgent
            and {
                **urgent,
                "recipients": options.urgent,
                "processes": options.urgent_processes,
                "threads": options.urgent_threads,
                "extra_env": options.urgent_env,
            },
            "final": outcome.final,
            "database_checks": checks,
            "log_problems": problems,
            "machine": machine(),
        }
        if options.keep:
            result["workdir"] = str(service.workdir)
    return result


# -- output ----------------------------------------------------------------------------------------


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} MiB"


def print_block(r: dict[str, Any], out: TextIO = sys.stdout) -> None:
    peaks = r["peak_rss_mib"]
    api, workers, planner = peaks.get("api", {}), peaks.get("workers", {}), peaks.get("planner", {})
    rows = [
        ("recipients (N)", f"{r['recipients']:,}"),
        ("database", r["database"]),
        (
            "workers × threads",
            f"{r['workers']} × {r['threads']}"
            + (
                ""
                if r["dramatiq_queue_prefetch"] is None
                else f"  (prefetch {r['dramatiq_queue_prefetch']})"
            ),
        ),
        ("batch size", str(r["batch_size"])),
        *(
            [("extra environment", " ".join(f"{k}={v}" for k, v in r["extra_env"].items()))]
            if r.get("extra_env")
            else []
        ),
        (
            "elapsed",
            f"{r['elapsed_s']:.2f} s  (approve call → GET says completed, polled every "
            f"{poll_seconds(r['recipients'])} s)"
            + ("" if r["completed"] else "  NOT COMPLETED: time of all sent"),
        ),
        (
            "elapsed, server clock",
            "-"
            if r["server_elapsed_s"] is None
            else f"{r['server_elapsed_s']:.2f} s  (approved_at → completed_at)",
        ),
        (
            "planning finished at",
            "-"
            if r["planned_within_s"] is None
            else f"{r['planned_within_s']:.2f} s after approval (planner inside the workers)",
        ),
        (
            "deliveries/s",
            f"{r['deliveries_per_s']:,.0f}"
            + ("  ← other processes were busy: disturbed" if r.get("disturbed") else ""),
        ),
        *floor_rows(r),
        ("CPU µs per delivery", cpu_us_text(r["cpu_us_per_delivery"])),
        (
            "planner alone",
            "not run"
            if r["planner_elapsed_s"] is None
            else f"{r['planner_elapsed_s']:.2f} s = {r['planner_per_s']:,.0f} deliveries/s",
        ),
        ("peak RSS API", mib(api.get("total"))),
        *[
            (f"peak RSS {role}", rss_text(peaks[role]))
            for role in ("redis", "database")
            if peaks.get(role, {}).get("samples")
        ],
        (
            "peak RSS workers",
            f"{mib(workers.get('largest_process'))} largest process, "
            f"{mib(workers.get('total'))} total of {workers.get('processes', 0)} processes",
        ),
        *(
            [
                (
                    "peak RSS planner",
                    f"{mib(planner.get('total'))}  (before planning "
                    f"{mib(r['planner_rss_before_planning_mib'])})",
                )
            ]
            if r["planner_elapsed_s"] is not None
            else []
        ),
    ]
    urgent = r.get("urgent")
    if urgent:
        peak = peaks.get("urgent_workers", {})
        rows += [
            (
                "urgent campaign",
                f"{urgent['recipients']:,} recipients, {urgent['processes']} urgent worker "
                f"process(es) × {urgent['threads']} threads, approved with "
                f"{urgent['launched_at_bulk_sent']:,} bulk deliveries sent",
            ),
            (
                "urgent: approval →",
                f"first delivery {urgent['first_after_approval_s']:.2f} s "
                f"({verdict(urgent['first_after_approval_s'], URGENT_FIRST_TARGET_S)}), last "
                f"{urgent['last_after_approval_s']:.2f} s "
                f"({verdict(urgent['last_after_approval_s'], URGENT_LAST_TARGET_S)}); "
                f"{urgent['sent']:,} sent in batches of {urgent.get('batch_size', '?')}"
                + (f" ({urgent['batches']} batches)" if urgent.get("batches") is not None else ""),
            ),
            (
                "bulk meanwhile",
                f"{urgent['bulk_sent_meanwhile']:,} sent = "
                f"{urgent['bulk_per_s_meanwhile'] or 0:,.0f}/s (whole campaign "
                f"{urgent['bulk_per_s_overall'] or 0:,.0f}/s)",
            ),
            ("peak RSS urgent workers", mib(peak.get("largest_process"))),
        ]
    cpu = r.get("cpu_during_timed_phase")
    if cpu:
        note = (
            "  ← other processes or the hypervisor were busy: figures are disturbed"
            if disturbed(cpu)
            else ""
        )
        rows.append(
            (
                "CPU while timed",
                f"ours {cpu['ours_cores']:.2f} cores, other processes "
                f"{cpu['others_cores']:.2f}, taken by the hypervisor (steal) "
                f"{cpu.get('steal_cores', 0):.2f}, of {cpu['cores']:.0f}{note}",
            )
        )
        rows.append(
            (
                "CPU of ours, by process",
                ", ".join(f"{k} {v:.2f}" for k, v in cpu.get("ours_by_process", {}).items()),
            )
        )
    disk = r.get("disk") or {}
    if disk:
        rows.append(("disk", disk_text(disk)))
        for relation in disk.get("relations", []):
            if relation["level"] > 0:
                rows.append(
                    (
                        f"  partition {relation['name']}",
                        f"{relation['total_bytes'] / MiB:,.1f} MiB, ~{relation['rows_estimate']:,}"
                        f" rows, {relation['bounds'] or ''}",
                    )
                )
    checks = r["database_checks"]
    rows.append(
        (
            "database check",
            f"deliveries {checks['deliveries_by_status']}, attempts "
            f"{checks['attempts']:,}, batches {checks['batches']:,}, possible duplicates "
            f"{checks['possible_duplicates']}",
        )
    )
    for role, found in r["log_problems"].items():
        if found["errors"]:
            rows.append(
                (f"{role} log errors", f"{found['errors']}: " + " | ".join(found["first"][:2]))
            )
    width = max(len(label) for label, _ in rows)
    print(f"\n-- results: pipeline, {r['database']}, N={r['recipients']:,} " + "-" * 30, file=out)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}", file=out)


URGENT_FIRST_TARGET_S = 1.0
URGENT_LAST_TARGET_S = 5.0


def verdict(value: float, target: float) -> str:
    return f"target ≤ {target:g} s: {'met' if value <= target else 'MISSED'}"


def floor_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for pattern, floor in r.get("floors", {}).items():
        label = f"floor: {'insert-only' if pattern == 'insert' else 'today'}"
        if floor.get("skipped"):
            rows.append((label, f"not run: {floor['skipped']}"))
            continue
        cpu = floor.get("cpu", {})
        note = (
            "  ← other processes or the hypervisor were busy: disturbed"
            if floor.get("disturbed")
            else ""
        )
        rows.append(
            (
                label,
                f"{floor['per_second']:,.0f}/s, {floor['processes']} processes (render "
                f"{floor['render_s']:.1f} s, database {floor['write_s']:.1f} s, summed); "
                f"other processes {cpu.get('others_cores', 0):.2f} cores, steal "
                f"{cpu.get('steal_cores', 0):.2f}{note}",
            )
        )
        rows.append(
            (
                f"  ours/floor ({pattern})",
                f"{r['ratio_to_floor'].get(pattern, 0):.2f}; floor CPU "
                f"{cpu_us_text(floor.get('cpu_us_per_delivery', {}))}",
            )
        )
    return rows


def cpu_us_text(figures: dict[str, Any]) -> str:
    parts = []
    for role, value in figures.items():
        if role == "total":
            continue
        parts.append(f"{role} {value:.0f}" if isinstance(value, int | float) else f"{role} {value}")
    total = figures.get("total")
    return (f"{total:.0f} µs total: " if total is not None else "") + ", ".join(parts)


def rss_text(peak: dict[str, Any]) -> str:
    private = peak.get("largest_process_private")
    return (
        f"{mib(peak.get('largest_process'))} largest process, {mib(peak.get('total'))} total "
        f"of {peak.get('processes', 0)} processes"
        + (f"; largest private (USS, no shared pages) {mib(private)}" if private else "")
        + (
            f" ({peak['largest_process_private_was']})"
            if peak.get("largest_process_private_was")
            else ""
        )
        + (
            "; largest private by kind: "
            + ", ".join(f"{k} {mib(v)}" for k, v in peak["largest_private_by_kind"].items())
            if peak.get("largest_private_by_kind")
            else ""
        )
    )


def disk_text(disk: dict[str, Any]) -> str:
    if "database_file_bytes" in disk:
        return (
            f"SQLite file {disk['database_file_bytes'] / MiB:,.1f} MiB = "
            f"{disk['mib_per_million_deliveries']:,.1f} MiB per million deliveries (every table)"
        )
    tables = ", ".join(
        f"{table} {size:,.1f}" for table, size in disk["mib_per_million_deliveries"].items()
    )
    layout = "partitioned" if disk.get("partitioned") else "not partitioned"
    return (
        f"{disk['total_mib_per_million_deliveries']:,.1f} MiB per million deliveries "
        f"({tables}; {layout})"
    )


def growth(small: float, big: float) -> float:
    return 100.0 * (big - small) / small if small else 0.0


def compare(results: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    a, b = results[0], results[-1]
    figures: dict[str, Any] = {}
    print(
        f"\n-- peak memory: N={a['recipients']:,} → N={b['recipients']:,} "
        f"({b['recipients'] / a['recipients']:.0f}× the recipients) " + "-" * 20
    )
    for role, key in (
        ("api", "total"),
        ("workers", "largest_process"),
        ("workers", "total"),
        ("redis", "total"),
        ("database", "largest_process"),
        ("database", "largest_process_private"),
        ("database", "total"),
        ("planner", "total"),
    ):
        small = a["peak_rss_mib"].get(role, {}).get(key)
        big = b["peak_rss_mib"].get(role, {}).get(key)
        if small is None or big is None:
            continue
        pct = growth(small, big)
        verdict = "GREW" if pct > threshold else "flat"
        label = f"{role} ({key.replace('_', ' ')})"
        print(f"  {label:<28} {small:8.1f} → {big:8.1f} MiB  {pct:+6.1f}%  {verdict}")
        figures[f"{role}.{key}"] = {
            "small_mib": small,
            "big_mib": big,
            "growth_pct": round(pct, 1),
            "grew": pct > threshold,
        }
    grew = any(f["grew"] for f in figures.values())
    print(
        f"  peak memory {'GREW' if grew else 'did not grow'} by more than {threshold:.0f}% "
        f"with the campaign size"
    )
    rate = growth(a["deliveries_per_s"], b["deliveries_per_s"])
    held = abs(rate) <= threshold
    print(
        f"  deliveries/s {a['deliveries_per_s']:,.0f} → {b['deliveries_per_s']:,.0f} "
        f"({rate:+.1f}%: {'within' if held else 'NOT within'} {threshold:.0f}%)"
    )
    disks = [r.get("disk") or {} for r in (a, b)]
    per_million = [d.get("total_mib_per_million_deliveries") for d in disks]
    if all(v is not None for v in per_million):
        print(f"  disk per million deliveries {per_million[0]:,.1f} → {per_million[1]:,.1f} MiB")
    return {
        "threshold_pct": threshold,
        "grew": grew,
        "roles": figures,
        "deliveries_per_s": [a["deliveries_per_s"], b["deliveries_per_s"]],
        "deliveries_per_s_change_pct": round(rate, 1),
        "deliveries_per_s_within_threshold": held,
        "disk_mib_per_million": per_million,
        "disturbed": [bool(r.get("disturbed")) for r in (a, b)],
    }


# -- command line ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline",
        description="End-to-end throughput and peak memory of the delivery pipeline "
        "(API → planner → Redis → workers → database), against its floors.",
    )
    parser.add_argument("--recipients", type=int, default=100_000, help="N (default 100000)")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per worker process (default: the "
        "service's DISPATCHER_WORKER_THREADS default)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="deliveries per job (default: the service's default)",
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="use this Redis instead of starting a "
        "private redis-server (only the benchmark's own keys are touched)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("DISPATCHER_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="admin URL used to create and drop a throwaway database",
    )
    parser.add_argument(
        "--compare",
        default=None,
        metavar="N1,N2",
        help="run two sizes and report whether peak memory grew",
    )
    parser.add_argument(
        "--growth-threshold",
        type=float,
        default=10.0,
        help="percent of peak RSS growth counted as growing (default 10)",
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        default=None,
        help="set dramatiq_queue_prefetch for the workers (default: the service's choice)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the service's processes, e.g. "
        "DISPATCHER_SEND_CONCURRENCY=128 or dramatiq_worker_timeout=100 (repeatable)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for the campaign (default: 300 + N/100)",
    )
    parser.add_argument(
        "--stuck-seconds",
        type=float,
        default=30.0,
        help="give up this long after all are sent but the campaign is not completed (default 30)",
    )
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=60.0,
        help="give up when nothing more is sent for this long (default 60)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (logs, SQLite file) and database",
    )
    parser.add_argument(
        "--urgent",
        type=int,
        default=0,
        metavar="M",
        help="while the bulk campaign runs, send an urgent (fraud_warning) campaign to M of "
        "the recipients and time it (starts urgent workers)",
    )
    parser.add_argument(
        "--urgent-processes", type=int, default=1, help="urgent worker processes (default 1)"
    )
    parser.add_argument(
        "--urgent-threads", type=int, default=4, help="threads per urgent worker (default 4)"
    )
    parser.add_argument(
        "--urgent-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the urgent workers only (repeatable)",
    )
    parser.add_argument(
        "--urgent-batch-size",
        type=int,
        default=100,
        help="DISPATCHER_BATCH_SIZE of the urgent workers, which plan the urgent campaign: "
        "1,000 recipients go in 10 batches (default 100)",
    )
    parser.add_argument(
        "--floors",
        default="today,insert",
        help="the floors to run after the service: today, insert, both (default) or none",
    )
    parser.add_argument(
        "--no-planner-alone",
        action="store_true",
        help="skip planning a second campaign alone in its own process (at 10M it adds "
        "minutes and ten million rows)",
    )
    parser.add_argument("--planner-child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def options_for(args: argparse.Namespace, n: int) -> Options:
    from dispatcher.core.config import Settings, default_worker_threads

    defaults = Settings.model_fields
    # The bulk workers serve one queue (the urgent ones, --urgent-threads, another).
    threads = args.threads or default_worker_threads(1)
    batch_size = args.batch_size or int(defaults["batch_size"].default)
    extra_env = parse_env(args.env, prefix="")
    urgent_env = parse_env(args.urgent_env, option="--urgent-env", prefix="")
    if n < 1 or args.workers < 1 or threads < 1 or batch_size < 1 or args.urgent_batch_size < 1:
        raise BenchError("--recipients, --workers, --threads and the batch sizes must be positive")
    floors = tuple(f.strip() for f in args.floors.split(",") if f.strip() and f.strip() != "none")
    unknown = [f for f in floors if f not in PATTERNS]
    if unknown:
        raise BenchError(f"--floors takes today, insert or none, not {', '.join(unknown)}")
    return Options(
        recipients=n,
        database=args.database,
        workers=args.workers,
        threads=threads,
        batch_size=batch_size,
        redis_url=args.redis_url,
        postgres_url=args.postgres_url,
        prefetch=args.prefetch,
        extra_env=extra_env,
        timeout=args.timeout or 300 + n / 100,
        stuck_seconds=args.stuck_seconds,
        stall_seconds=args.stall_seconds,
        keep=args.keep,
        urgent=args.urgent,
        urgent_processes=args.urgent_processes,
        urgent_threads=args.urgent_threads,
        urgent_env=urgent_env,
        urgent_batch_size=args.urgent_batch_size,
        floors=floors,
        planner_alone=not args.no_planner_alone,
    )


def main(argv: Sequence[str] | None = None) -> int:
    # The benchmark's own PostgreSQL connections (its checks) say whose they are.
    os.environ.setdefault("PGAPPNAME", "bench")
    args = parse_args(argv)
    if args.planner_child is not None:
        return planner_child(args.planner_child)

    def run() -> int:
        if args.compare:
            try:
                sizes = [int(x.replace("_", "")) for x in args.compare.split(",")]
            except ValueError:
                raise BenchError("--compare takes two sizes, e.g. 10000,100000") from None
            if len(sizes) != 2:
                raise BenchError("--compare takes two sizes, e.g. 10000,100000")
            results = []
            for n in sizes:
                result = run_once(options_for(args, n))
                print_block(result)
                path = write_json(f"pipeline-{args.database}-{n}.json", result)
                print(f"  written to {relative(path, Path.cwd())}")
                results.append(result)
            summary = compare(results, args.growth_threshold)
            path = write_json(
                f"pipeline-{args.database}-compare-{sizes[0]}-{sizes[1]}.json",
                {"compare": summary, "runs": results},
            )
            print(f"  written to {relative(path, Path.cwd())}")
        else:
            result = run_once(options_for(args, args.recipients))
            print_block(result)
            suffix = f"-urgent{args.urgent}" if args.urgent else ""
            path = write_json(f"pipeline-{args.database}-{args.recipients}{suffix}.json", result)
            print(f"  written to {relative(path, Path.cwd())}")
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
