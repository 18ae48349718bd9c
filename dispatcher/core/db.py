"""Engine, sessions and the schema's conventions.

SQLite is the embedded default (a file in WAL mode); PostgreSQL is the production database.
Write transactions on SQLite start with ``BEGIN IMMEDIATE`` so that two writers queue on the
busy timeout instead of failing with "database is locked" when a reader upgrades.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# BIGINT keys on PostgreSQL; SQLite only makes an alias of the rowid for "INTEGER PRIMARY KEY".
BigId = BigInteger().with_variant(sqlite.INTEGER(), "sqlite")
JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")
# For optional JSON: None is SQL NULL (so "IS NULL" finds it), not the JSON value null.
NullableJSON = JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as UTC and always read back timezone-aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware one is required")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normalise_url(url: str) -> URL:
    """``postgresql://`` means psycopg 3 here; other drivers are kept as given."""
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _configure_sqlite(engine: Engine, cache_mib: int | None = None) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the sqlite3 module (see the "begin" hook).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        if cache_mib is not None:
            # A negative size is in KiB rather than pages.
            cursor.execute(f"PRAGMA cache_size=-{int(cache_mib) * 1024}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A unit of work marked read-only (the ``read_only`` execution option, see
        # Database.reading) takes no write lock: in WAL mode it reads beside the writer.
        if connection.get_execution_options().get("read_only"):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_db_engine(url: str, *, sqlite_cache_mib: int | None = None, **kwargs: Any) -> Engine:
    """An engine for ``url``; on SQLite, each connection in WAL mode with foreign keys on and,
    when given, a page cache of ``sqlite_cache_mib``."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            directory = os.path.dirname(os.path.abspath(database))
            os.makedirs(directory, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 60}, **kwargs)
        _configure_sqlite(engine, sqlite_cache_mib)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    if parsed.get_backend_name() == "postgresql":
        parsed = without_jit(parsed)
    return create_engine(parsed, **kwargs)


# An operator's own setting of jit in the connection's options: "-c jit=on", "-cjit=on",
# "--jit=on" (not jit_above_cost and its kind).
_JIT_SET = re.compile(r"(?:^|\s|-c|-)jit=")


def without_jit(url: URL) -> URL:
    """``url`` with PostgreSQL's JIT compiler off for its connections (libpq's ``options``,
    added to those the URL or ``PGOPTIONS`` give), unless they set ``jit`` themselves.

    The service's statements are short, or counts and scans that JIT does not speed up
    (approval's audience count over 10 million recipients: 0.97 s with it, 0.93 s without),
    while the first statement whose estimated cost passes ``jit_above_cost`` loads LLVM into
    its backend for the life of the connection: 54 MiB, and 10 MiB in each parallel worker.
    """
    options = url.query.get("options")
    if isinstance(options, tuple):
        options = " ".join(options)
    if options is None:
        # An explicit "options" replaces PGOPTIONS in libpq: keep what it held.
        options = os.environ.get("PGOPTIONS", "")
    if _JIT_SET.search(options):
        return url
    return url.update_query_dict({"options": f"{options} -c jit=off".strip()})


class Database:
    """An engine and its session factory, created lazily per process (safe across fork)."""

    def __init__(self, url: str, *, sqlite_cache_mib: int | None = None) -> None:
        self.url = url
        self.sqlite_cache_mib = sqlite_cache_mib
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._pid = 0
        self._sessionmaker: sessionmaker[Session] | None = None

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None or self._pid != os.getpid():
                if self._engine is not None:
                    # Inherited through fork: never touch the parent's connections.
                    self._engine.dispose(close=False)
                self._engine = create_db_engine(self.url, sqlite_cache_mib=self.sqlite_cache_mib)
                self._pid = os.getpid()
                self._sessionmaker = sessionmaker(self._engine, expire_on_commit=False)
            return self._engine

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def session(self) -> Session:
        _ = self.engine
        assert self._sessionmaker is not None
        return self._sessionmaker()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session that commits when the block ends and rolls back on an exception."""
        session = self.session()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A session for reads only: on SQLite it takes no write lock (it must not write).

        Closing it ends the transaction; what it loaded stays readable (nothing is expired)."""
        session = self.session()
        try:
            session.connection(execution_options={"read_only": True})
            yield session
        finally:
            session.close()

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None


_database: Database | None = None
_database_lock = threading.Lock()


def get_database() -> Database:
    """The process's database, from the settings."""
    global _database
    with _database_lock:
        if _database is None:
            from dispatcher.core.config import get_settings

            settings = get_settings()
            _database = Database(settings.database_url, sqlite_cache_mib=settings.sqlite_cache_mib)
        return _database


def set_database(database: Database | None) -> None:
    global _database
    with _database_lock:
        _database = database
