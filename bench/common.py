"""What the benchmarks share: their processes, Redis, PostgreSQL, an SMTP sink, names, results.

The project's own packages are imported by the functions that need them: the SMTP sink's child
process imports nothing of the service.

- :class:`Managed` runs a subprocess in its own session, logging to a file, and ends its whole
  tree; :func:`wait_until` polls a condition while watching processes that must stay up.
- :func:`start_private_redis` starts a ``redis-server`` on a free port in a directory of ours,
  with or without AOF persistence.
- :class:`PrivatePostgres` is a throwaway PostgreSQL cluster (``initdb`` in a temporary
  directory, ``pg_ctl`` on a free port) that can be stopped and started mid-run without
  touching a shared server; :func:`create_postgres_database` makes a throwaway database on any
  server.
- The SMTP sink (``python -m bench.common smtp-sink``) accepts every message, counts them, logs
  one line per message with its ``Message-ID``, and stops gracefully: on SIGTERM it answers
  ``421`` to new mail before it closes, so no message it counted goes unacknowledged.
- :class:`RssSampler` and :func:`cpu_snapshot` / :func:`cpu_share` measure memory and CPU.
- :class:`Service` is the service of one run: its processes in a temporary directory, the API
  with two keys (one submits a campaign, the other approves it), recipients and campaigns over
  HTTP, every process stopped when the run ends.
- Vietnamese names (:func:`vietnamese_name`, :func:`person`), result files and :func:`run_main`
  (Ctrl-C and SIGTERM stop every process a benchmark started).

The benchmarks run as modules from the project root (``python -m bench.pipeline``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # pragma: no cover - a message instead of a traceback
    raise SystemExit(
        "the benchmarks need the bench extra: pip install -e '.[bench]' (aiosmtpd, psutil)"
    ) from None

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

MiB = 1024 * 1024
SAMPLE_SECONDS = 0.2
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
# The service's Redis namespace in every benchmark process (DISPATCHER_REDIS_NAMESPACE): its
# queues, markers and dramatiq's worker heartbeats live under it.
NAMESPACE = "dispatcher-bench"
HEARTBEATS_KEY = f"{NAMESPACE}:__heartbeats__"
RESULT_TAG = "BENCH_RESULT "
OTHER_CPU_WARNING = 0.25  # cores used by other processes above which figures are disturbed


class BenchError(Exception):
    """The benchmark cannot go on; the message says why and what to do."""


# -- processes ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dispatcher_command() -> list[str]:
    """The ``dispatcher`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("dispatcher")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "dispatcher.cli"]


def project_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process of the service: this one's, less its ``DISPATCHER_*``.

    Settings of the calling shell must not leak into a measurement, so only ``extra`` adds
    any. Greetings would otherwise wait for their send window (07:00-21:00 Vietnam time), so
    ``DISPATCHER_SEND_WINDOWS`` is ``{}`` unless ``extra`` says otherwise; the Redis namespace
    is :data:`NAMESPACE`, where the benchmarks look for worker heartbeats. The processes
    import the tree this file lives in, even when another checkout is installed.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env["DISPATCHER_SEND_WINDOWS"] = "{}"
    env["DISPATCHER_REDIS_NAMESPACE"] = NAMESPACE
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


class Managed:
    """A subprocess in its own session (so that its whole tree can be ended), logging to a file."""

    def __init__(
        self, name: str, argv: Sequence[str], *, env: dict[str, str], log_path: Path
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.log_path = log_path
        self.started_at = time.monotonic()
        self._log = log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self._log.close()
            raise BenchError(f"cannot start the {name} ({self.argv[0]}): {exc}") from None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tree(self) -> list[psutil.Process]:
        """The process and its descendants (dramatiq's forked worker processes)."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def children(self) -> list[psutil.Process]:
        return self.tree()[1:]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process and its living descendants so far."""
        total = 0.0
        for member in self.tree():
            with contextlib.suppress(psutil.Error):
                times = member.cpu_times()
                total += times.user + times.system
        return total

    def respawn(self) -> Managed:
        """The same command again, appending to the same log (after this one has ended)."""
        return Managed(self.name, self.argv, env=self.env, log_path=self.log_path)

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, SIGKILL whatever is left after ``timeout``."""
        descendants = self.children()
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        # Descendants that outlived their parent, by pid (psutil checks it is still the same
        # process, not a reused pid).
        for member in descendants:
            with contextlib.suppress(psutil.Error):
                if member.is_running():
                    member.kill()
        self.close_log()

    def close_log(self) -> None:
        if not self._log.closed:
            self._log.close()

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 25) -> str:
        return "\n".join(f"    {line}" for line in self.text().splitlines()[-lines:])

    def dead_error(self) -> BenchError:
        return BenchError(
            f"the {self.name} process exited with code {self.proc.returncode}; "
            f"last lines of {self.log_path.name}:\n{self.tail()}"
        )


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    watch: Sequence[Managed] = (),
    interval: float = 0.1,
) -> None:
    """Poll ``predicate`` until it holds; fail when a watched process dies or on ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in watch:
            if not process.alive():
                raise process.dead_error()
        if predicate():
            return
        time.sleep(interval)
    detail = "".join(f"\n  {p.log_path.name}:\n{p.tail()}" for p in watch)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")


def wait_for_api(client: Any, api: Managed, *, timeout: float = 90.0) -> None:
    """Until the API behind ``client`` (an ``httpx.Client``) answers ``/readyz`` with 200;
    fail at once if its process ``api`` dies."""
    import httpx

    def ready() -> bool:
        try:
            return bool(client.get("/readyz").status_code == 200)
        except httpx.TransportError:
            return False

    wait_until(ready, timeout=timeout, what="the API (/readyz)", watch=[api])


# -- Redis --------------------------------------------------------------------------------------


def redis_up(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def check_redis(url: str) -> None:
    """Fail, saying why, when the Redis at ``url`` (given with ``--redis-url``) does not answer."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        raise BenchError(
            f"Redis is not reachable at {url}: {exc}. Start it, or leave out --redis-url to let "
            "the benchmark start a private redis-server."
        ) from None
    finally:
        client.close()


def start_private_redis(
    workdir: Path, *, persistence: bool = False, port: int | None = None
) -> tuple[Managed, str]:
    """A ``redis-server`` on a free port (or ``port``), its files in ``workdir``.

    Without ``persistence`` nothing is saved (a restart starts empty). With it, every write
    goes to an append-only file (``appendfsync everysec``) that a restart reads back, as the
    service runs in production.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError(
            "redis-server is not on PATH: install it (e.g. apt-get install redis-server)"
        )
    port = port or free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--dir", str(workdir)]
    if persistence:
        argv += ["--appendonly", "yes", "--appendfsync", "everysec"]
        argv += ["--maxmemory-policy", "noeviction"]
    else:
        argv += ["--appendonly", "no"]
    process = Managed("redis-server", argv, env=dict(os.environ), log_path=workdir / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: redis_up(url), timeout=15, what="the private redis-server", watch=[process])
    return process, url


# -- PostgreSQL ---------------------------------------------------------------------------------


def create_postgres_database(admin_url: str, prefix: str = "dispatcher_bench") -> tuple[str, str]:
    """A new, empty database on ``admin_url``'s server: (its name, its URL)."""
    import psycopg
    from sqlalchemy.engine import make_url

    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        first = (str(exc).strip().splitlines() or ["?"])[0]
        raise BenchError(
            f"PostgreSQL is not reachable at {admin_url}: {first}. "
            "Start it, or pass --postgres-url (an admin URL allowed to CREATE DATABASE)."
        ) from None
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    return name, url


def drop_postgres_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def postgres_database(
    admin_url: str, *, keep: bool = False, prefix: str = "dispatcher_bench"
) -> Iterator[str]:
    """A throwaway database for the block, dropped afterwards unless ``keep``."""
    name, url = create_postgres_database(admin_url, prefix)
    try:
        yield url
    finally:
        if keep:
            print(f"kept database {name}", file=sys.stderr)
        else:
            drop_postgres_database(admin_url, name)


def postgres_bindir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` are: ``$PG_BINDIR``, PATH, ``pg_config``, or the
    Debian layout (``/usr/lib/postgresql/<version>/bin``, newest first)."""
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
            ).stdout.strip()
            if out:
                candidates.append(Path(out))

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (0,)

    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        candidates += sorted((p / "bin" for p in debian.iterdir()), key=version, reverse=True)
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


class PrivatePostgres:
    """A PostgreSQL cluster of our own: ``initdb`` in a temporary directory, a free port.

    Nothing is shared with a server already running on the machine, so it can be stopped and
    started mid-run. Run as root (initdb refuses), the cluster belongs to the ``postgres``
    user (or ``nobody``). Trust authentication, on 127.0.0.1 only; ``fsync=off``, as the
    cluster is thrown away.
    """

    def __init__(self, bindir: Path | None = None, *, keep: bool = False) -> None:
        found = bindir or postgres_bindir()
        if found is None:
            raise BenchError(
                "no PostgreSQL server binaries (initdb, pg_ctl): install them (e.g. apt-get "
                "install postgresql) or set PG_BINDIR"
            )
        self.bindir = found
        self.keep = keep
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="dispatcher-bench-pg-"))
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = self._unprivileged_user()
            owner = pwd.getpwnam(self.user)
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        self.admin_url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.running = False

    @staticmethod
    def _unprivileged_user() -> str:
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                pwd.getpwnam(name)
                return name
        raise BenchError("running as root, and no 'postgres' or 'nobody' user to own a cluster")

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(self.bindir / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            user=self.user,
            cwd=self.directory,
            env={**os.environ, "LC_ALL": "C.UTF-8", "PGTZ": "UTC"},
        )
        if done.returncode != 0:
            raise BenchError(
                f"{argv[0]} {' '.join(argv[1:3])} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}\n{self.log_tail()}"
            )
        return done

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"    {line}" for line in text[-lines:])

    def init(self) -> PrivatePostgres:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        return self

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} "
            "-c fsync=off -c max_connections=200 -c shared_buffers=64MB"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", options, "-w", "start"
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends every session and checkpoints; ``immediate`` is a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        self.running = False

    def accepting(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.admin_url, connect_timeout=2) as connection:
                connection.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def close(self) -> None:
        if self.running:
            with contextlib.suppress(BenchError, subprocess.SubprocessError):
                self.stop("immediate")
        if self.keep:
            print(f"  PostgreSQL cluster kept in {self.directory}", file=sys.stderr)
        else:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the service --------------------------------------------------------------------------------


def migrate(env: dict[str, str]) -> None:
    """``dispatcher migrate`` with the service's environment."""
    done = subprocess.run(
        [*dispatcher_command(), "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"dispatcher migrate failed:\n{done.stdout}{done.stderr}")


def create_api_keys(database_url: str, names: Sequence[str], role: str = "admin") -> list[str]:
    """One API key per name, made directly in the database; [] when the service has no keys.

    Two keys let a benchmark submit a campaign with one and approve it with the other (the
    key that submitted a campaign may not approve it).
    """
    try:
        from dispatcher.auth.service import create_key
    except ImportError:
        return []
    from sqlalchemy import inspect

    from dispatcher.core.db import Database

    db = Database(database_url)
    try:
        if not inspect(db.engine).has_table("api_keys"):
            return []
        secrets: list[str] = []
        with db.transaction() as session:
            for name in names:
                _, secret = create_key(session, role=role, name=name)
                secrets.append(secret)
        return secrets
    finally:
        db.dispose()


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


RECIPIENTS_PER_REQUEST = 10_000  # the API's own limit per POST /v1/recipients


class Service:
    """The service of one benchmark run, every part a process of its own.

    Its files and logs live in a temporary directory (removed at the end unless ``keep``);
    every process started here is stopped, last first, when ``stack`` closes. The API gets two
    keys: the first creates and submits campaigns, the second approves them (the key that
    submitted a campaign may not approve it).
    """

    def __init__(self, name: str, stack: contextlib.ExitStack, *, keep: bool = False) -> None:
        self.name = name
        self.workdir = Path(tempfile.mkdtemp(prefix=f"dispatcher-bench-{name}-"))
        if keep:
            print(f"  logs and files kept in {self.workdir}")
        else:
            stack.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        stack.callback(self.stop_all)
        self.processes: list[Managed] = []
        self.watched: list[Managed] = []  # processes that must stay up (check_alive)
        self.env: dict[str, str] = {}
        self.api_port = free_port()
        self.redis: Managed | None = None
        self.redis_url = ""
        self.api: Managed | None = None
        self.http: Any = None  # the API's httpx.Client, once start_api has run
        self.keys: list[str] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        *,
        watch: bool = True,
    ) -> Managed:
        """Start a process (with the service's environment unless ``env``), logging to
        ``<name>.log``; a watched one must stay up."""
        env = self.env if env is None else env
        # Its PostgreSQL connections say whose they are (pg_stat_activity.application_name).
        env = {**env, "PGAPPNAME": f"bench-{name}"}
        process = Managed(name, argv, env=env, log_path=self.workdir / f"{name}.log")
        self.processes.append(process)
        if watch:
            self.watched.append(process)
        return process

    def start_redis(self, *, persistence: bool = False) -> Managed:
        process, self.redis_url = start_private_redis(self.workdir, persistence=persistence)
        self.processes.append(process)
        self.watched.append(process)
        self.redis = process
        return process

    def configure(self, database_url: str, settings: dict[str, str]) -> dict[str, str]:
        """The service's environment (:func:`project_env`): the database, this run's Redis,
        the API's public URL, JSON logs, then ``settings``."""
        self.env = project_env(
            {
                "DISPATCHER_DATABASE_URL": database_url,
                "DISPATCHER_REDIS_URL": self.redis_url,
                "DISPATCHER_PUBLIC_URL": f"http://127.0.0.1:{self.api_port}",
                "DISPATCHER_LOG_FORMAT": "json",
                **settings,
            }
        )
        return self.env

    def migrate(self) -> None:
        """``dispatcher migrate``, then the two API keys, written in the database."""
        migrate(self.env)
        database_url = self.env["DISPATCHER_DATABASE_URL"]
        self.keys = create_api_keys(database_url, [f"bench-{self.name}-{r}" for r in ROLES])

    def start_api(self, *, name: str = "api", timeout: float = 90.0, wait: bool = True) -> Managed:
        """``dispatcher serve`` and its client; until it is ready unless not ``wait``."""
        import httpx

        serve = [*dispatcher_command(), "serve", "--host", "127.0.0.1"]
        self.api = self.start(name, [*serve, "--port", str(self.api_port)])
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{self.api_port}",
            timeout=120,
            headers=bearer(self.keys[0] if self.keys else None),
        )
        if wait:
            wait_for_api(self.http, self.api, timeout=timeout)
        return self.api

    def wait_for_workers(
        self,
        count: int,
        *,
        timeout: float = 120.0,
        already: int = 0,
        watch: Sequence[Managed] | None = None,
    ) -> None:
        """Until ``count`` more dramatiq worker processes than ``already`` poll Redis; fail at
        once when one of ``watch`` (default: the watched processes) exits."""
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            wait_until(
                lambda: int(client.zcard(HEARTBEATS_KEY)) >= already + count,
                timeout=timeout,
                what=f"{count} dramatiq worker process(es) to poll Redis",
                watch=self.watched if watch is None else watch,
            )
        finally:
            client.close()

    def heartbeats(self) -> int:
        """The dramatiq worker processes polling Redis now."""
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            return int(client.zcard(HEARTBEATS_KEY))
        finally:
            client.close()

    @property
    def client(self) -> Any:
        """The API's ``httpx.Client`` (with the first key)."""
        if self.http is None:
            raise BenchError("the API is not running")
        return self.http

    def check_alive(self) -> None:
        for process in self.watched:
            if not process.alive():
                raise process.dead_error()

    def stop_all(self) -> None:
        if self.http is not None:
            self.http.close()
        for process in reversed(self.processes):
            process.stop()

    def post(self, path: str, body: Any, expect: int, *, key: str | None = None) -> dict[str, Any]:
        response = self.client.post(path, json=body, headers=bearer(key))
        if response.status_code != expect:
            raise BenchError(f"POST {path}: {response.status_code} {response.text[:500]}")
        data: dict[str, Any] = response.json()
        return data

    def add_recipients(self, n: int, recipient: Callable[[int], dict[str, Any]]) -> float:
        """POST ``recipient(i)`` for i in 0..n-1, in arrays of up to 10,000; returns seconds."""
        t0 = time.perf_counter()
        for start in range(0, n, RECIPIENTS_PER_REQUEST):
            chunk = [recipient(i) for i in range(start, min(n, start + RECIPIENTS_PER_REQUEST))]
            answer = self.post("/v1/recipients", chunk, 200)
            if answer.get("count") != len(chunk):
                raise BenchError(
                    f"POST /v1/recipients stored {answer.get('count')} of {len(chunk)}"
                )
        return time.perf_counter() - t0

    def publish(self, template: dict[str, Any]) -> None:
        self.post("/v1/templates", template, 201)

    def submit(self, campaign: dict[str, Any], *, priority: str | None = None) -> int:
        """Create and submit ``campaign`` (checking its queue, when ``priority`` is given)."""
        created = self.post("/v1/campaigns", campaign, 201)
        if priority is not None and created.get("priority") != priority:
            raise BenchError(f"the campaign is not {priority}: {created.get('priority')}")
        campaign_id = int(created["id"])
        self.post(f"/v1/campaigns/{campaign_id}/submit", None, 200)
        return campaign_id

    def approve(self, campaign_id: int) -> None:
        """Approve with the second key: the one that submitted may not."""
        approver = self.keys[1] if len(self.keys) > 1 else None
        self.post(f"/v1/campaigns/{campaign_id}/approve", None, 200, key=approver)

    def campaign(self, campaign_id: int) -> dict[str, Any]:
        response = self.client.get(f"/v1/campaigns/{campaign_id}")
        if response.status_code != 200:
            raise BenchError(
                f"GET /v1/campaigns/{campaign_id}: {response.status_code} {response.text[:500]}"
            )
        data: dict[str, Any] = response.json()
        return data


ROLES = ("editor", "approver")


def iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def server_seconds(campaign: dict[str, Any]) -> float | None:
    """The campaign's ``approved_at → completed_at`` on the server's clock."""
    approved, completed = iso(campaign.get("approved_at")), iso(campaign.get("completed_at"))
    if approved is None or completed is None:
        return None
    return (completed - approved).total_seconds()


# -- the SMTP sink (a child process: python -m bench.common smtp-sink) ---------------------------

_MESSAGE_ID = re.compile(rb"^Message-ID:\s*<([^>]*)>", re.IGNORECASE | re.MULTILINE)


class SinkHandler:
    """An aiosmtpd handler that accepts every message, counts it and may log it.

    Each message is one line of the log: the time it was accepted, its ``Message-ID``, its
    recipients and the sender's port (which says which connection, so which process, sent
    it). Once :attr:`closing` is set, new mail gets ``421`` (a transient refusal, so senders
    retry later) while mail already under way is finished.
    """

    def __init__(self, log: Any = None) -> None:
        self.log = log
        self.messages = 0
        self.recipients = 0
        self.bytes = 0
        self.first: float | None = None
        self.last: float | None = None
        self.closing = False
        self.in_data = 0

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.closing:
            return "421 4.3.2 Service shutting down, try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        now = time.time()
        content = envelope.content or b""
        if self.first is None:
            self.first = now
        self.last = now
        self.messages += 1
        self.recipients += len(envelope.rcpt_tos)
        self.bytes += len(content)
        if self.log is not None:
            head = content.split(b"\r\n\r\n", 1)[0]
            found = _MESSAGE_ID.search(head)
            message_id = found.group(1).decode(errors="replace") if found else "-"
            peer = getattr(session, "peer", None)
            port = peer[1] if isinstance(peer, tuple) and len(peer) > 1 else 0
            rcpts = ",".join(envelope.rcpt_tos)
            self.log.write(f"{now:.6f}\t{message_id}\t{rcpts}\t{port}\n")
        return "250 2.0.0 Message accepted for delivery"

    def snapshot(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "recipients": self.recipients,
            "bytes": self.bytes,
            "first_at": self.first,
            "last_at": self.last,
        }


def smtp_sink(port: int, stats_path: Path, log_path: Path | None = None) -> int:
    """Serve SMTP on 127.0.0.1:``port`` until SIGTERM, writing counts to ``stats_path``."""
    from aiosmtpd.controller import Controller

    log = log_path.open("a", buffering=1, encoding="utf-8") if log_path else None
    handler = SinkHandler(log)
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def write(final: bool = False) -> None:
        temporary = stats_path.with_suffix(".tmp")
        temporary.write_text(json.dumps({**handler.snapshot(), "ready": True, "final": final}))
        os.replace(temporary, stats_path)

    try:
        while not stop.is_set():
            write()
            stop.wait(0.2)
        # Refuse new mail, and let a message under way get its answer before the port closes.
        handler.closing = True
        counted = -1
        while counted != handler.messages:
            counted = handler.messages
            time.sleep(0.3)
    finally:
        controller.stop()
        if log is not None:
            log.close()
        write(final=True)
    return 0


def smtp_sink_command(port: int, stats_path: Path, log_path: Path | None = None) -> list[str]:
    argv = [sys.executable, "-m", "bench.common", "smtp-sink", "--port", str(port)]
    argv += ["--stats", str(stats_path)]
    if log_path is not None:
        argv += ["--log", str(log_path)]
    return argv


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def start_smtp_sink(
    workdir: Path, *, port: int | None = None, name: str = "smtp-server", log: bool = False
) -> tuple[Managed, int, Path]:
    """The SMTP sink in another process: (the process, its port, its stats file)."""
    try:
        import aiosmtpd  # noqa: F401
    except ImportError:
        raise BenchError("the SMTP server needs aiosmtpd: pip install aiosmtpd") from None
    port = port or free_port()
    stats_path = workdir / f"{name}-stats.json"
    stats_path.unlink(missing_ok=True)
    log_path = workdir / f"{name}-{int(time.time() * 1000)}.messages" if log else None
    server = Managed(
        name,
        smtp_sink_command(port, stats_path, log_path),
        env=project_env(),
        log_path=workdir / f"{name}.log",
    )
    wait_until(
        lambda: (read_json(stats_path) or {}).get("ready") is True,
        timeout=30,
        what="the SMTP server",
        watch=[server],
    )
    return server, port, stats_path


# -- memory and CPU -----------------------------------------------------------------------------


@dataclass(slots=True)
class Peak:
    total_bytes: int = 0  # the sum over the process tree, at the sample where it was largest
    single_bytes: int = 0  # the largest single process
    processes: int = 0  # processes in the tree at the largest sum
    samples: int = 0
    # The largest single process's private memory (USS: pages mapped by it alone), for the
    # groups sampled with ``private`` (a PostgreSQL backend's RSS counts the shared buffers).
    private_single_bytes: int = 0
    # What that process was, when the group can tell (a PostgreSQL backend's application,
    # type and query), and the largest private memory of each kind of process (application
    # and type) of the group.
    private_single_label: str = ""
    private_by_kind: dict[str, int] = field(default_factory=dict)


class RssSampler(threading.Thread):
    """Samples the RSS of each watched process tree every ``interval`` seconds."""

    def __init__(self, interval: float = SAMPLE_SECONDS) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.interval = interval
        self._watched: dict[str, Managed] = {}
        self._groups: dict[str, Callable[[], list[int]]] = {}
        self._private: set[str] = set()
        self._labels: dict[str, Callable[[int], str]] = {}
        self.peaks: dict[str, Peak] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def watch(self, role: str, process: Managed) -> None:
        with self._lock:
            self._watched[role] = process
            self.peaks.setdefault(role, Peak())

    def watch_pids(
        self,
        role: str,
        pids: Callable[[], list[int]],
        *,
        private: bool = False,
        label: Callable[[int], str] | None = None,
    ) -> None:
        """Sample the processes ``pids()`` lists at each sample (e.g. the PostgreSQL backends
        of a database), as one group; with ``private``, each one's private memory (USS) too,
        which reads its memory map (``/proc/PID/smaps``) at every sample, and ``label(pid)``
        says what the process with the largest was."""
        with self._lock:
            self._groups[role] = pids
            if private:
                self._private.add(role)
            if label is not None:
                self._labels[role] = label
            self.peaks.setdefault(role, Peak())

    def unwatch(self, role: str) -> None:
        with self._lock:
            self._watched.pop(role, None)
            self._groups.pop(role, None)

    def sample(self) -> None:
        with self._lock:
            watched: list[tuple[str, Callable[[], list[psutil.Process]]]] = [
                (role, process.tree) for role, process in self._watched.items()
            ]
            watched += [(role, _processes_of(pids)) for role, pids in self._groups.items()]
            private = set(self._private)
            labels = dict(self._labels)
        for role, members in watched:
            sizes = []
            owned: list[tuple[int, int]] = []  # (USS, pid)
            for member in members():
                with contextlib.suppress(psutil.Error):
                    if role in private:
                        full = member.memory_full_info()
                        sizes.append(full.rss)
                        owned.append((full.uss, member.pid))
                    else:
                        sizes.append(member.memory_info().rss)
            if not sizes:
                continue
            largest_owned = max(owned) if owned else None
            label = labels.get(role)
            named = [(label(pid), uss) for uss, pid in owned] if label else []
            with self._lock:
                peak = self.peaks[role]
                peak.samples += 1
                peak.single_bytes = max(peak.single_bytes, max(sizes))
                if largest_owned is not None and largest_owned[0] > peak.private_single_bytes:
                    peak.private_single_bytes = largest_owned[0]
                    peak.private_single_label = label(largest_owned[1]) if label else ""
                for text, uss in named:
                    kind = text.partition(":")[0]
                    peak.private_by_kind[kind] = max(peak.private_by_kind.get(kind, 0), uss)
                if sum(sizes) > peak.total_bytes:
                    peak.total_bytes, peak.processes = sum(sizes), len(sizes)

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)
        self.sample()


def _processes_of(pids: Callable[[], list[int]]) -> Callable[[], list[psutil.Process]]:
    def members() -> list[psutil.Process]:
        found = []
        for pid in pids():
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(pid))
        return found

    return members


@dataclass(slots=True)
class CpuSnapshot:
    at: float
    machine_busy_s: float
    ours: dict[int, float]
    roles: dict[int, str] = field(default_factory=dict)  # pid -> what it is (see cpu_snapshot)
    steal_s: float = 0.0  # machine_steal_seconds() when taken


def machine_steal_seconds() -> float:
    """CPU seconds so far that this (virtual) machine's CPUs waited while the hypervisor ran
    something else: none on bare metal. A figure taken while it grew was measured on CPUs
    that were not all there, whatever the processes of the machine itself did."""
    return float(getattr(psutil.cpu_times(), "steal", 0.0))


def disturbed(cpu: Mapping[str, Any]) -> bool:
    """Whether a phase's figures were disturbed (its :func:`cpu_share`): other processes, or
    the hypervisor, took more than OTHER_CPU_WARNING cores."""
    return max(cpu.get("others_cores", 0.0), cpu.get("steal_cores", 0.0)) > OTHER_CPU_WARNING


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine so far (all CPUs, every process)."""
    times = psutil.cpu_times()
    busy = ("user", "nice", "system", "irq", "softirq")
    return float(sum(getattr(times, name, 0.0) for name in busy))


def cpu_snapshot(
    processes: Sequence[Managed],
    backends: Callable[[], list[int]] | None = None,
    *,
    extra: Sequence[tuple[str, psutil.Process]] = (),
) -> CpuSnapshot:
    """Busy CPU seconds of the whole machine, and of each process of ours (and this one), with
    the PostgreSQL backends serving our database when ``backends`` lists them, and ``extra``
    (role, process) pairs (processes started otherwise, e.g. by multiprocessing).

    Each process's role is the name of its :class:`Managed` tree, ``benchmark`` for this
    process and ``postgresql`` for a backend (see :func:`cpu_by_process`).
    """
    members = [("benchmark", psutil.Process())] + [(p.name, m) for p in processes for m in p.tree()]
    members += list(extra)
    for pid in backends() if backends else []:
        with contextlib.suppress(psutil.Error):
            members.append(("postgresql", psutil.Process(pid)))
    ours: dict[int, float] = {}
    roles: dict[int, str] = {}
    for role, member in members:
        with contextlib.suppress(psutil.Error):
            t = member.cpu_times()
            ours[member.pid] = t.user + t.system
            roles[member.pid] = role
    return CpuSnapshot(
        time.perf_counter(), machine_busy_seconds(), ours, roles, machine_steal_seconds()
    )


def cpu_share(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """Cores used on average between two snapshots: by our processes, and by everything else."""
    elapsed = max(after.at - before.at, 1e-9)
    machine = (after.machine_busy_s - before.machine_busy_s) / elapsed
    ours = sum(t - before.ours.get(pid, 0.0) for pid, t in after.ours.items()) / elapsed
    return {
        "cores": float(psutil.cpu_count() or 1),
        "machine_busy_cores": round(machine, 2),
        "ours_cores": round(ours, 2),
        "others_cores": round(max(0.0, machine - ours), 2),
        "steal_cores": round(max(0.0, after.steal_s - before.steal_s) / elapsed, 2),
    }


def cpu_seconds_by_role(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds used between two snapshots by our processes, summed by role."""
    by_role: dict[str, float] = {}
    for pid, t in after.ours.items():
        role = after.roles.get(pid, "?")
        by_role[role] = by_role.get(role, 0.0) + t - before.ours.get(pid, 0.0)
    return dict(sorted(by_role.items()))


def cpu_by_process(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """Cores used on average between two snapshots by our processes, summed by role."""
    elapsed = max(after.at - before.at, 1e-9)
    by_role: dict[str, float] = {}
    for pid, t in after.ours.items():
        role = after.roles.get(pid, "?")
        by_role[role] = by_role.get(role, 0.0) + (t - before.ours.get(pid, 0.0)) / elapsed
    return {role: round(v, 2) for role, v in sorted(by_role.items())}


# -- Vietnamese names ---------------------------------------------------------------------------

SURNAMES: tuple[str, ...] = (
    "Nguyễn",
    "Trần",
    "Lê",
    "Phạm",
    "Hoàng",
    "Huỳnh",
    "Phan",
    "Vũ",
    "Võ",
    "Đặng",
    "Bùi",
    "Đỗ",
    "Hồ",
    "Ngô",
    "Dương",
    "Lý",
    "Trương",
    "Đinh",
    "Lò",
    "Hà",
)
MIDDLES: tuple[str, ...] = (
    "Văn",
    "Thị",
    "Hữu",
    "Đức",
    "Minh",
    "Thanh",
    "Quốc",
    "Ngọc",
    "Thu",
    "Hoàng",
    "Xuân",
    "Bích",
    "Gia",
    "Kim",
    "Phương",
)
GIVENS: tuple[str, ...] = (
    "An",
    "Bình",
    "Chi",
    "Dũng",
    "Giang",
    "Hà",
    "Hải",
    "Hạnh",
    "Hiếu",
    "Hoa",
    "Hùng",
    "Hương",
    "Khánh",
    "Lan",
    "Linh",
    "Long",
    "Mai",
    "Minh",
    "Nam",
    "Ngọc",
    "Nhung",
    "Phúc",
    "Phương",
    "Quang",
    "Quân",
    "Sơn",
    "Tâm",
    "Thảo",
    "Trang",
    "Trung",
    "Tuấn",
    "Việt",
    "Yến",
    "Đạt",
    "Thủy",
    "Huệ",
)
PROVINCES: tuple[str, ...] = (
    "Hà Nội",
    "TP Hồ Chí Minh",
    "Hải Phòng",
    "Đà Nẵng",
    "Cần Thơ",
    "Quảng Ninh",
    "Nghệ An",
    "Thanh Hóa",
    "Khánh Hòa",
    "Lâm Đồng",
    "Thừa Thiên Huế",
    "Bắc Ninh",
    "Đắk Lắk",
    "Bà Rịa - Vũng Tàu",
)


def vietnamese_name(i: int, surnames: Sequence[str] = SURNAMES) -> str:
    """The i-th name of a fixed sequence: surname (from ``surnames``), middle name, given name."""
    surname = surnames[(i * 31) % len(surnames)]
    middle = MIDDLES[(i * 17) % len(MIDDLES)]
    given = GIVENS[(i * 13) % len(GIVENS)]
    return f"{surname} {middle} {given}"


@dataclass(frozen=True, slots=True)
class Person:
    external_id: str
    full_name: str
    kind: str
    province: str
    birth_date: date

    @property
    def honorific(self) -> str:
        return "Quý đơn vị" if self.kind == "organization" else "Ông/Bà"

    @property
    def given_name(self) -> str:
        parts = self.full_name.split()
        return parts[-1] if parts else ""


def person(i: int, surnames: Sequence[str] = SURNAMES) -> Person:
    """The i-th recipient (1-based), the same on every run; one in 25 is an organisation."""
    province = PROVINCES[(i * 7) % len(PROVINCES)]
    given = GIVENS[(i * 13) % len(GIVENS)]
    if i % 25 == 0:
        name, kind = f"Công ty Cổ phần {given} {province}", "organization"
    else:
        name, kind = vietnamese_name(i, surnames), "person"
    born = date(1950 + i % 55, 1 + i % 12, 1 + i % 28)
    return Person(f"{i:010d}", name, kind, province, born)


def email_address(i: int) -> str:
    return f"nguoi.nhan.{i:06d}@example.vn"


def email_recipient(prefix: str, i: int) -> dict[str, Any]:
    """The i-th recipient with an email address, as ``POST /v1/recipients`` takes it."""
    return {
        "external_id": f"{prefix}{i:08d}",
        "full_name": vietnamese_name(i),
        "addresses": {"email": email_address(i)},
    }


# -- results ------------------------------------------------------------------------------------


def git_commit() -> str | None:
    """The checked-out commit (short form); None outside a checkout or without git."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return done.stdout.strip() or None


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": load,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }


def relative(path: Path, base: Path = ROOT) -> str:
    """``path`` relative to ``base`` (the project root), or whole when it is not below it."""
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def parse_env(
    pairs: Sequence[str], *, option: str = "--env", prefix: str = "DISPATCHER_"
) -> dict[str, str]:
    """``KEY=VALUE`` pairs as ``DISPATCHER_KEY`` settings (the prefix is optional); with
    ``prefix=""``, as they are (any environment variable, e.g. ``dramatiq_worker_timeout``)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BenchError(f"{option} takes KEY=VALUE, got {pair!r}")
        out[key if key.startswith(prefix) else f"{prefix}{key}"] = value
    return out


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_main(body: Callable[[], int], *, failed: str = "benchmark failed", code: int = 1) -> int:
    """Run a benchmark's ``body``: SIGTERM and Ctrl-C (SIGINT explicitly: a shell may start a
    background job with it ignored) unwind into the blocks that stop every process it started.
    A :class:`BenchError` is printed and exits with ``code``; an interruption with 130."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return body()
    except BenchError as exc:
        print(f"\n{failed}: {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("\ninterrupted: every subprocess was stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.common")
    commands = parser.add_subparsers(dest="command", required=True)
    sink = commands.add_parser("smtp-sink", help="an SMTP server that accepts and counts mail")
    sink.add_argument("--port", type=int, required=True)
    sink.add_argument("--stats", type=Path, required=True, help="counts, rewritten every 0.2 s")
    sink.add_argument("--log", type=Path, default=None, help="one line per message")
    args = parser.parse_args(argv)
    return smtp_sink(args.port, args.stats, args.log)


if __name__ == "__main__":
    sys.exit(_main())
