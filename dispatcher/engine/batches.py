"""Batch rows: a run's planned deliveries, one row per page and channel, until they are sent.

The planner writes each page of a run's audience on each channel as one
:class:`~dispatcher.tables.deliveries.Batch` (the recipients and the deliveries' reserved ids,
compactly encoded) instead of one pending row per delivery. The worker that claims the batch
inserts its deliveries once, with their outcomes, and closes it in the same transaction
(:mod:`.claim`, :mod:`.record`). So a delivery that goes out at its first try is one row,
written once: no pending insert, no claim update, no outcome update, and no index entry
rewritten three times.

Ids are reserved when a batch is planned (:func:`reserve_ids`: the sequence on PostgreSQL,
``sqlite_sequence`` on SQLite, whose ``deliveries`` has AUTOINCREMENT): a message carries its
delivery id before the row exists (the email Message-ID, the VssID inbox's idempotency key),
and a batch sent again after a crash sends the same ids.

Until a batch is done its deliveries are found through it. This module answers for them what
the rows would have: counts by status (:func:`open_counts`; open counts as ``pending``, claimed
as ``claimed``), the pending deliveries themselves in id order (:func:`open_members`, for the
search and the export), whether a run has any (:func:`run_has_open`), and a cancellation, which
writes an open batch's deliveries as ``cancelled`` rows (:func:`cancel_open`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Exists, Table, exists, func, select, update
from sqlalchemy.orm import Session

from dispatcher import audit
from dispatcher.engine.bulk import DELIVERY_INSERT_COLUMNS, BulkWrites
from dispatcher.tables.campaigns import Run
from dispatcher.tables.deliveries import (
    Batch,
    BatchStatus,
    Delivery,
    DeliveryStatus,
    open_batch,
)

batches_t: Table = Batch.__table__  # type: ignore[assignment]
deliveries_t: Table = Delivery.__table__  # type: ignore[assignment]
runs_t: Table = Run.__table__  # type: ignore[assignment]

# How an open batch's deliveries stand, as the rows would say.
MEMBER_STATUS = {
    BatchStatus.open.value: DeliveryStatus.pending.value,
    BatchStatus.claimed.value: DeliveryStatus.claimed.value,
}


# -- encoding ------------------------------------------------------------------------------------


def encode_recipients(ids: Sequence[int]) -> str:
    """Ascending recipient ids as differences from the one before, in base 36."""
    out: list[str] = []
    last = 0
    for value in ids:
        out.append(_base36(value - last))
        last = value
    return ",".join(out)


def _base36(value: int) -> str:
    if value < 36:
        return "0123456789abcdefghijklmnopqrstuvwxyz"[value]
    digits: list[str] = []
    while value:
        value, digit = divmod(value, 36)
        digits.append("0123456789abcdefghijklmnopqrstuvwxyz"[digit])
    return "".join(reversed(digits))


def decode_recipients(text: str) -> list[int]:
    out: list[int] = []
    current = 0
    for part in text.split(","):
        current += int(part, 36)
        out.append(current)
    return out


def encode_ids(ids: Sequence[int]) -> str:
    """Ids (ascending) as runs: ``"5-9,12,20-21"``."""
    parts: list[str] = []
    start = prev = ids[0]
    for value in ids[1:]:
        if value == prev + 1:
            prev = value
            continue
        parts.append(f"{start}-{prev}" if prev != start else str(start))
        start = prev = value
    parts.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(parts)


def decode_ids(text: str) -> list[int]:
    ids: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        ids.extend(range(int(first), int(last or first) + 1))
    return ids


def members_digest(recipients: str, delivery_ids: str, channel: str) -> str:
    """What the planner's audit entry says of a batch: a digest of who gets which id where."""
    return hashlib.sha256(f"{channel}|{recipients}|{delivery_ids}".encode()).hexdigest()


# -- ids -----------------------------------------------------------------------------------------


def _id_sequence(connection: Connection) -> str:
    """The deliveries' id sequence as a quoted literal, asked once per database connection:
    ``pg_get_serial_sequence`` in the reserving query itself ran once per id, and cost the
    database 15 µs of the 20 µs each id took."""
    name = connection.info.get("deliveries_id_sequence")
    if name is None:
        found = connection.exec_driver_sql(
            "SELECT quote_literal(pg_get_serial_sequence('deliveries', 'id'))"
        ).scalar_one()
        name = connection.info["deliveries_id_sequence"] = str(found)
    return str(name)


def reserve_ids(connection: Connection, count: int) -> list[int]:
    """``count`` delivery ids no other row will take, ascending (contiguous on SQLite, almost
    always on PostgreSQL)."""
    if count <= 0:
        return []
    if connection.dialect.name == "postgresql":
        rows = connection.exec_driver_sql(
            f"SELECT nextval({_id_sequence(connection)}::regclass) FROM generate_series(1, %(n)s)",
            {"n": count},
        ).all()
        return sorted(int(row[0]) for row in rows)
    # SQLite: AUTOINCREMENT never goes below sqlite_sequence's seq, which we move past the
    # ids we take (the writers take turns, so nobody moves it meanwhile).
    connection.exec_driver_sql(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'deliveries', 0 "
        "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'deliveries')"
    )
    last = connection.exec_driver_sql(
        "UPDATE sqlite_sequence SET seq = max(seq, "
        "(SELECT coalesce(max(id), 0) FROM deliveries)) + ? WHERE name = 'deliveries' "
        "RETURNING seq",
        (count,),
    ).scalar_one()
    return list(range(int(last) - count + 1, int(last) + 1))


# -- reading what an open batch holds ------------------------------------------------------------


@dataclass(slots=True)
class Pending:
    """An open batch's delivery, with the fields a delivery row would have."""

    id: int
    run_id: int
    campaign_id: int
    recipient_id: int
    channel: str
    status: str
    available_at: datetime
    created_at: datetime
    updated_at: datetime
    batch_id: str | None = None
    attempts: int = 0
    failures: int = 0
    locale: str | None = None
    provider_message_id: str | None = None
    error_class: str | None = None
    error_reason: str | None = None
    sent_at: datetime | None = None
    reclaimed: bool = False


def members(batch: Any) -> Iterator[Pending]:
    """The deliveries of a batch row (a Batch or a row with its columns)."""
    status = MEMBER_STATUS.get(batch.status, batch.status)
    for delivery_id, recipient_id in zip(
        decode_ids(batch.delivery_ids), decode_recipients(batch.recipients), strict=True
    ):
        yield Pending(
            id=delivery_id,
            run_id=batch.run_id,
            campaign_id=batch.campaign_id,
            recipient_id=recipient_id,
            channel=batch.channel,
            status=status,
            available_at=batch.available_at,
            created_at=batch.created_at,
            updated_at=batch.updated_at,
            batch_id=batch.job_id,
            reclaimed=bool(batch.reclaimed),
        )


def open_counts(
    session: Session, *where: ColumnElement[bool], by: Sequence[str] = ("channel", "status")
) -> list[tuple[Any, ...]]:
    """Open batches' deliveries counted as rows would be: (the ``by`` columns..., count),
    ``status`` read as the deliveries' (``pending`` or ``claimed``). ``where`` is on Batch."""
    b = batches_t.c
    rows = session.execute(
        select(*(b[name] for name in by), func.sum(b.size))
        .where(open_batch(b.status), *where)
        .group_by(*(b[name] for name in by))
    ).all()
    at = by.index("status") if "status" in by else None
    out = []
    for row in rows:
        values = list(row)
        if at is not None:
            values[at] = MEMBER_STATUS.get(values[at], values[at])
        values[-1] = int(values[-1] or 0)
        out.append(tuple(values))
    return out


def open_members(
    session: Session,
    *where: ColumnElement[bool],
    recipient_ids: Iterable[int] | None = None,
    after_id: int | None = None,
    limit: int | None = None,
) -> list[Pending]:
    """The deliveries of open batches ``where`` selects (on Batch), in id order: after
    ``after_id``, at most ``limit``, only the ``recipient_ids`` given (found by each batch's
    recipient range)."""
    b = batches_t.c
    query = select(Batch).where(open_batch(b.status), *where).order_by(b.first_id)
    wanted: set[int] | None = None
    if recipient_ids is not None:
        wanted = set(recipient_ids)
        if not wanted:
            return []
        query = query.where(b.min_recipient_id <= max(wanted), b.max_recipient_id >= min(wanted))
    if after_id is not None:
        query = query.where(b.last_id > after_id)
    out: list[Pending] = []
    for batch in session.scalars(query):
        if limit is not None and len(out) >= limit and batch.first_id > out[-1].id:
            break
        for member in members(batch):
            if after_id is not None and member.id <= after_id:
                continue
            if wanted is not None and member.recipient_id not in wanted:
                continue
            out.append(member)
        if limit is not None and len(out) >= limit:
            out.sort(key=lambda m: m.id)
            del out[limit:]
    out.sort(key=lambda m: m.id)
    return out if limit is None else out[:limit]


def open_in_run(run_id: int) -> Exists:
    """``EXISTS`` an open batch of the run (through the open batches' partial index)."""
    b = batches_t.c
    return exists().where(b.run_id == run_id, open_batch(b.status))


def queued(session: Session | Connection, run_id: int, *, up_to: int) -> int:
    """The run's batches not yet taken by a worker, counted up to ``up_to``."""
    b = batches_t.c
    waiting = (
        select(b.id)
        .where(b.run_id == run_id, open_batch(b.status), b.status == BatchStatus.open.value)
        .limit(up_to)
        .subquery()
    )
    return int(session.scalar(select(func.count()).select_from(waiting)) or 0)


def next_due(session: Session | Connection, run_id: int) -> datetime | None:
    """When the earliest of the run's batches not yet taken falls due (None: there is none)."""
    b = batches_t.c
    due: datetime | None = session.scalar(
        select(func.min(b.available_at)).where(
            b.run_id == run_id, open_batch(b.status), b.status == BatchStatus.open.value
        )
    )
    return due


def run_has_open(session: Session | Connection, run_id: int) -> bool:
    return bool(session.scalar(select(open_in_run(run_id))))


# -- a cancellation ------------------------------------------------------------------------------


# The delivery columns that hold a time (bound in the driver's form by the bulk insert).
STAMPED = frozenset({"available_at", "created_at", "updated_at", "sent_at"})


def cancel_open(
    session: Session,
    *where: ColumnElement[bool],
    now: datetime,
    reason: str,
    actor: str,
    subject: str,
) -> int:
    """Write the deliveries of the open (unclaimed) batches ``where`` selects as ``cancelled``
    rows, named in audit entries, and close the batches; returns the deliveries written.

    A claimed batch is left to its worker, which sends and records it (as rows a worker holds
    were before)."""
    connection = session.connection()
    bulk = BulkWrites(connection.dialect)
    b = batches_t.c
    written = 0
    while True:
        batches = (
            session.execute(
                select(Batch)
                .where(b.status == BatchStatus.open.value, *where)
                .order_by(b.id)
                .limit(50)
                .with_for_update()
            )
            .scalars()
            .all()
        )
        if not batches:
            return written
        rows: list[dict[str, Any]] = []
        # Each row goes to its run's month (its partition on PostgreSQL).
        periods = {
            run_id: period
            for run_id, period in session.execute(
                select(runs_t.c.id, runs_t.c.period).where(
                    runs_t.c.id.in_({batch.run_id for batch in batches})
                )
            )
        }
        for batch in batches:
            for member in members(batch):
                rows.append(
                    {
                        "id": member.id,
                        "run_id": member.run_id,
                        "campaign_id": member.campaign_id,
                        "recipient_id": member.recipient_id,
                        "channel": member.channel,
                        "status": DeliveryStatus.cancelled.value,
                        "batch_id": batch.job_id,
                        "available_at": batch.available_at,
                        "attempts": 0,
                        "failures": 0,
                        "reclaimed": batch.reclaimed,
                        "error_reason": reason,
                        "created_at": batch.created_at,
                        "updated_at": now,
                        "locale": None,
                        "provider_message_id": None,
                        "error_class": None,
                        "sent_at": None,
                        "period": periods[batch.run_id],
                    }
                )
        connection.execute(
            update(batches_t)
            .where(b.id.in_([batch.id for batch in batches]))
            .values(status=BatchStatus.cancelled.value, lease_until=None, updated_at=now)
        )
        # The record's bulk insert (COPY on PostgreSQL, multi-row statements on SQLite), not
        # one statement per row: on PostgreSQL the tallies' trigger runs once per statement.
        bulk.insert_deliveries(
            connection,
            [
                tuple(
                    bulk.stamp(row[name]) if name in STAMPED else row[name]
                    for name in DELIVERY_INSERT_COLUMNS
                )
                for row in rows
            ],
        )
        for entry in audit.deliveries_drafts(
            rows, actor=actor, action=audit.CANCELLED, subject=subject
        ):
            audit.append(connection, entry)
        written += len(rows)
        session.expire_all()


def who(session: Session, pending: Sequence[Pending]) -> dict[tuple[int, str], tuple[str, Any]]:
    """Each pending delivery's recipient's external id and current address on its channel,
    by (recipient id, channel), as the readers join them to rows."""
    from dispatcher.tables.recipients import Address, Recipient

    recipient_ids = sorted({p.recipient_id for p in pending})
    if not recipient_ids:
        return {}
    external: dict[int, str] = {}
    addresses: dict[tuple[int, str], Any] = {}
    for start in range(0, len(recipient_ids), 1000):
        part = recipient_ids[start : start + 1000]
        for rid, external_id in session.execute(
            select(Recipient.id, Recipient.external_id).where(Recipient.id.in_(part))
        ):
            external[rid] = external_id
        for rid, channel, value in session.execute(
            select(Address.recipient_id, Address.channel, Address.value).where(
                Address.recipient_id.in_(part)
            )
        ):
            addresses[(rid, channel)] = value
    return {
        (p.recipient_id, p.channel): (
            external.get(p.recipient_id, ""),
            addresses.get((p.recipient_id, p.channel)),
        )
        for p in pending
    }
