"""Message templates: a key, immutable numbered versions, one variant per (channel, locale)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from dispatcher.core.db import Base, BigId, JSONType, UTCDateTime
from dispatcher.kit.clock import utcnow


class Template(Base):
    __tablename__ = "templates"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str | None] = mapped_column(String(32), nullable=True)
    description: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The unit that owns it; None: a built-in template, shared by every unit.
    unit_id: Mapped[int | None] = mapped_column(ForeignKey("units.id"), nullable=True, index=True)

    versions: Mapped[list[TemplateVersion]] = relationship(
        back_populates="template", order_by="TemplateVersion.version"
    )


class TemplateVersion(Base):
    """Never updated once written: a change to a template is a new version."""

    __tablename__ = "template_versions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"))
    version: Mapped[int]
    # Campaign variables the template uses, with their defaults.
    defaults: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    source: Mapped[str] = mapped_column(String(32), default="api")  # "builtin" or "api"
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    template: Mapped[Template] = relationship(back_populates="versions")
    variants: Mapped[list[Variant]] = relationship(
        back_populates="version", lazy="selectin", cascade="all, delete-orphan"
    )

    __table_args__ = (UniqueConstraint("template_id", "version"),)


class Variant(Base):
    __tablename__ = "variants"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("template_versions.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(32))
    locale: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str | None] = mapped_column(Text, nullable=True)
    body: Mapped[str] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text, nullable=True)

    version: Mapped[TemplateVersion] = relationship(back_populates="variants")

    __table_args__ = (UniqueConstraint("version_id", "channel", "locale"),)
