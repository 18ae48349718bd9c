"""Finding deliveries and their attempts, for operations staff.

Filters combine with AND. ``address`` is the recipient's address on the delivery's own channel
(a delivery does not copy the address; it is looked up as it is now). The time range applies to
``updated_at``, when the delivery last changed (queued, claimed, sent, failed, retried):
``since`` inclusive, ``until`` exclusive. Pages follow the delivery id, ascending; the cursor is
the last id of the page before.

A delivery still waiting in an open batch has no row yet (see ``dispatcher.engine.batches``): it
is found through the batch that holds it (by the batch's recipient range when the search names
a recipient or an address), and shown as the row would be: ``pending`` (``claimed`` while a
worker holds its batch), with its reserved id, no attempts, due at the batch's time.

Every address in an answer is masked (``dispatcher.recipients.masking``), also where a
provider's reply or an error reason quotes one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, or_, select
from sqlalchemy.orm import Session

from dispatcher.deliveries.schemas import AttemptOut, DeliveryOut, DeliveryPage
from dispatcher.engine import batches
from dispatcher.kit.cursors import decode_cursor, encode_cursor
from dispatcher.kit.errors import Invalid, NotFound
from dispatcher.recipients.masking import (
    AddressLookup,
    BadAddressQuery,
    address_lookup,
    mask_address,
    mask_known,
    mask_text,
)
from dispatcher.recipients.schemas import known_channels
from dispatcher.tables.campaigns import Campaign
from dispatcher.tables.deliveries import OPEN_STATUSES, Attempt, Batch, Delivery, DeliveryStatus
from dispatcher.tables.recipients import Address, Recipient
from dispatcher.units import scope as scopes


def check_status(status: str) -> None:
    if status not in DeliveryStatus.__members__:
        known = ", ".join(DeliveryStatus.__members__)
        raise Invalid(f"unknown status {status!r}; one of {known}", loc=["query", "status"])


def check_channel(channel: str) -> None:
    known = known_channels()
    if channel not in known:
        names = ", ".join(sorted(known))
        raise Invalid(f"unknown channel {channel!r}; one of {names}", loc=["query", "channel"])


def check_time_range(since: datetime | None, until: datetime | None) -> None:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.utcoffset() is None:
            raise Invalid(
                f"{name}: give the time with its offset, e.g. 2026-03-10T10:00:00+07:00 or "
                "2026-03-10T03:00:00Z",
                loc=["query", name],
            )
    if since is not None and until is not None and since > until:
        raise Invalid(
            f"since ({since.isoformat()}) is after until ({until.isoformat()})",
            loc=["query", "since"],
        )


def parse_address(address: str) -> AddressLookup:
    try:
        return address_lookup(address)
    except BadAddressQuery as exc:
        raise Invalid(str(exc), loc=["query", "address"]) from None


def get_campaign(*, session: Session, campaign_id: int) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} does not exist")
    return campaign


def _glob_literal(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _like_literal(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _matches(value: Any, lookup: AddressLookup, dialect: str) -> ColumnElement[bool]:
    """The address condition, in a form the index on ``addresses.value`` serves: equality, or
    a pattern with a fixed prefix (GLOB on SQLite, which is case-sensitive like the index; LIKE
    on PostgreSQL, whose default escape character is the backslash)."""
    if not lookup.patterns:
        return value.in_(lookup.exact)
    if dialect == "sqlite":
        return or_(
            *(
                value.op("GLOB")(f"{_glob_literal(prefix)}*{_glob_literal(suffix)}")
                for prefix, suffix in lookup.patterns
            )
        )
    return or_(
        *(
            value.like(f"{_like_literal(prefix)}%{_like_literal(suffix)}")
            for prefix, suffix in lookup.patterns
        )
    )


@dataclass(frozen=True, slots=True)
class Filters:
    """What a delivery search narrows by (see the module's note); every field optional."""

    campaign_id: int | None = None
    run_id: int | None = None
    recipient: str | None = None
    address: str | None = None
    status: str | None = None
    channel: str | None = None
    error_class: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def search_query(
    *, dialect: str, filters: Filters, after_id: int | None = None
) -> Select[*tuple[Any, ...]]:
    """Deliveries matching the filters with their recipient's external id and current
    address, in id order; checks the filters (``Invalid`` naming the parameter)."""
    on_address = and_(
        Address.recipient_id == Delivery.recipient_id, Address.channel == Delivery.channel
    )
    query: Select[*tuple[Any, ...]] = (
        select(Delivery, Recipient.external_id, Address.value)
        .join(Recipient, Recipient.id == Delivery.recipient_id)
        .order_by(Delivery.id)
    )
    f = filters
    if f.address is not None:
        # An inner join: SQLite then starts from the addresses index instead of scanning
        # every delivery (it does not turn the outer join into an inner one by itself).
        lookup = parse_address(f.address)
        query = query.join(Address, on_address).where(_matches(Address.value, lookup, dialect))
    else:
        query = query.outerjoin(Address, on_address)
    if f.campaign_id is not None:
        query = query.where(Delivery.campaign_id == f.campaign_id)
    if f.run_id is not None:
        query = query.where(Delivery.run_id == f.run_id)
    if f.recipient is not None:
        query = query.where(Recipient.external_id == f.recipient)
    if f.status is not None:
        check_status(f.status)
        query = query.where(Delivery.status == f.status)
    if f.channel is not None:
        check_channel(f.channel)
        query = query.where(Delivery.channel == f.channel)
    if f.error_class is not None:
        query = query.where(Delivery.error_class == f.error_class)
    check_time_range(f.since, f.until)
    if f.since is not None:
        query = query.where(Delivery.updated_at >= f.since)
    if f.until is not None:
        query = query.where(Delivery.updated_at < f.until)
    if after_id is not None:
        query = query.where(Delivery.id > after_id)
    return query


def pending_matches(
    session: Session, *, dialect: str, filters: Filters, after_id: int | None, limit: int
) -> list[tuple[Any, str, Any]]:
    """The open batches' deliveries that match the filters, in id order, at most ``limit``:
    (delivery, the recipient's external id, the address), as the rows' query gives them."""
    f = filters
    if f.error_class is not None or (
        f.status is not None and f.status not in (DeliveryStatus.pending, DeliveryStatus.claimed)
    ):
        return []
    where: list[ColumnElement[bool]] = []
    if f.campaign_id is not None:
        where.append(Batch.campaign_id == f.campaign_id)
    if f.run_id is not None:
        where.append(Batch.run_id == f.run_id)
    if f.channel is not None:
        where.append(Batch.channel == f.channel)
    if f.status is not None:
        open_status = "open" if f.status == DeliveryStatus.pending else "claimed"
        where.append(Batch.status == open_status)
    if f.since is not None:
        where.append(Batch.updated_at >= f.since)
    if f.until is not None:
        where.append(Batch.updated_at < f.until)
    recipient_ids: set[int] | None = None
    pairs: set[tuple[int, str]] | None = None
    if f.recipient is not None:
        recipient_ids = set(
            session.scalars(select(Recipient.id).where(Recipient.external_id == f.recipient))
        )
    if f.address is not None:
        lookup = parse_address(f.address)
        pairs = {
            (int(rid), str(channel))
            for rid, channel in session.execute(
                select(Address.recipient_id, Address.channel).where(
                    _matches(Address.value, lookup, dialect)
                )
            )
        }
        found = {rid for rid, _ in pairs}
        recipient_ids = found if recipient_ids is None else recipient_ids & found
    matched: list[Any] = []
    after = after_id
    # Pages of members until enough pass the address test (or the batches run out).
    while len(matched) < limit:
        page = batches.open_members(
            session, *where, recipient_ids=recipient_ids, after_id=after, limit=limit
        )
        if not page:
            break
        matched += [p for p in page if pairs is None or (p.recipient_id, p.channel) in pairs]
        if len(page) < limit:
            break
        after = page[-1].id
    matched = matched[:limit]
    known = batches.who(session, matched)
    return [(p, *known[(p.recipient_id, p.channel)]) for p in matched]


def search(
    *, session: Session, filters: Filters, cursor: str | None = None, limit: int = 100
) -> DeliveryPage:
    """One page of deliveries with their attempts, addresses masked (see the module's note).
    The caller sees their units' campaigns' deliveries, to whomever they went (a citizen who
    has since moved out of the unit's territory too)."""
    with scopes.through_deliveries(session):
        return _search(session=session, filters=filters, cursor=cursor, limit=limit)


def _search(*, session: Session, filters: Filters, cursor: str | None, limit: int) -> DeliveryPage:
    dialect = session.get_bind().dialect.name
    after_id = None if cursor is None else decode_cursor(cursor)
    query = search_query(dialect=dialect, filters=filters, after_id=after_id).limit(limit + 1)
    rows: Sequence[Any] = session.execute(query).all()
    pending = pending_matches(
        session, dialect=dialect, filters=filters, after_id=after_id, limit=limit + 1
    )
    if pending:
        rows = sorted([*rows, *pending], key=lambda row: row[0].id)
    more = len(rows) > limit
    rows = rows[:limit]
    addresses = {d.id: value for d, _, value in rows}
    attempts: dict[int, list[AttemptOut]] = defaultdict(list)
    with_rows = [d.id for d, _, _ in rows if isinstance(d, Delivery)]
    if with_rows:
        for attempt in session.scalars(
            select(Attempt)
            .where(Attempt.delivery_id.in_(with_rows))
            .order_by(Attempt.delivery_id, Attempt.number, Attempt.id)
        ):
            known = (addresses[attempt.delivery_id],)
            attempts[attempt.delivery_id].append(
                AttemptOut(
                    number=attempt.number,
                    started_at=attempt.started_at,
                    duration_ms=attempt.duration_ms,
                    outcome=attempt.outcome,
                    error_class=attempt.error_class,
                    provider_code=attempt.provider_code,
                    provider_reply=mask_text(attempt.provider_reply, known),
                    provider_message_id=mask_known(attempt.provider_message_id, known),
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
            address=mask_address(value),
            status=d.status,
            attempts_count=d.attempts,
            locale=d.locale,
            provider_message_id=mask_known(d.provider_message_id, (value,)),
            error_class=d.error_class,
            error_reason=mask_text(d.error_reason, (value,)),
            created_at=d.created_at,
            updated_at=d.updated_at,
            sent_at=d.sent_at,
            next_attempt_at=d.available_at if d.status in OPEN_STATUSES else None,
            attempts=attempts.get(d.id, []),
        )
        for d, external_id, value in rows
    ]
    return DeliveryPage(items=items, next_cursor=encode_cursor(rows[-1][0].id) if more else None)
