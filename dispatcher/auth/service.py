"""Who may call: people and systems, their API keys, and checking a presented key.

A key reads ``bhxh_<prefix>_<secret>``: the prefix finds the row, the SHA-256 of the whole key
must match the stored hash. The key itself is shown once, when it is created, and never stored.

Every key belongs to a principal in a unit: a person (staff; the two-person rule counts people,
not keys) or a named system, which may only hold the roles a system needs (``SYSTEM_ROLES``).
A person holds roles in their unit (``PERSON_ROLES``); each of their keys carries one of them
(an admin holds every role). A key whose person no longer holds its role stops working.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dispatcher.kit.clock import utcnow
from dispatcher.kit.errors import Conflict, Invalid, NotFound
from dispatcher.tables.auth import ApiKey, PersonRole, Principal, PrincipalKind
from dispatcher.tables.units import Unit, root_unit_id

KEY_SCHEME = "bhxh"
# last_used_at is written at most this often per key, so reads stay reads.
TOUCH_EVERY = timedelta(minutes=1)


class Role(StrEnum):
    editor = "editor"  # recipients, templates, audiences, draft campaigns
    approver = "approver"  # approve or reject submitted campaigns
    operator = "operator"  # read campaigns, deliveries and metrics; pause, resume, cancel
    sender = "sender"  # transactional messages and the VssID inbox (a system's key)
    admin = "admin"  # everything, and keys


STAFF = (Role.editor, Role.approver, Role.operator)
# A system sends and watches; editing, approving and administering are for people.
SYSTEM_ROLES = (Role.sender, Role.operator)
# The roles a person holds in their unit.
PERSON_ROLES = (Role.editor, Role.approver, Role.operator, Role.admin)
# Roles whose holders must sign in to the dashboard with a TOTP code as well as a password.
TOTP_ROLES = frozenset({Role.approver, Role.admin})
# Which of a person's roles a dashboard session shows first (and lands on).
_RANK = {Role.admin: 0, Role.approver: 1, Role.operator: 2, Role.editor: 3, Role.sender: 4}


@dataclass(frozen=True)
class Caller:
    """Who made a request: the key (none for a dashboard session signed in with a password),
    its role, and the person or system it belongs to, with their unit.

    ``roles`` are what the caller may act as: a key's one role, or every role a signed-in
    person holds. ``role`` is the first of them (a key's role).
    """

    key_id: int | None
    name: str
    role: Role
    principal_id: int
    principal_name: str
    principal_kind: PrincipalKind
    # The unit of the person or system (None: not known, as for callers made in tests).
    unit_id: int | None = None
    unit_name: str = ""
    roles: frozenset[Role] = field(default=frozenset())

    def __post_init__(self) -> None:
        if not self.roles:
            object.__setattr__(self, "roles", frozenset({self.role}))

    def holds(self, *roles: Role) -> bool:
        """Whether the caller may act as one of ``roles`` (an admin may act as any)."""
        return bool(self.roles & {Role.admin, *roles})

    @property
    def is_person(self) -> bool:
        return self.principal_kind == PrincipalKind.person

    @property
    def who(self) -> str:
        """The person or system, as people read it: ``person 5 (Nguyễn Văn A)``."""
        return f"{self.principal_kind.value} {self.principal_id} ({self.principal_name})"

    @property
    def label(self) -> str:
        if self.key_id is None:
            return f"dashboard session of {self.who}"
        if self.name == self.principal_name:
            return f"key {self.key_id} of {self.who}"
        return f"key {self.key_id} ({self.name}) of {self.who}"


def first_role(roles: frozenset[Role]) -> Role:
    return min(roles, key=lambda r: _RANK[r])


def roles_of(person: Principal) -> frozenset[Role]:
    return frozenset(Role(r.role) for r in person.roles)


def may_hold_key(person: Principal, role: Role) -> bool:
    """A person's key carries one of their roles; an admin holds every role."""
    held = roles_of(person)
    return role in held or (Role.admin in held and role in PERSON_ROLES)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _name(value: str, what: str, loc: list[str]) -> str:
    value = value.strip()
    if not value:
        raise Invalid(f"{what} needs a name", loc=loc)
    if len(value) > 200:
        raise Invalid(f"{what}'s name is longer than 200 characters", loc=loc)
    return value


def person_roles(values: list[str] | tuple[str, ...], loc: list[str]) -> list[Role]:
    """Roles a person may hold, checked: editor, approver, operator, admin."""
    chosen: list[Role] = []
    for value in values:
        try:
            role = Role(value)
        except ValueError:
            role = None
        if role not in PERSON_ROLES:
            raise Invalid(
                f"{value!r} is not a role of a person; they are "
                f"{', '.join(r.value for r in PERSON_ROLES)}",
                loc=loc,
            )
        assert role is not None
        if role not in chosen:
            chosen.append(role)
    return chosen


def new_principal(
    session: Session,
    *,
    kind: PrincipalKind,
    name: str,
    unit_id: int | None = None,
    roles: list[Role] | tuple[Role, ...] = (),
) -> Principal:
    """A person (with ``roles``) or a system in ``unit_id`` (default: the root unit)."""
    if kind == PrincipalKind.system and roles:
        raise Invalid("a system holds no roles of its own: its keys carry them", loc=["body"])
    unit = root_unit_id(session.connection()) if unit_id is None else unit_id
    if session.get(Unit, unit) is None:
        raise Invalid(f"unit {unit} does not exist", loc=["body", "unit"])
    row = Principal(
        kind=kind.value, name=_name(name, f"a {kind.value}", ["body", "name"]), unit_id=unit
    )
    row.created_at = utcnow()
    row.roles = [PersonRole(role=r.value) for r in roles]
    session.add(row)
    session.flush()
    return row


def get_principal(session: Session, principal_id: int) -> Principal:
    row = session.get(Principal, principal_id)
    if row is None:
        raise NotFound(f"there is no person or system {principal_id}")
    return row


def principal_named(
    session: Session, *, kind: PrincipalKind, name: str, role: Role | None = None
) -> tuple[Principal, bool]:
    """The one person (or system) of that name, made if there is none (a new person holds
    ``role``, in the root unit); returns it and whether it is new. Two of the same name are
    told apart by id (the caller's ``--owner``)."""
    name = _name(name, f"a {kind.value}", ["body", kind.value])
    found = list(
        session.scalars(
            select(Principal)
            .where(Principal.kind == kind.value, Principal.name == name)
            .order_by(Principal.id)
            .limit(10)
        )
    )
    if len(found) > 1:
        ids = ", ".join(str(p.id) for p in found)
        raise Conflict(f"several {kind.value}s are named {name!r} (ids {ids}): choose one by id")
    if found:
        return found[0], False
    roles = [role] if role in PERSON_ROLES and kind == PrincipalKind.person else []
    return new_principal(session, kind=kind, name=name, roles=roles), True


def create_key(
    session: Session,
    *,
    role: str,
    name: str,
    owner: Principal | None = None,
    expires_at: datetime | None = None,
    created_by: int | None = None,
) -> tuple[ApiKey, str]:
    """Make a key for ``owner``; returns the row and the key itself, never shown again.

    Without an owner the key gets one of its own, named like the key: a system for a
    ``sender`` key, a person otherwise.
    """
    try:
        chosen = Role(role)
    except ValueError:
        raise Invalid(
            f"unknown role {role!r}; roles are {', '.join(r.value for r in Role)}",
            loc=["body", "role"],
        ) from None
    name = _name(name, "a key", ["body", "name"])
    now = utcnow()
    if expires_at is not None and expires_at <= now:
        raise Invalid("expires_at must be in the future", loc=["body", "expires_at"])
    if owner is not None and owner.kind == PrincipalKind.system and chosen not in SYSTEM_ROLES:
        raise Invalid(
            f"{owner.name!r} is a system: its keys may be "
            f"{' or '.join(r.value for r in SYSTEM_ROLES)}, not {chosen.value} "
            "(editing, approving and administering are for people)",
            loc=["body", "role"],
        )
    if owner is not None and owner.kind == PrincipalKind.person and not may_hold_key(owner, chosen):
        held = ", ".join(r.value for r in sorted(roles_of(owner))) or "no role"
        raise Invalid(
            f"{owner.name!r} (person {owner.id}) holds {held}: a key of theirs can only carry "
            f"one of their roles, not {chosen.value} (grant it first: dispatcher people grant)",
            loc=["body", "role"],
        )
    if owner is None:
        if chosen == Role.sender:
            owner = new_principal(session, kind=PrincipalKind.system, name=name)
        else:
            owner = new_principal(session, kind=PrincipalKind.person, name=name, roles=[chosen])
    prefix = secrets.token_hex(6)
    key = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        prefix=prefix,
        secret_hash=hash_key(key),
        name=name,
        role=chosen.value,
        principal_id=owner.id,
        created_at=now,
        created_by=created_by,
        expires_at=expires_at,
    )
    row.principal = owner
    session.add(row)
    session.flush()
    return row, key


class Unauthenticated(Exception):
    """No usable key: the message says why (missing, malformed, unknown, revoked, expired)."""


def authenticate(session: Session, key: str) -> Caller:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != KEY_SCHEME or not parts[1] or not parts[2]:
        raise Unauthenticated("not an API key of this service")
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
    if row is None or not hmac.compare_digest(row.secret_hash, hash_key(key)):
        raise Unauthenticated("unknown API key")
    now = utcnow()
    if row.revoked_at is not None:
        raise Unauthenticated("this API key was revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthenticated("this API key has expired")
    if row.last_used_at is None or now - row.last_used_at > TOUCH_EVERY:
        session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
    owner = row.principal
    role = Role(row.role)
    # A person's key works only while the person holds its role (a sender key of a person,
    # made before people held roles, keeps working: it is a system's role).
    if owner.kind == PrincipalKind.person and role != Role.sender and not may_hold_key(owner, role):
        raise Unauthenticated("this API key's role is no longer held by its person")
    unit = session.get(Unit, owner.unit_id)
    return Caller(
        key_id=row.id,
        name=row.name,
        role=role,
        principal_id=owner.id,
        principal_name=owner.name,
        principal_kind=PrincipalKind(owner.kind),
        unit_id=owner.unit_id,
        unit_name=unit.name if unit is not None else "",
    )


def get_key(session: Session, key_id: int) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFound(f"API key {key_id} does not exist")
    return row


def revoke(session: Session, key_id: int) -> ApiKey:
    row = get_key(session, key_id)
    if row.revoked_at is not None:
        raise Conflict(f"API key {key_id} is already revoked")
    row.revoked_at = utcnow()
    return row


def list_keys(session: Session, *, include_revoked: bool = False) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query))
