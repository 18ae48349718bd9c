"""Who may call: people and systems, their API keys, and checking a presented key.

A key reads ``bhxh_<prefix>_<secret>``: the prefix finds the row, the SHA-256 of the whole key
must match the stored hash. The key itself is shown once, when it is created, and never stored.

Every key belongs to a principal: a person (staff; the two-person rule counts people, not keys)
or a named system, which may only hold the roles a system needs (``SYSTEM_ROLES``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dispatcher.kit.clock import utcnow
from dispatcher.kit.errors import Conflict, Invalid, NotFound
from dispatcher.tables.auth import ApiKey, Principal, PrincipalKind

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


@dataclass(frozen=True)
class Caller:
    """Who made a request: the key's id, name and role, and the person or system it belongs to."""

    key_id: int
    name: str
    role: Role
    principal_id: int
    principal_name: str
    principal_kind: PrincipalKind

    @property
    def is_person(self) -> bool:
        return self.principal_kind == PrincipalKind.person

    @property
    def who(self) -> str:
        """The person or system, as people read it: ``person 5 (Nguyễn Văn A)``."""
        return f"{self.principal_kind.value} {self.principal_id} ({self.principal_name})"

    @property
    def label(self) -> str:
        if self.name == self.principal_name:
            return f"key {self.key_id} of {self.who}"
        return f"key {self.key_id} ({self.name}) of {self.who}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _name(value: str, what: str, loc: list[str]) -> str:
    value = value.strip()
    if not value:
        raise Invalid(f"{what} needs a name", loc=loc)
    if len(value) > 200:
        raise Invalid(f"{what}'s name is longer than 200 characters", loc=loc)
    return value


def new_principal(session: Session, *, kind: PrincipalKind, name: str) -> Principal:
    row = Principal(kind=kind.value, name=_name(name, f"a {kind.value}", ["body", "name"]))
    row.created_at = utcnow()
    session.add(row)
    session.flush()
    return row


def get_principal(session: Session, principal_id: int) -> Principal:
    row = session.get(Principal, principal_id)
    if row is None:
        raise NotFound(f"there is no person or system {principal_id}")
    return row


def principal_named(session: Session, *, kind: PrincipalKind, name: str) -> tuple[Principal, bool]:
    """The one person (or system) of that name, made if there is none; returns it and whether
    it is new. Two of the same name are told apart by id (the caller's ``--owner``)."""
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
    return new_principal(session, kind=kind, name=name), True


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
    if owner is None:
        kind = PrincipalKind.system if chosen == Role.sender else PrincipalKind.person
        owner = new_principal(session, kind=kind, name=name)
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
    return Caller(
        key_id=row.id,
        name=row.name,
        role=Role(row.role),
        principal_id=owner.id,
        principal_name=owner.name,
        principal_kind=PrincipalKind(owner.kind),
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
