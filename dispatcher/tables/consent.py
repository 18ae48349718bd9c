"""Opt-outs: a recipient's choice not to get a category of messages on a channel."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from dispatcher.core.db import Base, BigId, UTCDateTime


class OptOut(Base):
    __tablename__ = "opt_outs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    recipient_id: Mapped[int] = mapped_column(ForeignKey("recipients.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(32))
    # greetings | news | warnings, or "*" for everything on the channel.
    category: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(32), default="link")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("recipient_id", "channel", "category"),)
