"""Bounces end to end: a message sent through the pipeline, a DSN built with the standard
library the way a receiving mail server writes one, sent by SMTP to the bounce receiver."""

from __future__ import annotations

import email
import smtplib
from collections.abc import Iterator
from email.message import Message as MailMessage
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from typing import Any

import pytest
from sqlalchemy import select

from dispatcher import audit
from dispatcher.core import secrets
from dispatcher.core.db import Database
from dispatcher.observability.metrics import EMAIL_BOUNCES
from dispatcher.tables.audit import AuditEntry
from dispatcher.tables.deliveries import Delivery
from dispatcher.tables.recipients import Address
from tests.support import SmtpServer, free_port, wait_for
from tests.test_end_to_end import add_people, publish_template
from workers.bounces import bounce_server

BOUNCES = "bounces@bhxh.test"
AN = "an.nguyen@example.vn"


def dsn(
    original: bytes | None,
    *,
    recipient: str = AN,
    action: str = "failed",
    status: str = "5.1.1",
    headers_only: bool = False,
) -> bytes:
    """A delivery status notification as RFC 3464 lays it out, built by the standard library."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "MAILER-DAEMON@mx.example.vn"
    report["To"] = BOUNCES
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report.attach(MIMEText(f"Your message to <{recipient}> could not be delivered.\n"))
    per_message = MailMessage()
    per_message["Reporting-MTA"] = "dns; mx.example.vn"
    per_message["Arrival-Date"] = "Wed, 2 Dec 2026 08:30:00 +0700"
    per_recipient = MailMessage()
    per_recipient["Final-Recipient"] = f"rfc822; {recipient}"
    per_recipient["Action"] = action
    per_recipient["Status"] = status
    per_recipient["Diagnostic-Code"] = f"smtp; 550 {status} <{recipient}>: Recipient unknown"
    status_part = MIMEBase("message", "delivery-status")
    status_part.set_payload([per_message, per_recipient])
    report.attach(status_part)
    if original is not None:
        returned = email.message_from_bytes(original, policy=compat32)
        if headers_only:
            head = original.split(b"\r\n\r\n", 1)[0].decode()
            report.attach(MIMEText(head, "rfc822-headers"))
        else:
            report.attach(MIMEMessage(returned))
    # As a mail server sends it: lines ended by CRLF.
    return report.as_bytes(policy=compat32.clone(linesep="\r\n"))


@pytest.fixture()
def receiver(db: Database) -> Iterator[int]:
    port = free_port()
    server = bounce_server(db, BOUNCES, host="127.0.0.1", port=port)
    server.start()
    yield port
    server.stop()


def send_one(client: Any, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """One transactional email through the pipeline; its envelope sender and bytes."""
    monkeypatch.setenv("DISPATCHER_SMTP_BOUNCE_ADDRESS", BOUNCES)
    seen: dict[str, Any] = {}
    original = smtp.mailbox.handle_DATA

    async def keep(server, session, envelope):
        seen.update(mail_from=envelope.mail_from, content=envelope.content)
        return await original(server, session, envelope)

    smtp.mailbox.handle_DATA = keep  # type: ignore[method-assign]
    add_people(client)
    publish_template(client)
    body = {"recipient": "0100000001", "template": "canh_bao_test", "channels": ["email"]}
    message_id = client.post("/v1/messages", json=body).json()["id"]
    wait_for(lambda: client.get(f"/v1/messages/{message_id}").json()["status"] == "completed")
    return {**seen, "message": message_id}


def delivery(client: Any, message_id: int) -> dict[str, Any]:
    """The message's one delivery row, as the database holds it."""
    from dispatcher.core.db import get_database

    delivery_id = client.get(f"/v1/messages/{message_id}").json()["deliveries"][0]["id"]
    with get_database().reading() as session:
        row = session.get(Delivery, delivery_id)
        assert row is not None
        return {
            c: getattr(row, c)
            for c in ("id", "status", "error_class", "error_reason", "provider_message_id")
        }


def address_of(db: Database, value: str) -> Address:
    with db.reading() as session:
        found = session.scalar(select(Address).where(Address.value == value))
        assert found is not None
        session.expunge(found)
        return found


def bounce_entries(db: Database) -> list[AuditEntry]:
    with db.reading() as session:
        return list(
            session.scalars(select(AuditEntry).where(AuditEntry.action == "deliveries.bounce"))
        )


def counted(kind: str) -> float:
    return EMAIL_BOUNCES.labels(kind)._value.get()


def test_a_hard_bounce_marks_the_address_dead_and_fails_its_delivery(
    client, worker, smtp: SmtpServer, db: Database, receiver: int, monkeypatch, settings
) -> None:
    sent = send_one(client, smtp, monkeypatch)
    verp = sent["mail_from"]
    token = delivery(client, sent["message"])["provider_message_id"].partition("@")[0]
    assert verp == f"bounces+{token}@bhxh.test", "the envelope sender carries the message's token"
    assert delivery(client, sent["message"])["status"] == "sent"
    before = counted("hard")

    with smtplib.SMTP("127.0.0.1", receiver) as mx:
        # A DSN is sent with the null reverse-path, to the message's envelope sender.
        refused = mx.sendmail("<>", [verp], dsn(sent["content"]))
    assert refused == {}

    address = address_of(db, AN)
    assert address.dead_at is not None
    assert "5.1.1" in (address.dead_reason or "")
    after = delivery(client, sent["message"])
    assert after["status"] == "failed"
    assert after["error_class"] == "address_dead"
    assert "bounced 5.1.1" in after["error_reason"]
    entries = bounce_entries(db)
    assert len(entries) == 1 and entries[0].subject == f"delivery:{after['id']}"
    assert counted("hard") == before + 1
    with db.transaction() as session:
        assert audit.verify(session, secrets.audit_key(session, settings)).ok


def test_a_bounce_is_linked_by_the_returned_message_id_without_a_token(
    client, worker, smtp: SmtpServer, db: Database, receiver: int, monkeypatch
) -> None:
    sent = send_one(client, smtp, monkeypatch)
    with smtplib.SMTP("127.0.0.1", receiver) as mx:
        mx.sendmail("<>", [BOUNCES], dsn(sent["content"], headers_only=True))
    assert address_of(db, AN).dead_at is not None
    assert delivery(client, sent["message"])["status"] == "failed"


def test_a_soft_bounce_is_counted_and_changes_nothing(
    client, worker, smtp: SmtpServer, db: Database, receiver: int, monkeypatch
) -> None:
    sent = send_one(client, smtp, monkeypatch)
    before = counted("soft")
    with smtplib.SMTP("127.0.0.1", receiver) as mx:
        mx.sendmail(
            "<>", [sent["mail_from"]], dsn(sent["content"], action="delayed", status="4.2.2")
        )
    assert counted("soft") == before + 1
    address = address_of(db, AN)
    assert address.dead_at is None
    assert address.soft_bounces == 1 and address.bounced_at is not None
    assert delivery(client, sent["message"])["status"] == "sent"
    assert bounce_entries(db) == []


def test_bad_reports_are_refused_and_change_nothing(
    client, worker, smtp: SmtpServer, db: Database, receiver: int, monkeypatch
) -> None:
    sent = send_one(client, smtp, monkeypatch)
    verp = sent["mail_from"]
    not_a_report = MIMEText("Xin chào, tôi muốn hủy đăng ký.", "plain", "utf-8").as_bytes()
    someone_else = dsn(sent["content"], recipient="ai.do@example.vn")
    forged_token = verp.replace("+d", "+d9", 1)
    with smtplib.SMTP("127.0.0.1", receiver) as mx:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as caught:
            mx.sendmail("<>", ["postmaster@bhxh.test"], dsn(sent["content"]))
        assert "not this service's bounce address" in str(caught.value)
        mx.rset()
        with pytest.raises(smtplib.SMTPDataError) as data_error:
            mx.sendmail("<>", [verp], not_a_report)
        assert data_error.value.smtp_code == 554
        assert b"not a delivery status notification" in data_error.value.smtp_error
        mx.rset()
        with pytest.raises(smtplib.SMTPDataError) as data_error:
            mx.sendmail("<>", [verp], someone_else)
        assert data_error.value.smtp_code == 550
        assert b"ai.do@example.vn" in data_error.value.smtp_error
        mx.rset()
        with pytest.raises(smtplib.SMTPDataError) as data_error:
            mx.sendmail("<>", [forged_token], dsn(None))
        assert data_error.value.smtp_code == 550
        assert b"no email delivery of ours" in data_error.value.smtp_error
        mx.rset()
        with pytest.raises(smtplib.SMTPDataError) as data_error:
            mx.sendmail("<>", [BOUNCES], dsn(None))
        assert b"names no message of ours" in data_error.value.smtp_error
    address = address_of(db, AN)
    assert address.dead_at is None and address.soft_bounces == 0
    assert delivery(client, sent["message"])["status"] == "sent"
    assert bounce_entries(db) == []


def test_the_bounces_command_receives_and_records(
    client, worker, smtp: SmtpServer, db: Database, monkeypatch
) -> None:
    from typer.testing import CliRunner

    from dispatcher.cli import app
    from tests.support import dispatcher_process

    refused = CliRunner().invoke(app, ["bounces"])
    assert refused.exit_code == 2
    assert "DISPATCHER_SMTP_BOUNCE_ADDRESS is not set" in refused.output

    sent = send_one(client, smtp, monkeypatch)
    port = free_port()

    def listening() -> bool:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2) as probe:
                return probe.noop()[0] == 250
        except OSError:
            return False

    with dispatcher_process("bounces", "--port", str(port)) as process:
        wait_for(listening, timeout=120, what="`dispatcher bounces` to listen")
        with smtplib.SMTP("127.0.0.1", port) as mx:
            assert mx.sendmail("<>", [sent["mail_from"]], dsn(sent["content"])) == {}
        assert process.poll() is None
    assert address_of(db, AN).dead_at is not None
    assert delivery(client, sent["message"])["status"] == "failed"
