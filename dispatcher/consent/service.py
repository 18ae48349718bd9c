"""Consent rules, the signed unsubscribe token, and the SQL the planner filters with.

An unsubscribe link's token is ``payload.timestamp.signature`` (itsdangerous's timed signer,
HMAC-SHA256 under the service's signing key): only the exact text the service made is
accepted, and only for ``DISPATCHER_UNSUBSCRIBE_LINK_DAYS`` after it was sent. Links made
before links were dated (``payload.signature``) are honoured for as long after the upgrade
that brought dated links.

Categories: greetings (greeting), news (policy_news), warnings (fraud_warning,
disaster_support), transactional. Warnings are critical: only a channel-wide unsubscribe
(category "*") stops them. Transactional messages are answers to the citizen's own business
and are never blocked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

from itsdangerous import BadData, BadSignature, TimestampSigner
from itsdangerous.encoding import base64_decode, base64_encode, int_to_bytes
from sqlalchemy import ColumnElement, exists, select
from sqlalchemy.orm import Session

from dispatcher.core import secrets
from dispatcher.core.secrets import ServiceSecret
from dispatcher.kit.clock import utcnow
from dispatcher.kit.sql import insert_for
from dispatcher.tables.consent import OptOut
from dispatcher.tables.recipients import Address, Recipient

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


class LinkExpired(Exception):
    """A genuine unsubscribe link, older than the links are valid for."""

    def __init__(self, request: Unsubscribe) -> None:
        super().__init__(f"unsubscribe link of recipient {request.recipient_id} expired")
        self.request = request


# The moment this service began to sign links with a date (the upgrade that brought them);
# links signed before carry none and are honoured until that moment plus their validity.
TIMED_LINKS_SINCE = "timed_unsubscribe_links"
_SALT = b"unsubscribe-link"


class _LinkSigner(TimestampSigner):
    """itsdangerous's timed signer on the service's clock, so that tests can move it."""

    def get_timestamp(self) -> int:
        return int(utcnow().timestamp())


@lru_cache(maxsize=4)
def _signer(key: bytes) -> _LinkSigner:
    # The key is derived once here rather than at every signature (the default).
    derived = hmac.new(key, _SALT, hashlib.sha256).digest()
    return _LinkSigner(derived, key_derivation="none", digest_method=hashlib.sha256)


def token_for(key: bytes, *, recipient_id: int, channel: str, kind: str) -> str:
    """``payload.timestamp.signature``, URL-safe, dated now."""
    payload = f"{recipient_id}.{channel}.{unsubscribe_scope(kind)}"
    return _signer(key).sign(base64_encode(payload.encode())).decode()


@lru_cache(maxsize=4)
def _mac(key: bytes) -> Any:
    # The signer's HMAC, keyed once: a copy of it signs each link.
    derived = hmac.new(key, _SALT, hashlib.sha256).digest()
    return hmac.new(derived, digestmod=hashlib.sha256)


def link_tokens(key: bytes, *, kind: str) -> Callable[[int, str], str]:
    """``token_for`` for many recipients at once (a batch): every link dated now, the same
    text :func:`token_for` makes at the same second, with the scope, the date and the keyed
    HMAC worked out once rather than once per link."""
    suffix = f".{unsubscribe_scope(kind)}"
    # As _LinkSigner dates a link: whole seconds of the service's clock.
    dated = b"." + base64_encode(int_to_bytes(int(utcnow().timestamp())))
    keyed = _mac(key)
    encode = base64.urlsafe_b64encode

    def token(recipient_id: int, channel: str) -> str:
        signed = encode(f"{recipient_id}.{channel}{suffix}".encode()).rstrip(b"=") + dated
        mac = keyed.copy()
        mac.update(signed)
        return (signed + b"." + encode(mac.digest()).rstrip(b"=")).decode()

    return token


def read_token(
    *, session: Session, key: bytes, token: str, valid_for: timedelta
) -> Unsubscribe | None:
    """What a link unsubscribes from; None when it was not made by this service exactly as
    given (altered, padded or re-encoded). Raises :class:`LinkExpired` for a genuine link
    older than ``valid_for``."""
    if token.count(".") == 1:
        return _read_untimed(session, key, token, valid_for)
    signer = _signer(key)
    try:
        value, signed_at = signer.unsign(token, return_timestamp=True)
    except BadSignature:
        return None
    # itsdangerous decodes the signature leniently (padding, stray characters): only the
    # very text this service signed is the link.
    head = token.rpartition(".")[0]
    if not hmac.compare_digest(f"{head}.{signer.get_signature(head).decode()}", token):
        return None
    try:
        request = _payload(base64_decode(value).decode())
    except (BadData, UnicodeDecodeError):
        return None
    if request is not None and utcnow() - signed_at > valid_for:
        raise LinkExpired(request)
    return request


def _read_untimed(
    session: Session, key: bytes, token: str, valid_for: timedelta
) -> Unsubscribe | None:
    """A link from before links were dated (``payload.signature``)."""
    payload = secrets.verify(key, token)
    request = None if payload is None else _payload(payload)
    if request is None:
        return None
    since = session.scalar(
        select(ServiceSecret.created_at).where(ServiceSecret.name == TIMED_LINKS_SINCE)
    )
    if since is None or utcnow() - since > valid_for:
        raise LinkExpired(request)
    return request


def _payload(text: str) -> Unsubscribe | None:
    try:
        recipient, channel, category = text.split(".", 2)
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
