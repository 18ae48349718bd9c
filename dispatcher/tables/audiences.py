"""Saved audiences: named filters staff reuse across campaigns, in immutable numbered versions.

Saving a name again with a different filter makes a new version; a campaign's approval records
the exact version of every saved audience it resolved, and its runs plan from those.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from dispatcher.core.db import Base, BigId, JSONType, UTCDateTime
from dispatcher.kit.clock import utcnow
from dispatcher.tables.units import default_unit


class SavedAudience(Base):
    __tablename__ = "audiences"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The unit that owns it: its author's (the root's when made by the service).
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"), default=default_unit, index=True)


class AudienceVersion(Base):
    """Never updated once written: a change to a saved audience is a new version."""

    __tablename__ = "audience_versions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    audience_id: Mapped[int] = mapped_column(ForeignKey("audiences.id", ondelete="CASCADE"))
    version: Mapped[int]
    filter: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("audience_id", "version"),)
