"""Channel accounts of organisational units: set one from the environment or a file, list them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dispatcher.cli.common import app, console, error, load_settings

accounts_app = typer.Typer(
    help="Channel accounts of units (a province's Zalo OA, Page, bot, email sender...).",
    no_args_is_help=True,
)
app.add_typer(accounts_app, name="accounts")


def _read_file(path: Path) -> tuple[str | None, dict[str, Any], str | None]:
    """``name``, the settings and ``env_prefix`` of an account file (YAML)."""
    import yaml

    from dispatcher.kit.errors import Invalid

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise Invalid(f"{path.name} is not a YAML file: {exc}") from None
    if not isinstance(data, dict):
        raise Invalid(f"{path.name}: an account file is a mapping of settings (app_id: ...)")
    name = data.pop("name", None)
    prefix = data.pop("env_prefix", None)
    settings = data.pop("settings", None)
    if settings is None:
        settings, data = data, {}
    if data or not isinstance(settings, dict):
        raise Invalid(f"{path.name}: put the settings either at the top level or under 'settings:'")
    return name, settings, prefix


@accounts_app.command("set")
def accounts_set(
    unit: Annotated[str, typer.Argument(help="The unit's code, e.g. HN.")],
    channel: Annotated[str, typer.Argument(help="The channel, e.g. zalo, facebook, telegram.")],
    from_env: Annotated[
        str | None,
        typer.Option(
            "--from-env",
            metavar="PREFIX",
            help="Read the settings from every process's environment (or secrets directory) "
            "as PREFIX + the field's name in capitals: HN_ZALO_ + ACCESS_TOKEN. Only the "
            "prefix is stored.",
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            exists=True,
            dir_okay=False,
            help="A YAML file of the settings (app_id: ..., secret_key: ...); secret ones are "
            "stored encrypted with DISPATCHER_SECRET_KEY.",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="A label for people.")] = None,
) -> None:
    """Give UNIT its own account for CHANNEL (or replace it): its campaigns, and those of the
    units below it without one of their own, send through it.

    The settings are the fields of the channel's own settings, checked as the channel checks
    them; nothing is changed when one is unknown, missing or bad.
    """
    from dispatcher import audit
    from dispatcher.core.db import get_database
    from dispatcher.kit.errors import ServiceError
    from dispatcher.units import accounts

    settings = load_settings()
    if from_env is None and file is None:
        error("give the settings with --from-env PREFIX or --file FILE.yaml")
        raise typer.Exit(2)
    try:
        values: dict[str, Any] = {}
        prefix = from_env
        if file is not None:
            label, values, file_prefix = _read_file(file)
            name = name or label
            prefix = prefix or file_prefix
        with get_database().transaction() as session:
            row = accounts.set_account(
                session,
                settings,
                unit_code=unit,
                channel=channel,
                name=name,
                values=values,
                env_prefix=prefix,
            )
            view = accounts.describe(session, settings, row)
            audit.record(
                session,
                actor="command line",
                action="channel_account.set",
                subject=f"account:{view.key}",
                data={"name": view.name, "source": view.source, "fields": view.set_fields},
            )
    except ServiceError as exc:
        error(f"{unit} {channel}: nothing was changed: {exc.message}")
        raise typer.Exit(2) from None
    console.print(
        f"{view.key}: {view.name} ({view.source}); set: {', '.join(view.set_fields)}",
        markup=False,
    )


@accounts_app.command("list")
def accounts_list(
    unit: Annotated[str | None, typer.Option("--unit", help="Only this unit's.")] = None,
) -> None:
    """Every unit's own accounts: which fields are set (never a secret's value)."""
    from dispatcher.core.db import get_database
    from dispatcher.kit.errors import ServiceError
    from dispatcher.units import accounts

    settings = load_settings()
    try:
        with get_database().transaction() as session:
            views = accounts.list_accounts(session, settings, unit)
    except ServiceError as exc:
        error(exc.message)
        raise typer.Exit(2) from None
    if not views:
        typer.echo("no unit has an account of its own: every channel uses the environment's")
    for view in views:
        where = f"env {view.env_prefix}*" if view.env_prefix else "database"
        line = f"{view.key}  {view.name}  [{where}]  set: {', '.join(view.set_fields)}"
        if view.problem:
            line += f"  PROBLEM: {view.problem}"
        typer.echo(line)


@accounts_app.command("delete")
def accounts_delete(
    unit: Annotated[str, typer.Argument(help="The unit's code.")],
    channel: Annotated[str, typer.Argument(help="The channel.")],
) -> None:
    """Remove UNIT's own account for CHANNEL: its campaigns send through the nearest
    ancestor's again."""
    from dispatcher import audit
    from dispatcher.core.db import get_database
    from dispatcher.kit.errors import ServiceError
    from dispatcher.units import accounts

    settings = load_settings()
    try:
        with get_database().transaction() as session:
            accounts.delete_account(session, settings, unit_code=unit, channel=channel)
            key = accounts.account_key(channel, unit)
            audit.record(
                session,
                actor="command line",
                action="channel_account.delete",
                subject=f"account:{key}",
                data={},
            )
    except ServiceError as exc:
        error(exc.message)
        raise typer.Exit(2) from None
    console.print(f"{key}: deleted", markup=False)
