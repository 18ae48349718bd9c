"""People: add one (with a unit, roles and a password), set a password, grant or revoke roles,
reset TOTP, unlock, disable.

Passwords are never taken from the command line (it is visible to every user of the machine
and kept in shell histories): they are prompted for, or read from standard input with
``--password-stdin`` (for provisioning scripts).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dispatcher.cli.common import app, console, error, load_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from dispatcher.tables.auth import Principal

people_app = typer.Typer(
    help="People: add, set a password, grant or revoke roles, reset TOTP, unlock, disable, list.",
    no_args_is_help=True,
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

    load_settings()
    password = _password(password_stdin)
    try:
        with get_database().transaction() as session:
            home = people.home_unit(session, unit)
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


def _change(
    who: str,
    action: str,
    change: Callable[[Session, Principal], dict[str, Any]],
    said: Callable[[Principal], str],
) -> None:
    """Find a person by login or id, change them, audit ``action`` with what ``change``
    returns, and say what was done."""
    from dispatcher import audit
    from dispatcher.auth import people
    from dispatcher.core.db import get_database
    from dispatcher.kit.errors import ServiceError

    load_settings()
    try:
        with get_database().transaction() as session:
            person = people.find(session, who)
            data = change(session, person)
            audit.record(
                session,
                actor="command line",
                action=action,
                subject=f"person:{person.id}",
                data=data,
            )
            text = said(person)
    except ServiceError as exc:
        error(exc.message)
        raise typer.Exit(2) from None
    console.print(text, markup=False)


def _holds(person: Principal) -> str:
    return ", ".join(r.role for r in person.roles) or "no role"


@people_app.command("password")
def people_password(
    who: Annotated[str, typer.Argument(help="The person's login or id.")],
    password_stdin: PasswordStdin = False,
) -> None:
    """Set a person's password: their dashboard sessions end and a lock-out is lifted."""
    from dispatcher.auth import people

    password = _password(password_stdin)

    def change(session: Session, person: Principal) -> dict[str, Any]:
        people.set_password(session, person, password)
        return {}

    _change(who, "person.password", change, lambda p: f"password of person {p.id} ({p.name}) set")


@people_app.command("grant")
def people_grant(
    who: Annotated[str, typer.Argument(help="The person's login or id.")],
    role: Annotated[list[str], typer.Option(help="editor, approver, operator or admin.")],
) -> None:
    """Give a person more roles in their unit."""
    from dispatcher.auth import people

    def change(session: Session, person: Principal) -> dict[str, Any]:
        people.grant(session, person, role)
        return {"roles": sorted(role)}

    _change(who, "person.grant", change, lambda p: f"person {p.id} ({p.name}) holds {_holds(p)}")


@people_app.command("revoke")
def people_revoke(
    who: Annotated[str, typer.Argument(help="The person's login or id.")],
    role: Annotated[list[str], typer.Option(help="editor, approver, operator or admin.")],
) -> None:
    """Take roles from a person: their keys carrying them stop working, their sessions end."""
    from dispatcher.auth import people

    def change(session: Session, person: Principal) -> dict[str, Any]:
        people.revoke(session, person, role)
        return {"roles": sorted(role)}

    _change(who, "person.revoke", change, lambda p: f"person {p.id} ({p.name}) holds {_holds(p)}")


@people_app.command("reset-totp")
def people_reset_totp(
    who: Annotated[str, typer.Argument(help="The person's login or id.")],
) -> None:
    """Forget a person's TOTP authenticator (a lost phone): they enrol again at their next
    sign-in, and their dashboard sessions end."""
    from dispatcher.auth import people

    def change(session: Session, person: Principal) -> dict[str, Any]:
        people.reset_totp(session, person)
        return {}

    _change(who, "person.reset_totp", change, lambda p: f"TOTP of person {p.id} ({p.name}) reset")


@people_app.command("unlock")
def people_unlock(who: Annotated[str, typer.Argument(help="The person's login or id.")]) -> None:
    """End a lock-out after too many wrong passwords or codes."""
    from dispatcher.auth import people

    def change(session: Session, person: Principal) -> dict[str, Any]:
        people.unlock(session, person)
        return {}

    _change(who, "person.unlock", change, lambda p: f"person {p.id} ({p.name}) unlocked")


@people_app.command("disable")
def people_disable(who: Annotated[str, typer.Argument(help="The person's login or id.")]) -> None:
    """Someone who leaves: their roles, password and TOTP are taken and their keys revoked."""
    from dispatcher.auth import people

    def change(session: Session, person: Principal) -> dict[str, Any]:
        return {"keys_revoked": people.disable(session, person)}

    _change(who, "person.disable", change, lambda p: f"person {p.id} ({p.name}) disabled")


@people_app.command("list")
def people_list() -> None:
    """People: id, login, name, unit, roles, whether TOTP is enrolled (never a secret)."""
    from dispatcher.auth import people
    from dispatcher.core.db import get_database

    load_settings()
    with get_database().transaction() as session:
        known = people.units_by_id(session)
        for person in people.list_people(session):
            unit = known.get(person.unit_id)
            roles = ",".join(r.role for r in person.roles) or "-"
            totp = "totp" if person.totp_confirmed_at else "-"
            typer.echo(
                f"{person.id}\t{person.login or '-'}\t{person.name}\t"
                f"{unit.code if unit else '?'}\t{roles}\t{totp}"
            )
