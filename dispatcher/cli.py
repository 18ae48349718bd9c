"""The ``dispatcher`` command: serve, worker, scheduler, migrate, dev, config, import, keys,
audit."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from dispatcher.core.config import ENV_PREFIX, ConfigError, Settings, get_settings

app = typer.Typer(
    help="Multi-channel message dispatch for Vietnam Social Security (BHXH Việt Nam).",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)


def _settings() -> Settings:
    """The settings, once they and every installed channel's own are known to be good."""
    from channels import registry

    try:
        settings = get_settings()
        registry.check_settings(settings)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    return settings


def _share_metrics(settings: Settings) -> None:
    """Count this process's metrics in the shared directory the API adds up at each scrape.

    Must run before anything imports prometheus_client (``dispatcher.observability.metrics``
    reads it on import), and is inherited by the processes this one starts.
    """
    path = os.path.abspath(settings.metrics_dir)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        console.print(f"[red]DISPATCHER_METRICS_DIR: cannot create {path}: {exc.strerror}[/red]")
        raise typer.Exit(2) from None
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


@app.callback()
def _main() -> None:
    """Every command reads DISPATCHER_* settings; see `dispatcher config`."""


@app.command()
def config() -> None:
    """Print the effective settings, every installed channel's too, secrets masked."""
    from channels import registry

    _settings()
    for name, value in registry.load_settings().masked().items():
        typer.echo(f"DISPATCHER_{name.upper()}={'' if value is None else value}")


@app.command()
def migrate() -> None:
    """Bring the database schema up to date and load the built-in templates."""
    from dispatcher.content import service as content
    from dispatcher.core import migrate as migrations
    from dispatcher.core.db import get_database

    settings = _settings()
    migrations.upgrade(settings.database_url)
    with get_database().transaction() as session:
        loaded = content.load_builtin_templates(session=session)
    console.print(f"schema at {migrations.current_revision(settings.database_url)}")
    if loaded:
        console.print(f"built-in templates loaded: {', '.join(loaded)}")


@app.command()
def check(
    redis_required: Annotated[
        bool, typer.Option("--redis/--no-redis", help="Also require Redis (workers do).")
    ] = True,
) -> None:
    """Exit 0 when the database (migrated) and Redis answer, else 1: a container health check."""
    from sqlalchemy import text

    from dispatcher.core import migrate as migrations
    from dispatcher.core.db import get_database
    from dispatcher.engine import jobs

    settings = _settings()
    problems = []
    try:
        with get_database().engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        if migrations.current_revision(settings.database_url) is None:
            problems.append("the database has no schema: run dispatcher migrate")
    except Exception as exc:
        problems.append(f"database unreachable: {type(exc).__name__}")
    if redis_required and not jobs.redis_reachable(settings):
        problems.append(f"Redis unreachable at {settings.masked()['redis_url']}")
    for problem in problems:
        _error(problem)
    if not problems:
        typer.echo("ok")
    raise typer.Exit(1 if problems else 0)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="HTTP worker processes.")] = 1,
) -> None:
    """Run the HTTP API."""
    import uvicorn

    from dispatcher.observability.logging import configure_logging

    _share_metrics(_settings())
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
    settings = _settings()
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
    # A batch for every thread and two waiting: a thread that finishes finds its next batch at
    # once (a process holding one batch at a time idles while it waits on the database), yet
    # no process sits on many batches that others could start.
    os.environ.setdefault("dramatiq_queue_prefetch", str((threads or settings.worker_threads) + 2))
    # dramatiq's consumer sleeps between polls, backing off up to this many ms (its default is
    # 1000) even while its threads are busy: a second is long for urgent work, and for threads
    # waiting for their next batch.
    os.environ.setdefault("dramatiq_worker_timeout", "100")
    # On SQLite, a page cache large enough for the deliveries table's busy index pages: 6%
    # more deliveries per second at a million recipients (docs/performance.md). The API keeps
    # SQLite's default, so its memory does not grow with the table.
    os.environ.setdefault("DISPATCHER_SQLITE_CACHE_MIB", "32")
    _share_metrics(settings)
    argv = [
        sys.executable,
        "-m",
        "workers.launch",
        "workers.main",
        "--skip-logging",
        "--processes",
        str(processes),
        "--threads",
        str(threads or settings.worker_threads),
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
    settings = _settings()
    _share_metrics(settings)

    from dispatcher.core.db import get_database
    from dispatcher.engine import jobs
    from dispatcher.observability.logging import configure_logging
    from workers.scheduler import run_scheduler

    configure_logging()
    queue = jobs.configure(settings)
    stop = threading.Event()
    _stop_on_signals(stop)
    run_scheduler(db=get_database(), settings=settings, queue=queue, stop=stop)


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
    settings = _settings()
    public_url = dev_public_url(settings, host, port)
    if public_url is not None:
        # Every part of this process (the in-process workers too) reads the settings afresh.
        os.environ[f"{ENV_PREFIX}PUBLIC_URL"] = public_url
        get_settings.cache_clear()
        settings = _settings()
    _share_metrics(settings)

    import dramatiq
    import uvicorn

    from dispatcher.core import migrate as migrations
    from dispatcher.core.db import get_database
    from dispatcher.engine import jobs
    from dispatcher.observability.logging import configure_logging
    from dispatcher.web.app import create_app
    from workers import actors
    from workers.scheduler import run_scheduler

    configure_logging()
    migrations.upgrade(settings.database_url)
    queue = jobs.configure(settings, allow_stub=True)
    if isinstance(queue.markers, jobs.MemoryMarkers):
        console.print(
            f"[yellow]Redis is not reachable at {settings.masked()['redis_url']}: using dramatiq's "
            "in-process broker. Queued work lives in this process only.[/yellow]"
        )
    else:
        console.print(f"broker: Redis at {settings.masked()['redis_url']}")
    console.print(f"database: {settings.masked()['database_url']}")
    console.print(f"links in messages: {settings.public_url}")
    _first_admin_key()
    actors.declare(queue.broker, settings)
    worker = dramatiq.Worker(
        queue.broker,
        queues={settings.queue_urgent, settings.queue_bulk},
        worker_threads=settings.worker_threads,
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


keys_app = typer.Typer(help="API keys: create (shown once), list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    role: Annotated[
        str, typer.Option(help="editor, approver, operator, sender (transactional) or admin.")
    ],
    person: Annotated[
        str | None,
        typer.Option(help="The person the key is for (made if nobody has that name yet)."),
    ] = None,
    system: Annotated[
        str | None,
        typer.Option(help="The system the key is for (sender or operator keys only)."),
    ] = None,
    owner: Annotated[
        int | None,
        typer.Option(help="The id of an existing person or system (keys list shows it)."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="What the key is for. Alone, without --person/--system/--owner: a key of a "
            "new person (a system for a sender key) of that name."
        ),
    ] = None,
    expires_in_days: Annotated[
        float | None, typer.Option(help="Days until the key stops working. Default: never.")
    ] = None,
) -> None:
    """Create an API key and print it on stdout (the only time it is shown).

    Keys belong to a person or a system. The two-person rule counts people: whoever wrote or
    submitted a campaign cannot approve it with any of their keys.
    """
    from datetime import timedelta

    from dispatcher import audit
    from dispatcher.auth.service import create_key, get_principal, principal_named
    from dispatcher.core.db import get_database
    from dispatcher.kit.clock import utcnow
    from dispatcher.kit.errors import ServiceError
    from dispatcher.tables.auth import Principal, PrincipalKind

    _settings()
    if sum(x is not None for x in (person, system, owner)) > 1:
        _error("give one of --person, --system and --owner")
        raise typer.Exit(2)
    if name is None and person is None and system is None and owner is None:
        _error("say whose key it is: --person NAME, --system NAME or --owner ID")
        raise typer.Exit(2)
    if expires_in_days is not None and expires_in_days <= 0:
        _error("--expires-in-days must be above zero")
        raise typer.Exit(2)
    expires = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
    new_owner = False
    try:
        with get_database().transaction() as session:
            holder: Principal | None = None
            if owner is not None:
                holder = get_principal(session, owner)
            elif person is not None or system is not None:
                kind = PrincipalKind.person if person is not None else PrincipalKind.system
                holder, new_owner = principal_named(session, kind=kind, name=person or system or "")
            key_name = name or (holder.name if holder is not None else "")
            row, key = create_key(
                session, role=role, name=key_name, owner=holder, expires_at=expires
            )
            new_owner = new_owner or holder is None
            audit.record(
                session,
                actor="command line",
                action="key.create",
                subject=f"key:{row.id}",
                data={
                    "name": row.name,
                    "role": row.role,
                    "owner": row.principal_id,
                    "expires_at": row.expires_at,
                },
            )
            whose = f"{row.principal.kind} {row.principal.id} ({row.principal.name})"
    except ServiceError as exc:
        _error(exc.message)
        raise typer.Exit(2) from None
    console.print(
        f"key {row.id} ({row.name}, {row.role}"
        f"{', expires ' + row.expires_at.isoformat() if row.expires_at else ''}) created for "
        f"{'new ' if new_owner else ''}{whose}; "
        "it is printed below once and cannot be shown again:"
    )
    typer.echo(key)


@keys_app.command("list")
def keys_list(
    all_keys: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
) -> None:
    """List keys and whose they are (never the keys themselves)."""
    from dispatcher.auth.service import list_keys
    from dispatcher.core.db import get_database

    _settings()
    with get_database().transaction() as session:
        rows = list_keys(session, include_revoked=all_keys)
        for row in rows:
            state = "revoked" if row.revoked_at else "active"
            whose = f"{row.principal.kind} {row.principal.id} ({row.principal.name})"
            typer.echo(
                f"{row.id}\t{row.role}\t{state}\t{row.name}\t{whose}\t"
                f"expires {row.expires_at.isoformat() if row.expires_at else 'never'}\t"
                f"last used {row.last_used_at.isoformat() if row.last_used_at else 'never'}"
            )


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="The key's id (keys list).")]) -> None:
    """Revoke a key at once."""
    from dispatcher import audit
    from dispatcher.auth.service import revoke
    from dispatcher.core.db import get_database
    from dispatcher.kit.errors import ServiceError

    _settings()
    try:
        with get_database().transaction() as session:
            row = revoke(session, key_id)
            audit.record(
                session, actor="command line", action="key.revoke", subject=f"key:{row.id}", data={}
            )
    except ServiceError as exc:
        _error(exc.message)
        raise typer.Exit(2) from None
    console.print(f"key {key_id} ({row.name}) revoked")


audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    all_problems: Annotated[
        bool, typer.Option("--all", help="Report every problem, not only the first.")
    ] = False,
    skip_attempts: Annotated[
        bool,
        typer.Option(
            "--skip-attempts", help="Check the chain and its seals only, not the rows it covers."
        ),
    ] = False,
    witness_file: Annotated[
        Path | None,
        typer.Option(
            "--witness",
            help="The seals' witness file (or a JSON log export of the seal lines). "
            "Default: DISPATCHER_AUDIT_WITNESS.",
        ),
    ] = None,
) -> None:
    """Walk the hash chain, its seals, the witness, and the deliveries and attempts it covers.

    Exit status 0 when intact, 1 when anything was altered, added, removed or reordered.
    """
    from dispatcher import audit
    from dispatcher.core import secrets
    from dispatcher.core.db import get_database

    settings = _settings()
    witness = str(witness_file) if witness_file is not None else settings.audit_witness or None
    if witness is not None and witness_file is not None and not witness_file.is_file():
        _error(f"the witness file {witness} does not exist")
        raise typer.Exit(2)
    db = get_database()
    with db.transaction() as session:
        key = secrets.audit_key(session, settings)
    # A read-only snapshot: on SQLite no write lock, on PostgreSQL one consistent view.
    session = db.session()
    try:
        options: dict[str, Any] = {"read_only": True}
        if not db.is_sqlite:
            options["isolation_level"] = "REPEATABLE READ"
        session.connection(execution_options=options)
        report = audit.verify(
            session,
            key,
            witness_path=witness,
            check_attempts=not skip_attempts,
            stop_at_first=not all_problems,
        )
    finally:
        session.rollback()
        session.close()
    for problem in report.problems:
        _error(problem.message)
    if witness is None:
        _error(
            "WARNING: no witness (DISPATCHER_AUDIT_WITNESS or --witness): a chain rewritten "
            "consistently, with its seals deleted, cannot be detected"
        )
    witnessed = "no witness" if report.witnessed is None else f"witnessed: {report.witnessed}"
    checked = "" if skip_attempts else f", deliveries: {report.deliveries}"
    typer.echo(
        f"entries: {report.entries} (attempt batches: {report.attempt_entries}), "
        f"seals: {report.seals}, {witnessed}{checked}: {'intact' if report.ok else 'TAMPERED'}"
    )
    raise typer.Exit(0 if report.ok else 1)


@audit_app.command("seal")
def audit_seal() -> None:
    """Seal the chain's head now (the scheduler also does it periodically)."""
    from dispatcher import audit
    from dispatcher.core import secrets
    from dispatcher.core.db import get_database

    settings = _settings()
    with get_database().transaction() as session:
        row = audit.seal(
            session,
            secrets.audit_key(session, settings),
            witness_path=settings.audit_witness or None,
        )
        if row is None:
            typer.echo("nothing new to seal")
        else:
            typer.echo(f"seal {row.id} at entry {row.seq}: {row.hash}")


_IMPORT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _error(message: str) -> None:
    # File names and rows may hold "[...]": print them as they are, not as rich markup.
    console.print(message, style="red", markup=False, highlight=False)


@app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(help="A CSV (with a header row) or JSON Lines file.")],
    format: Annotated[
        str | None,
        typer.Option(
            "--format", help="csv or jsonl. Default: from the extension (.csv, .jsonl, .ndjson)."
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Write every rejected row (line, external_id, reason) to this CSV file.",
        ),
    ] = None,
) -> None:
    """Create or update recipients from a file, streamed, checking every row.

    Exit status: 0 when every row was imported, 1 when some were rejected, 2 when the file
    cannot be read or is not a usable CSV/JSON Lines file.
    """
    import csv

    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from dispatcher.core.db import get_database
    from dispatcher.recipients.importer import ImportFileError, Rejection, import_recipients

    settings = _settings()
    chosen = format or _IMPORT_FORMATS.get(file.suffix.lower())
    if chosen not in {"csv", "jsonl"}:
        _error(
            f"{'unknown format ' + repr(format) if format else 'cannot tell the format'}"
            f" of {file}: say --format csv or --format jsonl"
        )
        raise typer.Exit(2)
    try:
        source = file.open("rb")
        size = os.fstat(source.fileno()).st_size
    except OSError as exc:
        _error(f"cannot read {file}: {exc.strerror or exc}")
        raise typer.Exit(2) from None

    shown: list[Rejection] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(source)
        writer = None
        if report is not None:
            try:
                # utf-8-sig: spreadsheet programs then read the Vietnamese text correctly.
                handle = stack.enter_context(report.open("w", encoding="utf-8-sig", newline=""))
            except OSError as exc:
                _error(f"cannot write the report {report}: {exc.strerror or exc}")
                raise typer.Exit(2) from None
            writer = csv.writer(handle)
            writer.writerow(["line", "external_id", "reason"])

        def on_reject(rejection: Rejection) -> None:
            # Every rejection goes to the report as it happens, so the report has them all
            # while memory holds only the few shown on the terminal.
            if writer is not None:
                writer.writerow([rejection.line, rejection.external_id or "", rejection.reason])
            if len(shown) < 20:
                shown.append(rejection)

        progress = stack.enter_context(
            Progress(
                TextColumn("[bold]importing[/bold]"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
        )
        task = progress.add_task("import", total=size or None)
        try:
            summary = import_recipients(
                source,
                format=chosen,
                db=get_database(),
                max_depth=settings.json_max_depth,
                progress=lambda done: progress.update(task, completed=done),
                on_reject=on_reject,
            )
        except ImportFileError as exc:
            _error(f"{file}: {exc}")
            raise typer.Exit(2) from None
        except OSError as exc:
            _error(f"cannot read {file}: {exc}")
            raise typer.Exit(2) from None

    for rejection in shown:
        console.print(
            f"line {rejection.line}"
            f"{' (' + rejection.external_id + ')' if rejection.external_id else ''}: "
            f"{rejection.reason}",
            style="yellow",
            markup=False,
        )
    if summary.rejected > len(shown):
        console.print(f"... and {summary.rejected - len(shown)} more rejected rows")
    typer.echo(
        f"rows read: {summary.rows}, created: {summary.created}, updated: {summary.updated}, "
        f"rejected: {summary.rejected}, superseded: {summary.superseded}, "
        f"in {summary.elapsed_seconds:.1f} s ({summary.rows_per_second:,.0f} rows/s)"
    )
    if report is not None:
        typer.echo(f"rejected rows written to {report}")
    raise typer.Exit(1 if summary.rejected else 0)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
