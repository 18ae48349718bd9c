"""Who holds API keys, and the keys: stored as a SHA-256 of the secret, found by a short prefix."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from dispatcher.core.db import Base, BigId, UTCDateTime
from dispatcher.kit.clock import utcnow


class PrincipalKind(StrEnum):
    person = "person"  # a member of staff: the two-person rule counts people
    system = "system"  # a named system (a portal, a monitoring job): never approves


class Principal(Base):
    """A person or a system that holds keys; every key belongs to exactly one.

    Staff will belong to an organisational unit once units exist (a ``unit_id`` here).
    """

    __tablename__ = "principals"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


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
