"""Channel accounts of organisational units: a unit's own Zalo OA, Facebook Page, Telegram bot,
email sender and relay, FCM project... (``dispatcher.units.accounts``).

A unit without an account for a channel sends through its nearest ancestor's; the root's is the
environment's settings (``DISPATCHER_<CHANNEL>_*``), which has no row here.

Dead addresses are kept per account too: a Zalo user id belongs to one OA, and a person who
blocked one unit's bot may still follow another's. The root account marks ``addresses.dead_at``
as before; a unit's account marks :class:`AccountDeadAddress`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from dispatcher.core.db import Base, BigId, JSONType, UTCDateTime
from dispatcher.kit.clock import utcnow


class ChannelAccount(Base):
    __tablename__ = "channel_accounts"
    # One account per unit and channel: the one its campaigns send through.
    __table_args__ = (UniqueConstraint("unit_id", "channel"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(64))
    # A label for people ("Zalo OA BHXH Hà Nội").
    name: Mapped[str] = mapped_column(String(200))
    # The settings that are not secret (an app id, a Page id, an API URL), by field name of
    # the adapter's settings model.
    values: Mapped[dict[str, Any]] = mapped_column(JSONType)
    # The secret settings, as one JSON object encrypted with a key from outside the database
    # (DISPATCHER_SECRET_KEY, dispatcher.core.secrets.encrypt); None when there are none here.
    sealed: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Settings read from the environment (and the secrets directory) of every process, named
    # this prefix followed by the field's name in capitals ("HN_ZALO_" + "ACCESS_TOKEN").
    env_prefix: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class AccountDeadAddress(Base):
    """An address a unit's channel account found dead: that account skips it while the
    recipient's address on the channel is still ``value``."""

    __tablename__ = "account_dead_addresses"

    # channel@UNIT (dispatcher.units.accounts.account_key).
    account_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    recipient_id: Mapped[int] = mapped_column(
        ForeignKey("recipients.id", ondelete="CASCADE"), primary_key=True
    )
    value: Mapped[str] = mapped_column(String(320))
    dead_at: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(String(200))
