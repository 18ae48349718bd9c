"""People and systems, their roles and sign-in secrets, and their API keys (stored as a SHA-256
of the secret, found by a short prefix)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from dispatcher.core.db import Base, BigId, UTCDateTime
from dispatcher.kit.clock import utcnow
from dispatcher.tables.units import default_unit


class PrincipalKind(StrEnum):
    person = "person"  # a member of staff: the two-person rule counts people
    system = "system"  # a named system (a portal, a monitoring job): never approves


class Principal(Base):
    """A person or a system that holds keys; every key belongs to exactly one. Both belong to
    one organisational unit. A person holds roles there (``PersonRole``) and may sign in to the
    dashboard with a password, and a TOTP code where a role requires one."""

    __tablename__ = "principals"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"), default=default_unit, index=True)
    # The name a person signs in to the dashboard with; None: keys only.
    login: Mapped[str | None] = mapped_column(String(100), unique=True, nullable=True)
    # argon2id, in the PHC string format argon2-cffi writes (parameters and salt included).
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The TOTP secret, encrypted with a key from outside the database (dispatcher.auth.people);
    # enrolled once the first code was right (totp_confirmed_at).
    totp_secret: Mapped[str | None] = mapped_column(String(300), nullable=True)
    totp_confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The last time step whose code was accepted: a code is good once.
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Wrong passwords or codes in a row, and until when sign-in is refused after too many.
    failed_sign_ins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Dashboard sessions begun before this are void (a new password, a TOTP reset).
    sessions_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    roles: Mapped[list[PersonRole]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="PersonRole.role"
    )


class PersonRole(Base):
    """A role a person holds in their unit (editor, approver, operator, admin). A person's
    keys carry one of these; a system's keys carry a system role instead."""

    __tablename__ = "person_roles"

    principal_id: Mapped[int] = mapped_column(
        ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(16), primary_key=True)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The part of the key before its secret, unique: how a presented key is found.
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    # sha256 of the whole key, hex. Keys carry 256 random bits, so a fast hash is enough.
    secret_hash: Mapped[str] = mapped_column(String(64))
    # What the key is for ("laptop", "Cổng DVC production"); whose it is is principal_id.
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), nullable=True
    )
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    principal: Mapped[Principal] = relationship(lazy="joined")
