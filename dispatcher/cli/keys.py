"""API keys: create (shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated

import typer

from dispatcher.cli.common import app, console, error, load_settings

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
    unit: Annotated[
        str | None,
        typer.Option(help="The unit (code) of a person or system made here. Default: the root."),
    ] = None,
) -> None:
    """Create an API key and print it on stdout (the only time it is shown).

    Keys belong to a person or a system of a unit. A person's key carries one of the roles the
    person holds (a person made here holds the key's role; `dispatcher people grant` gives
    more). The two-person rule counts people: whoever wrote or submitted a campaign cannot
    approve it with any of their keys.
    """
    from datetime import timedelta

    from dispatcher import audit
    from dispatcher.auth.service import (
        Role,
        create_key,
        get_principal,
        new_principal,
        principal_named,
    )
    from dispatcher.core.db import get_database
    from dispatcher.kit.clock import utcnow
    from dispatcher.kit.errors import ServiceError
    from dispatcher.tables.auth import Principal, PrincipalKind
    from dispatcher.units import service as units

    load_settings()
    if sum(x is not None for x in (person, system, owner)) > 1:
        error("give one of --person, --system and --owner")
        raise typer.Exit(2)
    if name is None and person is None and system is None and owner is None:
        error("say whose key it is: --person NAME, --system NAME or --owner ID")
        raise typer.Exit(2)
    if expires_in_days is not None and expires_in_days <= 0:
        error("--expires-in-days must be above zero")
        raise typer.Exit(2)
    expires = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
    new_owner = False
    try:
        with get_database().transaction() as session:
            holder: Principal | None = None
            unit_id = units.by_code(session, unit, loc=["unit"]).id if unit else None
            chosen = Role(role) if role in Role.__members__ else None
            if owner is not None:
                holder = get_principal(session, owner)
            elif person is not None or system is not None:
                kind = PrincipalKind.person if person is not None else PrincipalKind.system
                holder, new_owner = principal_named(
                    session, kind=kind, name=person or system or "", role=chosen
                )
                if new_owner and unit_id is not None:
                    holder.unit_id = unit_id
            elif unit_id is not None and chosen is not None:
                kind = PrincipalKind.system if chosen == Role.sender else PrincipalKind.person
                roles = [chosen] if kind == PrincipalKind.person else []
                holder = new_principal(
                    session, kind=kind, name=name or "", unit_id=unit_id, roles=roles
                )
                new_owner = True
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
        error(exc.message)
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

    load_settings()
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

    load_settings()
    try:
        with get_database().transaction() as session:
            row = revoke(session, key_id)
            audit.record(
                session, actor="command line", action="key.revoke", subject=f"key:{row.id}", data={}
            )
    except ServiceError as exc:
        error(exc.message)
        raise typer.Exit(2) from None
    console.print(f"key {key_id} ({row.name}) revoked")
