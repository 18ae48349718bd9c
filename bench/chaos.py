"""Chaos run: one email campaign through worker kills, restarts and an SMTP outage, then proof.

    python -m bench.chaos                                    # 20,000 recipients
    python -m bench.chaos --recipients 2000 --batch-size 100 --smtp-down-seconds 3 \\
        --lease-seconds 10 --retry-base-seconds 1            # the CI size (tests/test_chaos.py)
    python -m bench.chaos --redis-persistence none           # Redis comes back empty

The service runs production-shaped, every role its own process: a private ``redis-server``, a
private PostgreSQL cluster (``initdb`` in a temporary directory, ``pg_ctl`` on a free port, so a
shared server is never touched; ``--database sqlite`` for a SQLite file instead), the API, one
scheduler (which runs the sweeper), and ``--workers`` worker instances (``dispatcher worker
--processes 1``), each restarted when it exits, as a container runtime would. The SMTP server
is an aiosmtpd sink in another process that logs every message it accepts with its
``Message-ID``; the email adapter derives that id from the delivery, so each message received
maps to one delivery row.

While an email campaign to ``--recipients`` people runs, at random points of its progress:

- ``kill -9`` a worker process, ``--kills`` times (3);
- restart Redis, ``--redis-restarts`` times (1): with ``--redis-persistence aof`` (default) its
  queues survive; with ``none`` it comes back empty and the sweeper must recover the work;
- stop the SMTP server for ``--smtp-down-seconds`` (20), then start it again;
- restart PostgreSQL (``pg_ctl stop -m fast``, ``--postgres-down-seconds`` down, start).

Then it checks, from the SMTP server's log and the database:

1. the campaign completed; every delivery is ``sent`` with exactly one successful attempt;
2. every recipient received its message, and only its own;
3. every message received twice is flagged ``possible_duplicate`` in the database and the
   audit, and fell in a crash window: its first copy left before a kill whose worker held it,
   its second after;
4. only killed workers' batches were taken over: every lease the sweeper took back was a
   killed worker's (a live worker keeps its batch however long it is held up);
5. at most one batch per kill: of the batches taken over from a killed worker, at most one
   was sent twice (a worker process lets one batch at a time between its first send and its
   record, however many threads it runs), each no larger than a batch;
6. no role crashed: the API and the scheduler never exited, a worker exited only when killed,
   and across the PostgreSQL restart the same worker processes carried on (they reconnect,
   they do not crash-loop).

It prints a summary, writes ``bench/results/chaos-<N>.json`` (or ``--json PATH``), and exits
with status 1 when an invariant fails (2 when the run itself could not be made).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from bench.common import (
    BenchError,
    Managed,
    PrivatePostgres,
    Service,
    dispatcher_command,
    email_recipient,
    machine,
    parse_env,
    postgres_bindir,
    read_json,
    redis_up,
    relative,
    run_main,
    start_smtp_sink,
    wait_until,
    write_json,
)

POLL_SECONDS = 0.5
TICK_SECONDS = 0.05
TEMPLATE_KEY = "bench_chaos_greeting"
# The email adapter's Message-ID: d<delivery id>.<installation tag>@<domain> (channels.email).
MESSAGE_ID = re.compile(r"^d(\d+)\.[a-z2-7]+@")
# Events fire at random points of the campaign's progress between these shares of N.
FIRST_EVENT_AT, LAST_EVENT_AT = 0.06, 0.85
# How long after a kill the SMTP server may still log a message the killed worker had sent.
LOG_LAG_SECONDS = 2.0
AUDIT_SAMPLE = 20  # duplicated recipients whose audit is read back through the API

TEMPLATE: dict[str, Any] = {
    "key": TEMPLATE_KEY,
    "kind": "greeting",
    "description": "Chaos run (bench.chaos)",
    "defaults": {"hotline": "1900 9068"},
    "variants": [
        {
            "channel": "email",
            "locale": "vi",
            "subject": "Chúc mừng năm mới — {{ recipient.full_name }}",
            "body": "Kính gửi {{ recipient.honorific }} {{ recipient.full_name }},\n\n"
            "Bảo hiểm xã hội Việt Nam kính chúc {{ recipient.honorific }} và gia đình một năm "
            "mới an khang, thịnh vượng.\nMã số BHXH: {{ recipient.external_id }}.\n"
            "Tổng đài {{ hotline }}.",
        }
    ],
}


# -- options ------------------------------------------------------------------------------------


@dataclass
class Options:
    recipients: int
    workers: int
    threads: int | None
    batch_size: int
    kills: int
    redis_restarts: int
    redis_persistence: str
    redis_down_seconds: float
    smtp_down_seconds: float
    database: str
    postgres_restart: bool
    postgres_down_seconds: float
    lease_seconds: float
    sweep_interval: float
    retry_base_seconds: float
    seed: int
    timeout: float
    extra_env: dict[str, str] = field(default_factory=dict)
    json_path: Path | None = None
    keep: bool = False
    quiet: bool = False


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description="An email campaign through worker kills, Redis, SMTP and PostgreSQL "
        "restarts; then every invariant is checked.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--recipients", type=int, default=20_000, help="N")
    parser.add_argument("--workers", type=int, default=2, help="worker instances")
    parser.add_argument(
        "--threads", type=int, default=None, help="threads per worker (default: the service's)"
    )
    parser.add_argument("--batch-size", type=int, default=500, help="deliveries per batch")
    parser.add_argument("--kills", type=int, default=3, help="kill -9 of a worker process")
    parser.add_argument("--redis-restarts", type=int, default=1)
    parser.add_argument(
        "--redis-persistence",
        choices=("aof", "none"),
        default="aof",
        help="aof: queued jobs survive a restart; none: Redis comes back empty",
    )
    parser.add_argument("--redis-down-seconds", type=float, default=1.0)
    parser.add_argument("--smtp-down-seconds", type=float, default=20.0, help="0: no SMTP outage")
    parser.add_argument(
        "--database",
        choices=("postgresql", "sqlite"),
        default="postgresql",
        help="postgresql: a private cluster of this run; sqlite: a file",
    )
    parser.add_argument(
        "--no-postgres-restart",
        dest="postgres_restart",
        action="store_false",
        help="leave PostgreSQL up (implied by --database sqlite)",
    )
    parser.add_argument("--postgres-down-seconds", type=float, default=3.0)
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=30.0,
        help="how long a claim holds: a dead worker's batch is sent again after this",
    )
    parser.add_argument("--sweep-interval", type=float, default=1.0, help="seconds between sweeps")
    parser.add_argument(
        "--retry-base-seconds",
        type=float,
        default=5.0,
        help="first backoff of a failed delivery (DISPATCHER_RETRY_BASE_SECONDS)",
    )
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--timeout", type=float, default=None, help="give up after this many s")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra DISPATCHER_* setting for the service (repeatable; prefix optional)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--keep", action="store_true", help="keep logs and databases")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser.parse_args(argv)


def options_for(args: argparse.Namespace) -> Options:
    if args.recipients < 1 or args.workers < 1 or args.batch_size < 1:
        raise BenchError("--recipients, --workers and --batch-size must be at least 1")
    if args.kills < 0 or args.redis_restarts < 0 or args.smtp_down_seconds < 0:
        raise BenchError("--kills, --redis-restarts and --smtp-down-seconds cannot be negative")
    if args.kills and args.workers < 2:
        raise BenchError("kills need at least 2 worker instances (--workers)")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    timeout = args.timeout or 300 + args.recipients / 40 + 4 * args.smtp_down_seconds
    return Options(
        recipients=args.recipients,
        workers=args.workers,
        threads=args.threads,
        batch_size=args.batch_size,
        kills=args.kills,
        redis_restarts=args.redis_restarts,
        redis_persistence=args.redis_persistence,
        redis_down_seconds=args.redis_down_seconds,
        smtp_down_seconds=args.smtp_down_seconds,
        database=args.database,
        postgres_restart=args.postgres_restart and args.database == "postgresql",
        postgres_down_seconds=args.postgres_down_seconds,
        lease_seconds=args.lease_seconds,
        sweep_interval=args.sweep_interval,
        retry_base_seconds=args.retry_base_seconds,
        seed=seed,
        timeout=timeout,
        extra_env=parse_env(args.env),
        json_path=args.json,
        keep=args.keep,
        quiet=args.quiet,
    )


# -- the service under chaos --------------------------------------------------------------------


@dataclass
class WorkerSlot:
    """One worker instance, restarted whenever it exits (as a container runtime would)."""

    index: int
    process: Managed
    killed: bool = False  # we killed its worker process: its exit is expected
    starts: int = 1
    exits: list[dict[str, Any]] = field(default_factory=list)
    log_offset: int = 0  # where the log of the current start begins
    is_ready: bool = False

    def ready(self) -> bool:
        """Up, and its dramatiq worker process has said it is ready, since its last start."""
        if not self.process.alive() or self.killed or self.worker_pid() is None:
            return False
        if not self.is_ready:
            self.is_ready = "is ready for action" in self.log_since_start()
        return self.is_ready

    def log_since_start(self) -> str:
        try:
            with self.process.log_path.open("rb") as handle:
                handle.seek(self.log_offset)
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def restart(self) -> None:
        self.process.close_log()
        self.log_offset = self.process.log_path.stat().st_size
        self.process = self.process.respawn()
        self.starts += 1
        self.killed = self.is_ready = False

    def worker_pid(self) -> int | None:
        """The forked dramatiq worker process (the instance's pid is its supervising parent)."""
        for child in self.process.children():
            with contextlib.suppress(psutil.Error):
                if child.ppid() == self.process.pid and child.status() != psutil.STATUS_ZOMBIE:
                    return int(child.pid)
        return None


@dataclass
class Kill:
    """One kill -9: when (wall clock, the SMTP log's), whom, and what was in flight then."""

    number: int
    at: float
    pid: int
    smtp_ports: set[int]  # the local ports of its SMTP connections
    claimed: dict[int, datetime]  # every row claimed just after it, with its lease
    holds: int  # how many batches the process could have claimed at once (one per thread)
    # A process lets one batch per queue into the crash window (its send gate): this run's
    # campaign uses one queue, so one batch per kill at most can be sent twice.
    resends: int = 1


def worker_pid(worker: str) -> int | None:
    """The pid in a lease's ``worker`` (``host:pid``)."""
    tail = worker.rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


def batches_held(pid: int, threads: int) -> int:
    """How many batches a worker process can have claimed at once: one per worker thread
    (its ``--threads``), and no more than dramatiq lets it prefetch (its environment's
    ``dramatiq_queue_prefetch``, which ``dispatcher worker`` sets). Batches prefetched beyond
    its threads wait unclaimed, so a kill cannot make them be sent twice."""
    try:
        process = psutil.Process(pid)
        argv, environ = process.cmdline(), process.environ()
    except psutil.Error:
        return threads
    if "--threads" in argv[:-1] and argv[argv.index("--threads") + 1].isdigit():
        threads = int(argv[argv.index("--threads") + 1])
    prefetch = environ.get("dramatiq_queue_prefetch", "")
    return min(threads, int(prefetch)) if prefetch.isdigit() and int(prefetch) > 0 else threads


def assign_lost_batches(
    batches: dict[datetime, list[int]],
    kills: list[Kill],
    received: dict[int, list[tuple[float, str, int]]],
    duplicated: set[int],
) -> tuple[list[int], int, int]:
    """Which kill lost each batch that was sent twice: (such batches per kill, such batches no
    kill accounts for, batches taken over without any re-send).

    A batch is a kill's when a message of it, claimed under its lease, left through the killed
    worker's SMTP connections before the kill. A batch taken over with nothing sent twice did
    no harm: its worker died before sending, or a claim's commit went through while its answer
    was lost (a database restart); its rows are flagged and were sent once.
    """
    per_kill = [0] * len(kills)
    unowned = quiet = 0
    for lease, rows in batches.items():
        lost = [(d, copy) for d in rows if d in duplicated for copy in received[d][:-1]]
        if not lost:
            quiet += 1
            continue
        owner = next(
            (
                k
                for k, kill in enumerate(kills)
                if any(
                    kill.claimed.get(d) == lease
                    and port in kill.smtp_ports
                    and at <= kill.at + LOG_LAG_SECONDS
                    for d, (at, _, port) in lost
                )
            ),
            None,
        )
        if owner is None:
            unowned += 1
        else:
            per_kill[owner] += 1
    return per_kill, unowned, quiet


def smtp_ports(pid: int, smtp_port: int) -> set[int]:
    """The local ports of a process's TCP connections to the SMTP server."""
    try:
        process = psutil.Process(pid)
        connections = getattr(process, "net_connections", process.connections)(kind="tcp")
    except psutil.Error:
        return set()
    return {c.laddr.port for c in connections if c.raddr and c.raddr.port == smtp_port}


@dataclass
class Event:
    kind: str  # kill, redis, smtp, postgres
    at_share: float  # fires once this share of the recipients has received the message
    number: int = 0
    state: str = "pending"  # pending, active, done
    started_t: float | None = None  # seconds after the approve call
    ended_t: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    until: float = 0.0  # monotonic: when the current phase of an active event ends

    @property
    def label(self) -> str:
        names = {
            "kill": "kill -9 a worker",
            "redis": "restart Redis",
            "smtp": "SMTP outage",
            "postgres": "restart PostgreSQL",
        }
        return f"{names[self.kind]}" + (f" #{self.number}" if self.kind == "kill" else "")


class Received:
    """What the SMTP server logged: every message, by delivery, across its restarts."""

    def __init__(self) -> None:
        self.files: dict[Path, int] = {}
        # Per delivery, each copy received: (when, to whom, the sender's port).
        self.by_delivery: dict[int, list[tuple[float, str, int]]] = defaultdict(list)
        self.foreign: list[str] = []  # messages whose Message-ID is not a delivery's
        self.total = 0

    def add_file(self, path: Path) -> None:
        self.files.setdefault(path, 0)

    def read(self) -> None:
        for path, offset in list(self.files.items()):
            try:
                with path.open("rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
            except FileNotFoundError:
                continue
            end = chunk.rfind(b"\n") + 1
            if end <= 0:
                continue
            self.files[path] = offset + end
            for line in chunk[:end].decode("utf-8", errors="replace").splitlines():
                fields = line.split("\t")
                stamp, message_id, rcpt = fields[:3]
                port = int(fields[3]) if len(fields) > 3 and fields[3].isdigit() else 0
                self.total += 1
                found = MESSAGE_ID.match(message_id)
                if found is None:
                    self.foreign.append(line)
                    continue
                self.by_delivery[int(found.group(1))].append((float(stamp), rcpt, port))

    @property
    def unique(self) -> int:
        return len(self.by_delivery)


class ChaosRun(Service):
    def __init__(self, options: Options, stack: contextlib.ExitStack) -> None:
        super().__init__("chaos", stack, keep=options.keep)
        self.options = options
        self.rng = random.Random(options.seed)
        self.pg: PrivatePostgres | None = None
        self.database_url = ""
        self.scheduler: Managed | None = None
        self.slots: list[WorkerSlot] = []
        self.smtp: Managed | None = None
        self.smtp_port = 0
        self.received = Received()
        self.engine: Any = None
        self.campaign_id = 0
        self.t0 = 0.0
        self.events: list[Event] = []
        self.kills: list[Kill] = []
        from dispatcher.core.config import default_worker_threads

        # Its workers serve the bulk queue alone.
        self.threads = options.threads or default_worker_threads(1)
        self.timeline: list[dict[str, Any]] = []

    # -- setting up ------------------------------------------------------------------------

    def say(self, text: str) -> None:
        if not self.options.quiet:
            print(text, flush=True)

    def now(self) -> float:
        return time.monotonic() - self.t0 if self.t0 else 0.0

    def note(self, what: str, **detail: Any) -> None:
        entry = {"t": round(self.now(), 2), "progress": self.received.unique, "what": what}
        entry.update(detail)
        self.timeline.append(entry)
        extra = ", ".join(f"{k} {v}" for k, v in detail.items())
        self.say(
            f"  t={self.now():6.1f} s  [{self.received.unique:>6,} received]  {what}"
            + (f" ({extra})" if extra else "")
        )

    def stop_all(self) -> None:
        for slot in self.slots:
            slot.process.stop()
        super().stop_all()
        if self.engine is not None:
            self.engine.dispose()
        if self.pg is not None:
            self.pg.close()

    def setup(self) -> None:
        o = self.options
        self.start_redis(persistence=o.redis_persistence == "aof")
        if o.database == "postgresql":
            self.pg = PrivatePostgres(keep=o.keep).init()
            self.pg.start()
            import psycopg

            with psycopg.connect(self.pg.admin_url, autocommit=True) as admin:
                admin.execute('CREATE DATABASE "dispatcher_chaos"')
            self.database_url = self.pg.admin_url.rsplit("/", 1)[0] + "/dispatcher_chaos"
        else:
            self.database_url = f"sqlite:///{self.workdir / 'chaos.db'}"
        _, self.smtp_port, _ = self.start_smtp()
        self.configure(
            self.database_url,
            {
                "DISPATCHER_SMTP_HOST": "127.0.0.1",
                "DISPATCHER_SMTP_PORT": str(self.smtp_port),
                "DISPATCHER_SMTP_TLS": "none",
                "DISPATCHER_SMTP_TIMEOUT": "10",
                "DISPATCHER_BATCH_SIZE": str(o.batch_size),
                "DISPATCHER_LEASE_SECONDS": str(o.lease_seconds),
                "DISPATCHER_SWEEP_INTERVAL_SECONDS": str(o.sweep_interval),
                "DISPATCHER_SWEEP_GRACE_SECONDS": str(max(2.0, 2 * o.sweep_interval)),
                "DISPATCHER_RETRY_BASE_SECONDS": str(o.retry_base_seconds),
                **o.extra_env,
            },
        )
        self.env["DISPATCHER_WORKER_THREADS"] = str(self.threads)
        self.migrate()
        from dispatcher.core.db import create_db_engine

        self.engine = create_db_engine(self.database_url, pool_size=2, max_overflow=2)
        api = self.start_api()
        scheduler = self.scheduler = self.start("scheduler", [*dispatcher_command(), "scheduler"])
        for index in range(o.workers):
            self.slots.append(WorkerSlot(index, self.start_worker(index)))
        self.wait_for_workers(o.workers, watch=[api, scheduler, *(s.process for s in self.slots)])

    def start_smtp(self) -> tuple[Managed, int, Path]:
        server, port, stats = start_smtp_sink(self.workdir, port=self.smtp_port or None, log=True)
        self.smtp = server
        self.processes.append(server)
        for path in self.workdir.glob("smtp-server-*.messages"):
            self.received.add_file(path)
        return server, port, stats

    def start_worker(self, index: int) -> Managed:
        argv = [*dispatcher_command(), "worker", "--queues", "bulk", "--processes", "1"]
        return Managed(
            f"worker-{index}", argv, env=self.env, log_path=self.workdir / f"worker-{index}.log"
        )

    def launch(self) -> None:
        self.publish(TEMPLATE)
        campaign = {
            "name": "Chúc mừng năm mới (chaos run)",
            "kind": "greeting",
            "template": TEMPLATE_KEY,
            "audience": {"all": True},
            "channels": ["email"],
        }
        self.campaign_id = self.submit(campaign, priority="bulk")
        self.t0 = time.monotonic()
        self.approve(self.campaign_id)

    def poll_campaign(self) -> dict[str, Any] | None:
        """The campaign as the API shows it; None while the API cannot answer (a restart)."""
        try:
            response = self.client.get(f"/v1/campaigns/{self.campaign_id}", timeout=10)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        data: dict[str, Any] = response.json()
        return data

    # -- the events ------------------------------------------------------------------------

    def plan_events(self) -> None:
        o = self.options
        kinds = ["kill"] * o.kills + ["redis"] * o.redis_restarts
        if o.smtp_down_seconds > 0:
            kinds.append("smtp")
        if o.postgres_restart:
            kinds.append("postgres")
        self.rng.shuffle(kinds)
        shares = sorted(self.rng.uniform(FIRST_EVENT_AT, LAST_EVENT_AT) for _ in kinds)
        kills = 0
        for kind, share in zip(kinds, shares, strict=True):
            event = Event(kind, share)
            if kind == "kill":
                kills += 1
                event.number = kills
            self.events.append(event)

    def step_events(self) -> None:
        active = next((e for e in self.events if e.state == "active"), None)
        if active is not None:
            self.continue_event(active)
            return
        pending = next((e for e in self.events if e.state == "pending"), None)
        if pending is None:
            return
        if self.received.unique < pending.at_share * self.options.recipients:
            return
        if pending.until == 0.0:
            # A random moment just after the threshold, not the instant the log shows it.
            pending.until = time.monotonic() + self.rng.uniform(0.0, 0.5)
            return
        if time.monotonic() >= pending.until:
            self.begin_event(pending)

    def begin_event(self, event: Event) -> None:
        if event.kind == "kill":
            victims = [s for s in self.slots if s.ready()]
            if not victims:
                return  # every instance is (re)starting: try again at the next tick
            slot = self.rng.choice(victims)
            pid = slot.worker_pid()
            assert pid is not None
            # Its connections to the SMTP server: what came through them came from this process.
            ports = smtp_ports(pid, self.smtp_port)
            holds = batches_held(pid, self.threads)
            slot.killed = True
            os.kill(pid, signal.SIGKILL)
            killed_at = time.time()
            event.started_t = self.now()
            # The dead worker cannot claim anything more: what is claimed now includes its batch.
            claimed = self.claimed_rows()
            self.kills.append(Kill(event.number, killed_at, pid, ports, claimed, holds))
            event.detail = {
                "instance": slot.index,
                "pid": pid,
                "claimed_then": len(claimed),
                "smtp_connections": len(ports),
                "batches_it_could_hold": holds,
            }
            event.state, event.ended_t = "done", self.now()
            self.note(event.label, **event.detail)
        elif event.kind == "redis":
            assert self.redis is not None
            event.started_t = self.now()
            self.note("stopping Redis", persistence=self.options.redis_persistence)
            self.redis.stop()
            event.state = "active"
            event.until = time.monotonic() + self.options.redis_down_seconds
        elif event.kind == "smtp":
            assert self.smtp is not None
            event.started_t = self.now()
            self.smtp.stop()
            event.detail["stopped_t"] = round(self.now(), 2)
            self.note("SMTP server stopped", seconds=self.options.smtp_down_seconds)
            event.state = "active"
            event.until = time.monotonic() + self.options.smtp_down_seconds
        elif event.kind == "postgres":
            assert self.pg is not None
            ready = [s for s in self.slots if s.ready()]
            if not ready:
                return  # every instance is (re)starting: try again at the next tick
            event.started_t = self.now()
            # The worker processes up now must be the same ones once PostgreSQL is back.
            event.detail["worker_pids_before"] = {s.index: s.worker_pid() for s in ready}
            event.detail["starts_before"] = {s.index: s.starts for s in ready}
            self.note("stopping PostgreSQL (pg_ctl stop -m fast)")
            self.pg.stop("fast")
            event.detail["stopped_t"] = round(self.now(), 2)
            event.state = "active"
            event.until = time.monotonic() + self.options.postgres_down_seconds

    def continue_event(self, event: Event) -> None:
        if time.monotonic() < event.until:
            return
        if event.kind == "redis":
            assert self.redis is not None
            self.processes.remove(self.redis)
            self.redis = self.redis.respawn()
            self.processes.append(self.redis)
            wait_until(
                lambda: redis_up(self.redis_url),
                timeout=30,
                what="Redis to restart",
                watch=[self.redis],
            )
            client = redis.Redis.from_url(self.redis_url, socket_connect_timeout=1)
            try:
                keys = int(client.dbsize())
            finally:
                client.close()
            event.state, event.ended_t = "done", self.now()
            event.detail["keys_after_restart"] = keys
            self.note("Redis is back", keys=keys)
        elif event.kind == "smtp":
            if "restarted_t" not in event.detail:
                assert self.smtp is not None
                self.processes.remove(self.smtp)
                self.start_smtp()
                event.detail["restarted_t"] = round(self.now(), 2)
                event.detail["received_at_restart"] = self.received.unique
                self.note("SMTP server restarted")
                event.state, event.ended_t = "done", self.now()
        elif event.kind == "postgres":
            assert self.pg is not None
            if "restarted_t" not in event.detail:
                self.pg.start()
                event.detail["restarted_t"] = round(self.now(), 2)
                event.detail["received_at_restart"] = self.received.unique
                event.detail["sent_at_restart"] = self.sent_in_database()
                self.note("PostgreSQL is back")
                event.until = 0.0
                return
            # Back up: wait until the workers record sends again, through new connections.
            sent = self.sent_in_database()
            if sent is not None and sent > (event.detail["sent_at_restart"] or 0):
                event.detail["recording_again_t"] = round(self.now(), 2)
                watched = event.detail["worker_pids_before"]
                event.detail["worker_pids_after"] = {i: self.slots[i].worker_pid() for i in watched}
                event.detail["starts_after"] = {i: self.slots[i].starts for i in watched}
                event.state, event.ended_t = "done", self.now()
                self.note(
                    "workers recording again",
                    after_s=round(
                        event.detail["recording_again_t"] - event.detail["restarted_t"], 1
                    ),
                )

    # -- watching ---------------------------------------------------------------------------

    def supervise(self) -> None:
        """Restart worker instances that exited; any other role must stay up."""
        for slot in self.slots:
            if slot.process.alive():
                continue
            code = slot.process.proc.returncode
            exit_ = {"t": round(self.now(), 2), "code": code, "after_kill": slot.killed}
            if not slot.killed:
                # The evidence: the last lines this start of the instance wrote.
                exit_["log"] = slot.log_since_start().splitlines()[-12:]
                self.note(f"worker-{slot.index} EXITED on its own", code=code)
            slot.exits.append(exit_)
            slot.restart()
        redis_event = next(
            (e for e in self.events if e.kind == "redis" and e.state == "active"), None
        )
        smtp_event = next(
            (e for e in self.events if e.kind == "smtp" and e.state == "active"), None
        )
        must_live = [self.api, self.scheduler]
        if redis_event is None:
            must_live.append(self.redis)
        if smtp_event is None:
            must_live.append(self.smtp)
        for process in must_live:
            if process is not None and not process.alive():
                raise process.dead_error()

    def claimed_rows(self) -> dict[int, datetime]:
        """Every claimed delivery of the campaign with its lease stamp: claimed rows, and the
        deliveries of claimed batch rows (which have no row until their record)."""
        from sqlalchemy import select

        from dispatcher.engine.batches import decode_ids
        from dispatcher.tables.deliveries import Batch, Delivery

        with self.engine.connect() as connection:
            rows = connection.execute(
                select(Delivery.id, Delivery.lease_until).where(
                    Delivery.campaign_id == self.campaign_id, Delivery.status == "claimed"
                )
            ).all()
            held = connection.execute(
                select(Batch.delivery_ids, Batch.lease_until).where(
                    Batch.campaign_id == self.campaign_id, Batch.status == "claimed"
                )
            ).all()
        claimed = {int(r[0]): r[1] for r in rows}
        for ids, lease_until in held:
            for delivery_id in decode_ids(ids):
                claimed[delivery_id] = lease_until
        return claimed

    def sent_in_database(self) -> int | None:
        from sqlalchemy import func, select

        from dispatcher.tables.deliveries import Delivery

        try:
            with self.engine.connect() as connection:
                return int(
                    connection.scalar(
                        select(func.count()).where(
                            Delivery.campaign_id == self.campaign_id, Delivery.status == "sent"
                        )
                    )
                    or 0
                )
        except Exception:
            return None

    def run(self) -> dict[str, Any]:
        o = self.options
        self.plan_events()
        self.say(
            "  chaos plan: "
            + ", ".join(f"{e.label} at {e.at_share:.0%}" for e in self.events)
            + f" (seed {o.seed})"
        )
        self.launch()
        self.note("campaign approved", campaign=self.campaign_id)
        deadline = time.monotonic() + o.timeout
        next_poll = 0.0
        last_print = 0.0
        campaign: dict[str, Any] | None = None
        completed_t: float | None = None
        while True:
            self.received.read()
            self.supervise()
            self.step_events()
            now = time.monotonic()
            if now >= next_poll:
                next_poll = now + POLL_SECONDS
                polled = self.poll_campaign()
                if polled is not None:
                    campaign = polled
                if now - last_print >= 5:
                    last_print = now
                    counts = (campaign or {}).get("counts", {}).get("by_status", {})
                    self.say(
                        f"  t={self.now():6.1f} s  [{self.received.unique:>6,} received]  "
                        f"deliveries {json.dumps(counts)}"
                    )
                if campaign is not None and campaign.get("status") == "completed":
                    completed_t = self.now()
                    break
            if now > deadline:
                raise BenchError(
                    f"the campaign did not complete within {o.timeout:.0f} s: "
                    f"{(campaign or {}).get('counts')}; events: "
                    + ", ".join(f"{e.label} {e.state}" for e in self.events)
                    + self.diagnosis()
                )
            time.sleep(TICK_SECONDS)
        self.note("campaign completed")
        # Let the log catch up with the last messages, then read everything.
        wait_until(
            lambda: self.received_settled(),
            timeout=10,
            what="the SMTP log to settle",
        )
        return self.verify(campaign, completed_t)

    def received_settled(self) -> bool:
        before = self.received.total
        self.received.read()
        stats = read_json(self.workdir / "smtp-server-stats.json") or {}
        return self.received.total == before and stats.get("ready") is True

    def diagnosis(self) -> str:
        lines = [f"\n  {p.log_path.name}:\n{p.tail(8)}" for p in self.processes[-3:]]
        lines += [f"\n  {s.process.log_path.name}:\n{s.process.tail(8)}" for s in self.slots]
        return "".join(lines)

    # -- the proof --------------------------------------------------------------------------

    def verify(self, campaign: dict[str, Any] | None, completed_t: float | None) -> dict[str, Any]:
        from sqlalchemy import select

        from dispatcher.tables.campaigns import Run
        from dispatcher.tables.deliveries import Attempt, Delivery, Lease
        from dispatcher.tables.recipients import Address, Recipient

        o = self.options
        with self.engine.connect() as connection:
            deliveries = {
                int(r[0]): (int(r[1]), str(r[2]))
                for r in connection.execute(
                    select(Delivery.id, Delivery.recipient_id, Delivery.status).where(
                        Delivery.campaign_id == self.campaign_id
                    )
                )
            }
            attempts = connection.execute(
                select(
                    Attempt.delivery_id,
                    Attempt.outcome,
                    Attempt.possible_duplicate,
                    Attempt.started_at,
                )
                .join(Delivery, Delivery.id == Attempt.delivery_id)
                .where(Delivery.campaign_id == self.campaign_id)
            ).all()
            addresses = {
                int(r[0]): (str(r[1]), str(r[2]))
                for r in connection.execute(
                    select(Address.recipient_id, Address.value, Recipient.external_id)
                    .join(Recipient, Recipient.id == Address.recipient_id)
                    .where(Address.channel == "email")
                )
            }
            # The leases the sweeper took over (kept, marked lost), and whose they were.
            lost_leases = {
                r[0]: str(r[1])
                for r in connection.execute(
                    select(Lease.lease_until, Lease.worker).where(
                        Lease.lost_at.is_not(None),
                        Lease.run_id.in_(select(Run.id).where(Run.campaign_id == self.campaign_id)),
                    )
                )
            }
        outcomes = Counter(str(a[1]) for a in attempts)
        sent_attempts = Counter(int(a[0]) for a in attempts if a[1] == "sent")
        flagged = {int(a[0]) for a in attempts if a[2]}
        statuses = Counter(status for _, status in deliveries.values())
        checks: list[dict[str, Any]] = []

        def check(name: str, ok: bool, detail: str) -> None:
            checks.append({"check": name, "ok": bool(ok), "detail": detail})

        # 1. Completed, each delivery sent once in the database.
        n = o.recipients
        check(
            "the campaign completed, every delivery sent",
            campaign is not None
            and campaign.get("status") == "completed"
            and len(deliveries) == n
            and statuses.get("sent", 0) == n,
            f"{len(deliveries):,} deliveries for {n:,} recipients: {dict(statuses)}",
        )
        not_once = [d for d in deliveries if sent_attempts.get(d, 0) != 1]
        check(
            "exactly one successful attempt per delivery (database)",
            not not_once,
            f"{len(not_once)} deliveries without exactly one sent attempt"
            + (f", e.g. {not_once[:5]}" if not_once else ""),
        )
        # 2. Every recipient received its own message.
        received = self.received.by_delivery
        missing = [d for d in deliveries if d not in received]
        strangers = [d for d in received if d not in deliveries]
        wrong_address = [
            d
            for d, copies in received.items()
            if d in deliveries
            and any(rcpt != addresses.get(deliveries[d][0], ("?", ""))[0] for _, rcpt, _ in copies)
        ]
        check(
            "every recipient received their message, and only their own (SMTP)",
            not missing and not strangers and not wrong_address and not self.received.foreign,
            f"{len(received):,} of {len(deliveries):,} received; missing {len(missing)}, "
            f"unknown {len(strangers) + len(self.received.foreign)}, "
            f"to the wrong address {len(wrong_address)}",
        )
        # 3. Duplicates: flagged, and inside a crash window.
        duplicates = {d: sorted(c) for d, c in received.items() if len(c) > 1}
        extra_copies = sum(len(c) - 1 for c in duplicates.values())
        unflagged = [d for d in duplicates if d not in flagged]
        check(
            "every re-send is flagged possible_duplicate (database)",
            not unflagged,
            f"{len(duplicates)} recipients received a second copy; {len(unflagged)} not flagged"
            + (f", e.g. deliveries {unflagged[:5]}" if unflagged else ""),
        )
        # A re-send is inside a crash window when its first copy left through a connection of
        # a worker we killed, before the kill (plus the time the SMTP server takes to log what
        # was already on its way), and the row was then claimed by that worker's batch.
        # Every copy but the last was lost with its worker: each is charged to its kill.
        per_kill = [0] * len(self.kills)
        outside: list[int] = []
        for d, copies in duplicates.items():
            for at, _, port in copies[:-1]:
                owner = next(
                    (
                        k
                        for k, kill in enumerate(self.kills)
                        if port in kill.smtp_ports
                        and at <= kill.at + LOG_LAG_SECONDS
                        and d in kill.claimed
                    ),
                    None,
                )
                if owner is None:
                    outside.append(d)
                else:
                    per_kill[owner] += 1
        check(
            "every re-send fell in a crash window (sent by a killed worker before its kill)",
            not outside,
            f"copies sent again per kill {per_kill}; outside any window {len(outside)}"
            + (f", e.g. deliveries {outside[:5]}" if outside else ""),
        )
        # 4. Only killed workers' leases were taken over: a live worker keeps its batch, however
        # long a restart or a starved CPU holds it up.
        killed = {kill.pid for kill in self.kills}
        holders = [worker_pid(w) for w in lost_leases.values()]
        live_taken = sorted({pid for pid in holders if pid not in killed}, key=str)
        check(
            "no live worker's batch was taken over",
            not live_taken,
            f"{len(holders)} leases taken over, from killed workers "
            f"{sorted({p for p in holders if p in killed}, key=str)}"
            + (f"; from live workers {live_taken}" if live_taken else ""),
        )
        # 5. At most one batch per kill: the rows taken over, grouped by the lease they were
        # taken from (one claim, one batch), each batch held by a killed worker. A worker
        # process has up to one batch claimed per thread (read from it at the kill), but its
        # send gate lets only one of them send before it is recorded: the others are taken
        # over unsent. The lease a row was taken from is one the sweeper marked lost, seen on
        # the row at a kill (the last such, should the row have been taken over twice).
        lost: dict[datetime, list[int]] = defaultdict(list)
        unexplained_flags: list[int] = []
        for d in sorted(flagged):
            leases = [
                kill.claimed[d]
                for kill in self.kills
                if d in kill.claimed and kill.claimed[d] in lost_leases
            ]
            if leases:
                lost[max(leases)].append(d)
            else:
                unexplained_flags.append(d)
        holds = [kill.holds for kill in self.kills]
        resends = [kill.resends for kill in self.kills]
        batches_per_kill, unowned_batches, quiet_batches = assign_lost_batches(
            lost, self.kills, received, set(duplicates)
        )
        resent_unexplained = [d for d in unexplained_flags if d in duplicates]
        largest = max((len(v) for v in lost.values()), default=0)
        check(
            "at most one batch per kill (per batch the killed process held)",
            all(n <= r for n, r in zip(batches_per_kill, resends, strict=True))
            and all(n <= r * o.batch_size for n, r in zip(per_kill, resends, strict=True))
            and largest <= o.batch_size
            and not resent_unexplained
            and not unowned_batches,
            f"{len(flagged)} deliveries taken over after their lease lapsed, in {len(lost)} "
            f"batch(es); batches sent twice per kill {batches_per_kill} (at most {resends}), "
            f"each killed process could hold {holds} (one per thread); sent twice but no kill's "
            f"{unowned_batches + len(resent_unexplained)}; taken over without a re-send "
            f"{quiet_batches} (+{len(unexplained_flags) - len(resent_unexplained)} rows seen "
            f"at no kill); largest {largest}, batch size {o.batch_size}",
        )
        audit = self.audit_sample(
            sorted(duplicates or flagged)[:AUDIT_SAMPLE], deliveries, addresses
        )
        check(
            "the audit (GET /v1/deliveries) shows the flag",
            audit["checked"] == audit["flagged"],
            f"{audit['flagged']} of {audit['checked']} sampled re-sent deliveries flagged "
            "in their attempts",
        )
        # 6. No role crashed; workers outlived the PostgreSQL restart.
        unexpected = [
            {"instance": s.index, **x} for s in self.slots for x in s.exits if not x["after_kill"]
        ]
        check(
            "every planned failure happened before the campaign ended",
            all(e.state == "done" for e in self.events),
            ", ".join(f"{e.label} {e.state}" for e in self.events),
        )
        check(
            "no process crashed (workers exited only when killed)",
            not unexpected,
            f"worker exits after a kill {sum(len(s.exits) for s in self.slots) - len(unexpected)}, "
            f"on their own {len(unexpected)}",
        )
        pg = next((e for e in self.events if e.kind == "postgres"), None)
        pg_errors = self.log_count(r"OperationalError|psycopg\.|server closed the connection")
        if pg is not None:
            before = pg.detail.get("worker_pids_before", {})
            after = pg.detail.get("worker_pids_after", {})
            same = (
                bool(before)
                and before == after
                and pg.detail.get("starts_before") == pg.detail.get("starts_after")
            )
            recovered = pg.detail.get("recording_again_t")
            check(
                "workers reconnect to PostgreSQL after its restart, same processes",
                same and recovered is not None and pg.state == "done",
                f"down {o.postgres_down_seconds:g} s; worker pids before {before}, after {after}; "
                f"recording again "
                + (
                    f"{recovered - pg.detail['restarted_t']:.1f} s after it came back"
                    if recovered is not None
                    else "never"
                )
                + f"; {pg_errors} database errors in the workers' logs, retried",
            )
        sweeps = self.sweep_totals()
        elapsed = completed_t or self.now()
        return {
            "benchmark": "chaos",
            "ok": all(c["ok"] for c in checks),
            "checks": checks,
            "recipients": n,
            "elapsed_s": round(elapsed, 1),
            "deliveries_per_s": round(n / elapsed, 1) if elapsed else None,
            "deliveries_by_status": dict(statuses),
            "attempts_by_outcome": dict(outcomes),
            "received_messages": self.received.total,
            "received_unique": len(received),
            "duplicates": len(duplicates),
            "extra_copies": extra_copies,
            "duplicates_per_kill": per_kill,
            "batches_resent_per_kill": batches_per_kill,
            "flagged_possible_duplicate": len(flagged),
            "lost_batches": {str(k): len(v) for k, v in lost.items()},
            "sweeper": sweeps,
            "postgres_errors_in_worker_logs": pg_errors,
            "worker_starts": {s.index: s.starts for s in self.slots},
            "worker_exits": {s.index: s.exits for s in self.slots},
            "events": [
                {
                    "event": e.label,
                    "at_share": round(e.at_share, 3),
                    "state": e.state,
                    "t": e.started_t and round(e.started_t, 2),
                    "ended_t": e.ended_t and round(e.ended_t, 2),
                    **{k: v for k, v in e.detail.items()},
                }
                for e in self.events
            ],
            "timeline": self.timeline,
            "audit_sample": audit,
            "options": {
                **{
                    k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.options).items()
                },
            },
            "settings": {k: v for k, v in self.env.items() if k.startswith("DISPATCHER_")},
            "machine": machine(),
        }

    def audit_sample(
        self,
        ids: list[int],
        deliveries: dict[int, tuple[int, str]],
        addresses: dict[int, tuple[str, str]],
    ) -> dict[str, Any]:
        """Read back some re-sent deliveries through GET /v1/deliveries (the ops view)."""
        checked = flagged = 0
        for d in ids:
            external_id = addresses.get(deliveries[d][0], ("", ""))[1]
            response = self.client.get(
                "/v1/deliveries",
                params={"campaign_id": self.campaign_id, "recipient": external_id},
            )
            if response.status_code != 200:
                continue
            checked += 1
            for item in response.json().get("items", []):
                if item["id"] == d and any(a["possible_duplicate"] for a in item["attempts"]):
                    flagged += 1
                    break
        return {"checked": checked, "flagged": flagged, "requested": len(ids)}

    def log_count(self, pattern: str) -> int:
        expression = re.compile(pattern)
        total = 0
        for path in self.workdir.glob("worker-*.log"):
            with contextlib.suppress(OSError):
                total += sum(1 for line in path.open(errors="replace") if expression.search(line))
        return total

    def sweep_totals(self) -> dict[str, int]:
        """What the sweeper did, from the scheduler's log (its ``sweep`` lines)."""
        totals: Counter[str] = Counter()
        if self.scheduler is None:
            return {}
        for line in self.scheduler.text().splitlines():
            if not line.startswith("{"):
                continue
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == "sweep":
                    for key in ("leases_expired", "requeued", "runs_completed"):
                        totals[key] += int(entry.get(key) or 0)
        return dict(totals)


# -- output -------------------------------------------------------------------------------------


def print_summary(result: dict[str, Any]) -> None:
    print("\n-- Chaos results --")
    rows = [
        ("recipients", f"{result['recipients']:,}"),
        (
            "approve → completed",
            f"{result['elapsed_s']:.1f} s ({result['deliveries_per_s']:,.0f} deliveries/s "
            "through the chaos)",
        ),
        ("deliveries by status", json.dumps(result["deliveries_by_status"])),
        ("attempts by outcome", json.dumps(result["attempts_by_outcome"])),
        (
            "messages received (SMTP)",
            f"{result['received_messages']:,} for {result['received_unique']:,} deliveries: "
            f"{result['duplicates']} re-sent ({result['extra_copies']} extra copies), "
            f"per kill {result['duplicates_per_kill']}",
        ),
        (
            "flagged possible_duplicate",
            f"{result['flagged_possible_duplicate']} deliveries in "
            f"{len(result['lost_batches'])} batch(es) taken over after their lease lapsed",
        ),
        ("sweeper (scheduler log)", json.dumps(result["sweeper"])),
        ("worker starts per instance", json.dumps(result["worker_starts"])),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    print("\n  events:")
    for event in result["events"]:
        detail = {k: v for k, v in event.items() if k not in ("event", "at_share", "state", "t")}
        print(
            f"    {event['event']:<22} at {event['at_share']:>4.0%} of N, "
            f"t={event['t'] if event['t'] is not None else '-'} s, {event['state']}; "
            f"{json.dumps(detail, default=str)}"
        )
    print("\n  invariants:")
    for item in result["checks"]:
        print(f"    [{'PASS' if item['ok'] else 'FAIL'}] {item['check']}: {item['detail']}")
    verdict = "ALL INVARIANTS HELD" if result["ok"] else "AN INVARIANT FAILED"
    print(f"\n  {verdict}", flush=True)


# -- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    outcome: dict[str, Any] = {}

    def run() -> int:
        options = outcome["options"] = options_for(args)
        if options.database == "postgresql" and postgres_bindir() is None:
            raise BenchError(
                "no PostgreSQL server binaries (initdb, pg_ctl) for the private cluster: "
                "install them, set PG_BINDIR, or run with --database sqlite"
            )
        print(
            f"\n== chaos: {options.recipients:,} emails, {options.workers} worker instances"
            f"{f' × {options.threads} threads' if options.threads else ''}, "
            f"batches of {options.batch_size}, {options.database}, Redis "
            f"{options.redis_persistence} ==",
            flush=True,
        )
        with contextlib.ExitStack() as stack:
            chaos = ChaosRun(options, stack)
            setup_t0 = time.perf_counter()
            chaos.setup()
            chaos.add_recipients(options.recipients, lambda i: email_recipient("CH", i))
            print(f"  setup {time.perf_counter() - setup_t0:.1f} s", flush=True)
            outcome["result"] = chaos.run()
        return 0

    code = run_main(run, failed="chaos run failed", code=2)
    if code != 0:
        return code
    options: Options = outcome["options"]
    result: dict[str, Any] = outcome["result"]
    print_summary(result)
    name = f"chaos-{options.recipients}.json"
    path = options.json_path or None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
    else:
        path = write_json(name, json.loads(json.dumps(result, default=str)))
    print(f"  written to {relative(path)}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
