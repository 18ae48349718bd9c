"""Organisational units: import a file (YAML or CSV), list the tree."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dispatcher.cli.common import app, console, error, load_settings

units_app = typer.Typer(
    help="Organisational units: import a file, list the tree.", no_args_is_help=True
)
app.add_typer(units_app, name="units")


@units_app.command("import")
def units_import(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="A .yaml, .yml or .csv file.")
    ],
) -> None:
    """Create or update (by code) the units a file describes; units it does not name stay.

    All or nothing: every problem in the file, or with the tree it would make (a cycle, an
    unknown province, siblings that overlap, a child outside its parent), is printed and
    nothing is changed. Importing the same file again changes nothing.
    """
    from dispatcher import audit
    from dispatcher.core.db import get_database
    from dispatcher.kit.errors import ServiceError
    from dispatcher.units import files, service

    load_settings()
    try:
        specs = files.read(file)
        with get_database().transaction() as session:
            applied = service.apply(session, specs)
            audit.record(
                session,
                actor="command line",
                action="unit.import",
                subject=f"file:{file.name}",
                data={"created": applied.created, "updated": applied.updated},
            )
    except ServiceError as exc:
        error(f"{file.name}: nothing was imported:")
        for problem in exc.message.split("; "):
            error(f"  {problem}")
        raise typer.Exit(2) from None
    console.print(
        f"{file.name}: {len(applied.created)} units created, {len(applied.updated)} updated, "
        f"{len(applied.unchanged)} unchanged",
        markup=False,
    )


@units_app.command("list")
def units_list() -> None:
    """The tree of units: code, name and provinces, indented under their parents."""
    from dispatcher.core.db import get_database
    from dispatcher.units import service

    load_settings()
    with get_database().transaction() as session:
        for node in service.tree(session):
            unit = node.unit
            territory = service.territory_of(unit)
            where = "the whole country" if unit.parent_id is None else ", ".join(territory)
            typer.echo(f"{'  ' * node.depth}{unit.code}  {unit.name}  [{where}]")
