"""Floors: the service's own work (its renders, its rows) with none of its machinery, on every
core it uses, printed beside the service in the same run.

A floor answers "how fast could this machine go at all?" for the same deliveries. It is only
honest when it does the same work on the same resources as the service:

- **the service's renderer**: :data:`dispatcher.content.render.renderer` (the sandboxed Jinja
  renderer the engine calls), with the recipient's view, the context and the signed unsubscribe
  link made by the same functions as :mod:`dispatcher.engine.render` makes them, and one
  :class:`channels.base.Message` per delivery;
- **the same tables and indexes**: copies of the run's own ``deliveries`` and ``attempts``
  tables, made from the database's own definition (``CREATE TABLE ... (LIKE deliveries
  INCLUDING ALL)`` on PostgreSQL, the stored DDL on SQLite), with their foreign keys to the
  run's ``runs``, ``campaigns`` and ``recipients``; columns the floor does not write lose their
  ``NOT NULL`` so that columns added later do not break it;
- **every core**: as many processes as the service's worker processes, each taking every P-th
  batch of ``batch_size`` recipients and doing all of its work (reads, renders, writes). On
  SQLite their write transactions take turns on a file lock (as the service's do) and the WAL
  is checkpointed every few turns, beside the next writer;
- **checked for disturbance** like the service's timed phase: the CPU used by other processes
  during the floor is measured and flagged above 0.25 cores.

Two patterns:

``today``
    The service's write pattern before deliveries were written once: per batch, the planner's
    page (the page's recipient ids, then one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING
    RETURNING`` of its pending rows), the claim (one conditional ``UPDATE`` to ``claimed`` with
    a lease), the read of the claimed rows with their recipients and addresses, the renders,
    and the record (one ``UPDATE ... FROM`` a ``VALUES`` list on SQLite or ``unnest`` of arrays
    on PostgreSQL, and one multi-row ``INSERT`` of the attempts). Left out: the leases table,
    the audit chain's entries, the opt-out subquery of the planner's page and Redis.
``insert``
    Written once: per batch, the read of the recipients and their addresses, the same renders,
    and one row per delivery with its final state: a binary ``COPY`` (psycopg ``cursor.copy``,
    as the service's record) on PostgreSQL and ``executemany`` on SQLite, into the same table
    and indexes. No attempts row.

The email floor (:func:`email_floor`) sends pre-rendered messages with aiosmtplib over as many
pooled connections as the service holds, from as many processes as its workers.

Everything here runs in child processes started with ``spawn``: they import nothing of the
benchmark's parent state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import queue
import re
import sqlite3
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil

from bench.common import BenchError, cpu_by_process, cpu_share, cpu_snapshot, disturbed
from dispatcher.engine.bulk import ATTEMPT_COLUMNS, CHECKPOINT_EVERY, copy_types, deliveries_t
from dispatcher.engine.bulk import DELIVERY_COLUMNS as RECORD_COLUMNS

FLOOR_DELIVERIES = "bench_floor_deliveries"
FLOOR_ATTEMPTS = "bench_floor_attempts"
PATTERNS = ("today", "insert")
LABELS = {
    "today": "today's write pattern (insert pending, claim, update, attempt)",
    "insert": "insert-only (one row per delivery, written once)",
}
# The service's worker sets a 32 MiB page cache on SQLite (``dispatcher worker``).
SQLITE_CACHE_MIB = 32
LEASE_SECONDS = 300
# The columns each pattern writes; the others of the copied table may be NULL.
TODAY_COLUMNS = (
    "run_id",
    "campaign_id",
    "recipient_id",
    "channel",
    "status",
    "batch_id",
    "error_class",
    "available_at",
    "created_at",
    "updated_at",
    "attempts",
    "failures",
    "reclaimed",
    "period",
    "lease_until",
    "locale",
    "provider_message_id",
    "error_reason",
    "sent_at",
)
INSERT_COLUMNS = (
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
    "created_at",
    "updated_at",
    "sent_at",
    "period",
)
PERSON_FIELDS = (
    "external_id",
    "full_name",
    "kind",
    "province",
    "birth_date",
    "language",
    "attributes",
)


@dataclass(frozen=True, slots=True)
class Template:
    """What the floor renders: the published template's text and the campaign's variables."""

    subject: str
    body: str
    defaults: dict[str, Any]
    variables: dict[str, Any]
    kind: str
    channel: str
    public_url: str


@dataclass(frozen=True, slots=True)
class FloorSpec:
    pattern: str
    database: str  # sqlite | postgresql
    url: str  # the run's database
    recipients: int  # ids 1..N
    batch_size: int
    processes: int
    run_id: int
    campaign_id: int
    template: Template
    period: int = 0  # the run's month (runs.period): the partition key on PostgreSQL
    env: dict[str, str] = field(default_factory=dict)  # the service's environment
    lock_path: str = ""


@dataclass(slots=True)
class FloorResult:
    pattern: str
    processes: int
    elapsed_s: float = 0.0
    per_second: float = 0.0
    render_s: float = 0.0  # summed over the processes
    write_s: float = 0.0  # summed over the processes (statements, waits for the turn included)
    rows: int = 0
    cpu: dict[str, Any] = field(default_factory=dict)
    cpu_us_per_delivery: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None  # why the floor could not run

    @property
    def disturbed(self) -> bool:
        return disturbed(self.cpu)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["disturbed"] = self.disturbed
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


# -- the tables -------------------------------------------------------------------------------


def _pg_url(url: str) -> str:
    """A libpq URL for psycopg (SQLAlchemy's ``postgresql+psycopg://`` spelled plainly)."""
    return re.sub(r"^postgresql\+\w+://", "postgresql://", url)


def _sqlite_path(url: str) -> str:
    return url.split("///", 1)[1]


def _sqlite_connect(url: str) -> sqlite3.Connection:
    """A connection set up as the service's (WAL, foreign keys, the worker's page cache)."""
    connection = sqlite3.connect(_sqlite_path(url), isolation_level=None, timeout=60)
    for pragma in (
        "journal_mode=WAL",
        "synchronous=NORMAL",
        "busy_timeout=60000",
        "foreign_keys=ON",
        f"cache_size=-{SQLITE_CACHE_MIB * 1024}",
        "wal_autocheckpoint=0",
    ):
        connection.execute(f"PRAGMA {pragma}")
    return connection


def _columns(database: str, url: str, table: str) -> dict[str, bool]:
    """The columns of ``table``: name -> whether the floor must fill it (NOT NULL, no default,
    not the key)."""
    if database == "sqlite":
        connection = sqlite3.connect(_sqlite_path(url))
        try:
            rows = connection.execute(f"PRAGMA table_info({table})").fetchall()
        finally:
            connection.close()
        return {r[1]: bool(r[3]) and r[4] is None and not r[5] for r in rows}
    import psycopg

    with psycopg.connect(_pg_url(url), autocommit=True) as pg:
        rows = pg.execute(
            "SELECT a.attname, a.attnotnull AND NOT a.atthasdef AND a.attidentity = ''"
            " AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid"
            "   AND i.indisprimary AND a.attnum = ANY(i.indkey))"
            " FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0"
            " AND NOT a.attisdropped ORDER BY a.attnum",
            (table,),
        ).fetchall()
    return {r[0]: bool(r[1]) for r in rows}


def missing_columns(database: str, url: str, pattern: str) -> list[str]:
    """Columns a pattern writes that the run's tables do not have (the pattern cannot run)."""
    have = _columns(database, url, "deliveries")
    wanted = TODAY_COLUMNS if pattern == "today" else ("run_id", "recipient_id", "channel")
    missing = [c for c in wanted if c not in have]
    if pattern == "today":
        attempts = _columns(database, url, "attempts")
        missing += [f"attempts.{c}" for c, _ in ATTEMPT_COLUMNS if c not in attempts]
    return missing


def _rename_sqlite(sql: str, renames: dict[str, str]) -> str:
    """A stored CREATE TABLE / INDEX statement made for the floor's copy of the table."""
    for old, new in renames.items():
        name = rf'(?:"{old}"|`{old}`|\b{old}\b)'
        sql = re.sub(rf"^(CREATE TABLE\s+){name}", rf"\g<1>{new}", sql, flags=re.I)
        sql = re.sub(rf"(\bON\s+){name}(\s*\()", rf"\g<1>{new}\g<2>", sql, flags=re.I)
        sql = re.sub(rf"(\bREFERENCES\s+){name}", rf"\g<1>{new}", sql, flags=re.I)
    # Index names are global in a SQLite schema: the copies get names of their own.
    return re.sub(
        r'^(CREATE\s+(?:UNIQUE\s+)?INDEX\s+)"?(\w+)"?',
        lambda m: f"{m.group(1)}bench_floor_{m.group(2)}",
        sql,
        flags=re.I,
    )


def _relax_sqlite(sql: str, columns: dict[str, bool], written: Sequence[str]) -> str:
    """The CREATE TABLE with NOT NULL dropped from the columns the floor does not write."""
    for name, required in columns.items():
        if required and name not in written:
            sql = re.sub(
                rf'(^\s*"?{name}"?\s+[^,\n]*?)\s+NOT NULL', r"\g<1>", sql, flags=re.M | re.I
            )
    return sql


def create_tables(database: str, url: str, pattern: str) -> list[str]:
    """The floor's copies of ``deliveries`` and ``attempts`` (empty); returns notes on what
    could not be copied (a foreign key the copy cannot carry)."""
    drop_tables(database, url)
    written = TODAY_COLUMNS if pattern == "today" else INSERT_COLUMNS
    renames = {"deliveries": FLOOR_DELIVERIES, "attempts": FLOOR_ATTEMPTS}
    notes: list[str] = []
    if database == "sqlite":
        connection = sqlite3.connect(_sqlite_path(url), isolation_level=None, timeout=60)
        try:
            connection.execute("BEGIN IMMEDIATE")
            for table in ("deliveries", "attempts"):
                if table == "attempts" and pattern != "today":
                    continue
                columns = _columns(database, url, table)
                for kind, sql in connection.execute(
                    "SELECT type, sql FROM sqlite_master WHERE tbl_name = ? AND sql IS NOT NULL"
                    " ORDER BY type = 'index'",
                    (table,),
                ).fetchall():
                    copy = _rename_sqlite(sql, renames)
                    if kind == "table":
                        copy = _relax_sqlite(copy, columns, written)
                    connection.execute(copy)
            connection.execute("COMMIT")
        finally:
            connection.close()
        return notes
    import psycopg

    with psycopg.connect(_pg_url(url), autocommit=True) as pg:
        for table in ("deliveries", "attempts"):
            if table == "attempts" and pattern != "today":
                continue
            copy = renames[table]
            pg.execute(f"CREATE TABLE {copy} (LIKE {table} INCLUDING ALL)")
            for name, required in _columns(database, url, table).items():
                if required and name not in written and name not in ("delivery_id",):
                    pg.execute(f"ALTER TABLE {copy} ALTER COLUMN {name} DROP NOT NULL")
            keys = pg.execute(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = %s::regclass AND contype = 'f'"
                " AND conparentid = 0",  # not the copies made for each partition
                (table,),
            ).fetchall()
            for (definition,) in keys:
                definition = re.sub(
                    r"REFERENCES\s+(?:public\.)?deliveries\b",
                    f"REFERENCES {FLOOR_DELIVERIES}",
                    definition,
                )
                try:
                    pg.execute(f"ALTER TABLE {copy} ADD {definition}")
                except psycopg.Error as exc:
                    notes.append(f"{copy}: {definition} not copied ({exc.sqlstate})")
        pg.execute(f"ANALYZE {FLOOR_DELIVERIES}")
    return notes


def drop_tables(database: str, url: str) -> None:
    statements = [
        f"DROP TABLE IF EXISTS {FLOOR_ATTEMPTS}",
        f"DROP TABLE IF EXISTS {FLOOR_DELIVERIES}",
    ]
    if database == "sqlite":
        connection = sqlite3.connect(_sqlite_path(url), isolation_level=None, timeout=60)
        try:
            for statement in statements:
                connection.execute(statement)
        finally:
            connection.close()
        return
    import psycopg

    with psycopg.connect(_pg_url(url), autocommit=True) as pg:
        for statement in statements:
            pg.execute(statement)


def count_rows(database: str, url: str, pattern: str) -> dict[str, int]:
    """The floor's rows: deliveries by status, and attempts (``today``)."""
    queries = {"deliveries": f"SELECT status, count(*) FROM {FLOOR_DELIVERIES} GROUP BY status"}
    if pattern == "today":
        queries["attempts"] = f"SELECT 'attempts', count(*) FROM {FLOOR_ATTEMPTS}"
    out: dict[str, int] = {}
    if database == "sqlite":
        connection = sqlite3.connect(_sqlite_path(url))
        try:
            for query in queries.values():
                out.update({str(k): int(v) for k, v in connection.execute(query).fetchall()})
        finally:
            connection.close()
        return out
    import psycopg

    with psycopg.connect(_pg_url(url), autocommit=True) as pg:
        for query in queries.values():
            out.update({str(k): int(v) for k, v in pg.execute(query).fetchall()})
    return out


# -- one floor process ------------------------------------------------------------------------


class _Renderer:
    """The engine's per-delivery render (``dispatcher.engine.render.BatchMessages``, as the
    engine's ``render`` uses it), for rows read by the floor: the recipient's view per
    (recipient, locale), the signed unsubscribe link, the context, the sandboxed render and
    the :class:`~channels.base.Message`."""

    def __init__(self, template: Template) -> None:
        from channels.base import Category
        from dispatcher.content.render import VariantData

        self.template = template
        self.kind = Category(template.kind)
        self.variants = {
            ("default", "vi"): VariantData(
                id=-1, channel="default", locale="vi", subject=template.subject, body=template.body
            )
        }
        self.scheduled_for = datetime.now(UTC)
        # Any key signs as fast as the installation's.
        self.signing_key = b"bench-floor-signing-key-0123456789abcdef"

    def render(self, rows: Sequence[tuple[Any, ...]]) -> list[tuple[int, str, str]]:
        """``rows``: (delivery id, recipient id, channel, person fields..., address) for each
        delivery; returns (delivery id, locale, provider message id) of each one sent."""
        from dispatcher.engine.render import BatchMessages

        # Made once per batch, as the engine makes it.
        messages = BatchMessages(
            kind=self.kind,
            variants=self.variants,
            defaults=self.template.defaults,
            scheduled_for=self.scheduled_for,
            variables=[self.template.variables],
            public_url=self.template.public_url,
            signing_key=self.signing_key,
            campaign_id=0,
        )
        sent: list[tuple[int, str, str]] = []
        for row in rows:
            delivery_id, recipient_id, channel = row[0], row[1], row[2]
            fields = list(row[3:10])
            if isinstance(fields[6], str):
                fields[6] = json.loads(fields[6])
            person = dict(zip(PERSON_FIELDS, fields, strict=True))
            message = messages.make(delivery_id, recipient_id, channel, person, row[10])
            sent.append((delivery_id, message.locale, f"null-{delivery_id}"))
        return sent


class _Writer:
    """The floor process's connection: write transactions (taking turns on SQLite) and the
    statements of each pattern in the database's own form."""

    def __init__(self, spec: FloorSpec) -> None:
        self.spec = spec
        self.sqlite = spec.database == "sqlite"
        self.turns = 0
        self.connection: Any
        if self.sqlite:
            self.connection = _sqlite_connect(spec.url)
            self.lock = os.open(spec.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            self.p = "?"
        else:
            import psycopg

            self.connection = psycopg.connect(_pg_url(spec.url))
            self.p = "%s"

    def stamp(self, value: datetime) -> Any:
        naive = value.astimezone(UTC).replace(tzinfo=None)
        return f"{naive:%Y-%m-%d %H:%M:%S.%f}" if self.sqlite else naive

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        if not self.sqlite:
            with self.connection.transaction(), self.connection.cursor() as cursor:
                yield cursor
            return
        import fcntl

        fcntl.flock(self.lock, fcntl.LOCK_EX)
        cursor = self.connection.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
        finally:
            cursor.close()
            fcntl.flock(self.lock, fcntl.LOCK_UN)
        self.turns += 1
        if self.turns % CHECKPOINT_EVERY == 0:
            self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def read(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        if self.sqlite:
            return list(self.connection.execute(sql, params).fetchall())
        with self.connection.transaction(), self.connection.cursor() as cursor:
            return list(cursor.execute(sql, params).fetchall())

    def close(self) -> None:
        self.connection.close()


def _select_person(d: str | None) -> str:
    head = f"{d}.id, {d}.recipient_id, {d}.channel, " if d else "r.id, r.id, a.channel, "
    return head + (
        "r.external_id, r.full_name, r.kind, r.province, r.birth_date, r.language, r.attributes,"
        " a.value"
    )


def _today_statements(w: _Writer) -> dict[str, str]:
    p, t, a = w.p, FLOOR_DELIVERIES, FLOOR_ATTEMPTS
    false = "0" if w.sqlite else "false"
    plan = (
        f"INSERT INTO {t} (run_id, campaign_id, recipient_id, channel, status, batch_id,"
        " error_class, available_at, created_at, updated_at, attempts, failures, reclaimed,"
        " period)"
        f" SELECT {p}, {p}, r.id, a.channel, 'pending', {p}, NULL, {p}, {p}, {p}, 0, 0, {false},"
        f" {p}"
        " FROM recipients r JOIN addresses a ON a.recipient_id = r.id"
        f" WHERE a.channel IN ({p}) AND a.dead_at IS NULL AND r.id > {p} AND r.id <= {p}"
        " ON CONFLICT DO NOTHING"
        " RETURNING id, run_id, campaign_id, recipient_id, channel, status, error_class"
    )
    claim = (
        f"UPDATE {t} SET status = 'claimed', lease_until = {p}, updated_at = {p}"
        f" WHERE batch_id = {p} AND (run_id + 0) = {p} AND available_at <= {p}"
        " AND (status || '') IN ('pending', 'retrying')"
    )
    read = (
        f"SELECT {_select_person('d')}, d.attempts, d.failures, d.reclaimed FROM {t} d"
        " LEFT OUTER JOIN recipients r ON r.id = d.recipient_id"
        " LEFT OUTER JOIN addresses a ON a.recipient_id = d.recipient_id"
        " AND a.channel = d.channel AND a.dead_at IS NULL"
        f" WHERE d.batch_id = {p} AND (d.status || '') = 'claimed' AND d.lease_until = {p}"
        " ORDER BY d.id"
    )
    names = [name for name, _ in RECORD_COLUMNS]

    def assigned(column: Callable[[str], str]) -> str:
        # Each column but the id takes the new value of the same name.
        return ", ".join(f"{name} = {column(name)}" for name in names[1:])

    def unnest(columns: Sequence[tuple[str, str]]) -> str:
        return ", ".join(f"%({name})s::{kind}[]" for name, kind in columns)

    attempt_names = ", ".join(name for name, _ in ATTEMPT_COLUMNS)
    if w.sqlite:
        # SQLite names a VALUES list's columns column1, column2 ...
        position = {name: i + 1 for i, name in enumerate(names)}

        def col(name: str) -> str:
            return f"v.column{position[name]}"

        record = (
            f"UPDATE {t} SET {assigned(col)}, lease_until = NULL, reclaimed = 0, updated_at = ?"
            " FROM (VALUES {values}) AS v"
            f" WHERE {t}.id = {col('id')} AND {t}.period = ? AND {t}.status = 'claimed'"
            f" AND {t}.lease_until = ?"
        )
        attempts = f"INSERT INTO {a} ({attempt_names}) VALUES {{values}}"
    else:
        record = (
            f"UPDATE {t} SET {assigned(lambda name: f'v.{name}')}, lease_until = NULL,"
            f" reclaimed = false, updated_at = %(updated_at)s"
            f" FROM unnest({unnest(RECORD_COLUMNS)}) AS v({', '.join(names)})"
            f" WHERE {t}.id = v.id AND {t}.period = %(period)s AND {t}.status = 'claimed'"
            f" AND {t}.lease_until = %(lease)s"
        )
        attempts = (
            f"INSERT INTO {a} ({attempt_names}) SELECT * FROM unnest({unnest(ATTEMPT_COLUMNS)})"
        )
    return {"plan": plan, "claim": claim, "read": read, "record": record, "attempts": attempts}


def _values(rows: int, width: int) -> str:
    one = "(" + ", ".join("?" * width) + ")"
    return ", ".join([one] * rows)


def _run_today(spec: FloorSpec, w: _Writer, r: _Renderer, batches: Sequence[int]) -> list[float]:
    s = _today_statements(w)
    render_s = write_s = 0.0
    rows_done = 0
    channel = r.template.channel
    for b in batches:
        lo = b * spec.batch_size
        hi = min(spec.recipients, lo + spec.batch_size)
        batch_id = uuid.uuid4().hex
        t0 = time.perf_counter()
        now = datetime.now(UTC)
        stamp = w.stamp(now)
        with w.transaction() as cursor:  # the planner's page
            cursor.execute(
                f"SELECT id FROM recipients WHERE id > {w.p} ORDER BY id LIMIT {w.p}",
                (lo, spec.batch_size),
            ).fetchall()
            cursor.execute(
                s["plan"],
                (
                    spec.run_id,
                    spec.campaign_id,
                    batch_id,
                    stamp,
                    stamp,
                    stamp,
                    spec.period,
                    channel,
                    lo,
                    hi,
                ),
            ).fetchall()
        lease = w.stamp(now + timedelta(seconds=LEASE_SECONDS, microseconds=b))
        with w.transaction() as cursor:  # the claim
            cursor.execute(s["claim"], (lease, stamp, batch_id, spec.run_id, stamp))
        claimed = w.read(s["read"], (batch_id, lease))
        t1 = time.perf_counter()
        sent = r.render(claimed)
        t2 = time.perf_counter()
        done = datetime.now(UTC)
        done_stamp = w.stamp(done)
        updates = [
            (i, "sent", 1, 0, loc, pmid, None, None, done_stamp, done_stamp)
            for i, loc, pmid in sent
        ]
        tries = [
            (i, 1, stamp, 0, "sent", None, "ok", None, pmid, loc, False, "floor", spec.period)
            for i, loc, pmid in sent
        ]
        with w.transaction() as cursor:  # the record
            if w.sqlite:
                flat: list[Any] = [done_stamp]
                flat += [value for row in updates for value in row]
                flat += (spec.period, lease)
                cursor.execute(s["record"].format(values=_values(len(updates), 10)), flat)
                cursor.execute(
                    s["attempts"].format(values=_values(len(tries), len(ATTEMPT_COLUMNS))),
                    [value for row in tries for value in row],
                )
            else:
                params: dict[str, Any] = {
                    name: list(values)
                    for (name, _), values in zip(
                        RECORD_COLUMNS, zip(*updates, strict=True), strict=True
                    )
                }
                params.update(updated_at=done_stamp, period=spec.period, lease=lease)
                cursor.execute(s["record"], params)
                cursor.execute(
                    s["attempts"],
                    {
                        name: list(values)
                        for (name, _), values in zip(
                            ATTEMPT_COLUMNS, zip(*tries, strict=True), strict=True
                        )
                    },
                )
        t3 = time.perf_counter()
        render_s += t2 - t1
        write_s += (t1 - t0) + (t3 - t2)
        rows_done += len(sent)
    return [render_s, write_s, float(rows_done)]


def _run_insert(spec: FloorSpec, w: _Writer, r: _Renderer, batches: Sequence[int]) -> list[float]:
    have = _columns(spec.database, spec.url, FLOOR_DELIVERIES)
    columns = [c for c in INSERT_COLUMNS if c in have]
    p = w.p
    read = (
        f"SELECT {_select_person(None)} FROM recipients r JOIN addresses a"
        f" ON a.recipient_id = r.id AND a.channel = {p} AND a.dead_at IS NULL"
        f" WHERE r.id > {p} AND r.id <= {p} ORDER BY r.id"
    )
    insert = (
        f"INSERT INTO {FLOOR_DELIVERIES} ({', '.join(columns)})"
        f" VALUES ({', '.join([p] * len(columns))})"
    )
    # Binary, as the service's record writes (dispatcher.engine.bulk).
    copy = f"COPY {FLOOR_DELIVERIES} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    types = copy_types(deliveries_t, columns)
    render_s = write_s = 0.0
    rows_done = 0
    channel = r.template.channel
    for b in batches:
        lo = b * spec.batch_size
        hi = min(spec.recipients, lo + spec.batch_size)
        t0 = time.perf_counter()
        rows = w.read(read, (channel, lo, hi))
        t1 = time.perf_counter()
        sent = r.render(rows)  # the recipient's id stands for the delivery's until written
        t2 = time.perf_counter()
        now = datetime.now(UTC)
        stamp = w.stamp(now)
        batch_id = uuid.uuid4().hex
        values = {
            "run_id": spec.run_id,
            "campaign_id": spec.campaign_id,
            "channel": channel,
            "status": "sent",
            "batch_id": batch_id,
            "available_at": stamp,
            "attempts": 1,
            "failures": 0,
            "reclaimed": False,
            "created_at": stamp,
            "updated_at": stamp,
            "sent_at": stamp,
            "period": spec.period,
        }
        out = [
            tuple(
                rid
                if c == "recipient_id"
                else loc
                if c == "locale"
                else f"null-{rid}"
                if c == "provider_message_id"
                else values[c]
                for c in columns
            )
            for rid, loc, _ in sent
        ]
        with w.transaction() as cursor:
            if w.sqlite:
                cursor.executemany(insert, out)
            else:
                with cursor.copy(copy) as pipe:
                    pipe.set_types(types)
                    for row in out:
                        pipe.write_row(row)
        t3 = time.perf_counter()
        render_s += t2 - t1
        write_s += (t1 - t0) + (t3 - t2)
        rows_done += len(out)
    return [render_s, write_s, float(rows_done)]


def _floor_process(
    spec: FloorSpec, index: int, ready: Any, go: Any, results: Any, release: Any
) -> None:
    """One floor process: set up, wait for the start, do every ``processes``-th batch, then
    stay (connection open) until ``release``, so that its CPU and its database backend's are
    still there to be read."""
    try:
        os.environ.update(spec.env)
        renderer = _Renderer(spec.template)
        writer = _Writer(spec)
        batches = range(index, -(-spec.recipients // spec.batch_size), spec.processes)
        # One render before the clock starts: the template compiled and cached, as in a warm
        # worker.
        renderer.render(
            [(0, 0, spec.template.channel, "0", "Nguyễn Văn An", "person", "", None, "vi", {}, "x")]
        )
        ready.wait(120)
        if not go.wait(120):
            raise TimeoutError("no start signal")
        work = _run_today if spec.pattern == "today" else _run_insert
        figures = work(spec, writer, renderer, batches)
        results.put((index, "ok", figures))
        release.wait(120)
        writer.close()
    except BaseException:
        results.put((index, "error", traceback.format_exc()))


def run_floor(
    spec: FloorSpec,
    *,
    backends: Callable[[], list[int]] | None = None,
    timeout: float = 3600.0,
) -> FloorResult:
    """Run one floor on fresh copies of the tables; its rate, CPU and disturbance."""
    result = FloorResult(pattern=spec.pattern, processes=spec.processes)
    missing = missing_columns(spec.database, spec.url, spec.pattern)
    if missing:
        result.skipped = f"the run's tables lack {', '.join(missing)}"
        return result
    notes = create_tables(spec.database, spec.url, spec.pattern)
    for note in notes:
        print(f"    note: {note}", flush=True)
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(spec.processes + 1)
    go, release = context.Event(), context.Event()
    results = context.Queue()
    processes = [
        context.Process(
            target=_floor_process, args=(spec, i, ready, go, results, release), name=f"floor-{i}"
        )
        for i in range(spec.processes)
    ]
    try:
        for process in processes:
            process.start()
        try:
            ready.wait(180)
        except threading.BrokenBarrierError:
            raise BenchError(
                f"the floor processes did not get ready: {_first_error(results)}"
            ) from None
        members = []
        for process in processes:
            with contextlib.suppress(psutil.Error):
                members.append(("floor", psutil.Process(process.pid)))
        before = cpu_snapshot([], backends, extra=members)
        started = time.perf_counter()
        go.set()
        figures: dict[int, list[float]] = {}
        deadline = time.monotonic() + timeout
        while len(figures) < spec.processes:
            try:
                index, status, payload = results.get(timeout=1.0)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"the {spec.pattern} floor took over {timeout:.0f} s"
                    ) from None
                if any(p.exitcode not in (None, 0) for p in processes):
                    raise BenchError(f"a floor process died: {_first_error(results)}") from None
                continue
            if status != "ok":
                raise BenchError(f"floor process {index} failed:\n{payload}")
            figures[index] = payload
        elapsed = time.perf_counter() - started
        after = cpu_snapshot([], backends, extra=members)
        release.set()
        for process in processes:
            process.join(30)
    finally:
        release.set()
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(5)
    rows = int(sum(f[2] for f in figures.values()))
    counted = count_rows(spec.database, spec.url, spec.pattern)
    drop_tables(spec.database, spec.url)
    if counted.get("sent", 0) != spec.recipients or rows != spec.recipients:
        raise BenchError(
            f"the {spec.pattern} floor wrote {counted} ({rows} reported), "
            f"expected {spec.recipients} sent"
        )
    result.elapsed_s = elapsed
    result.per_second = spec.recipients / elapsed
    result.render_s = sum(f[0] for f in figures.values())
    result.write_s = sum(f[1] for f in figures.values())
    result.rows = rows
    result.cpu = {**cpu_share(before, after), "ours_by_process": cpu_by_process(before, after)}
    result.cpu_us_per_delivery = cpu_us_per_delivery(before, after, spec.recipients)
    return result


def _first_error(results: Any) -> str:
    with contextlib.suppress(queue.Empty):
        while True:
            _, status, payload = results.get(timeout=0.5)
            if status != "ok":
                return str(payload)
    return "(no error reported)"


def cpu_us_per_delivery(before: Any, after: Any, deliveries: int) -> dict[str, float]:
    """CPU microseconds per delivery between two snapshots, by role, and their total."""
    elapsed = max(after.at - before.at, 1e-9)
    cores = cpu_by_process(before, after)
    out = {role: round(c * elapsed / deliveries * 1e6, 1) for role, c in cores.items()}
    out = {role: v for role, v in out.items() if role != "benchmark"}
    out["total"] = round(sum(out.values()), 1)
    return out


# -- the email floor --------------------------------------------------------------------------


def prerendered_emails(
    n: int,
    *,
    sender: str,
    subject: Callable[[int], str],
    body: Callable[[int], str],
    address: Callable[[int], str],
    html: Callable[[int], str] | None = None,
) -> list[tuple[str, bytes]]:
    """N messages built and written out before any is sent: the text body (and the HTML part
    as ``multipart/alternative`` when ``html`` is given) with the headers the email adapter
    sets (From, To, encoded Subject, Date, Message-ID). Returns (recipient, bytes) pairs."""
    import email.policy
    import email.utils
    from email.header import Header
    from email.mime.base import MIMEBase
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    wire = email.policy.compat32.clone(linesep="\r\n")
    out = []
    for i in range(n):
        mail: MIMEBase
        if html is None:
            mail = MIMEText(body(i), "plain", "utf-8")
        else:
            mail = MIMEMultipart("alternative")
            mail.attach(MIMEText(body(i), "plain", "utf-8"))
            mail.attach(MIMEText(html(i), "html", "utf-8"))
        mail["From"] = sender
        mail["To"] = address(i)
        mail["Subject"] = Header(subject(i), "utf-8", header_name="Subject")  # type: ignore[assignment]
        mail["Date"] = email.utils.format_datetime(datetime.now(UTC))
        mail["Message-ID"] = f"<floor{i}.bench@baohiemxahoi.gov.vn>"
        out.append((address(i), mail.as_bytes(policy=wire)))
    return out


async def _send_share(
    port: int, sender: str, messages: Sequence[tuple[str, bytes]], connections: int
) -> int:
    import aiosmtplib

    async def one(share: Sequence[tuple[str, bytes]]) -> int:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, use_tls=False)
        await client.connect()
        try:
            for rcpt, raw in share:
                await client.sendmail(sender, [rcpt], raw)
        finally:
            with contextlib.suppress(Exception):
                await client.quit()
        return len(share)

    counts = await asyncio.gather(*(one(messages[i::connections]) for i in range(connections)))
    return sum(counts)


def _email_process(
    port: int,
    sender: str,
    messages: Sequence[tuple[str, bytes]],
    connections: int,
    ready: Any,
    go: Any,
    results: Any,
    release: Any,
) -> None:
    try:
        import aiosmtplib  # noqa: F401  (imported before the clock starts)

        ready.wait(120)
        go.wait(120)
        sent = asyncio.run(_send_share(port, sender, messages, connections))
        results.put(("ok", sent))
        release.wait(120)  # alive until its CPU time is read
    except BaseException:
        results.put(("error", traceback.format_exc()))


def email_floor(
    port: int,
    messages: list[tuple[str, bytes]],
    *,
    sender: str,
    processes: int,
    connections: int,
    server: Sequence[tuple[str, psutil.Process]] = (),
    timeout: float = 1800.0,
) -> dict[str, Any]:
    """Send ``messages`` (pre-rendered) from ``processes`` processes over ``connections``
    aiosmtplib connections each: the rate, and the CPU per email of the senders. ``server``
    (role, process) pairs count as ours, not as disturbance (the SMTP server)."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(processes + 1)
    go, release = context.Event(), context.Event()
    results = context.Queue()
    children = [
        context.Process(
            target=_email_process,
            args=(port, sender, messages[i::processes], connections, ready, go, results, release),
        )
        for i in range(processes)
    ]
    try:
        for child in children:
            child.start()
        ready.wait(180)
        members = [("floor", psutil.Process(c.pid)) for c in children if c.pid]
        members += list(server)
        before = cpu_snapshot([], None, extra=members)
        started = time.perf_counter()
        go.set()
        sent = 0
        for _ in children:
            status, payload = results.get(timeout=timeout)
            if status != "ok":
                raise BenchError(f"an email floor process failed:\n{payload}")
            sent += int(payload)
        elapsed = time.perf_counter() - started
        after = cpu_snapshot([], None, extra=members)
        release.set()
        for child in children:
            child.join(30)
    finally:
        release.set()
        for child in children:
            if child.is_alive():
                child.kill()
                child.join(5)
    share = cpu_share(before, after)
    floor_cpu_s = sum(
        t - before.ours.get(pid, 0.0)
        for pid, t in after.ours.items()
        if after.roles[pid] == "floor"
    )
    return {
        "sent": sent,
        "seconds": round(elapsed, 3),
        "per_second": round(sent / elapsed, 1),
        "processes": processes,
        "connections_per_process": connections,
        "cpu": share,
        "cpu_us_per_email": round(floor_cpu_s / max(1, sent) * 1e6, 1),
        "disturbed": disturbed(share),
    }
