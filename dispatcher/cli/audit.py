"""The tamper-evident audit log: verify, seal."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dispatcher.cli.common import app, error, load_settings

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

    settings = load_settings()
    witness = str(witness_file) if witness_file is not None else settings.audit_witness or None
    if witness is not None and witness_file is not None and not witness_file.is_file():
        error(f"the witness file {witness} does not exist")
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
        error(problem.message)
    if witness is None:
        error(
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

    settings = load_settings()
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
