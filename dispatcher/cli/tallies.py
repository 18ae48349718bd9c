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
    campaign: Annotated[
        int | None,
        typer.Option(
            "--campaign",
            min=1,
            help="Only this campaign's runs: its deliveries read through their campaign "
            "index rather than the whole table.",
        ),
    ] = None,
) -> None:
    """Check that the delivery tallies (campaign counts, dashboard, reports) match the rows.

    Exit status 0 when they do, 1 when any differs (each difference is printed); with
    --rebuild, refill them first. PostgreSQL keeps them by triggers: they go wrong only when
    rows were written with triggers off, e.g. a restore with --disable-triggers. SQLite keeps
    none (its counts group the rows). The check reads every delivery once (a full scan:
    minutes on a database of hundreds of millions of rows); --campaign narrows it to one.
    """
    from dispatcher.core.db import get_database
    from dispatcher.engine import tallies

    load_settings()
    db = get_database()
    if db.is_sqlite:
        typer.echo("SQLite keeps no tallies: its counts group the deliveries themselves")
        return
    scope = "" if campaign is None else f" --campaign {campaign}"
    if campaign is not None:
        from dispatcher.tables.campaigns import Campaign

        with db.reading() as session:
            if session.get(Campaign, campaign) is None:
                error(f"campaign {campaign} does not exist")
                raise typer.Exit(2)
    if rebuild:
        with db.transaction() as session:
            rows = tallies.rebuild(session, campaign_id=campaign)
        typer.echo(f"tallies rebuilt: {rows} rows")
    with db.reading() as session:
        wrong = tallies.mismatches(session, campaign_id=campaign)
    for run_id, channel, status, tallied, rows in wrong:
        error(f"run {run_id}, {channel}, {status}: tallied {tallied}, rows {rows}")
    if wrong:
        error(
            f"{len(wrong)} tallies differ from the deliveries: "
            f"run `dispatcher tallies --rebuild{scope}`"
        )
        raise typer.Exit(1)
    typer.echo("tallies match the deliveries")
