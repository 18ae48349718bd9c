"""The channels: lifting a pause once an account-wide fault is fixed."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from dispatcher.cli.common import app, console, error, load_settings

channels_app = typer.Typer(help="The delivery channels.", no_args_is_help=True)
app.add_typer(channels_app, name="channels")


@channels_app.command("resume")
def channels_resume(
    name: Annotated[
        str,
        typer.Argument(
            help="The channel (e.g. vssid, facebook, zalo), or a unit's account of it (zalo@HN)."
        ),
    ],
    by: Annotated[
        str, typer.Option("--by", help="Who fixed the account (recorded in the audit log).")
    ] = "command line",
) -> None:
    """End NAME's pause now and send the deliveries it kept waiting (audited).

    An account-wide fault (a refused token, a permission the app lost, a broken APNs key) pauses
    its channel for DISPATCHER_AUTH_PAUSE_SECONDS and keeps the deliveries waiting; the next
    send after the pause is the probe. Run this once the account is fixed, not to wait less.
    """
    from channels import registry
    from dispatcher.core.db import get_database
    from dispatcher.engine import backends, pauses

    settings = load_settings()
    if name.partition("@")[0] not in registry.available():
        error(f"unknown channel {name!r}; installed: {', '.join(sorted(registry.available()))}")
        raise typer.Exit(2)
    if "@" in name:
        from sqlalchemy import select

        from dispatcher.tables.units import Unit

        with get_database().transaction() as session:
            unit = name.partition("@")[2]
            if session.scalar(select(Unit.id).where(Unit.code == unit)) is None:
                error(f"there is no unit with code {unit!r} (an account is named like zalo@HN)")
                raise typer.Exit(2)
    process = backends.configure(settings)

    async def resume() -> int:
        try:
            return await pauses.resume_channel(
                db=get_database(),
                settings=settings,
                limiter=process.limiter,
                channel=name,
                actor=by,
            )
        finally:
            await process.limiter.close()

    woken = asyncio.run(resume())
    console.print(f"{name}: resumed; {woken} waiting deliveries queued now")
