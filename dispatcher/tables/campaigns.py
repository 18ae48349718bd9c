"""Campaigns and their runs. A scheduled rule makes a new run at each firing."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from dispatcher.core.db import Base, BigId, JSONType, NullableJSON, UTCDateTime
from dispatcher.kit.clock import utcnow
from dispatcher.tables.partitions import period_of
from dispatcher.tables.units import default_unit


def _scheduled_period(context: Any) -> int:
    """A run's month: the one it stands for, in Vietnam time."""
    at = context.get_current_parameters()["scheduled_for"]
    return period_of(at if at.tzinfo is not None else at.replace(tzinfo=UTC))


class CampaignStatus(StrEnum):
    """Where a campaign is in its life (the moves: dispatcher.campaigns.lifecycle)."""

    draft = "draft"
    submitted = "submitted"  # waiting for an approver
    approved = "approved"
    scheduled = "scheduled"  # approved; its send_at or its rule's next firing is ahead
    running = "running"
    paused = "paused"
    completed = "completed"
    cancelled = "cancelled"


# Approved but not sending yet: a change to what was approved withdraws the approval.
WAITING_STATUSES = (CampaignStatus.approved, CampaignStatus.scheduled)


class RunStatus(StrEnum):
    """Where one run (a firing, a one-shot send, a transactional message) is."""

    planning = "planning"  # the planner is turning the audience into deliveries
    running = "running"
    paused = "paused"
    completed = "completed"
    cancelled = "cancelled"
    skipped = "skipped"  # a firing the scheduler missed beyond its grace period


ACTIVE_RUN_STATUSES = (RunStatus.planning, RunStatus.running)
# Runs not finished: a paused one may go on.
OPEN_RUN_STATUSES = (RunStatus.planning, RunStatus.running, RunStatus.paused)

# The name of a template's transactional stream: one standing campaign per template that holds
# the one-off messages of POST /v1/messages, each its own run. It never completes.
STREAM_PREFIX = "transactional:"


def is_stream(kind: str, name: str, channels: list[str] | None) -> bool:
    """Whether a campaign is a transactional stream rather than a campaign people made (those
    always name at least one channel)."""
    return kind == "transactional" and name.startswith(STREAM_PREFIX) and not channels


class Campaign(Base):
    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    template_id: Mapped[int] = mapped_column(ForeignKey("templates.id"))
    # Frozen at approval; until then the template's latest version is used for previews.
    template_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("template_versions.id"), nullable=True
    )
    audience: Mapped[dict[str, Any]] = mapped_column(JSONType)
    channels: Mapped[list[str]] = mapped_column(JSONType)
    # "all": every listed channel the recipient has; "fallback": the first usable one, then
    # the next after a failure.
    channel_mode: Mapped[str] = mapped_column(String(16), default="all", server_default="all")
    priority: Mapped[str] = mapped_column(String(16))
    send_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A recurring campaign's rule (dispatcher.scheduling.rules), and when it fires next.
    schedule: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON, nullable=True)
    next_fire_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    variables: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=CampaignStatus.draft)  # CampaignStatus
    # Why the campaign is in its state, for people (a cancellation reason, an error).
    status_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The API keys that created, submitted and approved the campaign.
    created_by: Mapped[int | None] = mapped_column(BigId, nullable=True)
    submitted_by: Mapped[int | None] = mapped_column(BigId, nullable=True)
    approved_by: Mapped[int | None] = mapped_column(BigId, nullable=True)
    # Two-person rule: the people behind those keys. The author and the submitter cannot
    # approve, through any of their keys.
    author_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id"), nullable=True)
    submitter_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id"), nullable=True)
    approver_id: Mapped[int | None] = mapped_column(ForeignKey("principals.id"), nullable=True)
    # The unit that owns the campaign: its author's (the root's when made by the service).
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"), default=default_unit, index=True)
    # What the approver saw, frozen: a later difference withdraws the approval. The preview is
    # rendered for the instant the first run stands for (approved_preview_for), and is checked
    # again for that same instant before every run.
    approved_preview_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    approved_preview_for: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The exact version of every saved audience the audience resolved (name -> version id):
    # runs plan from these; a newer version withdraws the approval.
    approved_audience_versions: Mapped[dict[str, int] | None] = mapped_column(
        NullableJSON, nullable=True
    )
    # For information only: membership of a rule (birthdays, a province) changes by design.
    approved_audience_count: Mapped[int | None] = mapped_column(BigId, nullable=True)
    approval_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    runs: Mapped[list[Run]] = relationship(back_populates="campaign", order_by="Run.id")

    __table_args__ = (
        Index("ix_campaigns_status_send_at", "status", "send_at"),
        Index("ix_campaigns_status_next_fire_at", "status", "next_fire_at"),
    )


class Run(Base):
    """One firing of a campaign: the deliveries it planned and their progress."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    # The instant this run stands for.
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime)
    # A scheduled firing's slot, unique per campaign so a slot never runs twice. NULL for
    # transactional messages, which are their own runs.
    slot: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # planning -> running -> completed; or paused / cancelled; skipped for a firing the
    # scheduler missed beyond its grace period (recorded, never silently lost). RunStatus.
    status: Mapped[str] = mapped_column(String(16), default=RunStatus.planning)
    # Fired after its time (the scheduler was down), within the grace period.
    late: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Narrows the campaign's audience for this run only (a birthday run: born on that day).
    audience: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON, nullable=True)
    # Keyset cursor of the planner: the last recipient id turned into deliveries.
    planned_through: Mapped[int] = mapped_column(BigId, default=0)
    planned_count: Mapped[int] = mapped_column(default=0)
    planned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    planner_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The saved audience versions this run plans from (name -> version id), frozen when it
    # starts: its campaign's approved ones.
    audience_versions: Mapped[dict[str, int] | None] = mapped_column(NullableJSON, nullable=True)
    # The template version this run renders with, frozen when it starts.
    template_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("template_versions.id"), nullable=True
    )
    # Extra template context for this run only (a transactional message's variables).
    variables: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # Transactional messages only. The API key that sent it: it may read the message back.
    created_by: Mapped[int | None] = mapped_column(BigId, nullable=True)
    # A digest of the sender's scope and its Idempotency-Key (campaigns.messages.idempotency_token),
    # unique while the key lives; cleared when an expired key is used again. Rows written before
    # revision 0013 hold the bare key, which no longer matches anything.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)
    # SHA-256 of the canonical request that used the key: the same key with another request
    # is refused.
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The month of ``scheduled_for`` in Vietnam time, YYYYMM: the partition its deliveries and
    # their attempts are written to on PostgreSQL (dispatcher.tables.partitions), and the month
    # ``dispatcher archive`` takes them away with.
    period: Mapped[int] = mapped_column(default=_scheduled_period)

    campaign: Mapped[Campaign] = relationship(back_populates="runs")

    __table_args__ = (
        UniqueConstraint("campaign_id", "slot"),
        Index("ix_runs_status", "status"),
    )
