"""Durable state of channel adapters (tokens, cursors), shared by every worker."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import String, Text
from sqlalchemy.orm import Mapped, mapped_column

from dispatcher.core.db import Base, UTCDateTime


class ChannelState(Base):
    __tablename__ = "channel_state"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
