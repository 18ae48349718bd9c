"""Deliveries — one per (run, recipient, channel) — the append-only attempts log, and the
batches that hold a run's planned deliveries until a worker writes them with their outcome.

Every index below names the query it serves. The ones only open work needs are *partial*
(``WHERE status IN (...)``): a delivery written once with its outcome never enters them. A
query meant to use one repeats its predicate with literal values (:func:`open_delivery`,
:func:`claimable_delivery`, :func:`open_batch`): SQLite uses a partial index only for a query
whose WHERE holds the index's own terms, and PostgreSQL cannot prove a bound parameter's.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

# The error classes are defined with the adapter contract, below the tables (adapters raise
# four of them); every error_class column here holds one. Import them from here.
from channels.base import ErrorClass as ErrorClass
from dispatcher.core.db import Base, BigId, UTCDateTime


def _run_period(context: Any) -> int:
    """A delivery written without its period takes its run's (the bulk writers give it)."""
    run_id = context.get_current_parameters()["run_id"]
    return int(
        context.connection.execute(
            text("SELECT period FROM runs WHERE id = :id"), {"id": run_id}
        ).scalar_one()
    )


def _delivery_period(context: Any) -> int:
    """An attempt written without its period takes its delivery's."""
    delivery_id = context.get_current_parameters()["delivery_id"]
    return int(
        context.connection.execute(
            text("SELECT period FROM deliveries WHERE id = :id"), {"id": delivery_id}
        ).scalar_one()
    )


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


def _in(column: Any, values: tuple[str, ...]) -> ColumnElement[bool]:
    return column.in_([literal_column(f"'{value}'") for value in values])


def _where(values: tuple[str, ...]) -> Any:
    return text("status IN (" + ", ".join(f"'{value}'" for value in values) + ")")


_OPEN = tuple(s.value for s in OPEN_STATUSES)
_CLAIMABLE = tuple(s.value for s in CLAIMABLE_STATUSES)


def open_delivery(status: Any) -> ColumnElement[bool]:
    """``status IN ('pending', 'claimed', 'retrying')`` with literal values: the predicate of
    the partial indexes on open deliveries."""
    return _in(status, _OPEN)


def claimable_delivery(status: Any) -> ColumnElement[bool]:
    """``status IN ('pending', 'retrying')`` with literal values (the due index's predicate)."""
    return _in(status, _CLAIMABLE)


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
    # Foreign keys on SQLite only: on PostgreSQL their triggers per inserted row cost as much
    # as the rest of the row, and delete triggers do their ON DELETE CASCADE (revision 0022).
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
    # The month of its run in Vietnam time, YYYYMM (``runs.period``): on PostgreSQL the table is
    # partitioned by it, and its primary key, its unique constraint and the attempts' foreign
    # key include it (dispatcher.tables.partitions).
    period: Mapped[int] = mapped_column(Integer, default=_run_period)

    __table_args__ = (
        # The planner's ON CONFLICT DO NOTHING (a page or a fallback hop planned twice) and
        # the promise of one delivery per person and channel in a run.
        UniqueConstraint("run_id", "recipient_id", "channel"),
        # Reports and campaign counts (GROUP BY channel, status of a campaign; on PostgreSQL
        # the counts come from delivery_tallies), the search and export of a campaign's
        # deliveries in one status (its few failed ones among millions sent), and a
        # cancellation's open rows of a campaign.
        Index("ix_deliveries_campaign_id_status", "campaign_id", "status", "channel"),
        # "Did citizen X get message Y": the search by recipient; also ON DELETE CASCADE from
        # recipients.
        Index("ix_deliveries_recipient_id", "recipient_id"),
        # Open rows only (retries, fallback hops, one-off messages, rows of the row path):
        # the sweeper's due rows (engine.recovery.requeue_orphans, stalled_batches) ...
        Index(
            "ix_deliveries_due",
            "available_at",
            sqlite_where=_where(_CLAIMABLE),
            postgresql_where=_where(_CLAIMABLE),
        ),
        # ... a row claim by its batch id (engine.claim), the sweeper's re-batching ...
        Index(
            "ix_deliveries_open_batch_id",
            "batch_id",
            sqlite_where=_where(_OPEN),
            postgresql_where=_where(_OPEN),
        ),
        # ... and whether a run still has an open row (run completion, lease give-back).
        Index(
            "ix_deliveries_open_run_id",
            "run_id",
            sqlite_where=_where(_OPEN),
            postgresql_where=_where(_OPEN),
        ),
        # Keyset pages in id order within a campaign or a run (search, CSV export, a run's
        # report), and the search's time range on when a delivery last changed.
        Index("ix_deliveries_campaign_id_id", "campaign_id", "id"),
        Index("ix_deliveries_run_id_id", "run_id", "id"),
        Index("ix_deliveries_updated_at", "updated_at"),
        # Ids are never reused on SQLite either: a batch reserves its deliveries' ids when it
        # is planned (engine.batches.reserve_ids) and inserts them only once sent.
        {"sqlite_autoincrement": True},
    )


class Attempt(Base):
    """One send attempt. Rows are only ever inserted."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # A foreign key on SQLite only: on PostgreSQL its trigger per inserted row cost more than
    # the rest of the row, and only the engine's record writes attempts, with their delivery
    # (revision 0020); a delete trigger does its ON DELETE CASCADE there (revision 0022).
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
    # Its delivery's period (the partition key on PostgreSQL).
    period: Mapped[int] = mapped_column(Integer, default=_delivery_period)

    # A delivery's attempts (search, CSV export's possible_duplicate, audit verification's
    # count per delivery); also ON DELETE CASCADE from deliveries.
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


class BatchStatus(StrEnum):
    open = "open"  # planned, waiting for a worker (queued, or due to be)
    claimed = "claimed"  # a worker holds it under a lease
    done = "done"  # its deliveries are written, with their outcomes
    cancelled = "cancelled"  # its run was cancelled: its deliveries are written as cancelled


OPEN_BATCH_STATUSES = (BatchStatus.open, BatchStatus.claimed)
_OPEN_BATCH = tuple(s.value for s in OPEN_BATCH_STATUSES)


def open_batch(status: Any) -> ColumnElement[bool]:
    """``status IN ('open', 'claimed')`` with literal values (the open batches' indexes)."""
    return _in(status, _OPEN_BATCH)


class Batch(Base):
    """Up to ``batch_size`` planned deliveries of one run on one channel, as one row.

    The planner writes it instead of one pending row per delivery; the worker that claims it
    writes its deliveries once, with their outcomes, and closes it in the same transaction
    (see :mod:`dispatcher.engine.batches`). Its deliveries' ids are reserved when it is
    planned, so a message carries its delivery id before the row exists, and a batch sent
    again after a crash sends the same ids. Until it is done, readers count and find its
    deliveries through it: pending while open, claimed while claimed.
    """

    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The id its job, its marker in Redis and its lease carry: a new one each time it is queued
    # again, so that an old job claims nothing. None while given back and not yet re-queued.
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.open)
    size: Mapped[int] = mapped_column(Integer)
    # The recipients, ascending, as differences from the one before in base 36, comma-separated.
    recipients: Mapped[str] = mapped_column(Text)
    # The deliveries' reserved ids, one per recipient in the same order, as runs "a-b,c-d".
    delivery_ids: Mapped[str] = mapped_column(Text)
    first_id: Mapped[int] = mapped_column(BigInteger)
    last_id: Mapped[int] = mapped_column(BigInteger)
    min_recipient_id: Mapped[int] = mapped_column(BigInteger)
    max_recipient_id: Mapped[int] = mapped_column(BigInteger)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # While claimed: the stamp of the lease that holds it (as ``Delivery.lease_until``).
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Taken back from a worker that stopped renewing its lease: its next send may repeat one.
    reclaimed: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        # A worker's claim of the batch its job names, and the record's fence.
        Index("ix_batches_job_id", "job_id"),
        # Open batches only: whether a run still has open work (run completion), and the
        # sweeper's lease give-back ...
        Index(
            "ix_batches_open_run_id",
            "run_id",
            sqlite_where=_where(_OPEN_BATCH),
            postgresql_where=_where(_OPEN_BATCH),
        ),
        # ... a campaign's pending deliveries (counts, reports, search, export, cancellation) ...
        Index(
            "ix_batches_open_campaign_id",
            "campaign_id",
            "first_id",
            sqlite_where=_where(_OPEN_BATCH),
            postgresql_where=_where(_OPEN_BATCH),
        ),
        # ... and the open batch holding a recipient (the search by recipient).
        Index(
            "ix_batches_open_recipients",
            "min_recipient_id",
            "max_recipient_id",
            sqlite_where=_where(_OPEN_BATCH),
            postgresql_where=_where(_OPEN_BATCH),
        ),
    )


class DeliveryTally(Base):
    """How many deliveries a run has on a channel in a status, kept by PostgreSQL itself.

    Triggers on ``deliveries`` (revision 0021) add every insert, status change and delete
    here, in the transaction that makes it, whatever code or statement made it; so a
    campaign's counts read a few rows instead of grouping all its deliveries. A run's count is
    the sum of its rows over ``slot``: each session writes its own slot (its backend's pid), so
    concurrent writers never wait for one another's row. Open batches' deliveries, which have
    no row yet, are not here: readers add :func:`dispatcher.engine.batches.open_counts`. An
    archived month's runs lose their tallies with their rows. Empty on SQLite, whose per-row
    triggers cost more than the row (see :mod:`dispatcher.engine.tallies`).
    """

    __tablename__ = "delivery_tallies"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    slot: Mapped[int] = mapped_column(Integer)
    # May be negative in one slot (a row written by one session, changed by another).
    n: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        # The triggers' upsert; also a run's tallies (a run's report, the archive).
        UniqueConstraint("run_id", "channel", "status", "slot"),
        # A campaign's counts (GET /v1/campaigns/{id}, the dashboard, its report).
        Index("ix_delivery_tallies_campaign_id", "campaign_id"),
    )
