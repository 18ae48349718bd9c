"""The same N emails through the service and through a plain loop over Apprise, in one run.

    python -m bench.email_vs_apprise                      # 2,000 emails each way
    python -m bench.email_vs_apprise --emails 5000 --workers 2

One SMTP server takes both: an aiosmtpd sink in another process (``bench.common``) that
accepts and counts every message.

(a) *The service.* A private ``redis-server``, a SQLite file, the API and ``--workers`` worker
    processes (``dispatcher worker --queues bulk --processes P``), N recipients through
    ``POST /v1/recipients``, and a greeting campaign over the email channel: created and
    submitted with one API key, approved with another. Timed from the approve call until the
    campaign reads ``completed`` (polled every 0.1 s).
(b) *Apprise.* The way a script would send them with Apprise (``pip install apprise``): for
    each recipient, an ``Apprise`` object with one ``mailto://`` URL to the same server, no TLS
    (``mode=insecure``), and ``notify`` with the same subject and body. Timed over the loop. The
    service is stopped first, so the loop has the machine to itself.

    Configured fairly: Apprise's SMTP connection setup calls ``ssl.create_default_context()``
    for every connection, even without TLS, and loading the CA bundle that way was about 80% of
    its time per message. Apprise has no setting to pass a context, so this benchmark (and only
    this benchmark) patches the module's ``ssl`` so that every connection gets one shared
    context, made once (:func:`share_ssl_context`; ``--apprise-ssl-per-connection`` measures
    Apprise as shipped).

Both counts are checked on the SMTP server's side. It prints both rates and their ratio (the
aim: at least 20×) and writes ``bench/results/email-vs-apprise-<N>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bench.common import (
    BenchError,
    Service,
    cpu_share,
    cpu_snapshot,
    dispatcher_command,
    email_address,
    email_recipient,
    machine,
    parse_env,
    read_json,
    relative,
    run_main,
    start_smtp_sink,
    vietnamese_name,
    wait_until,
    write_json,
)

AIM_RATIO = 20.0
SENDER_NAME = "Bảo hiểm xã hội Việt Nam"
SENDER = "thongbao@baohiemxahoi.gov.vn"
TEMPLATE_KEY = "bench_apprise_greeting"
SUBJECT = "Chúc mừng năm mới — {name}"
BODY = (
    "Kính gửi Ông/Bà {name},\n\n"
    "Bảo hiểm xã hội Việt Nam kính chúc Ông/Bà và gia đình một năm mới an khang, thịnh vượng.\n"
    "Mã số BHXH: {external_id}.\nTổng đài 1900 9068."
)
TEMPLATE: dict[str, Any] = {
    "key": TEMPLATE_KEY,
    "kind": "greeting",
    "description": "Email against Apprise (bench.email_vs_apprise)",
    "variants": [
        {
            "channel": "email",
            "locale": "vi",
            "subject": SUBJECT.format(name="{{ recipient.full_name }}"),
            "body": BODY.format(
                name="{{ recipient.full_name }}", external_id="{{ recipient.external_id }}"
            ),
        }
    ],
}


def external_id(i: int) -> str:
    return f"AP{i:08d}"


def smtp_count(stats: Path) -> int:
    return int((read_json(stats) or {}).get("messages", 0))


def run_service(args: argparse.Namespace, smtp_port: int, stats: Path) -> dict[str, Any]:
    """(a): the campaign, approve → completed; every process stopped before it returns."""
    n = args.emails
    with contextlib.ExitStack() as stack:
        service = Service("apprise", stack, keep=args.keep)
        service.start_redis()
        service.configure(
            f"sqlite:///{service.workdir / 'bench.db'}",
            {
                "DISPATCHER_SMTP_HOST": "127.0.0.1",
                "DISPATCHER_SMTP_PORT": str(smtp_port),
                "DISPATCHER_SMTP_TLS": "none",
                "DISPATCHER_SMTP_SENDER": f"{SENDER_NAME} <{SENDER}>",
                "DISPATCHER_SMTP_POOL_SIZE": str(args.smtp_pool_size),
                **parse_env(args.env),
            },
        )
        service.migrate()
        service.start_api()
        worker = [*dispatcher_command(), "worker", "--queues", "bulk"]
        service.start("workers", [*worker, "--processes", str(args.workers)])
        service.wait_for_workers(args.workers)
        service.add_recipients(n, lambda i: email_recipient("AP", i))
        service.publish(TEMPLATE)
        campaign_id = service.submit(
            {
                "name": "Chúc mừng năm mới (email against Apprise)",
                "kind": "greeting",
                "template": TEMPLATE_KEY,
                "audience": {"all": True},
                "channels": ["email"],
            }
        )
        before = smtp_count(stats)
        cpu_before = cpu_snapshot(service.processes)
        t0 = time.perf_counter()
        service.approve(campaign_id)
        deadline = time.monotonic() + args.timeout
        while (campaign := service.campaign(campaign_id)).get("status") != "completed":
            service.check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"the campaign did not complete: {campaign.get('counts')}")
            time.sleep(0.1)
        elapsed = time.perf_counter() - t0
        cpu = cpu_share(cpu_before, cpu_snapshot(service.processes))
        sent = int(campaign["counts"]["by_status"].get("sent", 0))
        wait_until(lambda: smtp_count(stats) - before >= sent, timeout=10, what="the SMTP count")
        received = smtp_count(stats) - before
    if sent != n or received != n:
        raise BenchError(f"the service sent {sent} and the server received {received} of {n}")
    return {
        "sent": sent,
        "received": received,
        "seconds": round(elapsed, 3),
        "per_second": round(n / elapsed, 1),
        "cpu": cpu,
    }


class _SharedContextSSL:
    """The ``ssl`` module as a module of Apprise sees it, except that
    ``create_default_context`` answers one context per set of arguments, made once."""

    def __init__(self) -> None:
        self._contexts: dict[str, ssl.SSLContext] = {}

    def create_default_context(self, *args: Any, **kwargs: Any) -> ssl.SSLContext:
        key = repr((args, sorted(kwargs.items())))
        found = self._contexts.get(key)
        if found is None:
            found = self._contexts[key] = ssl.create_default_context(*args, **kwargs)
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(ssl, name)


def share_ssl_context() -> list[str]:
    """Make every SMTP connection Apprise opens share one SSL context (it makes, and loads the
    CA bundle into, a new one per connection). Patches the ``ssl`` name of Apprise's email
    modules in this process only; returns the modules patched."""
    import importlib
    import pkgutil

    import apprise.plugins

    shared = _SharedContextSSL()
    patched = []
    for info in pkgutil.walk_packages(apprise.plugins.__path__, "apprise.plugins."):
        if "email" not in info.name.lower():
            continue
        with contextlib.suppress(ImportError):
            module = importlib.import_module(info.name)
            if getattr(module, "ssl", None) is ssl:
                module.ssl = shared  # type: ignore[attr-defined]
                patched.append(info.name)
    return patched


def run_apprise(args: argparse.Namespace, smtp_port: int, stats: Path) -> dict[str, Any]:
    """(b): a plain loop, one Apprise object and one notify() per recipient."""
    try:
        import apprise
    except ImportError:
        raise BenchError(
            "Apprise is not installed: pip install -e '.[bench]' (or pip install apprise)"
        ) from None
    patched = [] if args.apprise_ssl_per_connection else share_ssl_context()
    if not args.apprise_ssl_per_connection and not patched:
        raise BenchError(
            "found no Apprise email module using ssl.create_default_context to patch: "
            "run with --apprise-ssl-per-connection, or update share_ssl_context"
        )
    n = args.emails
    sender = quote(SENDER, safe="@")
    base = f"mailto://127.0.0.1:{smtp_port}?mode=insecure&from={sender}"
    base += f"&name={quote(SENDER_NAME)}"
    before = smtp_count(stats)
    failed = 0
    cpu_before = cpu_snapshot([])
    t0 = time.perf_counter()
    for i in range(n):
        notifier = apprise.Apprise()
        notifier.add(f"{base}&to={quote(email_address(i), safe='@')}")
        name = vietnamese_name(i)
        ok = notifier.notify(
            title=SUBJECT.format(name=name),
            body=BODY.format(name=name, external_id=external_id(i)),
        )
        failed += 0 if ok else 1
    elapsed = time.perf_counter() - t0
    cpu = cpu_share(cpu_before, cpu_snapshot([]))
    wait_until(lambda: smtp_count(stats) - before >= n - failed, timeout=10, what="the SMTP count")
    received = smtp_count(stats) - before
    if failed or received != n:
        raise BenchError(f"Apprise: {failed} notify() calls failed; the server received {received}")
    return {
        "sent": n - failed,
        "received": received,
        "seconds": round(elapsed, 3),
        "per_second": round(n / elapsed, 1),
        "apprise": getattr(apprise, "__version__", "?"),
        "ssl_context": "one per connection (as shipped)" if not patched else "shared (patched)",
        "patched_modules": patched,
        "cpu": cpu,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.email_vs_apprise",
        description="The same N emails through the service and through a loop over Apprise.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--emails", type=int, default=2_000, help="N, each way")
    parser.add_argument("--workers", type=int, default=2, help="the service's worker processes")
    parser.add_argument(
        "--smtp-pool-size", type=int, default=4, help="SMTP connections per worker process"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra DISPATCHER_*"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="for the campaign, s")
    parser.add_argument("--keep", action="store_true", help="keep the logs and the SQLite file")
    parser.add_argument(
        "--apprise-ssl-per-connection",
        action="store_true",
        help="measure Apprise as shipped: a new SSL context (CA bundle loaded) per connection",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.emails < 1 or args.workers < 1:
        print("--emails and --workers must be at least 1", file=sys.stderr)
        return 2
    n = args.emails
    print(
        f"\n== {n:,} emails through the service ({args.workers} worker processes) and through "
        "Apprise, to one aiosmtpd server in another process ==",
        flush=True,
    )

    def run() -> int:
        with contextlib.ExitStack() as stack:
            workdir = Path(tempfile.mkdtemp(prefix="dispatcher-bench-apprise-smtp-"))
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
            smtp, smtp_port, stats = start_smtp_sink(workdir)
            stack.callback(smtp.stop)
            service = run_service(args, smtp_port, stats)
            print(
                f"  (a) the service: {n:,} in {service['seconds']:.2f} s = "
                f"{service['per_second']:,.1f} emails/s",
                flush=True,
            )
            looped = run_apprise(args, smtp_port, stats)
            print(
                f"  (b) Apprise loop: {n:,} in {looped['seconds']:.2f} s = "
                f"{looped['per_second']:,.1f} emails/s (SSL context: {looped['ssl_context']}"
                + (
                    f" in {', '.join(looped['patched_modules'])}: every connection reuses one"
                    if looped["patched_modules"]
                    else ""
                )
                + ")",
                flush=True,
            )
        ratio = service["per_second"] / looped["per_second"]
        verdict = "meets" if ratio >= AIM_RATIO else "BELOW"
        print(
            f"\n  ratio service / Apprise: {ratio:.1f}× ({verdict} the {AIM_RATIO:g}× aim)\n"
            f"  CPU (cores busy): service run {service['cpu']}, Apprise loop {looped['cpu']}"
        )
        result = {
            "benchmark": "email_vs_apprise",
            "emails": n,
            "workers": args.workers,
            "smtp_pool_size": args.smtp_pool_size,
            "service": service,
            "apprise": looped,
            "ratio": round(ratio, 2),
            "aim_ratio": AIM_RATIO,
            "machine": machine(),
        }
        suffix = "-ssl-per-connection" if args.apprise_ssl_per_connection else ""
        path = write_json(f"email-vs-apprise-{n}{suffix}.json", result)
        print(f"  written to {relative(path)}")
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
