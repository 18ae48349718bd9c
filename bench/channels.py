"""Channel throughput: Telegram against its rate limit, and email over SMTP.

    python -m bench.channels                       # Telegram for 60 s, then 20,000 emails
    python -m bench.channels --quick               # 10 s of Telegram, 1,000 emails (smoke run)
    python -m bench.channels --only telegram --duration 120
    python -m bench.channels --only email --emails 50000

Each scenario builds the service from scratch, every part a real subprocess in its own session:
a private ``redis-server`` (``--save "" --appendonly no``), a fresh SQLite file migrated with
``dispatcher migrate``, the provider in another process, the API (``dispatcher serve``) and the
workers (``dispatcher worker --queues urgent --processes P --threads T``). Recipients go in
through ``POST /v1/recipients`` (arrays of up to 10,000), a template is published, and a
``fraud_warning`` campaign (urgent queue) is created, submitted and approved over HTTP.

*Telegram.* The provider is the Telegram emulator (``python -m channels.emulators telegram --rate
30``), which answers 429 as soon as its bucket (30 a second) runs dry. N = rate × duration
distinct chats. The rate is measured on the emulator's side, from its ``GET /_emulator/stats``
(not part of Telegram's API): messages accepted per second of its own clock, over the steady
window (the first ``--warmup`` seconds and the last, partial second left out), together with
every 429 it answered. The aim: at least 95% of the limit, and not one 429.

*Email.* The provider is an aiosmtpd server in another process (the SMTP sink of
``bench.common``) that accepts every message and reports its count to a file. The figure is
messages/s from the approve call until the campaign reads ``completed``, with the service's CPU
per email. Then, in the same run, the service is stopped and the floor sends the same number of
pre-rendered messages to the same server with aiosmtplib, over as many pooled connections from
as many processes as the service had (:func:`bench.floors.email_floor`); ours/floor is printed
against the aim of 0.7 (``--no-floor`` skips it).

Both scenarios also report the CPU seconds each role used during the campaign, and those used by
other processes on the machine (a busy machine disturbs the figures); ``--profile`` records the
worker processes and the provider with py-spy. Figures are printed and written to
``bench/results/channels-telegram-<duration>s.json`` / ``channels-email-<N>.json``. Every subprocess
is stopped (SIGTERM to its process group, then SIGKILL) when a scenario ends, fails or is
interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import httpx
import psutil
import redis

from bench.common import (
    OTHER_CPU_WARNING,
    RESULTS_DIR,
    BenchError,
    Managed,
    Service,
    dispatcher_command,
    free_port,
    iso,
    machine,
    machine_busy_seconds,
    parse_env,
    project_env,
    read_json,
    relative,
    run_main,
    server_seconds,
    start_smtp_sink,
    vietnamese_name,
    wait_until,
    write_json,
)
from bench.common import PROVINCES as COMMON_PROVINCES

POLL_SECONDS = 0.5
PROGRESS_SECONDS = 2.0
AIM_SHARE = 0.95  # of the provider's limit, over the steady window
TEMPLATE_KEY = "bench_channels_fraud_warning"

TEMPLATE: dict[str, Any] = {
    "key": TEMPLATE_KEY,
    "kind": "fraud_warning",
    "description": "Channel benchmark (bench.channels)",
    "defaults": {"hotline": "1900 9068"},
    "variants": [
        {
            "channel": "telegram",
            "locale": "vi",
            "body": "<b>BHXH Việt Nam cảnh báo lừa đảo</b>\n"
            "Kính gửi {{ recipient.honorific }} {{ recipient.full_name }}: cơ quan BHXH không "
            "bao giờ yêu cầu chuyển tiền qua điện thoại. Tổng đài {{ hotline }}.",
        },
        {
            "channel": "email",
            "locale": "vi",
            "subject": "Cảnh báo lừa đảo mạo danh BHXH — {{ recipient.full_name }}",
            "body": "Kính gửi {{ recipient.honorific }} {{ recipient.full_name }},\n\n"
            "Cơ quan BHXH không bao giờ yêu cầu chuyển tiền qua điện thoại.\n"
            "Mã số BHXH: {{ recipient.external_id }} · {{ recipient.province }}.\n"
            "Tổng đài {{ hotline }}.",
            "html": "<p>Kính gửi <b>{{ recipient.full_name }}</b>,</p>"
            "<p>Cơ quan BHXH không bao giờ yêu cầu chuyển tiền qua điện thoại. "
            "Tổng đài {{ hotline }}.</p>",
        },
    ],
}

PROVINCES = COMMON_PROVINCES


# -- the service --------------------------------------------------------------------------------


@dataclass
class Options:
    scenarios: tuple[str, ...]
    duration: float
    rate: float
    warmup: float
    emails: int
    workers: int
    threads: int
    batch_size: int | None
    smtp_pool_size: int
    extra_env: dict[str, str] = field(default_factory=dict)
    keep: bool = False
    timeout: float | None = None
    profile: bool = False
    floor: bool = True


@dataclass
class Audit:
    """What the service's own audit (GET /v1/deliveries) says about a campaign."""

    statuses: dict[str, int]
    outcomes: dict[str, int]
    started: list[datetime]  # every attempt's started_at (the slot was taken just before)

    def started_per_second(self, origin: datetime) -> list[int]:
        """Attempts started in each second after ``origin`` (earlier ones count in the first)."""
        if not self.started:
            return []
        offsets = [max(0.0, (at - origin).total_seconds()) for at in self.started]
        counts = [0] * (int(max(offsets)) + 1)
        for offset in offsets:
            counts[int(offset)] += 1
        return counts


@dataclass
class Measured:
    campaign: dict[str, Any]  # as the API shows it once completed
    approved_wall: datetime
    elapsed: float  # approve call → completed, s
    cpu: dict[str, float]  # CPU seconds per role during the campaign
    redis_calls: dict[str, int]  # per Redis command during the campaign
    profiles: list[str]
    audit: Audit


class ChannelService(Service):
    """The service of one scenario, with its provider in another process."""

    def __init__(self, options: Options, name: str, stack: contextlib.ExitStack) -> None:
        super().__init__(name, stack, keep=options.keep)
        self.options = options
        self.provider_env: dict[str, str] = {}
        self.provider: Managed | None = None
        self.workers: Managed | None = None

    def redis_calls(self) -> dict[str, int]:
        """Calls per Redis command so far (``INFO commandstats`` of the private Redis)."""
        client = redis.Redis.from_url(self.redis_url)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
        return {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if isinstance(value, dict) and "calls" in value
        }

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each role (its whole process tree)."""
        roles = {
            "workers": self.workers,
            "api": self.api,
            "provider": self.provider,
            "redis": self.redis,
        }
        used = {name: p.cpu_seconds() for name, p in roles.items() if p is not None}
        own = psutil.Process().cpu_times()
        used["this script"] = own.user + own.system
        # Everything else on the machine (other benchmarks, test suites...) is the busy time of
        # all CPUs minus ours: cpu_used() reports it as "other processes".
        used["machine busy"] = machine_busy_seconds()
        return used

    def up(self) -> None:
        """Migrate, then start the API and the workers (the provider is already running)."""
        o = self.options
        settings = {"DISPATCHER_WORKER_THREADS": str(o.threads)}
        if o.batch_size is not None:
            settings["DISPATCHER_BATCH_SIZE"] = str(o.batch_size)
        settings.update({f"DISPATCHER_{k}": v for k, v in self.provider_env.items()})
        self.configure(f"sqlite:///{self.workdir / 'bench.db'}", {**settings, **o.extra_env})
        self.migrate()
        self.start_api(timeout=60)
        worker = [*dispatcher_command(), "worker", "--queues", "urgent"]
        worker += ["--processes", str(o.workers), "--threads", str(o.threads)]
        self.workers = self.start("workers", worker)
        self.wait_for_workers(o.workers, timeout=90)

    def launch(self, channel: str) -> tuple[int, float, datetime]:
        """Create, submit and approve; returns (campaign id, monotonic and wall time of approve)."""
        campaign_id = self.submit(
            {
                "name": f"Cảnh báo mạo danh BHXH ({channel} benchmark)",
                "kind": "fraud_warning",
                "template": TEMPLATE_KEY,
                "audience": {"all": True},
                "channels": [channel],
            },
            priority="urgent",
        )
        wall = datetime.now(UTC)
        t0 = time.monotonic()
        self.approve(campaign_id)
        return campaign_id, t0, wall

    def wait_completed(
        self, campaign_id: int, t0: float, timeout: float, provider: Callable[[], tuple[int, str]]
    ) -> dict[str, Any]:
        """Poll the campaign until it completes, printing every 2 s what was sent and what the
        provider counts (``provider()``: its count of messages, and a note)."""
        last_progress, previous = t0, 0
        while True:
            time.sleep(POLL_SECONDS)
            self.check_alive()
            campaign = self.campaign(campaign_id)
            now = time.monotonic()
            completed = campaign["status"] == "completed"
            if now - last_progress >= PROGRESS_SECONDS or completed:
                count, note = provider()
                sent = campaign["counts"]["by_status"].get("sent", 0)
                rate = (count - previous) / max(1e-9, now - last_progress)
                print(
                    f"  t={now - t0:6.1f} s  sent {sent:>7,}  {note}  ({rate:6.1f}/s)", flush=True
                )
                last_progress, previous = now, count
            if completed:
                return campaign
            if now - t0 > timeout:
                raise BenchError(
                    f"the campaign did not complete within {timeout:.0f} s: {campaign['counts']}"
                )

    def measure(
        self, channel: str, timeout: float, provider: Callable[[], tuple[int, str]]
    ) -> Measured:
        """The campaign on ``channel``, approve → completed, with what it cost on the way."""
        profiler = Profiler(self) if self.options.profile else None
        if profiler is not None:
            profiler.start()
        cpu_before = self.cpu()
        redis_before = self.redis_calls()
        campaign_id, t0, approved_wall = self.launch(channel)
        campaign = self.wait_completed(campaign_id, t0, timeout, provider)
        elapsed = time.monotonic() - t0
        cpu = cpu_used(cpu_before, self.cpu())
        redis_calls = calls_used(redis_before, self.redis_calls())
        profiles = profiler.stop() if profiler is not None else []
        return Measured(
            campaign, approved_wall, elapsed, cpu, redis_calls, profiles, self.audit(campaign_id)
        )

    def audit(self, campaign_id: int) -> Audit:
        """Deliveries by status, attempts by outcome, and when each attempt started."""
        statuses: Counter[str] = Counter()
        outcomes: Counter[str] = Counter()
        started: list[datetime] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"campaign_id": campaign_id, "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            page = self.client.get("/v1/deliveries", params=params).json()
            for delivery in page["items"]:
                statuses[delivery["status"]] += 1
                for attempt in delivery["attempts"]:
                    outcomes[attempt["outcome"]] += 1
                    started.append(datetime.fromisoformat(attempt["started_at"]))
            cursor = page["next_cursor"]
            if cursor is None:
                return Audit(dict(statuses), dict(outcomes), sorted(started))

    def worker_pids(self) -> list[int]:
        """The forked worker processes (not their supervising parent, whose forks they are)."""
        if self.workers is None:
            return []
        return [p.pid for p in self.workers.children()]


def person(prefix: str, i: int) -> dict[str, Any]:
    return {
        "external_id": f"{prefix}{i:08d}",
        "full_name": vietnamese_name(i),
        "province": PROVINCES[i % len(PROVINCES)],
    }


# -- profiling (optional) -----------------------------------------------------------------------


class Profiler:
    """``py-spy record`` on each worker process while the campaign runs (``--profile``)."""

    def __init__(self, service: ChannelService) -> None:
        self.service = service
        self.outputs: list[Path] = []
        self.processes: list[Managed] = []

    def start(self) -> None:
        binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(binary).exists():
            raise BenchError("--profile needs py-spy: pip install py-spy (into the virtualenv)")
        pids = {f"worker-{pid}": pid for pid in self.service.worker_pids()}
        if self.service.provider is not None:
            pids["provider"] = self.service.provider.pid
        for label, pid in pids.items():
            out = self.service.workdir / f"profile-{label}.txt"
            argv = [binary, "record", "--pid", str(pid), "--format", "raw", "--output", str(out)]
            argv += ["--rate", "50", "--nonblocking"]
            process = self.service.start(f"py-spy-{pid}", argv, dict(os.environ), watch=False)
            self.processes.append(process)
            self.outputs.append(out)

    def stop(self) -> list[str]:
        for process in self.processes:
            if process.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.proc.wait(30)
        kept = []
        for out in self.outputs:
            if out.exists():
                target = RESULTS_DIR / f"channels-{self.service.name}-{out.name}"
                RESULTS_DIR.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out, target)
                kept.append(relative(target))
        return kept


# -- Telegram ---------------------------------------------------------------------------------


def start_telegram_emulator(service: ChannelService, rate: float) -> str:
    port = free_port()
    argv = [sys.executable, "-m", "channels.emulators", "telegram", "--port", str(port)]
    argv += ["--rate", f"{rate:g}"]
    emulator = service.start("telegram-emulator", argv, project_env())
    service.provider = emulator
    wait_until(
        lambda: "_emulator/stats" in emulator.text(),
        timeout=30,
        what="the Telegram emulator to print its settings",
        watch=[emulator],
    )
    for line in emulator.text().splitlines():
        if line.startswith("export DISPATCHER_"):
            key, _, value = line.removeprefix("export DISPATCHER_").partition("=")
            service.provider_env[key] = value
    if "TELEGRAM_TOKEN" not in service.provider_env:
        raise BenchError(f"the Telegram emulator printed no token:\n{emulator.tail()}")
    return f"http://127.0.0.1:{port}"


def steady_rate(per_second: list[int], warmup: float) -> tuple[float | None, list[int]]:
    """Mean of the whole seconds after ``warmup``, the last (partial) second left out."""
    skip = math.ceil(warmup)
    window = per_second[skip:-1]
    if not window:
        return None, []
    return sum(window) / len(window), window


def run_telegram(options: Options) -> dict[str, Any]:
    n = math.ceil(options.rate * options.duration)
    print(
        f"\n== Telegram: {n:,} chats (limit {options.rate:g}/s × {options.duration:g} s), "
        f"{options.workers} worker process(es) × {options.threads} threads ==",
        flush=True,
    )
    with contextlib.ExitStack() as stack:
        service = ChannelService(options, "telegram", stack)
        setup_t0 = time.perf_counter()
        service.start_redis()
        emulator_url = start_telegram_emulator(service, options.rate)
        stats_client = httpx.Client(base_url=emulator_url, timeout=30)
        stack.callback(stats_client.close)

        def stats() -> dict[str, Any]:
            data: dict[str, Any] = stats_client.get("/_emulator/stats").json()
            return data

        service.up()
        insert_s = service.add_recipients(
            n, lambda i: {**person("TG", i), "addresses": {"telegram": str(100_000_000 + i)}}
        )
        service.publish(TEMPLATE)
        if stats()["requests"] != 0:
            raise BenchError("the Telegram emulator was called before the campaign")
        setup_s = time.perf_counter() - setup_t0
        print(
            f"  setup {setup_s:.1f} s (recipients through the API: {insert_s:.1f} s); "
            f"emulator at {emulator_url}",
            flush=True,
        )
        settings = {
            **{k: v for k, v in service.env.items() if k.startswith("DISPATCHER_")},
            "DISPATCHER_TELEGRAM_TOKEN": "***",
        }

        def accepted() -> tuple[int, str]:
            current = stats()
            count = int(current["accepted"])
            return count, f"accepted {count:>6,}  429s {current['by_status'].get('429', 0):>3}"

        timeout = options.timeout or (n / (options.rate * 0.9) + 120)
        m = service.measure("telegram", timeout, accepted)
        final = stats()

    audit, campaign, approved_wall = m.audit, m.campaign, m.approved_wall
    statuses, outcomes = audit.statuses, audit.outcomes
    per_second: list[int] = final["accepted_per_second"]
    steady, window = steady_rate(per_second, options.warmup)
    first, last = iso(final["first_accepted_at"]), iso(final["last_accepted_at"])
    span = (last - first).total_seconds() if first and last else 0.0
    too_many = int(final["by_status"].get("429", 0))
    share = steady / options.rate if steady is not None else None
    return {
        "scenario": "telegram",
        "recipients": n,
        "limit_per_second": options.rate,
        "duration_target_s": options.duration,
        "warmup_s": options.warmup,
        "accepted": final["accepted"],
        "emulator_requests": final["requests"],
        "emulator_by_status": final["by_status"],
        "too_many_requests_429": too_many,
        "steady_rate_per_s": steady,
        "steady_share_of_limit": share,
        "steady_window_s": [math.ceil(options.warmup), math.ceil(options.warmup) + len(window)],
        "per_second_min": min(window) if window else None,
        "per_second_max": max(per_second) if per_second else None,
        "accepted_per_second": per_second,
        "first_to_last_accepted_s": span,
        "overall_rate_per_s": (final["accepted"] - 1) / span if span > 0 else None,
        "approve_to_first_accepted_s": (first - approved_wall).total_seconds() if first else None,
        "approve_to_completed_s": m.elapsed,
        "server_approved_to_completed_s": server_seconds(campaign),
        "deliveries_by_status": statuses,
        "attempts_by_outcome": outcomes,
        "rate_limited_attempts_our_side": outcomes.get("rate_limited", 0),
        # The same seconds of the clock, seen from our side: when each attempt started.
        "attempts_started_per_second": audit.started_per_second(first) if first else [],
        "aim": {
            "share_of_limit": AIM_SHARE,
            "met_rate": share is not None and share >= AIM_SHARE,
            "met_no_429": too_many == 0,
        },
        "cpu_seconds_during_campaign": m.cpu,
        "redis_calls_during_campaign": m.redis_calls,
        "profiles": m.profiles,
        "settings": settings,
        "options": options_summary(options),
        "machine": machine(),
    }


def print_telegram(r: dict[str, Any], out: TextIO = sys.stdout) -> None:
    limit = r["limit_per_second"]
    aim = r["aim"]
    steady = r["steady_rate_per_s"]
    lo, hi = r["steady_window_s"]
    verdict_rate = "met" if aim["met_rate"] else "NOT met"
    verdict_429 = "met" if aim["met_no_429"] else "NOT met"
    print("\n-- Telegram results --", file=out)
    rows = [
        ("chats / accepted by the emulator", f"{r['recipients']:,} / {r['accepted']:,}"),
        (
            f"sustained rate, seconds {lo}–{hi} of the emulator's clock",
            "n/a (run too short)"
            if steady is None
            else f"{steady:.2f} msg/s = {100 * steady / limit:.1f}% of {limit:g}/s "
            f"[aim ≥ {100 * aim['share_of_limit']:.0f}%: {verdict_rate}]",
        ),
        (
            "per-second accepted (steady min / any max)",
            f"{r['per_second_min']} / {r['per_second_max']}",
        ),
        ("429 answered by the emulator", f"{r['too_many_requests_429']} [aim 0: {verdict_429}]"),
        ("rate_limited attempts (our audit)", str(r["rate_limited_attempts_our_side"])),
        ("emulator requests by status", json.dumps(r["emulator_by_status"])),
        (
            "first → last accepted",
            f"{r['first_to_last_accepted_s']:.1f} s "
            f"({_fmt(r['overall_rate_per_s'], '.2f')} msg/s overall)",
        ),
        ("approve → first accepted", f"{_fmt(r['approve_to_first_accepted_s'], '.2f')} s"),
        (
            "approve → completed",
            f"{r['approve_to_completed_s']:.1f} s polled every {POLL_SECONDS} s "
            f"(server: {_fmt(r['server_approved_to_completed_s'], '.1f')} s)",
        ),
        ("deliveries by status", json.dumps(r["deliveries_by_status"])),
        ("attempts by outcome", json.dumps(r["attempts_by_outcome"])),
        ("CPU during the campaign", cpu_text(r)),
        ("Redis calls during the campaign", redis_text(r)),
    ]
    _rows(rows, out)
    print(f"  accepted per second (emulator): {r['accepted_per_second']}", file=out)
    print(
        f"  attempts started per second (our audit, same origin): "
        f"{r['attempts_started_per_second']}",
        file=out,
    )


# -- email --------------------------------------------------------------------------------------


def start_smtp_server(service: ChannelService) -> tuple[Path, int]:
    server, port, stats_path = start_smtp_sink(service.workdir)
    service.processes.append(server)
    service.watched.append(server)
    service.provider = server
    service.provider_env.update(
        {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(port),
            "SMTP_TLS": "none",
            "SMTP_POOL_SIZE": str(service.options.smtp_pool_size),
        }
    )
    return stats_path, port


def run_email(options: Options) -> dict[str, Any]:
    n = options.emails
    print(
        f"\n== Email: {n:,} recipients over SMTP (aiosmtpd in another process), "
        f"{options.workers} worker process(es) × {options.threads} threads, "
        f"SMTP pool {options.smtp_pool_size} per process ==",
        flush=True,
    )
    with contextlib.ExitStack() as stack:
        service = ChannelService(options, "email", stack)
        setup_t0 = time.perf_counter()
        service.start_redis()
        stats_path, smtp_port = start_smtp_server(service)
        service.up()
        insert_s = service.add_recipients(
            n,
            lambda i: {**person("EM", i), "addresses": {"email": f"nguoi.nhan{i:06d}@example.vn"}},
        )
        service.publish(TEMPLATE)
        setup_s = time.perf_counter() - setup_t0
        print(
            f"  setup {setup_s:.1f} s (recipients through the API: {insert_s:.1f} s); "
            f"SMTP on 127.0.0.1:{smtp_port}",
            flush=True,
        )
        settings = {k: v for k, v in service.env.items() if k.startswith("DISPATCHER_")}

        def received() -> tuple[int, str]:
            count = int((read_json(stats_path) or {}).get("messages", 0))
            return count, f"received {count:>7,}"

        m = service.measure("email", options.timeout or max(300.0, n / 20), received)
        smtp = read_json(stats_path) or {}
        floor = run_email_floor(service, options, stats_path, smtp_port) if options.floor else None

    audit, campaign, approved_wall = m.audit, m.campaign, m.approved_wall
    statuses, outcomes = audit.statuses, audit.outcomes

    sent = int(campaign["counts"]["by_status"].get("sent", 0))
    first, last = smtp.get("first_at"), smtp.get("last_at")
    span = (last - first) if first is not None and last is not None else 0.0
    return {
        "scenario": "email",
        "recipients": n,
        "sent": sent,
        "smtp_received": smtp.get("messages"),
        "smtp_bytes": smtp.get("bytes"),
        "approve_to_completed_s": m.elapsed,
        "rate_per_s": sent / m.elapsed if m.elapsed > 0 else None,
        "server_approved_to_completed_s": server_seconds(campaign),
        "smtp_first_to_last_s": span,
        "smtp_rate_per_s": (smtp.get("messages", 0) - 1) / span if span > 0 else None,
        "approve_to_first_received_s": (
            first - approved_wall.timestamp() if first is not None else None
        ),
        "deliveries_by_status": statuses,
        "attempts_by_outcome": outcomes,
        "cpu_seconds_during_campaign": m.cpu,
        "cpu_us_per_email": cpu_per_email(m.cpu, n),
        "floor": floor,
        "ratio_to_floor": (
            round(sent / m.elapsed / floor["per_second"], 3) if floor and m.elapsed > 0 else None
        ),
        "redis_calls_during_campaign": m.redis_calls,
        "profiles": m.profiles,
        "settings": settings,
        "options": options_summary(options),
        "machine": machine(),
    }


FLOOR_SENDER = "thongbao@baohiemxahoi.gov.vn"
AIM_FLOOR_RATIO = 0.7
SERVICE_ROLES = ("workers", "api", "redis")


def cpu_per_email(cpu_seconds: dict[str, float], n: int) -> dict[str, float]:
    """The service's CPU microseconds per email, by role, and their total (the SMTP server,
    this script and other processes left out)."""
    out = {
        role: round(cpu_seconds[role] / n * 1e6, 1) for role in SERVICE_ROLES if role in cpu_seconds
    }
    out["total"] = round(sum(out.values()), 1)
    return out


def run_email_floor(
    service: ChannelService, options: Options, stats_path: Path, port: int
) -> dict[str, Any]:
    """The floor: the same number of messages, pre-rendered, sent with aiosmtplib over the
    same number of pooled connections (``--smtp-pool-size`` in each of ``--workers``
    processes) to the same SMTP server, with the service stopped first."""
    from jinja2 import Environment

    from bench.floors import email_floor, prerendered_emails

    for process in (service.workers, service.api):
        if process is not None:
            process.stop()
    n = options.emails
    variant = next(v for v in TEMPLATE["variants"] if v["channel"] == "email")
    env = Environment(autoescape=False)  # the text part; the HTML part is the template's own
    subject_t = env.from_string(variant["subject"])
    body_t, html_t = env.from_string(variant["body"]), env.from_string(variant["html"])

    def view(i: int) -> dict[str, Any]:
        return {"recipient": {**person("EM", i), "honorific": "Ông/Bà"}, **TEMPLATE["defaults"]}

    print(
        f"  email floor: {n:,} pre-rendered messages, aiosmtplib, {options.workers} process(es) "
        f"× {options.smtp_pool_size} connections ...",
        flush=True,
    )
    messages = prerendered_emails(
        n,
        sender=FLOOR_SENDER,
        subject=lambda i: subject_t.render(view(i)),
        body=lambda i: body_t.render(view(i)),
        html=lambda i: html_t.render(view(i)),
        address=lambda i: f"nguoi.nhan{i:06d}@example.vn",
    )

    def received() -> int:
        return int((read_json(stats_path) or {}).get("messages", 0))

    before = received()
    server = []
    if service.provider is not None:
        server = [("smtp-server", member) for member in service.provider.tree()]
    floor = email_floor(
        port,
        messages,
        sender=FLOOR_SENDER,
        processes=options.workers,
        connections=options.smtp_pool_size,
        server=server,
    )
    wait_until(
        lambda: received() - before >= n,
        timeout=30,
        what="the SMTP server to count the floor's messages",
    )
    floor["received"] = received() - before
    return floor


def print_email(r: dict[str, Any], out: TextIO = sys.stdout) -> None:
    print("\n-- Email results --", file=out)
    server = r["server_approved_to_completed_s"]
    rows = [
        (
            "recipients / sent / received by SMTP",
            f"{r['recipients']:,} / {r['sent']:,} / {r['smtp_received']:,}",
        ),
        (
            "approve → completed",
            f"{r['approve_to_completed_s']:.1f} s polled every {POLL_SECONDS} s → "
            f"{_fmt(r['rate_per_s'], '.1f')} msg/s",
        ),
        (
            "server approved_at → completed_at",
            "n/a"
            if server is None
            else f"{server:.1f} s → {r['sent'] / server if server > 0 else 0:.1f} msg/s",
        ),
        (
            "SMTP first → last message",
            f"{r['smtp_first_to_last_s']:.1f} s → {_fmt(r['smtp_rate_per_s'], '.1f')} msg/s",
        ),
        ("approve → first message received", f"{_fmt(r['approve_to_first_received_s'], '.2f')} s"),
        ("deliveries by status", json.dumps(r["deliveries_by_status"])),
        ("attempts by outcome", json.dumps(r["attempts_by_outcome"])),
        ("CPU during the campaign", cpu_text(r)),
        (
            "CPU µs per email (service)",
            ", ".join(f"{k} {v:.0f}" for k, v in r["cpu_us_per_email"].items()),
        ),
        ("Redis calls during the campaign", redis_text(r)),
    ]
    floor = r.get("floor")
    if floor:
        note = "  ← other processes were busy: disturbed" if floor["disturbed"] else ""
        ratio = r["ratio_to_floor"]
        verdict = "met" if ratio >= AIM_FLOOR_RATIO else "BELOW"
        rows += [
            (
                "floor: aiosmtplib, pre-rendered",
                f"{floor['sent']:,} in {floor['seconds']:.1f} s = {floor['per_second']:,.1f} msg/s "
                f"({floor['processes']} processes × {floor['connections_per_process']} "
                f"connections; received {floor['received']:,}); CPU "
                f"{floor['cpu_us_per_email']:.0f} µs per email; other processes "
                f"{floor['cpu']['others_cores']:.2f} cores{note}",
            ),
            ("ours/floor", f"{ratio:.2f} (aim ≥ {AIM_FLOOR_RATIO:g}: {verdict})"),
        ]
    _rows(rows, out)


# -- output -------------------------------------------------------------------------------------


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per role between two :meth:`Service.cpu` readings, and "other processes"."""
    used = {name: after[name] - before.get(name, 0.0) for name in after}
    busy = used.pop("machine busy")
    used["other processes"] = max(0.0, busy - sum(used.values()))
    return {name: round(seconds, 2) for name, seconds in used.items()}


def cpu_text(r: dict[str, Any]) -> str:
    """CPU seconds per role, and as cores busy on average over approve → completed."""
    elapsed = r["approve_to_completed_s"]
    used = r["cpu_seconds_during_campaign"]
    parts = [
        f"{name} {seconds:.1f} s ({seconds / elapsed:.2f} cores)" for name, seconds in used.items()
    ]
    text = ", ".join(parts) + f"; the machine has {os.cpu_count()} CPUs"
    if used.get("other processes", 0.0) / elapsed > OTHER_CPU_WARNING:
        text += " ← other processes were busy: figures are disturbed"
    return text


def calls_used(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    used = {name: after[name] - before.get(name, 0) for name in after}
    return dict(sorted(((k, v) for k, v in used.items() if v > 0), key=lambda kv: -kv[1]))


def redis_text(r: dict[str, Any]) -> str:
    """The busiest Redis commands, also per message (eval is the shared rate limiter)."""
    messages = max(1, r["recipients"])
    top = list(r["redis_calls_during_campaign"].items())[:4]
    return ", ".join(f"{name} {calls:,} ({calls / messages:.1f}/message)" for name, calls in top)


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _rows(rows: list[tuple[str, str]], out: TextIO) -> None:
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}", file=out)


def options_summary(options: Options) -> dict[str, Any]:
    return {
        "workers": options.workers,
        "threads": options.threads,
        "batch_size": options.batch_size,
        "smtp_pool_size": options.smtp_pool_size,
        "extra_env": options.extra_env,
        "queue": "urgent",
        "database": "sqlite",
    }


# -- command line -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.channels",
        description="Channel throughput: Telegram against its rate limit, and email over SMTP.",
    )
    parser.add_argument(
        "--only", choices=["telegram", "email"], help="run one scenario (default: both)"
    )
    parser.add_argument(
        "--duration", type=float, default=None, help="Telegram: seconds of sending (default 60)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 10 s of Telegram, 1,000 emails"
    )
    parser.add_argument(
        "--rate", type=float, default=30.0, help="the Telegram emulator's limit (/s, default 30)"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        help="Telegram: seconds left out at the start of the steady window (default 2)",
    )
    parser.add_argument(
        "--emails", type=int, default=None, help="email recipients (default 20,000)"
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per worker (default: the service's for a process serving one queue)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="deliveries per job (default: the service's)"
    )
    parser.add_argument(
        "--smtp-pool-size",
        type=int,
        default=4,
        help="SMTP connections per worker process (default 4)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra DISPATCHER_* setting for the service (repeatable; prefix optional)",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="give up on a campaign after this many s"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy record each worker process during the campaign (raw folded stacks "
        "copied to bench/results/)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directories (logs, SQLite)"
    )
    parser.add_argument(
        "--no-floor",
        action="store_true",
        help="email: skip the floor (pre-rendered messages sent with aiosmtplib)",
    )
    return parser.parse_args(argv)


def options_for(args: argparse.Namespace) -> Options:
    duration = args.duration if args.duration is not None else (10.0 if args.quick else 60.0)
    emails = args.emails if args.emails is not None else (1_000 if args.quick else 20_000)
    if duration <= 0 or args.rate <= 0 or emails < 1:
        raise BenchError("--duration, --rate and --emails must be above zero")
    from dispatcher.core.config import default_worker_threads

    # Its workers serve the urgent queue alone.
    threads = args.threads if args.threads is not None else default_worker_threads(1)
    if args.workers < 1 or threads < 1:
        raise BenchError("--workers and --threads must be at least 1")
    return Options(
        scenarios=(args.only,) if args.only else ("telegram", "email"),
        duration=duration,
        rate=args.rate,
        warmup=args.warmup,
        emails=emails,
        workers=args.workers,
        threads=threads,
        batch_size=args.batch_size,
        smtp_pool_size=args.smtp_pool_size,
        extra_env=parse_env(args.env),
        keep=args.keep,
        timeout=args.timeout,
        profile=args.profile,
        floor=not args.no_floor,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        options = options_for(args)
        for scenario in options.scenarios:
            if scenario == "telegram":
                result = run_telegram(options)
                print_telegram(result)
                path = write_json(f"channels-telegram-{options.duration:g}s.json", result)
            else:
                result = run_email(options)
                print_email(result)
                path = write_json(f"channels-email-{options.emails}.json", result)
            for profile in result["profiles"]:
                print(f"  py-spy profile: {profile}")
            print(f"  written to {relative(path)}", flush=True)
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
