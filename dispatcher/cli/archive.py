"""Archiving past months (archive), and searching deliveries, archived ones too (search)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from dispatcher.cli.common import app, error, load_settings


@app.command("archive")
def archive(
    before: Annotated[
        str,
        typer.Option(
            "--before",
            help="YYYY-MM: archive every month before this one (at most the current month).",
        ),
    ],
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Where the files go. Default: DISPATCHER_ARCHIVE_DIR."),
    ] = None,
) -> None:
    """Move past months' deliveries and attempts into Parquet files, verified, then out of the
    database (PostgreSQL: their partitions are dropped), with an audit entry per month.

    A month with open work (pending, claimed or retrying deliveries, open batches) is refused;
    a month already archived is left alone. Exit status 0 when done, 2 on a refusal.
    """
    from dispatcher.core.db import get_database
    from dispatcher.deliveries import archive as archiving
    from dispatcher.kit.errors import Conflict, Invalid
    from dispatcher.tables import partitions

    settings = load_settings()
    try:
        period = partitions.parse_month(before)
    except ValueError as exc:
        error(f"--before: {exc}")
        raise typer.Exit(2) from None
    root = directory or Path(settings.archive_dir)
    try:
        results = archiving.archive_before(
            get_database(),
            period,
            root,
            actor="cli archive",
            report=lambda result: typer.echo(result.message),
        )
    except (Invalid, Conflict) as exc:
        error(str(exc))
        raise typer.Exit(2) from None
    if not results:
        typer.echo(f"nothing to archive before {partitions.month_text(period)}")


@app.command("search")
def search(
    recipient: Annotated[str, typer.Option("--recipient", help="The recipient's external_id.")],
    campaign: Annotated[int | None, typer.Option("--campaign", help="A campaign id.")] = None,
    archives: Annotated[
        bool,
        typer.Option(
            "--archives", help="Also search the archived months (DISPATCHER_ARCHIVE_DIR)."
        ),
    ] = False,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="The archive directory. Default: DISPATCHER_ARCHIVE_DIR."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 100,
) -> None:
    """Did this person get that message: their deliveries, newest last, one JSON object a line
    (addresses masked); archived ones say "archived": true."""
    from dispatcher.core.db import get_database
    from dispatcher.deliveries import archived, service
    from dispatcher.kit.errors import Invalid

    settings = load_settings()
    filters = service.Filters(recipient=recipient, campaign_id=campaign)
    db = get_database()
    try:
        with db.reading() as session:
            page = service.search(session=session, filters=filters, limit=limit)
            if archives:
                page = archived.include(
                    session,
                    page,
                    root=directory or Path(settings.archive_dir),
                    filters=filters,
                    cursor=None,
                    limit=limit,
                )
    except Invalid as exc:
        error(str(exc))
        raise typer.Exit(2) from None
    for item in page.items:
        typer.echo(json.dumps(item.model_dump(mode="json"), ensure_ascii=False))
    if page.next_cursor is not None:
        error(f"more than {limit}: narrow the search (--campaign) or raise --limit")
    if not page.items:
        error(f"no delivery to {recipient}" + ("" if archives else " (try --archives)"))
