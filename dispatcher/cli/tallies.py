"""The delivery tallies a campaign's counts are read from: check them, rebuild them."""

from __future__ import annotations

from typing import Annotated

import typer

from dispatcher.cli.common import app, error, load_settings


@app.command("tallies")
def tallies_command(
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            help="Count every run's deliveries again into fresh tallies (writes to the "
            "deliveries wait meanwhile).",
        ),
    ] = False,
) -> None:
    """Check that the delivery tallies (campaign counts, dashboard, reports) match the rows.

    Exit status 0 when they do, 1 when any differs (each difference is printed); with
    --rebuild, refill them first. PostgreSQL keeps them by triggers: they go wrong only when
    rows were written with triggers off, e.g. a restore with --disable-triggers. SQLite keeps
    none (its counts group the rows). The check reads every delivery once (a full scan:
    minutes on a database of hundreds of millions of rows).
    """
    from dispatcher.core.db import get_database
    from dispatcher.engine import tallies

    load_settings()
    db = get_database()
    if db.is_sqlite:
        typer.echo("SQLite keeps no tallies: its counts group the deliveries themselves")
        return
    if rebuild:
        with db.transaction() as session:
            rows = tallies.rebuild(session)
        typer.echo(f"tallies rebuilt: {rows} rows")
    with db.reading() as session:
        wrong = tallies.mismatches(session)
    for run_id, channel, status, tallied, rows in wrong:
        error(f"run {run_id}, {channel}, {status}: tallied {tallied}, rows {rows}")
    if wrong:
        error(
            f"{len(wrong)} tallies differ from the deliveries: run `dispatcher tallies --rebuild`"
        )
        raise typer.Exit(1)
    typer.echo("tallies match the deliveries")
