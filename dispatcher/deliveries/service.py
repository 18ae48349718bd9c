"""Reading deliveries and their attempts for operations staff."""

from __future__ import annotations

import base64
from collections import defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session

from dispatcher.deliveries.models import OPEN_STATUSES, Attempt, Delivery, DeliveryStatus
from dispatcher.deliveries.schemas import AttemptOut, DeliveryOut, DeliveryPage
from dispatcher.errors import Invalid
from dispatcher.recipients.models import Recipient


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"d:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, value = raw.partition(":")
        if prefix != "d":
            raise ValueError(cursor)
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise Invalid("not a cursor this API returned", loc=["query", "cursor"]) from None


def search(
    *,
    session: Session,
    campaign_id: int | None = None,
    run_id: int | None = None,
    recipient: str | None = None,
    status: str | None = None,
    channel: str | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> DeliveryPage:
    query = (
        select(Delivery, Recipient.external_id)
        .join(Recipient, Recipient.id == Delivery.recipient_id)
        .order_by(Delivery.id)
        .limit(limit + 1)
    )
    if campaign_id is not None:
        query = query.where(Delivery.campaign_id == campaign_id)
    if run_id is not None:
        query = query.where(Delivery.run_id == run_id)
    if recipient is not None:
        query = query.where(Recipient.external_id == recipient)
    if status is not None:
        if status not in DeliveryStatus.__members__:
            known = ", ".join(DeliveryStatus.__members__)
            raise Invalid(f"unknown status {status!r}; one of {known}", loc=["query", "status"])
        query = query.where(Delivery.status == status)
    if channel is not None:
        query = query.where(Delivery.channel == channel)
    if cursor is not None:
        query = query.where(Delivery.id > decode_cursor(cursor))
    rows = session.execute(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    attempts: dict[int, list[AttemptOut]] = defaultdict(list)
    if rows:
        for attempt in session.scalars(
            select(Attempt)
            .where(Attempt.delivery_id.in_([d.id for d, _ in rows]))
            .order_by(Attempt.delivery_id, Attempt.number, Attempt.id)
        ):
            attempts[attempt.delivery_id].append(
                AttemptOut(
                    number=attempt.number,
                    started_at=attempt.started_at,
                    duration_ms=attempt.duration_ms,
                    outcome=attempt.outcome,
                    error_class=attempt.error_class,
                    provider_code=attempt.provider_code,
                    provider_reply=attempt.provider_reply,
                    provider_message_id=attempt.provider_message_id,
                    locale=attempt.locale,
                    possible_duplicate=attempt.possible_duplicate,
                )
            )
    items = [
        DeliveryOut(
            id=d.id,
            campaign_id=d.campaign_id,
            run_id=d.run_id,
            recipient=external_id,
            channel=d.channel,
            status=d.status,
            attempts_count=d.attempts,
            locale=d.locale,
            provider_message_id=d.provider_message_id,
            error_class=d.error_class,
            error_reason=d.error_reason,
            created_at=d.created_at,
            updated_at=d.updated_at,
            sent_at=d.sent_at,
            next_attempt_at=d.available_at if d.status in OPEN_STATUSES else None,
            attempts=attempts.get(d.id, []),
        )
        for d, external_id in rows
    ]
    return DeliveryPage(items=items, next_cursor=encode_cursor(rows[-1][0].id) if more else None)
