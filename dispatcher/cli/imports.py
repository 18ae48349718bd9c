"""Importing recipients from CSV or JSON Lines."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer

from dispatcher.cli.common import app, console, error, load_settings

_IMPORT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


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

    settings = load_settings()
    chosen = format or _IMPORT_FORMATS.get(file.suffix.lower())
    if chosen not in {"csv", "jsonl"}:
        error(
            f"{'unknown format ' + repr(format) if format else 'cannot tell the format'}"
            f" of {file}: say --format csv or --format jsonl"
        )
        raise typer.Exit(2)
    try:
        source = file.open("rb")
        size = os.fstat(source.fileno()).st_size
    except OSError as exc:
        error(f"cannot read {file}: {exc.strerror or exc}")
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
                error(f"cannot write the report {report}: {exc.strerror or exc}")
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
            error(f"{file}: {exc}")
            raise typer.Exit(2) from None
        except OSError as exc:
            error(f"cannot read {file}: {exc}")
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
