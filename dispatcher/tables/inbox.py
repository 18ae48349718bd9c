"""The VssID in-app inbox the service keeps, and the devices the app registered for pushes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from dispatcher.core.db import Base, BigId, UTCDateTime


class InboxItem(Base):
    __tablename__ = "inbox_items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    recipient_id: Mapped[int] = mapped_column(ForeignKey("recipients.id", ondelete="CASCADE"))
    # One item per delivery, whatever the retries: a re-send never makes a second item. No
    # foreign key: the item is filed while the delivery is sent, and a batch's deliveries get
    # their rows (under ids reserved when it was planned) only once they are recorded.
    delivery_id: Mapped[int | None] = mapped_column(BigId, unique=True, nullable=True)
    kind: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(String(500))
    body: Mapped[str] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (Index("ix_inbox_items_recipient_id_id", "recipient_id", "id"),)


class Device(Base):
    """A phone with the VssID app, reachable through FCM."""

    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    recipient_id: Mapped[int] = mapped_column(ForeignKey("recipients.id", ondelete="CASCADE"))
    token: Mapped[str] = mapped_column(String(500), unique=True)
    platform: Mapped[str] = mapped_column(String(16), default="android")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_devices_recipient_id", "recipient_id"),)
