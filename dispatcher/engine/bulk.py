"""The pipeline's hot writes: one statement per batch each, and the turns SQLite writers take.

SQLite has one writer at a time. Left to its busy handler, a blocked writer sleeps in growing
steps (1, 2, 5, 10 ... 100 ms) and the lock often sits free while every waiter sleeps. The
pipeline's and the planner's writers therefore queue for it on a lock of their own: a thread
lock inside a process and a file lock (``flock``) beside the database between processes, which
wakes the next waiter the moment the holder lets go. Other writers (the API, the sweeper) still
meet them on SQLite's own lock, as before. Their connections do not checkpoint the WAL as they
commit (a checkpoint copies megabytes and syncs the file, while everyone waits for the turn):
the writers checkpoint every few turns after theirs ends, beside the next writer. PostgreSQL
needs none of this.

Recording a batch takes two statements whatever its size. A batch row's deliveries are
inserted (a binary ``COPY`` on PostgreSQL, one multi-row INSERT on SQLite, chunked under its
limit of bound values); rows get their new states from a list (``UPDATE ... FROM`` a
``VALUES`` list on SQLite, ``unnest`` of arrays on PostgreSQL). The attempts go in the same
way as inserted deliveries. Values are put into the driver's form once per batch, not per row
through SQLAlchemy's bind processing.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from itertools import chain
from typing import Any, TypeVar

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from dispatcher.core.db import Database
from dispatcher.tables.deliveries import Attempt, Delivery

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the thread lock alone
    fcntl = None  # type: ignore[assignment]

deliveries_t: Table = Delivery.__table__  # type: ignore[assignment]
attempts_t: Table = Attempt.__table__  # type: ignore[assignment]
T = TypeVar("T")

# A delivery's new state: (id, status, attempts, failures, locale, provider_message_id,
# error_class, error_reason, available_at, sent_at); the timestamps already in driver form.
DELIVERY_COLUMNS = (
    ("id", "bigint"),
    ("status", "varchar"),
    ("attempts", "integer"),
    ("failures", "integer"),
    ("locale", "varchar"),
    ("provider_message_id", "varchar"),
    ("error_class", "varchar"),
    ("error_reason", "text"),
    ("available_at", "timestamp"),
    ("sent_at", "timestamp"),
)
# A delivery inserted by a batch row's record, in the order of these columns.
DELIVERY_INSERT_COLUMNS = (
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
    "period",
)
# One attempt, in the order of these columns.
ATTEMPT_COLUMNS = (
    ("delivery_id", "bigint"),
    ("number", "integer"),
    ("started_at", "timestamp"),
    ("duration_ms", "integer"),
    ("outcome", "varchar"),
    ("error_class", "varchar"),
    ("provider_code", "varchar"),
    ("provider_reply", "text"),
    ("provider_message_id", "varchar"),
    ("locale", "varchar"),
    ("possible_duplicate", "boolean"),
    ("worker", "varchar"),
    ("period", "integer"),
)
# Turns between two checkpoints of the WAL, in each process (see WriteTurns).
CHECKPOINT_EVERY = 16
# SQLite allows 32766 bound values in one statement (3.32 and later; RETURNING needs 3.35).
SQLITE_MAX_VALUES = 30_000

_ATTEMPT_NAMES = ", ".join(name for name, _ in ATTEMPT_COLUMNS)
_DELIVERY_NAMES = ", ".join(DELIVERY_INSERT_COLUMNS)


def _update(
    values: str, column: Callable[[str], str], *, false: str, param: Callable[[str], str]
) -> str:
    # Each column but the id takes the new value of the same name.
    assigned = ", ".join(f"{name} = {column(name)}" for name, _ in DELIVERY_COLUMNS[1:])
    return (
        f"UPDATE deliveries SET {assigned}, lease_until = NULL, reclaimed = {false}, "
        f"updated_at = {param('updated_at')} FROM {values} "
        f"WHERE deliveries.id = {column('id')} AND deliveries.period = {param('period')} "
        f"AND deliveries.status = 'claimed' AND deliveries.lease_until = {param('lease')}"
    )


_POSITION = {name: index + 1 for index, (name, _) in enumerate(DELIVERY_COLUMNS)}


@lru_cache(maxsize=64)
def _sqlite_update(rows: int) -> str:
    # SQLite names a VALUES list's columns column1, column2 ... (and a statement that begins
    # with WITH would not report its row count).
    one = "(" + ", ".join("?" * len(DELIVERY_COLUMNS)) + ")"
    return _update(
        f"(VALUES {', '.join([one] * rows)}) AS v",
        lambda name: f"v.column{_POSITION[name]}",
        false="0",
        param=lambda name: "?",
    )


@lru_cache(maxsize=64)
def _sqlite_attempts(rows: int) -> str:
    one = "(" + ", ".join("?" * len(ATTEMPT_COLUMNS)) + ")"
    return f"INSERT INTO attempts ({_ATTEMPT_NAMES}) VALUES {', '.join([one] * rows)}"


@lru_cache(maxsize=64)
def _sqlite_deliveries(rows: int) -> str:
    one = "(" + ", ".join("?" * len(DELIVERY_INSERT_COLUMNS)) + ")"
    return f"INSERT INTO deliveries ({_DELIVERY_NAMES}) VALUES {', '.join([one] * rows)}"


def _pg_stamp(value: datetime) -> datetime:
    if value.tzinfo is UTC:
        # The common case (the service's clock): the same instant, naive.
        return value.replace(tzinfo=None)
    if value.tzinfo is None:
        raise ValueError("naive datetime given where an aware one is required")
    return value.astimezone(UTC).replace(tzinfo=None)


def _sqlite_stamp(value: datetime) -> str:
    if value.tzinfo is UTC:
        # The common case (the service's clock): the UTC text less its "+00:00".
        return value.isoformat(" ", "microseconds")[:-6]
    if value.tzinfo is None:
        raise ValueError("naive datetime given where an aware one is required")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def copy_types(table: Table, names: Sequence[str]) -> list[str]:
    """The PostgreSQL type of each of ``names``, as a binary ``COPY`` sends its values."""
    dialect = postgresql.dialect()
    return [table.c[name].type.compile(dialect=dialect).split("(")[0].lower() for name in names]


_DELIVERY_TYPES = copy_types(deliveries_t, DELIVERY_INSERT_COLUMNS)
_ATTEMPT_TYPES = copy_types(attempts_t, [name for name, _ in ATTEMPT_COLUMNS])


def _copy(
    connection: Connection,
    table: str,
    names: str,
    types: list[str],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """``COPY`` rows into a table, in the connection's transaction (psycopg 3). Binary: each
    value goes as its column's type, neither formatted as text here nor parsed by the server
    (a fifth of the client's CPU per row of a text ``COPY``). A value must then be of its
    column's Python type: an ``int`` for a text column is refused, not turned into text."""
    raw: Any = connection.connection.driver_connection
    statement = f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)"
    with raw.cursor() as cursor, cursor.copy(statement) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)


def _unnest(columns: Sequence[tuple[str, str]]) -> str:
    arrays = ", ".join(f"%({name})s::{kind}[]" for name, kind in columns)
    return f"unnest({arrays})"


_PG_UPDATE = _update(
    f"{_unnest(DELIVERY_COLUMNS)} AS v({', '.join(name for name, _ in DELIVERY_COLUMNS)})",
    lambda name: f"v.{name}",
    false="false",
    param=lambda name: f"%({name})s",
)


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class BulkWrites:
    """The batch-sized statements of one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.postgresql = dialect.name == "postgresql"
        stamp_type = deliveries_t.c.updated_at.type
        process = stamp_type.dialect_impl(dialect).bind_processor(dialect)
        self._stamp: Callable[[Any], Any] = process or (lambda value: value)
        # SQLite stores a timestamp as its UTC ISO text, PostgreSQL as the naive UTC instant:
        # made at once rather than through SQLAlchemy's processors (a stamp per attempt), when
        # that is exactly what they make.
        sample = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=7)))
        if process is not None:
            for fast in (_sqlite_stamp, _pg_stamp):
                if process(sample) == fast(sample) and process(sample.astimezone(UTC)) == fast(
                    sample.astimezone(UTC)
                ):
                    self._stamp = fast
                    break

    def stamp(self, value: datetime | None) -> Any:
        """A timestamp in the driver's form, as SQLAlchemy would have bound it."""
        return None if value is None else self._stamp(value)

    def stamps(self, value: datetime) -> tuple[Any, Any]:
        """``value`` in the driver's form, and as the audit chain writes it out
        (:func:`dispatcher.audit.coverage.stamp_text`): on SQLite one is the other with a
        ``T``, so a timestamp of every attempt is formatted once, not twice; on PostgreSQL the
        text is the naive instant's, without converting it again."""
        bound = self._stamp(value)
        if self._stamp is _sqlite_stamp:
            return bound, f"{bound[:10]}T{bound[11:]}"
        if self._stamp is _pg_stamp:
            return bound, bound.isoformat(timespec="microseconds")
        return bound, value

    def update_deliveries(
        self,
        connection: Connection,
        rows: Sequence[tuple[Any, ...]],
        *,
        updated_at: datetime,
        lease_until: datetime,
        period: int,
    ) -> int:
        """Write each claimed row's new state, only while our claim holds; returns the rows
        written (fewer when a lease was lost). ``period`` is the run's month: every row of a
        batch has it, and on PostgreSQL it confines the statement to that month's partition
        (without it, each id is probed in every month's primary key)."""
        if not rows:
            return 0
        stamp, lease = self.stamp(updated_at), self.stamp(lease_until)
        if self.postgresql:
            params: dict[str, Any] = {
                name: list(values)
                for (name, _), values in zip(DELIVERY_COLUMNS, zip(*rows, strict=True), strict=True)
            }
            params.update(updated_at=stamp, period=period, lease=lease)
            return connection.exec_driver_sql(_PG_UPDATE, params).rowcount
        written = 0
        for chunk in chunks(rows, SQLITE_MAX_VALUES // len(DELIVERY_COLUMNS)):
            # In the order of the statement's text: SET's updated_at, the values, the period,
            # the lease.
            flat = [stamp]
            flat += [value for row in chunk for value in row]
            flat += (period, lease)
            written += connection.exec_driver_sql(_sqlite_update(len(chunk)), tuple(flat)).rowcount
        return written

    def insert_deliveries(self, connection: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert deliveries whole (a batch row's, each with its outcome)."""
        if not rows:
            return
        if self.postgresql:
            _copy(connection, "deliveries", _DELIVERY_NAMES, _DELIVERY_TYPES, rows)
            return
        for chunk in chunks(rows, SQLITE_MAX_VALUES // len(DELIVERY_INSERT_COLUMNS)):
            flat = tuple(chain.from_iterable(chunk))
            connection.exec_driver_sql(_sqlite_deliveries(len(chunk)), flat)

    def insert_attempts(self, connection: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        if self.postgresql:
            _copy(connection, "attempts", _ATTEMPT_NAMES, _ATTEMPT_TYPES, rows)
            return
        for chunk in chunks(rows, SQLITE_MAX_VALUES // len(ATTEMPT_COLUMNS)):
            flat = tuple(chain.from_iterable(chunk))
            connection.exec_driver_sql(_sqlite_attempts(len(chunk)), flat)


class WriteTurns:
    """Makes the pipeline's write transactions on SQLite take turns (see the module's note).

    ``with turns.transaction() as session:`` instead of ``db.transaction()``; on PostgreSQL
    it is exactly that. Ordinary writers (bulk batches) first queue at a gate, one of them at
    a time going on to wait for the turn itself; *first* writers (the planner, urgent batches)
    skip the gate, so that they wait for at most the turn in progress and one other.
    """

    def __init__(self, db: Database, *, checkpoint_every: int = CHECKPOINT_EVERY) -> None:
        self.db = db
        self.checkpoint_every = checkpoint_every
        self._gate = threading.Lock()
        self._lock = threading.Lock()
        self._sqlite: bool | None = None
        self._path: str | None = None
        self._files: tuple[int, int] | None = None
        self._pid = 0
        self._turns = 0

    @property
    def sqlite(self) -> bool:
        if self._sqlite is None:
            engine = self.db.engine
            self._sqlite = engine.dialect.name == "sqlite"
            database = engine.url.database
            if self._sqlite and database and database != ":memory:":
                self._path = os.path.abspath(database)
        return self._sqlite

    def _open(self) -> tuple[int, int] | None:
        """The (gate, turn) lock files of this process."""
        if self._path is None or fcntl is None:
            return None
        if self._files is None or self._pid != os.getpid():
            # Descriptors inherited through fork share their locks with the parent: open anew.
            self._files = (
                os.open(self._path + "-writers-gate", os.O_RDWR | os.O_CREAT, 0o600),
                os.open(self._path + "-writers", os.O_RDWR | os.O_CREAT, 0o600),
            )
            self._pid = os.getpid()
        return self._files

    @contextmanager
    def turn(self, *, first: bool = False) -> Iterator[None]:
        """Hold the writers' turn (SQLite; nothing on PostgreSQL)."""
        if not self.sqlite:
            yield
            return
        files = self._open()
        if not first:
            self._gate.acquire()
            if files is not None:
                fcntl.flock(files[0], fcntl.LOCK_EX)
        try:
            self._lock.acquire()
            if files is not None:
                fcntl.flock(files[1], fcntl.LOCK_EX)
        finally:
            if not first:
                if files is not None:
                    fcntl.flock(files[0], fcntl.LOCK_UN)
                self._gate.release()
        try:
            yield
        finally:
            if files is not None:
                fcntl.flock(files[1], fcntl.LOCK_UN)
            self._turns += 1
            due = self._turns % self.checkpoint_every == 0
            self._lock.release()
        if due:
            self.checkpoint()

    @contextmanager
    def transaction(self, *, first: bool = False) -> Iterator[Session]:
        """``db.transaction()`` inside a turn."""
        with self.turn(first=first), self.db.transaction() as session:
            if self.sqlite:
                session.connection().exec_driver_sql("PRAGMA wal_autocheckpoint=0")
            yield session

    def checkpoint(self) -> None:
        """Copy the WAL into the database without holding up writers (PASSIVE)."""
        raw = self.db.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
            cursor.close()
        finally:
            raw.close()


_turns: dict[str, WriteTurns] = {}
_turns_lock = threading.Lock()


def write_turns(db: Database) -> WriteTurns:
    """The turns of ``db``'s database in this process, shared by every user of it."""
    with _turns_lock:
        found = _turns.get(db.url)
        if found is None:
            found = _turns[db.url] = WriteTurns(db)
        return found
