"""Recipients: upsert by external id, read with addresses."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from dispatcher.clock import utcnow
from dispatcher.recipients.models import Address, Recipient
from dispatcher.recipients.schemas import RecipientIn, RecipientOut


def upsert_many(*, session: Session, items: Sequence[RecipientIn]) -> tuple[list[Recipient], int]:
    """Create or update recipients by ``external_id``; returns them and how many were new.

    A re-posted recipient is replaced as a whole: its addresses become exactly those posted.
    """
    by_id = {item.external_id: item for item in items}  # the last of duplicates wins
    existing = {
        r.external_id: r
        for r in session.scalars(select(Recipient).where(Recipient.external_id.in_(list(by_id))))
    }
    now = utcnow()
    created = 0
    result: list[Recipient] = []
    for external_id, item in by_id.items():
        recipient = existing.get(external_id)
        if recipient is None:
            recipient = Recipient(external_id=external_id, created_at=now)
            session.add(recipient)
            created += 1
        recipient.full_name = item.full_name
        recipient.birth_date = item.birth_date
        recipient.province = item.province
        recipient.language = item.language
        recipient.kind = item.kind
        recipient.attributes = item.attributes
        recipient.updated_at = now
        current = {a.channel: a for a in recipient.addresses}
        for channel, address in current.items():
            if channel not in item.addresses:
                recipient.addresses.remove(address)
        for channel, value in item.addresses.items():
            known = current.get(channel)
            if known is None:
                recipient.addresses.append(Address(channel=channel, value=value))
            elif known.value != value:
                # A new address deserves a fresh chance even if the old one was dead.
                known.value = value
                known.dead_at = None
                known.dead_reason = None
        result.append(recipient)
    session.flush()
    return result, created


def get_by_external_id(*, session: Session, external_id: str) -> Recipient | None:
    return session.scalar(select(Recipient).where(Recipient.external_id == external_id))


def to_out(recipient: Recipient) -> RecipientOut:
    return RecipientOut(
        id=recipient.id,
        external_id=recipient.external_id,
        full_name=recipient.full_name,
        birth_date=recipient.birth_date,
        province=recipient.province,
        language=recipient.language,
        kind=recipient.kind,
        addresses={a.channel: a.value for a in recipient.addresses},
        dead_addresses={
            a.channel: a.dead_reason or "dead" for a in recipient.addresses if a.dead_at
        },
        attributes=recipient.attributes or {},
        created_at=recipient.created_at,
        updated_at=recipient.updated_at,
    )
