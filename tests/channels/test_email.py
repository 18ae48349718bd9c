"""The email adapter against a real SMTP server: pooling, headers, classification."""

from __future__ import annotations

import asyncio

import pytest

from channels.base import AuthError, Category, Message, PermanentError, TransientError
from channels.email import EmailAdapter, classify_reply
from tests.support import SmtpServer


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


def adapter(server: SmtpServer, pool: int = 2) -> EmailAdapter:
    return EmailAdapter(
        host="127.0.0.1",
        port=server.port,
        sender="Bảo hiểm xã hội Việt Nam <thongbao@bhxh.test>",
        pool_size=pool,
        timeout=10,
    )


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
    assert ids == [f"delivery-{i}@bhxh.test" for i in range(20)]
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
    assert bulk["Message-ID"] == "<delivery-1@bhxh.test>"
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
