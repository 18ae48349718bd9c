"""People: add one (with a unit, roles and a password), set a password, grant roles, reset TOTP.

Passwords are never taken from the command line (it is visible to every user of the machine
and kept in shell histories): they are prompted for, or read from standard input with
``--password-stdin`` (for provisioning scripts).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from dispatcher.cli.common import app, console, error, load_settings

people_app = typer.Typer(
    help="People: add, set a password, grant roles, reset TOTP, list.", no_args_is_help=True
)
app.add_typer(people_app, name="people")

PasswordStdin = Annotated[
    bool,
    typer.Option(
        "--password-stdin", help="Read the password from the first line of standard input."
    ),
]


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    if not sys.stdin.isatty():
        error("no terminal to prompt on: give the password on standard input (--password-stdin)")
        raise typer.Exit(2)
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@people_app.command("add")
def people_add(
    login: Annotated[str, typer.Option(help="What the person signs in with (a-z, 0-9, . _ @ -).")],
    name: Annotated[str, typer.Option(help="Their full name, as colleagues read it.")],
    role: Annotated[
        list[str], typer.Option(help="editor, approver, operator or admin; repeat for several.")
    ],
    unit: Annotated[str | None, typer.Option(help="Their unit's code. Default: the root.")] = None,
    password_stdin: PasswordStdin = False,
) -> None:
    """Add a person who signs in to the dashboard with a password. Approvers and admins enrol
    a TOTP authenticator at their first sign-in (the dashboard shows a QR code)."""
    from dispatcher import audit
    from dispatcher.auth import people
    from dispatcher.core.db import get_database
    from dispatcher.kit.errors import ServiceError
    from dispatcher.units import service as units

    load_settings()
    password = _password(password_stdin)
    try:
        with get_database().transaction() as session:
            home = units.by_code(session, unit, loc=["unit"]) if unit else units.root(session)
            person = people.add_person(
                session, login=login, name=name, unit=home, roles=role, password=password
            )
            audit.record(
                session,
                actor="command line",
                action="person.add",
                subject=f"person:{person.id}",
                data={"login": person.login, "unit": home.code, "roles": sorted(role)},
            )
            totp = people.needs_totp(person)
            said = f"person {person.id} ({person.name}, {person.login}) added to {home.code}"
    except ServiceError as exc:
        error(exc.message)
        raise typer.Exit(2) from None
    console.print(said, markup=False)
    if totp:
        console.print(
            "approvers and admins enrol a TOTP authenticator at their first sign-in "
            "(DISPATCHER_SECRET_KEY must be set)",
            markup=False,
        )


@people_app.command("password")
def people_password(
    who: Annotated[str, typer.Argument(help="The person's login or id.")],
    password_stdin: PasswordStdin = False,
) -> None:
    """Set a person's password: their dashboard sessions end and a lock-out is lifted."""
    from dispatcher import audit
    from dispatcher.auth import people
    from dispatcher.core.db import get_database
    from dispatcher.kit.errors import ServiceError

    load_settings()
    password = _password(password_stdin)
    try:
        with get_database().transaction() as session:
            person = people.find(session, who)
            people.set_password(session, person, password)
            audit.record(
                session,
                actor="command line",
                action="person.password",
                subject=f"person:{person.id}",
                data={},
            )
    except ServiceError as exc:
        error(exc.message)
        raise typer.Exit(2) from None
    console.print(f"password of person {person.id} ({person.name}) set", markup=False)


@people_app.command("grant")
def people_grant(
    who: Annotated[str, typer.Argument(help="The person's login or id.")],
    role: Annotated[list[str], typer.Option(help="editor, approver, operator or admin.")],
) -> None:
    """Give a person more roles in their unit."""
    from dispatcher import audit
    from dispatcher.auth import people
    from dispatcher.core.db import get_database
    from dispatcher.kit.errors import ServiceError

    load_settings()
    try:
        with get_database().transaction() as session:
            person = people.find(session, who)
            people.grant(session, person, role)
            audit.record(
                session,
                actor="command line",
                action="person.grant",
                subject=f"person:{person.id}",
                data={"roles": sorted(role)},
            )
            held = ", ".join(r.role for r in person.roles)
    except ServiceError as exc:
        error(exc.message)
        raise typer.Exit(2) from None
    console.print(f"person {person.id} ({person.name}) holds {held}", markup=False)


@people_app.command("reset-totp")
def people_reset_totp(
    who: Annotated[str, typer.Argument(help="The person's login or id.")],
) -> None:
    """Forget a person's TOTP authenticator (a lost phone): they enrol again at their next
    sign-in, and their dashboard sessions end."""
    from dispatcher import audit
    from dispatcher.auth import people
    from dispatcher.core.db import get_database
    from dispatcher.kit.errors import ServiceError

    load_settings()
    try:
        with get_database().transaction() as session:
            person = people.find(session, who)
            people.reset_totp(session, person)
            audit.record(
                session,
                actor="command line",
                action="person.reset_totp",
                subject=f"person:{person.id}",
                data={},
            )
    except ServiceError as exc:
        error(exc.message)
        raise typer.Exit(2) from None
    console.print(f"TOTP of person {person.id} ({person.name}) reset", markup=False)


@people_app.command("list")
def people_list() -> None:
    """People: id, login, name, unit, roles, whether TOTP is enrolled (never a secret)."""
    from sqlalchemy import select

    from dispatcher.core.db import get_database
    from dispatcher.tables.auth import Principal, PrincipalKind
    from dispatcher.tables.units import Unit

    load_settings()
    with get_database().transaction() as session:
        codes = {i: c for i, c in session.execute(select(Unit.id, Unit.code))}
        for person in session.scalars(
            select(Principal).where(Principal.kind == PrincipalKind.person).order_by(Principal.id)
        ):
            roles = ",".join(r.role for r in person.roles) or "-"
            totp = "totp" if person.totp_confirmed_at else "-"
            typer.echo(
                f"{person.id}\t{person.login or '-'}\t{person.name}\t"
                f"{codes.get(person.unit_id, '?')}\t{roles}\t{totp}"
            )
