"""Setting up: config, migrate, check."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from dispatcher.cli.common import app, console, error, load_settings


@app.command()
def config() -> None:
    """Print the effective settings, every installed channel's too, secrets masked. An unset
    one is printed as a comment saying what applies instead, so the output can be read back as
    an environment file without turning it into an empty value."""
    from channels import registry
    from dispatcher.core.config import Settings

    load_settings()
    fields = Settings.model_fields
    for name, value in registry.load_settings().masked().items():
        if value is None:
            field = fields.get(name)
            typer.echo(_unset_line(name, field.description if field else None))
        else:
            typer.echo(f"DISPATCHER_{name.upper()}={value}")


# A setting's description names what applies when it is unset as "(unset: ...)".
_UNSET = re.compile(r"\(unset: ([^)]*)\)")


def _unset_line(name: str, description: str | None) -> str:
    found = _UNSET.search(description or "")
    instead = f": {found.group(1)}" if found else ""
    return f"# DISPATCHER_{name.upper()} is unset{instead}"


@app.command()
def migrate() -> None:
    """Bring the database schema up to date and load the built-in templates."""
    from dispatcher.content import service as content
    from dispatcher.core import migrate as migrations
    from dispatcher.core.db import get_database

    settings = load_settings()
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
    from dispatcher.engine import backends

    settings = load_settings()
    problems = []
    try:
        with get_database().engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        if migrations.current_revision(settings.database_url) is None:
            problems.append("the database has no schema: run dispatcher migrate")
    except Exception as exc:
        problems.append(f"database unreachable: {type(exc).__name__}")
    if redis_required and not backends.redis_reachable(settings):
        problems.append(f"Redis unreachable at {settings.masked()['redis_url']}")
    for problem in problems:
        error(problem)
    if not problems:
        typer.echo("ok")
    raise typer.Exit(1 if problems else 0)
