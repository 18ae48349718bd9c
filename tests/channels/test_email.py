"""The email adapter against a real SMTP server: pooling, headers, classification, TLS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import email
import email.utils
import ipaddress
import random
import re
import ssl
import string
from datetime import UTC, datetime, timedelta
from email.errors import HeaderParseError
from email.headerregistry import Address as HeaderAddress
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from channels.base import (
    AuthError,
    Category,
    MemoryState,
    Message,
    PermanentError,
    TransientError,
)
from channels.email import (
    MESSAGE_ID_KEY,
    WIRE,
    EmailAdapter,
    _base64_body,
    check_address,
    classify_reply,
    header_line,
)
from tests.support import Mailbox, SmtpServer, free_port


def message(i: int, kind: Category = Category.greeting, address: str | None = None) -> Message:
    return Message(
        delivery_id=i,
        address=address or f"nguoi{i}@example.vn",
        subject=f"Chúc mừng năm mới {i}",
        body="Kính chúc Ông/Bà một năm mới an khang.",
        html="<p>Kính chúc Ông/Bà một năm mới an khang.</p>",
        kind=kind,
        unsubscribe_url=f"https://bhxh.test/u/token{i}",
        campaign_id=3,
    )


def adapter(server: SmtpServer, pool: int = 2, **kwargs: object) -> EmailAdapter:
    return EmailAdapter(
        host="127.0.0.1",
        port=server.port,
        sender="Bảo hiểm xã hội Việt Nam <thongbao@bhxh.test>",
        pool_size=pool,
        timeout=10,
        **kwargs,  # type: ignore[arg-type]
    )


MESSAGE_ID = re.compile(r"<d(\d+)\.[a-z2-7]{16}@bhxh\.test>")


def capture_raw(server: SmtpServer) -> list[tuple[bytes, object]]:
    """The bytes each message arrived as, with its SMTP session."""
    raw: list[tuple[bytes, object]] = []
    original = server.mailbox.handle_DATA

    async def keep(smtp_server, session, envelope):
        raw.append((envelope.content, session))
        return await original(smtp_server, session, envelope)

    server.mailbox.handle_DATA = keep  # type: ignore[method-assign]
    return raw


def test_many_sends_share_a_few_connections(smtp: SmtpServer) -> None:
    sessions: list[object] = []
    original = smtp.mailbox.handle_DATA

    async def count_sessions(server, session, envelope):
        if session not in sessions:
            sessions.append(session)
        return await original(server, session, envelope)

    smtp.mailbox.handle_DATA = count_sessions  # type: ignore[method-assign]
    email = adapter(smtp, pool=2)

    async def go() -> list[str | None]:
        await email.open()
        results = await asyncio.gather(*(email.send(message(i)) for i in range(20)))
        await email.close()
        return [r.provider_message_id for r in results]

    ids = asyncio.run(go())
    assert [MESSAGE_ID.fullmatch(f"<{i}>").group(1) for i in ids] == [  # type: ignore[union-attr]
        str(i) for i in range(20)
    ]
    assert smtp.mailbox.count() == 20
    assert len(sessions) <= 2, "the pool keeps connections open across messages"


def test_headers_bulk_vs_transactional(smtp: SmtpServer) -> None:
    email = adapter(smtp)

    async def go() -> None:
        await email.send(message(1, Category.greeting))
        await email.send(message(2, Category.transactional))
        await email.close()

    asyncio.run(go())
    bulk = smtp.mailbox.to("nguoi1@example.vn")[0]
    assert bulk["List-Unsubscribe"] == "<https://bhxh.test/u/token1>"
    assert bulk["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert bulk["List-Id"] == "greeting <campaign-3.bhxh.test>"
    assert MESSAGE_ID.fullmatch(bulk["Message-ID"])
    assert bulk.get_body(("html",)) is not None and bulk.get_body(("plain",)) is not None
    transactional = smtp.mailbox.to("nguoi2@example.vn")[0]
    assert transactional["List-Unsubscribe"] is None


@pytest.mark.parametrize(
    ("code", "reply", "error", "dead"),
    [
        (421, "Service not available", TransientError, False),
        (450, "Mailbox busy", TransientError, False),
        (451, "Try again later", TransientError, False),
        (452, "Insufficient storage", TransientError, False),
        (550, "5.1.1 User unknown", PermanentError, True),
        (550, "5.7.1 Message rejected as spam", PermanentError, False),
        (552, "Mailbox full", PermanentError, False),
        (553, "5.1.3 Bad address syntax", PermanentError, False),
        (554, "Transaction failed", PermanentError, False),
        (535, "Authentication failed", AuthError, False),
    ],
)
def test_reply_codes_are_classified(code: int, reply: str, error: type, dead: bool) -> None:
    classified = classify_reply(code, reply)
    assert type(classified) is error
    assert classified.code == str(code)
    assert classified.address_dead is dead


def test_unreachable_server_is_transient_and_bad_address_permanent(smtp: SmtpServer) -> None:
    email = adapter(smtp)
    email.port = 1  # nothing listens there

    async def unreachable() -> None:
        await email.send(message(1))

    with pytest.raises(TransientError):
        asyncio.run(unreachable())

    async def bad_address() -> None:
        await adapter(smtp).send(message(2, address="không phải địa chỉ"))

    with pytest.raises(PermanentError):
        asyncio.run(bad_address())


def test_a_message_that_cannot_be_encoded_fails_as_such_not_as_a_bad_address(
    smtp: SmtpServer,
) -> None:
    """A lone surrogate (from a recipient's data) cannot be written in UTF-8: the delivery
    fails naming that, and its good address is not blamed."""
    for part in ("subject", "body", "html"):
        changes: dict[str, Any] = {part: "Kính gửi Ông/Bà \ud800"}
        broken = dataclasses.replace(message(7), **changes)

        async def send(broken: Message = broken) -> None:
            await adapter(smtp).send(broken)

        with pytest.raises(PermanentError) as caught:
            asyncio.run(send())
        assert caught.value.reason.startswith("the message cannot be encoded"), part
        assert "surrogates not allowed" in caught.value.reason
        assert not caught.value.address_dead
    assert smtp.mailbox.count() == 0


def test_an_http_link_gets_no_one_click_header(smtp: SmtpServer) -> None:
    """RFC 8058 section 3.1: the one-click POST needs an https URI."""
    email_adapter = adapter(smtp)
    plain = Message(
        delivery_id=5,
        address="nguoi5@example.vn",
        subject="Tin chính sách",
        body="Nội dung",
        kind=Category.policy_news,
        unsubscribe_url="http://127.0.0.1:8000/u/token5",
        campaign_id=3,
    )

    async def go() -> None:
        await email_adapter.send(plain)
        await email_adapter.send(message(6))
        await email_adapter.close()

    asyncio.run(go())
    received = smtp.mailbox.to("nguoi5@example.vn")[0]
    assert received["List-Unsubscribe"] == "<http://127.0.0.1:8000/u/token5>"
    assert received["List-Unsubscribe-Post"] is None
    secure = smtp.mailbox.to("nguoi6@example.vn")[0]
    assert secure["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_the_service_warns_once_at_start_up_about_an_http_public_url(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dispatcher.cli.common import warn_about_email
    from dispatcher.core.config import Settings

    warn_about_email(Settings(public_url="http://127.0.0.1:8000"))
    err = capsys.readouterr().err
    assert err.count("warning:") == 1
    assert "List-Unsubscribe-Post" in err and "https" in err
    warn_about_email(Settings(public_url="https://thongbao.bhxh.test"))
    assert capsys.readouterr().err == ""


def test_date_ascii_subject_and_message_ids(smtp: SmtpServer) -> None:
    raw = capture_raw(smtp)
    sent_at = datetime(2026, 12, 2, 1, 30, tzinfo=UTC)
    state = MemoryState()
    first = adapter(smtp, now=lambda: sent_at, state=state)
    again = adapter(smtp, now=lambda: sent_at, state=state)  # another worker, same installation
    elsewhere = adapter(smtp, now=lambda: sent_at)  # another installation, same domain
    ascii_message = Message(
        delivery_id=7,
        address="nguoi7@example.vn",
        subject="Thong bao BHXH",
        body="Noi dung",
        kind=Category.transactional,
    )

    async def go() -> list[str | None]:
        ids = []
        for sender in (first, again, elsewhere):
            ids.append((await sender.send(ascii_message)).provider_message_id)
            await sender.close()
        return ids

    ids = asyncio.run(go())
    assert ids[0] == ids[1], "a re-send by any worker of one installation keeps its id"
    assert ids[0] != ids[2], "another installation's id for the same delivery differs"
    assert state.values[MESSAGE_ID_KEY]
    content, _ = raw[0]
    assert b"\r\nSubject: Thong bao BHXH\r\n" in content
    received = email.message_from_bytes(content, policy=default_policy)
    assert received["Date"] == "Wed, 02 Dec 2026 08:30:00 +0700"
    assert email.utils.parsedate_to_datetime(received["Date"]) == sent_at
    # A Vietnamese subject is still encoded, and reads back the same.
    asyncio.run(adapter(smtp).send(message(8)))
    head = raw[-1][0].split(b"\r\n\r\n", 1)[0]
    assert b"Subject: =?utf-8?" in head
    assert smtp.mailbox.to("nguoi8@example.vn")[0]["Subject"] == "Chúc mừng năm mới 8"


BOUNDARY = "===============1234567890123456789=="


@pytest.mark.parametrize(
    "sender",
    [
        "Bảo hiểm xã hội Việt Nam <thongbao@bhxh.test>",
        "thongbao@bhxh.test",
        "Bảo hiểm xã hội Việt Nam - Văn phòng đại diện tại Thành phố Hồ Chí Minh <tb@bhxh.test>",
    ],
)
@pytest.mark.parametrize(
    "subject",
    [
        "Thong bao BHXH",
        None,
        "x" * 120,
        "a b " * 40,
        "Chúc mừng năm mới Bính Ngọ 2026, kính gửi ông Nguyễn Văn An và gia đình " * 2,
    ],
)
@pytest.mark.parametrize("html", [None, "<p>Kính chúc Ông/Bà một năm mới an khang.</p>"])
@pytest.mark.parametrize(
    ("kind", "link"),
    [
        (Category.greeting, "https://bhxh.test/u/token1"),
        (Category.greeting, "http://bhxh.test/u/" + "t" * 90),
        (Category.transactional, None),
    ],
)
def test_the_bytes_sent_are_the_standard_librarys_bytes(
    sender: str, subject: str | None, html: str | None, kind: Category, link: str | None
) -> None:
    """``compose`` writes the message without building it as objects; every header, part and
    fold is what the standard library's generator writes for the message ``build`` makes."""
    sent_at = datetime(2026, 12, 2, 1, 30, tzinfo=UTC)
    mailer = EmailAdapter(
        host="127.0.0.1", port=25, sender=sender, now=lambda: sent_at, message_id_key=b"k" * 32
    )
    item = Message(
        delivery_id=42,
        address="nguoi42@example.vn",
        subject=subject,
        body="Kính gửi Ông/Bà,\n\nBảo hiểm xã hội Việt Nam trân trọng thông báo. " * 12,
        html=html,
        kind=kind,
        unsubscribe_url=link,
        campaign_id=3,
    )
    raw, message_id = mailer.compose(item, boundary=BOUNDARY)
    built = mailer.build(item)
    if html:
        built.set_boundary(BOUNDARY)
    assert raw == mailer.wire(built)
    assert message_id == built["Message-ID"]


def test_each_header_is_written_as_the_standard_library_folds_it() -> None:
    """Headers short enough are written as they are, a long link alone on its own line, and
    anything else through the policy's folding: the same bytes (or the same refusal) each way,
    for values of every length with blanks, split characters and line breaks."""
    alphabet = string.ascii_letters + " \t;,<>@.=?:/" + "\x0b\x0c\n"
    chance = random.Random(14)
    for name in ("To", "Date", "List-Unsubscribe", "List-Id"):
        for size in [*range(0, 120), 200, 997, 998, 999]:
            for _ in range(4):
                value = "".join(chance.choice(alphabet) for _ in range(size))
                if chance.random() < 0.5:
                    value = value.replace("\n", "").replace("\x0b", "").replace("\x0c", "")
                expected: bytes | type = HeaderParseError
                with contextlib.suppress(HeaderParseError):
                    expected = WIRE.fold_binary(name, value)
                got: bytes | type = HeaderParseError
                with contextlib.suppress(HeaderParseError):
                    got = header_line(name, value)
                assert got == expected, (name, value)
    # One word too long for any line (a signed link): alone on the next line, never split.
    word = string.ascii_letters + string.digits + "<>:/.=?&%+-_~"
    for size in [*range(60, 200), 997, 998, 999, 5000]:
        value = "".join(chance.choice(word) for _ in range(size))
        assert header_line("List-Unsubscribe", value) == WIRE.fold_binary("List-Unsubscribe", value)


def test_a_part_is_base64_encoded_as_the_standard_library_encodes_it() -> None:
    """Lines of 76 and CRLF, for every length around the line's 57 bytes, the empty part too."""
    chance = random.Random(16)
    for size in [*range(0, 400), 5000]:
        text = "".join(chance.choice("aáăâbcdđ xyzỹ\n") for _ in range(size))
        assert _base64_body(text) == base64.encodebytes(text.encode()).replace(b"\n", b"\r\n")


def test_an_address_is_refused_exactly_when_the_standard_librarys_parser_refuses_it() -> None:
    """The plain addresses checked without the parser are ones it takes; every other address
    still goes through it."""
    chance = random.Random(15)
    alphabet = string.ascii_letters + string.digits + ".-_+@\"()<>,;: \\[]!#$%&'*/=?^`{|}~\u00e1"
    addresses = [
        "nguoi.nhan000123@example.vn",
        "a+b@bhxh.gov.vn",
        '"quoted local"@example.vn',
        "user@[10.0.0.1]",
        "user@",
        "@example.vn",
        "a..b@example.vn",
        ".a@example.vn",
        "a@b@example.vn",
        "Tên <ten@example.vn>",
        "ten@example.vn\r\nBcc: x@y.vn",
        "",
    ]
    for _ in range(20_000):
        size = chance.randrange(1, 30)
        addresses.append("".join(chance.choice(alphabet) for _ in range(size)))
    for address in addresses:
        refused = False
        try:
            HeaderAddress(addr_spec=address)
        except Exception:  # the parser's faults include an AttributeError
            refused = True
        if refused:
            with pytest.raises(ValueError):
                check_address(address)
        else:
            check_address(address)


def test_an_address_the_parser_cannot_read_fails_the_delivery_with_its_reason(
    smtp: SmtpServer,
) -> None:
    """The header parser refuses "@example.vn" with HeaderParseError, which is no ValueError:
    it once escaped the adapter as a crash, a blip retried until its attempts ran out."""
    with pytest.raises(PermanentError, match="invalid email address"):
        asyncio.run(adapter(smtp).send(message(1, address="@example.vn")))
    assert smtp.mailbox.to("@example.vn") == []


def test_a_subject_of_several_lines_is_sent_on_one(smtp: SmtpServer) -> None:
    """A line break in a rendered subject would start a header of its own."""
    raw = capture_raw(smtp)
    for i, subject in enumerate(["Thong bao\r\nBcc: khac@example.vn", "Thông báo\nBcc: k@x.vn"]):
        item = Message(
            delivery_id=i,
            address=f"nguoi{i}@example.vn",
            subject=subject,
            body="Noi dung",
            kind=Category.transactional,
        )
        asyncio.run(adapter(smtp).send(item))
        received = email.message_from_bytes(raw[-1][0], policy=default_policy)
        assert received["Bcc"] is None
        assert received["Subject"] == subject.replace("\r\n", " ").replace("\n", " ")


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made for this test."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.bhxh.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "relay.pem", directory / "relay.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_starttls_is_used_when_the_relay_offers_it(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    mailbox = Mailbox()
    sessions: list[object] = []
    original = mailbox.handle_DATA

    async def note(server, session, envelope):
        sessions.append(session.ssl)
        return await original(server, session, envelope)

    mailbox.handle_DATA = note  # type: ignore[method-assign]
    port = free_port()
    # The relay refuses mail in clear: only an upgraded session gets through.
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=port, tls_context=context, require_starttls=True
    )
    controller.start()
    try:
        sender = EmailAdapter(
            host="127.0.0.1", port=port, sender="thongbao@bhxh.test", ca_file=str(cert)
        )

        async def go() -> None:
            await sender.send(message(1))
            await sender.close()

        asyncio.run(go())
    finally:
        controller.stop()
    assert mailbox.count() == 1
    assert sessions and sessions[0] is not None, "the session was upgraded to TLS"


def test_a_relay_without_starttls_is_refused_when_it_is_required(smtp: SmtpServer) -> None:
    sender = adapter(smtp, tls="starttls")

    async def go() -> None:
        await sender.send(message(1))

    with pytest.raises(AuthError) as caught:
        asyncio.run(go())
    assert caught.value.code == "starttls"
    assert "STARTTLS" in caught.value.reason
    assert smtp.mailbox.count() == 0


# -- DKIM ---------------------------------------------------------------------------------------


def rsa_key_file(directory: Path, bits: int = 2048) -> tuple[Path, bytes]:
    """An RSA key made for this test, and the DNS TXT record that would publish it."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    path = directory / "dkim.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


def test_messages_are_dkim_signed_over_the_one_click_headers(
    smtp: SmtpServer, tmp_path: Path
) -> None:
    import dkim

    from channels.base import AdapterContext
    from channels.email import SmtpSettings

    raw = capture_raw(smtp)
    key_file, record = rsa_key_file(tmp_path)
    settings = SmtpSettings.load(
        {
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "smtp_sender": "Bảo hiểm xã hội Việt Nam <thongbao@bhxh.test>",
            "smtp_dkim_key_file": str(key_file),
            "smtp_dkim_selector": "thongbao2026",
        }
    )
    sender = EmailAdapter.create(settings, AdapterContext())
    looked_up: list[bytes] = []

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        looked_up.append(name)
        return record if name == b"thongbao2026._domainkey.bhxh.test." else None

    async def go() -> None:
        await sender.send(message(1))
        await sender.close()

    asyncio.run(go())
    content, _ = raw[0]
    assert dkim.verify(content, dnsfunc=dns)
    assert looked_up == [b"thongbao2026._domainkey.bhxh.test."]
    signature = email.message_from_bytes(content, policy=default_policy)["DKIM-Signature"]
    tags = {
        k.strip(): v.strip()
        for k, _, v in (t.partition("=") for t in str(signature).replace(" ", "").split(";"))
    }
    assert tags["d"] == "bhxh.test" and tags["s"] == "thongbao2026"
    signed = {h.lower() for h in tags["h"].split(":")}
    for header in ("from", "subject", "date", "message-id", "list-unsubscribe"):
        assert header in signed
    assert "list-unsubscribe-post" in signed
    # The signature holds: changing a signed header breaks it.
    forged = content.replace(b"List-Unsubscribe: <https://", b"List-Unsubscribe: <http://", 1)
    assert forged != content
    assert not dkim.verify(forged, dnsfunc=dns)


@pytest.mark.parametrize(
    ("values", "variable", "needle"),
    [
        (
            {"smtp_dkim_key_file": "/nonexistent/dkim.pem", "smtp_dkim_selector": "s1"},
            "DISPATCHER_SMTP_DKIM_KEY_FILE",
            "cannot read",
        ),
        (
            {"smtp_dkim_key_file": "KEY", "smtp_dkim_selector": "s1"},
            "DISPATCHER_SMTP_DKIM_KEY_FILE",
            "PEM private key",
        ),
        ({"smtp_dkim_key_file": "RSA"}, "DISPATCHER_SMTP_DKIM_SELECTOR", "required"),
        ({"smtp_dkim_selector": "s1"}, "DISPATCHER_SMTP_DKIM_SELECTOR", "nothing would be signed"),
        (
            {
                "smtp_dkim_key_file": "RSA",
                "smtp_dkim_selector": "s1",
                "smtp_dkim_domain": "other.example",
            },
            "DISPATCHER_SMTP_DKIM_DOMAIN",
            "DMARC",
        ),
    ],
)
def test_a_bad_dkim_setting_is_refused_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, values: dict, variable: str, needle: str
) -> None:
    from channels import registry
    from channels.email import SmtpSettings
    from dispatcher.core.config import ConfigError

    for key in [k for k in __import__("os").environ if k.startswith("DISPATCHER_")]:
        monkeypatch.delenv(key)
    key_file, _ = rsa_key_file(tmp_path, bits=1024)
    not_a_key = tmp_path / "not-a-key.pem"
    not_a_key.write_text("-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
    given = {"smtp_sender": "thongbao@bhxh.test"}
    for name, value in values.items():
        given[name] = {"RSA": str(key_file), "KEY": str(not_a_key)}.get(value, value)
    with pytest.raises(ConfigError) as caught:
        SmtpSettings.load(given)
    assert variable in str(caught.value)
    assert needle in str(caught.value)
    assert "c2VjcmV0" not in str(caught.value)
    with pytest.raises(ConfigError):
        registry.check_settings(given)
    good = dict(given, smtp_dkim_key_file=str(key_file), smtp_dkim_selector="s1")
    good.pop("smtp_dkim_domain", None)
    assert SmtpSettings.load(good).dkim_selector == "s1"
