"""Deliveries — one per (run, recipient, channel) — and the append-only attempts log."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

# The error classes are defined with the adapter contract, below the tables (adapters raise
# four of them); every error_class column here holds one. Import them from here.
from channels.base import ErrorClass as ErrorClass
from dispatcher.core.db import Base, BigId, UTCDateTime


class DeliveryStatus(StrEnum):
    pending = "pending"  # waiting for a worker (queued, or due to be)
    claimed = "claimed"  # a worker holds it under a lease (see Lease)
    retrying = "retrying"  # failed transiently; due again at available_at
    sent = "sent"
    failed = "failed"
    skipped = "skipped"
    cancelled = "cancelled"


OPEN_STATUSES = (DeliveryStatus.pending, DeliveryStatus.claimed, DeliveryStatus.retrying)
CLAIMABLE_STATUSES = (DeliveryStatus.pending, DeliveryStatus.retrying)
FINAL_STATUSES = (
    DeliveryStatus.sent,
    DeliveryStatus.failed,
    DeliveryStatus.skipped,
    DeliveryStatus.cancelled,
)


class Outcome(StrEnum):
    """How one attempt ended; the failure values are the adapters' error classes."""

    sent = "sent"
    transient = "transient"
    rate_limited = "rate_limited"
    auth = "auth"
    permanent = "permanent"


class Delivery(Base):
    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    recipient_id: Mapped[int] = mapped_column(ForeignKey("recipients.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.pending)
    # The broker message (batch) meant to carry this row; the sweeper checks it is still alive.
    batch_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # While claimed: the stamp of the lease that holds the row (when that lease was first due
    # to end). It is the claim's fencing token: the holder writes its outcome only where the
    # row still carries it. A live holder keeps its lease by renewing it in ``leases``.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Failed rounds that count against max_attempts (rate limits do not).
    failures: Mapped[int] = mapped_column(Integer, default=0)
    # Set when a claim was taken over from a holder that stopped renewing its lease: the next
    # send may repeat one.
    reclaimed: Mapped[bool] = mapped_column(default=False)
    locale: Mapped[str | None] = mapped_column(String(16), nullable=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    error_class: Mapped[str | None] = mapped_column(String(32), nullable=True)  # ErrorClass
    error_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        UniqueConstraint("run_id", "recipient_id", "channel"),
        Index("ix_deliveries_run_id_status", "run_id", "status"),
        Index("ix_deliveries_campaign_id_status", "campaign_id", "status", "channel"),
        Index("ix_deliveries_recipient_id", "recipient_id"),
        Index("ix_deliveries_status_available_at", "status", "available_at"),
        Index("ix_deliveries_batch_id", "batch_id"),
        # Keyset pages in id order within a campaign or a run (search, export), and the
        # search's time range on when a delivery last changed.
        Index("ix_deliveries_campaign_id_id", "campaign_id", "id"),
        Index("ix_deliveries_run_id_id", "run_id", "id"),
        Index("ix_deliveries_updated_at", "updated_at"),
    )


class Attempt(Base):
    """One send attempt. Rows are only ever inserted."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
    error_class: Mapped[str | None] = mapped_column(String(64), nullable=True)  # ErrorClass
    provider_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    provider_reply: Mapped[str | None] = mapped_column(Text, nullable=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    locale: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # The delivery had been claimed by a worker that vanished: this may repeat a send.
    possible_duplicate: Mapped[bool] = mapped_column(default=False)
    worker: Mapped[str | None] = mapped_column(String(100), nullable=True)

    __table_args__ = (Index("ix_attempts_delivery_id", "delivery_id"),)


class Lease(Base):
    """A worker's hold on the rows one claim took, renewed by its process while it lives.

    Written with the claim and deleted with the record of its outcomes (or when its rows are
    given back). The worker process renews it (``beats``) from a thread of its own; the sweeper
    takes its rows back only once it has watched the lease go unrenewed for a whole
    ``lease_seconds`` while the database answered, then marks it ``lost_at``: a holder whose
    lease is lost writes nothing. See :mod:`dispatcher.engine.leases`.
    """

    __tablename__ = "leases"

    token: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    # The stamp its rows carry in ``deliveries.lease_until``: one per claim of a run.
    lease_until: Mapped[datetime] = mapped_column(UTCDateTime)
    batch_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    worker: Mapped[str] = mapped_column(String(100))
    claimed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    renewed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Renewals so far: the sweeper watches this number change, not the holder's clock.
    beats: Mapped[int] = mapped_column(Integer, default=0)
    lost_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (UniqueConstraint("run_id", "lease_until"),)
