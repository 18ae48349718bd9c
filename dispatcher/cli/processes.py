"""Running the service: serve, worker, scheduler, and dev (all of them in one process)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Annotated

import typer

from dispatcher.cli.common import app, console, load_settings, share_metrics, warn_about_email
from dispatcher.core.config import ENV_PREFIX, Settings, get_settings


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="HTTP worker processes.")] = 1,
) -> None:
    """Run the HTTP API."""
    import uvicorn

    from dispatcher.observability.logging import configure_logging

    share_metrics(load_settings())
    configure_logging()
    uvicorn.run(
        "dispatcher.web.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
    )


@app.command()
def worker(
    queues: Annotated[
        str, typer.Option(help="Comma-separated queues: urgent, bulk, or both.")
    ] = "",
    processes: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    threads: Annotated[int | None, typer.Option(help="Threads per process.")] = None,
) -> None:
    """Run delivery workers (dramatiq) on the given queues."""
    settings = load_settings()
    names = [q.strip() for q in queues.split(",") if q.strip()] or [
        settings.queue_urgent,
        settings.queue_bulk,
    ]
    known = {settings.queue_urgent, settings.queue_bulk}
    unknown = [q for q in names if q not in known]
    if unknown:
        console.print(
            f"[red]unknown queue {unknown[0]!r}; queues are {', '.join(sorted(known))}[/red]"
        )
        raise typer.Exit(2)
    warn_about_email(settings)
    # A batch for every thread and two waiting: a thread that finishes finds its next batch at
    # once (a process holding one batch at a time idles while it waits on the database), yet
    # no process sits on many batches that others could start.
    threads = threads or settings.threads_for(len(names))
    os.environ.setdefault("dramatiq_queue_prefetch", str(threads + 2))
    # dramatiq's consumer sleeps between polls, backing off up to this many ms (its default is
    # 1000) even while its threads are busy: a second is long for urgent work, and for threads
    # waiting for their next batch.
    os.environ.setdefault("dramatiq_worker_timeout", "100")
    # On SQLite, a page cache large enough for the deliveries table's busy index pages: 6%
    # more deliveries per second at a million recipients (docs/performance.md). The API keeps
    # SQLite's default, so its memory does not grow with the table.
    os.environ.setdefault("DISPATCHER_SQLITE_CACHE_MIB", "32")
    share_metrics(settings)
    argv = [
        sys.executable,
        "-m",
        "workers.launch",
        "workers.main",
        "--skip-logging",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--queues",
        *names,
    ]
    os.execv(sys.executable, argv)  # noqa: S606 - replaces this process with dramatiq


def _stop_on_signals(stop: threading.Event) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


@app.command()
def scheduler() -> None:
    """Launch due campaigns and run the sweeper (one leader; others wait as standbys)."""
    settings = load_settings()
    share_metrics(settings)

    from dispatcher.core.db import get_database
    from dispatcher.engine import backends
    from dispatcher.observability.logging import configure_logging
    from workers.scheduler import run_scheduler

    configure_logging()
    queue = backends.configure(settings)
    stop = threading.Event()
    _stop_on_signals(stop)
    run_scheduler(db=get_database(), settings=settings, queue=queue, stop=stop)


@app.command()
def bounces(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (SMTP).")] = 2525,
) -> None:
    """Receive bounces (delivery status notifications) for DISPATCHER_SMTP_BOUNCE_ADDRESS."""
    settings = load_settings()
    from channels.email import SmtpSettings

    bounce_address = SmtpSettings.load(settings).bounce_address
    if bounce_address is None:
        console.print(
            "[red]DISPATCHER_SMTP_BOUNCE_ADDRESS is not set: messages carry no bounce address, "
            "so there is nothing to receive.[/red]"
        )
        raise typer.Exit(2)
    share_metrics(settings)

    from dispatcher.core.db import get_database
    from dispatcher.observability.logging import configure_logging
    from workers.bounces import run_bounces

    configure_logging()
    stop = threading.Event()
    _stop_on_signals(stop)
    console.print(f"bounces for {bounce_address} on {host}:{port} (SMTP)")
    run_bounces(get_database(), bounce_address, host=host, port=port, stop=stop)


def _first_admin_key() -> None:
    """On a database without any key, make an admin key and show it: the way in."""
    from sqlalchemy import select

    from dispatcher import audit
    from dispatcher.auth.service import create_key
    from dispatcher.core.db import get_database
    from dispatcher.tables.auth import ApiKey

    with get_database().transaction() as session:
        if session.scalar(select(ApiKey.id).limit(1)) is not None:
            return
        row, key = create_key(session, role="admin", name="first admin (dispatcher dev)")
        audit.record(
            session,
            actor="dispatcher dev",
            action="key.create",
            subject=f"key:{row.id}",
            data={"name": row.name, "role": row.role, "expires_at": None},
        )
    console.print(
        "[bold]No API key existed: an admin key was made. It is shown this once:[/bold]\n"
        f"  {key}\n"
        "Use it as 'Authorization: Bearer <key>' or to log in to the dashboard; make more "
        "with 'dispatcher keys create --role ...'."
    )


def local_url(host: str, port: int) -> str:
    """Where a browser on this machine reaches a server listening on ``host:port``: an
    all-interfaces address is reached through the loopback."""
    if host in {"", "0.0.0.0", "::", "[::]"}:  # noqa: S104 - only read, never bound here
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def dev_public_url(settings: Settings, host: str, port: int) -> str | None:
    """The public URL ``dispatcher dev`` serves under, unless ``DISPATCHER_PUBLIC_URL`` was
    set: the links it sends (unsubscribe) must reach the port it listens on."""
    if "public_url" in settings.model_fields_set:
        return None
    return local_url(host, port)


@app.command()
def dev(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            help="Port to listen on. Unsubscribe links point here unless DISPATCHER_PUBLIC_URL "
            "is set."
        ),
    ] = 8000,
) -> None:
    """The whole service in one process: API, workers and scheduler, on the embedded defaults."""
    settings = load_settings()
    public_url = dev_public_url(settings, host, port)
    if public_url is not None:
        # Every part of this process (the in-process workers too) reads the settings afresh.
        os.environ[f"{ENV_PREFIX}PUBLIC_URL"] = public_url
        get_settings.cache_clear()
        settings = load_settings()
    share_metrics(settings)

    import dramatiq
    import uvicorn

    from dispatcher.core import migrate as migrations
    from dispatcher.core.db import get_database
    from dispatcher.engine import backends
    from dispatcher.observability.logging import configure_logging
    from dispatcher.web.app import create_app
    from workers import actors
    from workers.scheduler import run_scheduler

    configure_logging()
    migrations.upgrade(settings.database_url)
    queue = backends.configure(settings, allow_stub=True)
    if queue.in_process:
        console.print(
            f"[yellow]Redis is not reachable at {settings.masked()['redis_url']}: using dramatiq's "
            "in-process broker. Queued work lives in this process only.[/yellow]"
        )
    else:
        console.print(f"broker: Redis at {settings.masked()['redis_url']}")
    console.print(f"database: {settings.masked()['database_url']}")
    console.print(f"links in messages: {settings.public_url}")
    warn_about_email(settings)
    _first_admin_key()
    actors.declare(queue.broker, settings)
    worker = dramatiq.Worker(
        queue.broker,
        queues={settings.queue_urgent, settings.queue_bulk},
        worker_threads=settings.threads_for(2),
        worker_timeout=100,
    )
    worker.start()
    stop = threading.Event()
    scheduler_thread = threading.Thread(
        target=run_scheduler,
        kwargs={"db": get_database(), "settings": settings, "queue": queue, "stop": stop},
        name="scheduler",
        daemon=True,
    )
    scheduler_thread.start()
    base = local_url(host, port)
    console.print(f"API on {base}  (OpenAPI: {base}/docs, dashboard: {base}/ui)")
    try:
        uvicorn.run(create_app(settings), host=host, port=port, log_config=None)
    finally:
        stop.set()
        worker.stop()
        scheduler_thread.join(timeout=10)
