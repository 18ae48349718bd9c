"""The bounce receiver: an SMTP server (aiosmtpd) for the bounce address.

Mail servers send delivery status notifications to a message's envelope sender, which the email
adapter sets to ``DISPATCHER_SMTP_BOUNCE_ADDRESS`` plus the message's token (VERP). Point that
address's MX (or a relay's transport for it) at ``dispatcher bounces``: it accepts mail only
for the bounce address, reads each message as a DSN (:mod:`channels.dsn`) and records it
(:mod:`dispatcher.bounces`). What it cannot read or link is refused with a 5xx reply that says
why, and changes nothing; a database failure answers 451 so the sender tries again.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog
from aiosmtpd.controller import Controller

from channels.dsn import MAX_REPORT_BYTES, BadReport, Report, parse_report
from channels.email import bounce_token
from dispatcher.bounces import BounceOutcome, BounceRefused, record_report
from dispatcher.core.db import Database
from dispatcher.kit.clock import utcnow
from dispatcher.observability.metrics import EMAIL_BOUNCES

log = structlog.get_logger(__name__)


def _reply(code: str, text: str) -> str:
    """One SMTP reply line: ASCII, no line breaks, not too long."""
    flat = " ".join(text.split()).encode("ascii", "replace").decode()
    return f"{code} {flat}"[:500]


class BounceHandler:
    """aiosmtpd handler: RCPT for the bounce address only; DATA parsed and recorded."""

    def __init__(
        self, db: Database, bounce_address: str, now: Callable[[], datetime] = utcnow
    ) -> None:
        self.db = db
        self.bounce_address = bounce_address
        self.now = now

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if bounce_token(address, self.bounce_address) is None:
            return _reply("550", f"5.1.1 <{address}> is not this service's bounce address")
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        try:
            report = parse_report(envelope.content)
        except BadReport as exc:
            log.warning("bounce_refused", reason=str(exc), peer=str(session.peer))
            return _reply("554", f"5.6.0 not a delivery status notification: {exc}")
        token = next(
            (t for a in envelope.rcpt_tos if (t := bounce_token(a, self.bounce_address))), None
        )
        try:
            outcomes = await asyncio.to_thread(self._record, report, token)
        except BounceRefused as exc:
            log.warning("bounce_refused", reason=str(exc), peer=str(session.peer))
            return _reply("550", f"5.1.0 bounce refused: {exc}")
        except Exception as exc:
            log.exception("bounce_not_recorded", error=type(exc).__name__)
            return "451 4.3.0 cannot record the bounce now; try again later"
        for outcome in outcomes:
            EMAIL_BOUNCES.labels(outcome.kind.value).inc()
            log.info(
                "bounce_recorded",
                delivery_id=outcome.delivery_id,
                kind=outcome.kind.value,
                status=outcome.status,
                address_dead=outcome.address_dead,
            )
        if not outcomes:
            return "250 2.0.0 nothing to record (no failed or delayed recipient)"
        return _reply("250", f"2.0.0 recorded: {', '.join(o.kind.value for o in outcomes)}")

    def _record(self, report: Report, token: str | None) -> list[BounceOutcome]:
        with self.db.transaction() as session:
            return record_report(session, report, token=token, now=self.now())


def bounce_server(db: Database, bounce_address: str, *, host: str, port: int) -> Controller:
    """The receiver, not yet started (``.start()``, ``.stop()``)."""
    return Controller(
        BounceHandler(db, bounce_address),
        hostname=host,
        port=port,
        data_size_limit=MAX_REPORT_BYTES,
        ident="bhxh-dispatcher bounces",
    )


def run_bounces(
    db: Database, bounce_address: str, *, host: str, port: int, stop: threading.Event
) -> None:
    """Receive bounces until ``stop`` is set."""
    server = bounce_server(db, bounce_address, host=host, port=port)
    server.start()
    log.info("bounces_listening", host=host, port=port, address=bounce_address)
    try:
        stop.wait()
    finally:
        server.stop()
