"""Admins manage the people of their unit and of the units below it.

A person outside the admin's units answers 404, as if they did not exist; a unit outside them
is refused like an unknown one. Answers never carry a password hash or a TOTP secret; a
generated initial password is in the answer that creates the person, once.
"""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy.orm import Session

from dispatcher import audit
from dispatcher.auth import people
from dispatcher.auth.schemas import NewPersonOut, PersonIn, PersonOut, RolesIn
from dispatcher.auth.service import Caller
from dispatcher.kit.errors import Conflict
from dispatcher.tables.auth import Principal
from dispatcher.units import scope as scopes
from dispatcher.units import service as units
from dispatcher.web.http.callers import Admin
from dispatcher.web.http.deps import DbSession, PathId

router = APIRouter(prefix="/v1/people", tags=["people"])


def _out(session: Session, person: Principal) -> PersonOut:
    return PersonOut.of(person, units.get(session, person.unit_id))


def _managed(session: Session, person_id: int) -> Principal:
    """The person, if the caller (the session's scope) manages their unit; else 404."""
    return people.in_scope(session, scopes.units_of(session), person_id)


def _record(
    session: Session, caller: Caller, action: str, person: Principal, **data: object
) -> None:
    audit.record(
        session, actor=caller.label, action=action, subject=f"person:{person.id}", data=data
    )


def _not_self(caller: Caller, person: Principal, what: str) -> None:
    if person.id == caller.principal_id:
        raise Conflict(f"an admin cannot {what} themselves; another admin can")


@router.get("", response_model=list[PersonOut], summary="People of your unit and the units below")
def list_people(session: DbSession, caller: Admin) -> list[PersonOut]:
    known = people.units_by_id(session)
    return [
        PersonOut.of(p, known[p.unit_id])
        for p in people.list_people(session, scopes.units_of(session))
    ]


@router.post(
    "",
    status_code=201,
    response_model=NewPersonOut,
    summary="Add a person (a generated password is shown once)",
)
def create_person(data: PersonIn, session: DbSession, caller: Admin) -> NewPersonOut:
    unit = people.home_unit(session, data.unit, scope=scopes.units_of(session))
    generated = people.generate_password() if data.password is None else None
    person = people.add_person(
        session,
        login=data.login,
        name=data.name,
        unit=unit,
        roles=list(data.roles),
        password=data.password if generated is None else generated,
    )
    _record(
        session,
        caller,
        "person.add",
        person,
        login=person.login,
        unit=unit.code,
        roles=sorted(set(data.roles)),
        password="generated" if generated else "given",
    )
    return NewPersonOut(**PersonOut.of(person, unit).model_dump(), initial_password=generated)


@router.get("/{person_id}", response_model=PersonOut)
def get_person(person_id: PathId, session: DbSession, caller: Admin) -> PersonOut:
    return _out(session, _managed(session, person_id))


@router.post("/{person_id}/grant", response_model=PersonOut, summary="Give roles too")
def grant_roles(person_id: PathId, data: RolesIn, session: DbSession, caller: Admin) -> PersonOut:
    person = _managed(session, person_id)
    people.grant(session, person, list(data.roles))
    _record(session, caller, "person.grant", person, roles=sorted(set(data.roles)))
    return _out(session, person)


@router.post(
    "/{person_id}/revoke",
    response_model=PersonOut,
    summary="Take roles: keys carrying them stop working, sessions end",
)
def revoke_roles(person_id: PathId, data: RolesIn, session: DbSession, caller: Admin) -> PersonOut:
    person = _managed(session, person_id)
    if "admin" in data.roles:
        _not_self(caller, person, "take the admin role from")
    people.revoke(session, person, list(data.roles))
    _record(session, caller, "person.revoke", person, roles=sorted(set(data.roles)))
    return _out(session, person)


@router.post(
    "/{person_id}/reset-totp",
    response_model=PersonOut,
    summary="Forget their TOTP authenticator: they enrol again at their next sign-in",
)
def reset_totp(person_id: PathId, session: DbSession, caller: Admin) -> PersonOut:
    person = _managed(session, person_id)
    people.reset_totp(session, person)
    _record(session, caller, "person.reset_totp", person)
    return _out(session, person)


@router.post("/{person_id}/unlock", response_model=PersonOut, summary="End a lock-out")
def unlock(person_id: PathId, session: DbSession, caller: Admin) -> PersonOut:
    person = _managed(session, person_id)
    people.unlock(session, person)
    _record(session, caller, "person.unlock", person)
    return _out(session, person)


@router.post(
    "/{person_id}/disable",
    response_model=PersonOut,
    summary="Someone who leaves: roles, password and TOTP taken, keys revoked",
)
def disable(person_id: PathId, session: DbSession, caller: Admin) -> PersonOut:
    person = _managed(session, person_id)
    _not_self(caller, person, "disable")
    revoked = people.disable(session, person)
    _record(session, caller, "person.disable", person, keys_revoked=revoked)
    return _out(session, person)
