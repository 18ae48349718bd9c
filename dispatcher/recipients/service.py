"""Recipients: upsert by external id, read with addresses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dispatcher.kit.clock import utcnow
from dispatcher.recipients.masking import MASK, mask_address, mask_text
from dispatcher.recipients.schemas import RecipientIn, RecipientOut
from dispatcher.tables.recipients import Address, Recipient


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


def to_out(recipient: Recipient, *, masked: bool = False) -> RecipientOut:
    """The recipient as the API shows it; ``masked`` for operations staff, who see every
    address (and anything in the attributes shaped like one) only in its masked form."""
    addresses = {a.channel: a.value for a in recipient.addresses}
    dead = {a.channel: a.dead_reason or "dead" for a in recipient.addresses if a.dead_at}
    attributes = recipient.attributes or {}
    if masked:
        known = list(addresses.values())
        addresses = {channel: mask_address(value) or MASK for channel, value in addresses.items()}
        dead = {channel: mask_text(reason, known) or "" for channel, reason in dead.items()}
        attributes = _masked(attributes, known)
    return RecipientOut(
        id=recipient.id,
        external_id=recipient.external_id,
        full_name=recipient.full_name,
        birth_date=recipient.birth_date,
        province=recipient.province,
        language=recipient.language,
        kind=recipient.kind,
        addresses=addresses,
        dead_addresses=dead,
        attributes=attributes,
        created_at=recipient.created_at,
        updated_at=recipient.updated_at,
    )


def _masked(value: Any, known: list[str]) -> Any:
    """``value`` (attributes, as JSON) with the text in it through :func:`mask_text`."""
    if isinstance(value, str):
        return mask_text(value, known)
    if isinstance(value, dict):
        return {key: _masked(item, known) for key, item in value.items()}
    if isinstance(value, list):
        return [_masked(item, known) for item in value]
    return value
