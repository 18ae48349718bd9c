"""Reading delivery status notifications (RFC 3464), built with the standard library."""

from __future__ import annotations

import pytest

from channels.dsn import BadReport, BounceKind, parse_report
from tests.bounces.test_receiver import dsn

ORIGINAL = (
    b"From: thongbao@bhxh.test\r\nTo: an.nguyen@example.vn\r\nSubject: Thong bao\r\n"
    b"Message-ID: <d42.abcdefghijklmnop@bhxh.test>\r\n\r\nNoi dung\r\n"
)


@pytest.mark.parametrize("headers_only", [False, True])
def test_a_hard_bounce_is_read(headers_only: bool) -> None:
    report = parse_report(dsn(ORIGINAL, headers_only=headers_only))
    assert report.reporting_mta == "mx.example.vn"
    assert report.original_message_id == "d42.abcdefghijklmnop@bhxh.test"
    (status,) = report.recipients
    assert status.final_recipient == "an.nguyen@example.vn"
    assert (status.action, status.status, status.kind) == ("failed", "5.1.1", BounceKind.hard)
    assert status.diagnostic is not None and "Recipient unknown" in status.diagnostic


@pytest.mark.parametrize(
    ("action", "status", "kind"),
    [
        ("delayed", "4.2.2", BounceKind.soft),
        ("failed", "4.4.7", BounceKind.soft),
        ("delivered", "2.0.0", None),
    ],
)
def test_other_statuses(action: str, status: str, kind: BounceKind | None) -> None:
    (read,) = parse_report(dsn(None, action=action, status=status)).recipients
    assert read.kind is kind


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"From: a@b.vn\r\nSubject: hi\r\n\r\nhello\r\n", "not multipart/report"),
        (
            dsn(None).replace(
                b'report-type="delivery-status"', b'report-type="disposition-notification"'
            ),
            "not delivery-status",
        ),
        (dsn(None, status="5.1"), "Status '5.1'"),
        (dsn(None, action="bounced"), "Action 'bounced'"),
        (dsn(None).replace(b"Final-Recipient: rfc822; ", b"Final-Recipient: "), "Final-Recipient"),
    ],
)
def test_what_is_not_a_dsn_is_refused_with_its_reason(raw: bytes, needle: str) -> None:
    with pytest.raises(BadReport) as caught:
        parse_report(raw)
    assert needle in str(caught.value)
