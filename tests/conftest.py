"""Fixtures: real Redis, real SQLite and PostgreSQL, a real SMTP server, real workers.

Every test that touches the database runs twice, on SQLite and on PostgreSQL. The PostgreSQL
leg uses a throwaway database on ``DISPATCHER_TEST_POSTGRES_URL`` (default: the local server);
when no server is reachable it is skipped loudly, except under ``CI=true`` where that fails.
Redis is a private ``redis-server`` on a free port when the binary exists (so FLUSHALL hurts
nobody), otherwise ``DISPATCHER_TEST_REDIS_URL``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import text

from dispatcher.core import migrate as migrations
from dispatcher.core.config import Settings, get_settings
from dispatcher.core.db import Database, set_database
from dispatcher.engine import backends, tallies
from dispatcher.kit.clock import clock
from dispatcher.tables import Base
from tests.support import SmtpServer, free_port, wait_for

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PG_ADMIN_URL = os.environ.get(
    "DISPATCHER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
_skipped_postgres: list[str] = []


# -- Redis ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        yield os.environ.get("DISPATCHER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
        return
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="dispatcher-test-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for(up, timeout=10, what="the test redis-server")
    yield url
    process.terminate()
    process.wait(timeout=10)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture()
def redis_client(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    return client


# -- Databases --------------------------------------------------------------------------------


def _postgres_database() -> tuple[str, str] | None:
    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        _skipped_postgres.append(str(exc).strip().splitlines()[0])
        return None
    name = f"dispatcher_test_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return name, f"{base}/{name}"


def _drop_postgres(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'dispatcher.db'}"
        migrations.upgrade(url)
        yield url
        return
    created = _postgres_database()
    if created is None:
        message = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {_skipped_postgres[-1]}"
        if IN_CI:
            pytest.fail(f"CI must run the PostgreSQL leg. {message}")
        pytest.skip(f"SKIPPED THE POSTGRESQL LEG. {message}")
    name, url = created
    migrations.upgrade(url)
    yield url
    _drop_postgres(name)


@pytest.fixture(scope="session")
def _databases() -> Iterator[dict[str, Database]]:
    made: dict[str, Database] = {}
    yield made
    for database in made.values():
        database.dispose()


def _truncate(database: Database) -> None:
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with database.engine.begin() as connection:
        if database.is_sqlite:
            # Units refer to their parent unit: check foreign keys at commit, when all are gone.
            connection.execute(text("PRAGMA defer_foreign_keys = ON"))
            for table in tables:
                connection.execute(text(f"DELETE FROM {table}"))
            # AUTOINCREMENT's counters (deliveries): ids start again, as RESTART IDENTITY.
            connection.execute(text("DELETE FROM sqlite_sequence"))
        else:
            connection.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))


@pytest.fixture()
def db(database_url: str, _databases: dict[str, Database]) -> Iterator[Database]:
    database = _databases.get(database_url)
    if database is None:
        database = _databases[database_url] = Database(database_url)
    _truncate(database)
    # Ids start again after the reset: forget what the caches keyed by them.
    from dispatcher.content.render import renderer
    from dispatcher.content.service import versions

    versions.clear()
    renderer.clear()
    set_database(database)
    yield database
    set_database(None)
    # Whatever the test wrote, the tallies PostgreSQL keeps match its delivery rows.
    with database.reading() as session:
        wrong = tallies.mismatches(session)
    assert not wrong, (
        f"delivery tallies differ from the rows (run, channel, status, tally, rows): {wrong}"
    )


# -- Settings and the job queue -----------------------------------------------------------------


@pytest.fixture()
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture()
def settings(
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
    redis_url: str,
    smtp: SmtpServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Settings]:
    values = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "SMTP_SENDER": "Bảo hiểm xã hội Việt Nam <thongbao@bhxh.test>",
        "BATCH_SIZE": "10",
        "QUICK_RETRY_SECONDS": "0.01",
        "RETRY_BASE_SECONDS": "0.2",
        "RETRY_MAX_SECONDS": "1",
        "SWEEP_GRACE_SECONDS": "0",
        "SWEEP_INTERVAL_SECONDS": "0.2",
        "LEASE_SECONDS": "30",
        "PUBLIC_URL": "https://thongbao.bhxh.test",
        # No send windows unless a test sets them: nothing may depend on the hour it runs at.
        "SEND_WINDOWS": "{}",
        # The processes a test starts count their metrics here, not in the working directory.
        "METRICS_DIR": str(tmp_path_factory.mktemp("metrics")),
    }
    for key in list(os.environ):
        if key.startswith("DISPATCHER_") and not key.startswith("DISPATCHER_TEST_"):
            monkeypatch.delenv(key)
    for key, value in values.items():
        monkeypatch.setenv(f"DISPATCHER_{key}", value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()
    clock.reset()


@pytest.fixture()
def job_queue(settings: Settings, redis_client: redis.Redis) -> Iterator[backends.Backends]:
    queue = backends.configure(settings)
    yield queue
    queue.broker.close()
    backends.set_current(None)


@pytest.fixture()
def worker(job_queue: backends.Backends, settings: Settings, db: Database) -> Iterator[object]:
    import dramatiq

    from workers import actors

    actors.declare(job_queue.broker, settings)
    running = dramatiq.Worker(
        job_queue.broker,
        queues={settings.queue_urgent, settings.queue_bulk},
        worker_threads=4,
        worker_timeout=50,
    )
    running.start()
    yield running
    running.stop(timeout=10_000)
    processor = actors._processor
    if processor is not None:
        processor.loop.run(processor.adapters.close(), timeout=10)
    actors.set_processor(None)


def make_key(db: Database, role: str, name: str) -> str:
    from dispatcher.auth.service import create_key

    with db.transaction() as session:
        _, key = create_key(session, role=role, name=name)
    return key


@pytest.fixture()
def admin_key(db: Database) -> str:
    """The default client's key: an admin, who drafts and submits in most tests."""
    return make_key(db, "admin", "Quản trị viên")


@pytest.fixture()
def approver(db: Database) -> dict[str, str]:
    """Headers of a second person, an approver: the submitter may not approve."""
    return {"Authorization": f"Bearer {make_key(db, 'approver', 'Người phê duyệt')}"}


@pytest.fixture()
def client(
    settings: Settings, db: Database, job_queue: backends.Backends, admin_key: str
) -> Iterator[object]:
    from fastapi.testclient import TestClient

    from dispatcher.web.app import create_app

    with TestClient(
        create_app(settings, configure_jobs=False),
        headers={"Authorization": f"Bearer {admin_key}"},
    ) as test_client:
        yield test_client


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skipped_postgres:
        terminalreporter.section("PostgreSQL leg", sep="!", bold=True, red=True)
        terminalreporter.write_line(
            f"THE POSTGRESQL LEG WAS SKIPPED: no server at {PG_ADMIN_URL} "
            f"({_skipped_postgres[-1]}). Set DISPATCHER_TEST_POSTGRES_URL to run it."
        )


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
