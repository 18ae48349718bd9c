"""A campaign's deliveries as CSV, streamed page by page.

The rows are read in keyset pages of ``PAGE_SIZE`` in id order (the ``(campaign_id, id)``
index), each page in its own short read-only transaction: memory stays flat however large
the campaign, and on SQLite no snapshot is held open while a slow client downloads. A row
written after the export began may or may not appear; none appears twice.

The text is UTF-8 with a byte-order mark, so spreadsheet programs read Vietnamese correctly.
Times are UTC, ``YYYY-MM-DD HH:MM:SS``. Addresses are masked. A cell that a spreadsheet would
take for a formula (it starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return) is
prefixed with ``'``: an error reason comes from outside and must not run as a formula, and a
masked phone number (``+84 9** *** 678``) would otherwise be read as one.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, select
from sqlalchemy.orm import Session

from dispatcher.core.db import Database
from dispatcher.engine import batches
from dispatcher.recipients.masking import mask_address, mask_text
from dispatcher.tables.deliveries import Attempt, Batch, Delivery
from dispatcher.tables.recipients import Address, Recipient

PAGE_SIZE = 1_000
BOM = "\ufeff"
COLUMNS = (
    "delivery_id",
    "run_id",
    "recipient",
    "channel",
    "address",
    "status",
    "error_class",
    "error_reason",
    "attempts",
    "possible_duplicate",
    "created_at_utc",
    "sent_at_utc",
    "updated_at_utc",
)
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def filename(campaign_id: int) -> str:
    return f"campaign-{campaign_id}-deliveries.csv"


def read_page(
    session: Session, *, campaign_id: int, after_id: int, size: int = PAGE_SIZE
) -> Sequence[Any]:
    """The next ``size`` deliveries of the campaign after ``after_id``, with what the CSV shows:
    its rows, and the pending deliveries of its open batches (which have no row yet), in id
    order."""
    rows = list(_read_rows(session, campaign_id=campaign_id, after_id=after_id, size=size))
    pending = batches.open_members(
        session, Batch.campaign_id == campaign_id, after_id=after_id, limit=size
    )
    if not pending:
        return rows
    known = batches.who(session, pending)
    for p in pending:
        external_id, address = known[(p.recipient_id, p.channel)]
        rows.append(
            (
                p.id,
                p.run_id,
                external_id,
                p.channel,
                address,
                p.status,
                None,
                None,
                0,
                False,
                p.created_at,
                None,
                p.updated_at,
            )
        )
    rows.sort(key=lambda row: row[0])
    return rows[:size]


def _read_rows(session: Session, *, campaign_id: int, after_id: int, size: int) -> Sequence[Any]:
    # On the period too: PostgreSQL then looks in the delivery's own month's attempts only.
    duplicate = exists().where(
        and_(
            Attempt.delivery_id == Delivery.id,
            Attempt.period == Delivery.period,
            Attempt.possible_duplicate.is_(True),
        )
    )
    return session.execute(
        select(
            Delivery.id,
            Delivery.run_id,
            Recipient.external_id,
            Delivery.channel,
            Address.value,
            Delivery.status,
            Delivery.error_class,
            Delivery.error_reason,
            Delivery.attempts,
            duplicate.label("possible_duplicate"),
            Delivery.created_at,
            Delivery.sent_at,
            Delivery.updated_at,
        )
        .join(Recipient, Recipient.id == Delivery.recipient_id)
        .outerjoin(
            Address,
            and_(
                Address.recipient_id == Delivery.recipient_id, Address.channel == Delivery.channel
            ),
        )
        .where(Delivery.campaign_id == campaign_id, Delivery.id > after_id)
        .order_by(Delivery.id)
        .limit(size)
    ).all()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _csv_line(row: Any) -> list[Any]:
    (
        delivery_id,
        run_id,
        external_id,
        channel,
        address,
        status,
        error_class,
        error_reason,
        attempts,
        possible_duplicate,
        created_at,
        sent_at,
        updated_at,
    ) = row
    return [
        _cell(value)
        for value in (
            delivery_id,
            run_id,
            external_id,
            channel,
            mask_address(address),
            status,
            error_class,
            mask_text(error_reason, (address,)),
            attempts,
            bool(possible_duplicate),
            created_at,
            sent_at,
            updated_at,
        )
    ]


def campaign_csv(*, db: Database, campaign_id: int, page_size: int = PAGE_SIZE) -> Iterator[bytes]:
    """The CSV of every delivery of the campaign: the header, then one chunk per page.

    A plain generator doing blocking reads: give it to a ``StreamingResponse``, which runs it
    in a worker thread, never on the event loop."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    yield (BOM + buffer.getvalue()).encode("utf-8")
    after_id = 0
    while True:
        with db.reading() as session:
            rows = read_page(session, campaign_id=campaign_id, after_id=after_id, size=page_size)
        if not rows:
            return
        buffer.seek(0)
        buffer.truncate()
        writer.writerows(_csv_line(row) for row in rows)
        yield buffer.getvalue().encode("utf-8")
        if len(rows) < page_size:
            return
        after_id = rows[-1][0]
