"""Recording a delivery status notification: link it to its delivery, then act on it.

A report is linked through the token of the address it was mailed to (VERP) or, failing that,
the Message-ID of the message it returns; either must be the delivery's own (the adapter
derives it from a key of this installation, so nobody outside can name a delivery). It must
also be about the address that delivery went to. Otherwise it is refused and nothing changes.

- A hard bounce (``failed``, ``5.x.x``) marks the address dead (later campaigns skip it) and
  the delivery ``failed`` with ``address_dead``, named in an audit entry of the same
  transaction (action ``deliveries.bounce``).
- A soft bounce (``4.x.x``) leaves the address and the delivery as they are; it is counted on
  the address (``addresses.soft_bounces``) and in ``dispatcher_email_bounces_total``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from channels.base import ErrorClass
from channels.dsn import BounceKind, Report
from dispatcher import audit
from dispatcher.tables.deliveries import Delivery, DeliveryStatus
from dispatcher.tables.recipients import Address

BOUNCED = "deliveries.bounce"
# The local part of the adapter's Message-IDs: d<delivery id>.<tag> (channels.email).
MESSAGE_TOKEN = re.compile(r"^d(\d{1,18})\.[a-z2-7]{16}$")


class BounceRefused(Exception):
    """The report cannot be linked to a delivery of ours; the message says why."""


@dataclass(frozen=True, slots=True)
class BounceOutcome:
    delivery_id: int
    kind: BounceKind
    status: str
    address_dead: bool


def _token(report: Report, token: str | None) -> str:
    if token:
        return token.lower()
    return (report.original_message_id or "").partition("@")[0].lower()


def record_report(
    session: Session, report: Report, *, token: str | None, now: datetime
) -> list[BounceOutcome]:
    """Act on ``report`` in the caller's transaction; raises :class:`BounceRefused` (having
    changed nothing) when it is not about a delivery of ours."""
    message_token = _token(report, token)
    matched = MESSAGE_TOKEN.match(message_token)
    if matched is None:
        raise BounceRefused(
            "the report names no message of ours: no token in the address it was sent to and "
            "no Message-ID of ours in the message it returns"
        )
    delivery_id = int(matched.group(1))
    delivery = session.execute(
        select(
            Delivery.id, Delivery.recipient_id, Delivery.channel, Delivery.provider_message_id
        ).where(Delivery.id == delivery_id)
    ).first()
    sent_as = (delivery.provider_message_id or "") if delivery is not None else ""
    if (
        delivery is None
        or delivery.channel != "email"
        or not sent_as.lower().startswith(message_token + "@")
    ):
        raise BounceRefused(f"no email delivery of ours was sent as {message_token}")
    addresses = session.execute(
        select(Address.id, Address.value).where(
            Address.recipient_id == delivery.recipient_id, Address.channel == "email"
        )
    ).all()
    bounced = [(status, status.kind) for status in report.recipients if status.kind is not None]
    found = []
    for status, _ in bounced:
        address = next((a for a in addresses if status.names(a.value)), None)
        if address is None:
            raise BounceRefused(
                f"the report is about {status.final_recipient}, to whom delivery "
                f"{delivery_id} was not sent"
            )
        found.append(address)

    outcomes = []
    for (status, kind), address in zip(bounced, found, strict=True):
        assert kind is not None
        reason = f"bounced {status.status}" + (
            f": {status.diagnostic}" if status.diagnostic else ""
        )
        dead = kind is BounceKind.hard
        if not dead:
            session.execute(
                update(Address)
                .where(Address.id == address.id)
                .values(soft_bounces=Address.soft_bounces + 1, bounced_at=now)
            )
        else:
            session.execute(
                update(Address)
                .where(Address.id == address.id, Address.dead_at.is_(None))
                .values(dead_at=now, dead_reason=reason[:200], bounced_at=now)
            )
            audit.change_deliveries(
                session,
                [Delivery.id == delivery_id, Delivery.status == DeliveryStatus.sent],
                {
                    "status": DeliveryStatus.failed,
                    "error_class": ErrorClass.address_dead,
                    "error_reason": reason,
                    "updated_at": now,
                },
                actor="bounces",
                action=BOUNCED,
                subject=f"delivery:{delivery_id}",
                status=status.status,
                reporting_mta=report.reporting_mta,
            )
        outcomes.append(BounceOutcome(delivery_id, kind, status.status, dead))
    return outcomes
