"""Consent rules, the signed unsubscribe token, and the SQL the planner filters with.

Categories: greetings (greeting), news (policy_news), warnings (fraud_warning,
disaster_support), transactional. Warnings are critical: only a channel-wide unsubscribe
(category "*") stops them. Transactional messages are answers to the citizen's own business
and are never blocked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.orm import Session

from dispatcher import secrets
from dispatcher.clock import utcnow
from dispatcher.consent.models import OptOut
from dispatcher.recipients.models import Address, Recipient
from dispatcher.sql import insert_for

ALL = "*"
CATEGORY_OF_KIND = {
    "greeting": "greetings",
    "policy_news": "news",
    "fraud_warning": "warnings",
    "disaster_support": "warnings",
    "transactional": "transactional",
}
CATEGORY_NAMES_VI = {
    "greetings": "thư chúc mừng",
    "news": "tin tức, chính sách",
    ALL: "mọi thông báo",
}


def category_of(kind: str) -> str:
    return CATEGORY_OF_KIND.get(kind, "news")


def blocking_categories(kind: str) -> tuple[str, ...]:
    """The opt-out categories that stop a message of ``kind``; empty when nothing can."""
    category = category_of(kind)
    if category == "transactional":
        return ()
    if category == "warnings":
        return (ALL,)
    return (category, ALL)


def unsubscribe_scope(kind: str) -> str:
    """What the one-click link in a message of ``kind`` unsubscribes from."""
    category = category_of(kind)
    return ALL if category == "warnings" else category


def opted_out_clause(kind: str, address: Any = Address) -> ColumnElement[bool] | None:
    """True for address rows whose owner opted out of ``kind`` on that channel; None when
    nothing can block ``kind``. ``address`` may be an alias of :class:`Address`."""
    categories = blocking_categories(kind)
    if not categories:
        return None
    return exists().where(
        OptOut.recipient_id == address.recipient_id,
        OptOut.channel == address.channel,
        OptOut.category.in_(categories),
    )


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    recipient_id: int
    channel: str
    category: str


def token_for(key: bytes, *, recipient_id: int, channel: str, kind: str) -> str:
    return secrets.sign(key, f"{recipient_id}.{channel}.{unsubscribe_scope(kind)}")


def read_token(key: bytes, token: str) -> Unsubscribe | None:
    payload = secrets.verify(key, token)
    if payload is None:
        return None
    try:
        recipient, channel, category = payload.split(".", 2)
        return Unsubscribe(int(recipient), channel, category)
    except ValueError:
        return None


def opt_out(*, session: Session, request: Unsubscribe, source: str = "link") -> bool:
    """Record the opt-out (idempotent); False when the recipient no longer exists."""
    if session.get(Recipient, request.recipient_id) is None:
        return False
    session.execute(
        insert_for(session, OptOut)
        .values(
            recipient_id=request.recipient_id,
            channel=request.channel,
            category=request.category,
            source=source,
            created_at=utcnow(),
        )
        .on_conflict_do_nothing()
    )
    return True


def is_opted_out(*, session: Session, recipient_id: int, channel: str, kind: str) -> bool:
    categories = blocking_categories(kind)
    if not categories:
        return False
    found = session.scalar(
        select(OptOut.id)
        .where(
            OptOut.recipient_id == recipient_id,
            OptOut.channel == channel,
            OptOut.category.in_(categories),
        )
        .limit(1)
    )
    return found is not None
