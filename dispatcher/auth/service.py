"""Creating, checking and revoking API keys.

A key reads ``bhxh_<prefix>_<secret>``: the prefix finds the row, the SHA-256 of the whole key
must match the stored hash. The key itself is shown once, when it is created, and never stored.
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

from dispatcher.auth.models import ApiKey
from dispatcher.clock import utcnow
from dispatcher.errors import Conflict, Invalid, NotFound

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


@dataclass(frozen=True)
class Caller:
    """Who made a request: the key's id, name and role."""

    key_id: int
    name: str
    role: Role

    @property
    def label(self) -> str:
        return f"key {self.key_id} ({self.name})"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(
    session: Session,
    *,
    role: str,
    name: str,
    expires_at: datetime | None = None,
    created_by: int | None = None,
) -> tuple[ApiKey, str]:
    """Make a key; returns the row and the key itself, which is never shown again."""
    try:
        chosen = Role(role)
    except ValueError:
        raise Invalid(
            f"unknown role {role!r}; roles are {', '.join(r.value for r in Role)}",
            loc=["body", "role"],
        ) from None
    name = name.strip()
    if not name:
        raise Invalid("a key needs a name (who or what uses it)", loc=["body", "name"])
    now = utcnow()
    if expires_at is not None and expires_at <= now:
        raise Invalid("expires_at must be in the future", loc=["body", "expires_at"])
    prefix = secrets.token_hex(6)
    key = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(
        prefix=prefix,
        secret_hash=hash_key(key),
        name=name,
        role=chosen.value,
        created_at=now,
        created_by=created_by,
        expires_at=expires_at,
    )
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
    return Caller(key_id=row.id, name=row.name, role=Role(row.role))


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
