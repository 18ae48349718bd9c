"""Delivery status notifications (RFC 3464): what a mail server says happened to our message.

A DSN is a ``multipart/report; report-type=delivery-status`` message: a human-readable part, a
``message/delivery-status`` part (one block of per-message fields, then one block per
recipient) and, usually, the original message or its headers. :func:`parse_report` reads one
into a :class:`Report`, or raises :class:`BadReport` saying what is wrong.

Which statuses mean what (RFC 3463 status codes, RFC 3464 ``Action``):

============================  ===========  ====================================================
Action / Status               kind         what we do
============================  ===========  ====================================================
``failed`` and ``5.x.x``      hard         the address is dead; the delivery failed
``failed`` or ``delayed``,    soft         counted; the address stays (a full mailbox, a
``4.x.x``                                  greylist, a server down)
``delivered``, ``relayed``,   —            not a bounce; ignored
``expanded`` (``2.x.x``)
============================  ===========  ====================================================
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass
from email.message import Message as MailMessage
from email.parser import HeaderParser
from email.policy import compat32
from enum import StrEnum

STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
ACTIONS = {"failed", "delayed", "delivered", "relayed", "expanded"}
# A DSN is small; anything far larger is not one (and is not read whole into a database).
MAX_REPORT_BYTES = 2_000_000


class BadReport(ValueError):
    """Not a delivery status notification we can read; the reason says why."""


class BounceKind(StrEnum):
    hard = "hard"
    soft = "soft"


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """One per-recipient block of a DSN."""

    final_recipient: str
    action: str
    status: str
    original_recipient: str | None = None
    diagnostic: str | None = None

    @property
    def kind(self) -> BounceKind | None:
        """Hard, soft, or None when the message was delivered (not a bounce)."""
        if self.action == "failed" and self.status.startswith("5."):
            return BounceKind.hard
        if self.action in ("failed", "delayed"):
            return BounceKind.soft
        return None

    def names(self, address: str) -> bool:
        """Whether this block is about ``address`` (as sent, or as forwarded from it)."""
        wanted = address.strip().lower()
        return wanted in {
            self.final_recipient.lower(),
            (self.original_recipient or "").lower(),
        }


@dataclass(frozen=True, slots=True)
class Report:
    reporting_mta: str | None
    recipients: tuple[RecipientStatus, ...]
    # The returned message's Message-ID, without angle brackets (None when not returned).
    original_message_id: str | None


def _address(value: str | None, field: str) -> str | None:
    """``rfc822; someone@example.vn`` -> ``someone@example.vn``."""
    if value is None:
        return None
    kind, sep, address = str(value).partition(";")
    if not sep or not address.strip():
        raise BadReport(f"{field} is not '<address-type>; <address>': {str(value)[:100]!r}")
    if kind.strip().lower() != "rfc822":
        return None
    return address.strip().strip("<>")


def _recipient(block: MailMessage, n: int) -> RecipientStatus:
    final = _address(block["Final-Recipient"], "Final-Recipient")
    if final is None:
        raise BadReport(f"recipient block {n} has no rfc822 Final-Recipient")
    action = str(block["Action"] or "").strip().lower()
    if action not in ACTIONS:
        raise BadReport(f"recipient block {n} has Action {action or 'missing'!r}")
    raw_status = str(block["Status"] or "").strip()
    status = raw_status.split()[0] if raw_status else ""
    if not STATUS.match(status):
        raise BadReport(f"recipient block {n} has Status {raw_status or 'missing'!r}")
    diagnostic = block["Diagnostic-Code"]
    return RecipientStatus(
        final_recipient=final,
        action=action,
        status=status,
        original_recipient=_address(block["Original-Recipient"], "Original-Recipient"),
        diagnostic=" ".join(str(diagnostic).split())[:300] if diagnostic else None,
    )


def _original_message_id(report: MailMessage) -> str | None:
    for part in report.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            value = inner["Message-ID"] if isinstance(inner, MailMessage) else None
        elif kind == "text/rfc822-headers":
            text = part.get_payload(decode=True) or b""
            headers = HeaderParser(policy=compat32).parsestr(
                text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
            )
            value = headers["Message-ID"]
        else:
            continue
        if value:
            return str(value).strip().strip("<>") or None
    return None


def parse_report(raw: bytes) -> Report:
    """The DSN in ``raw``; :class:`BadReport` when it is not one."""
    if len(raw) > MAX_REPORT_BYTES:
        raise BadReport(f"{len(raw)} bytes: larger than any delivery status notification")
    message = email.message_from_bytes(raw, policy=compat32)
    if message.get_content_type() != "multipart/report":
        raise BadReport(f"a {message.get_content_type()} message, not multipart/report")
    report_type = str(message.get_param("report-type", "") or "").lower()
    if report_type != "delivery-status":
        raise BadReport(f"report-type is {report_type or 'missing'!r}, not delivery-status")
    status_part = next(
        (p for p in message.walk() if p.get_content_type() == "message/delivery-status"), None
    )
    if status_part is None:
        raise BadReport("no message/delivery-status part")
    payload = status_part.get_payload()
    blocks = [b for b in payload if isinstance(b, MailMessage)] if isinstance(payload, list) else []
    if len(blocks) < 2:
        raise BadReport("the delivery-status part has no per-recipient fields")
    per_message, *per_recipient = blocks
    reporting = per_message["Reporting-MTA"]
    return Report(
        reporting_mta=(str(reporting).partition(";")[2].strip() or None) if reporting else None,
        recipients=tuple(_recipient(block, n) for n, block in enumerate(per_recipient, 1)),
        original_message_id=_original_message_id(message),
    )
