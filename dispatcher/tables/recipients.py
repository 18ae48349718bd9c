"""Recipients (citizens and organisations) and their per-channel addresses."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import Date, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from dispatcher.core.db import Base, BigId, JSONType, UTCDateTime
from dispatcher.kit.clock import utcnow


class Recipient(Base):
    __tablename__ = "recipients"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The social-insurance number (mã số BHXH) or an organisation's unit code.
    external_id: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(String(200))
    birth_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    province: Mapped[str | None] = mapped_column(String(64), nullable=True)
    language: Mapped[str] = mapped_column(String(16), default="vi")
    kind: Mapped[str] = mapped_column(String(16), default="person")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    addresses: Mapped[list[Address]] = relationship(
        back_populates="recipient", cascade="all, delete-orphan", lazy="selectin"
    )

    __table_args__ = (Index("ix_recipients_province_id", "province", "id"),)


class Address(Base):
    """Where a recipient is reached on one channel: an email, a chat id, a VssID account."""

    __tablename__ = "addresses"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    recipient_id: Mapped[int] = mapped_column(ForeignKey("recipients.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(32))
    value: Mapped[str] = mapped_column(String(320))
    # Set when a provider says the address can never be reached (bot blocked, unregistered...).
    dead_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    dead_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Email: soft bounces (4.x.x delivery status notifications) recorded, and the last bounce.
    soft_bounces: Mapped[int] = mapped_column(Integer, server_default="0")
    bounced_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    recipient: Mapped[Recipient] = relationship(back_populates="addresses")

    __table_args__ = (
        UniqueConstraint("recipient_id", "channel"),
        # Delivery search by address: equality, and the prefix of a masked form (LIKE 'ng%'
        # on PostgreSQL needs the pattern operator class whatever the database's collation).
        Index("ix_addresses_value", "value", postgresql_ops={"value": "varchar_pattern_ops"}),
    )
