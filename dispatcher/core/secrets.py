"""Service-wide secrets kept in the database, the HMAC signing built on them, and the encryption
of secrets the database keeps for others (TOTP secrets, channel accounts) with a key from
outside it.

When ``DISPATCHER_SECRET_KEY`` is not set, a random key is generated once and stored here, so
that every process sharing the database signs and verifies with the same key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from datetime import datetime

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from dispatcher.core.config import Settings
from dispatcher.core.db import Base, UTCDateTime
from dispatcher.kit.clock import utcnow
from dispatcher.kit.sql import insert_for

SIGNING_KEY = "signing_key"


class ServiceSecret(Base):
    __tablename__ = "service_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


def existing_signing_key(session: Session, settings: Settings) -> bytes | None:
    """The signing key, or None while there is none yet (for read-only sessions)."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    value = session.scalar(select(ServiceSecret.value).where(ServiceSecret.name == SIGNING_KEY))
    return None if value is None else value.encode()


def signing_key(session: Session, settings: Settings) -> bytes:
    """The key that signs links sent to citizens."""
    existing = existing_signing_key(session, settings)
    if existing is not None:
        return existing
    session.execute(
        insert_for(session, ServiceSecret)
        .values(name=SIGNING_KEY, value=secrets.token_urlsafe(32), created_at=utcnow())
        .on_conflict_do_nothing()
    )
    # Another process may have made it first: theirs is the key.
    value = session.scalar(select(ServiceSecret.value).where(ServiceSecret.name == SIGNING_KEY))
    assert value is not None
    return value.encode()


def audit_key(session: Session, settings: Settings) -> bytes:
    """The key that seals the audit log: derived from the signing key. With
    ``DISPATCHER_SECRET_KEY`` set outside the database, whoever can edit the database still
    cannot forge a seal."""
    return hmac.new(signing_key(session, settings), b"audit-seal", hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: bytes, payload: str) -> str:
    """``payload.signature``, URL-safe; the payload is readable, the signature cannot be forged."""
    body = _b64(payload.encode())
    mac = hmac.new(key, body.encode(), hashlib.sha256).digest()[:16]
    return f"{body}.{_b64(mac)}"


def verify(key: bytes, token: str) -> str | None:
    """The signed payload, or None when the token was altered, is malformed or is not
    written exactly as :func:`sign` writes it (base64 decoding forgives padding and stray
    characters; a token must not)."""
    try:
        body, _ = token.split(".", 1)
        payload = _unb64(body).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    if not hmac.compare_digest(sign(key, payload).encode(), token.encode()):
        return None
    return payload


class NoOutsideKey(Exception):
    """A secret must be encrypted but ``DISPATCHER_SECRET_KEY`` is not set."""


def _fernet(settings: Settings, purpose: bytes) -> Fernet:
    if settings.secret_key is None:
        raise NoOutsideKey(
            "DISPATCHER_SECRET_KEY is not set: secrets kept in the database (TOTP secrets, "
            "channel accounts) are encrypted with a key from outside it; set it in the "
            "environment of every process"
        )
    outside = settings.secret_key.get_secret_value().encode()
    derived = hmac.new(outside, b"dispatcher-encrypt:" + purpose, hashlib.sha256).digest()
    return Fernet(base64.urlsafe_b64encode(derived))


def encrypt(settings: Settings, purpose: bytes, text: str) -> str:
    """``text`` encrypted and authenticated (Fernet) with a key derived from
    ``DISPATCHER_SECRET_KEY`` for ``purpose``: whoever reads the database alone cannot read it."""
    return _fernet(settings, purpose).encrypt(text.encode()).decode()


def decrypt(settings: Settings, purpose: bytes, token: str) -> str | None:
    """What :func:`encrypt` encrypted, or None when it was altered or the key changed."""
    try:
        return _fernet(settings, purpose).decrypt(token.encode()).decode()
    except InvalidToken:
        return None
