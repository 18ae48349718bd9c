"""The Telegram adapter against the Telegram Bot API emulator (python-telegram-bot on the wire).

Every row of the CHANNELS.md Telegram table is scripted per chat and must come back as the
right error class, with ``address_dead`` where due and Telegram's own code recorded. The
emulator runs on a hand-driven clock, so its flood control never depends on real time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest
from pydantic import SecretStr

from channels import registry
from channels.base import (
    AdapterContext,
    AuthError,
    Category,
    DeliveryError,
    Message,
    PermanentError,
    RateLimitedError,
    SendResult,
    TransientError,
)
from channels.emulators.base import Delay, Disconnect, ManualClock, Reply
from channels.emulators.telegram import (
    TelegramEmulator,
    bad_entities,
    bad_gateway,
    blocked,
    chat_not_found,
    error,
    flood,
    kicked,
    message_too_long,
    migrated,
    not_found,
    not_started,
    server_error,
    unauthorized,
    user_deactivated,
)
from channels.registry import declared_limits as LIMITS
from channels.telegram import TOKEN_LOGGERS, TelegramAdapter
from dispatcher.core.config import Settings
from tests.channels.support import adapter_for, assert_no_secret, failure, run, send_one
from tests.emulators.conftest import START

T = TypeVar("T")
CHAT = "42"

# python-telegram-bot 22's own RetryAfter constructor reads its deprecated int ``retry_after``;
# the adapter takes the number from Telegram's answer instead.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*attribute `retry_after`.*:telegram.warnings.PTBDeprecationWarning"
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def tg(clock: ManualClock) -> Iterator[TelegramEmulator]:
    with TelegramEmulator(clock=clock, monotonic=clock.monotonic) as emulator:
        yield emulator


def settings_values(tg: TelegramEmulator) -> dict[str, Any]:
    return {"telegram_token": tg.token, "telegram_base_url": tg.bot_base_url}


def make_adapter(tg: TelegramEmulator, **overrides: Any) -> TelegramAdapter:
    return adapter_for(TelegramAdapter, settings_values(tg), overrides)


def message(
    address: str = CHAT,
    body: str = "<b>Kính gửi</b> Ông/Bà &amp; gia đình",
    delivery_id: int = 1,
) -> Message:
    return Message(delivery_id=delivery_id, address=address, body=body, kind=Category.transactional)


def assert_no_token(exc: DeliveryError, token: str) -> None:
    # The bot token and its secret half; raised outside the except block, so no chained
    # python-telegram-bot exception (whose message may hold the token) travels with ours.
    assert_no_secret(exc, token, token.split(":", 1)[1])


def test_declares_its_limits_and_is_registered() -> None:
    assert registry.get("telegram") is TelegramAdapter
    assert TelegramAdapter.name == "telegram"
    assert TelegramAdapter.limits is LIMITS["telegram"]
    overall, per_chat = TelegramAdapter.rate_limits
    assert (overall.per_second, overall.burst, overall.per_address) == (29, 1, False)
    assert (per_chat.per_second, per_chat.burst, per_chat.per_address) == (1, 1, True)


# -- success ----------------------------------------------------------------------------------


def test_sends_html_and_returns_the_message_id(tg: TelegramEmulator) -> None:
    result = send_one(make_adapter(tg), message())
    assert result == SendResult(provider_message_id=f"{CHAT}:1", provider_code="ok")
    delivery = tg.outbox.last()
    assert delivery.address == CHAT
    assert delivery.text == "Kính gửi Ông/Bà & gia đình"  # the emulator parsed it as HTML
    assert delivery.payload["parse_mode"] == "HTML"
    assert delivery.payload["link_preview_options"] == {"is_disabled": True}
    # The token travels in the URL path only, as the Bot API wants it.
    (request,) = tg.requests.filter(path="sendMessage")
    assert request.mentions(tg.token) == ["path"]


def test_one_bot_and_one_get_me_for_many_concurrent_sends(
    tg: TelegramEmulator, clock: ManualClock
) -> None:
    adapter = make_adapter(tg)

    async def go(a: TelegramAdapter) -> tuple[list[SendResult], SendResult, bool]:
        await a.open()
        await a.open()  # idempotent: still one Bot
        bot = a.bot
        results = await asyncio.gather(*(a.send(message(str(c))) for c in range(1, 21)))
        clock.advance(1)  # the emulator's 1 message/s per chat
        again = await a.send(message("1", "lần hai"))
        return list(results), again, a.bot is bot

    results, again, same_bot = run(adapter, go)
    # Telegram counts ids per chat; the chat qualifies them.
    assert [r.provider_message_id for r in results] == [f"{c}:1" for c in range(1, 21)]
    assert again.provider_message_id == "1:2"
    assert same_bot
    assert len(tg.requests.filter(path="getMe")) == 1
    assert len(tg.requests.filter(path="sendMessage")) == 21
    assert sorted(int(d.address) for d in tg.outbox) == [1, *range(1, 21)]


def test_close_shuts_the_bot_down_and_a_later_send_reopens(tg: TelegramEmulator) -> None:
    adapter = make_adapter(tg)

    async def go(a: TelegramAdapter) -> None:
        await a.open()
        bot = a.bot
        assert bot is not None and a.is_open
        await a.close()
        assert a.bot is None and not a.is_open
        # python-telegram-bot's own transport is closed (no public flag for it).
        assert bot.request._client.is_closed
        await a.close()  # twice is harmless
        for name in TOKEN_LOGGERS:
            assert not logging.getLogger(name).filters
        await a.send(message())  # lazily opens again
        assert a.is_open

    run(adapter, go)
    assert len(tg.requests.filter(path="getMe")) == 2
    assert len(tg.outbox) == 1


# -- the CHANNELS.md table, scripted per chat ------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected", "dead", "code", "words"),
    [
        (blocked(), PermanentError, True, "403", "bot was blocked by the user"),
        (user_deactivated(), PermanentError, True, "403", "user is deactivated"),
        (not_started(), PermanentError, True, "403", "can't initiate conversation"),
        (kicked(), PermanentError, True, "403", "kicked from the group chat"),
        (chat_not_found(), PermanentError, True, "400", "chat not found"),
        (message_too_long(), PermanentError, False, "400", "message is too long"),
        (bad_entities(), PermanentError, False, "400", "can't parse entities"),
        (flood(35), RateLimitedError, False, "429", "retry after 35"),
        (unauthorized(), AuthError, False, "401", "Unauthorized"),
        (not_found(), AuthError, False, "404", "Not Found"),
        (server_error(), TransientError, False, "500", "Internal Server Error"),
        (server_error(503, "Service Unavailable"), TransientError, False, "503", "Unavailable"),
        (bad_gateway(), TransientError, False, "502", "502 Bad Gateway"),
    ],
)
def test_error_table(
    tg: TelegramEmulator,
    reply: Reply,
    expected: type[DeliveryError],
    dead: bool,
    code: str,
    words: str,
) -> None:
    tg.script(CHAT, reply)
    exc = failure(make_adapter(tg), message())
    assert type(exc) is expected
    assert exc.address_dead is dead
    assert exc.code == code
    assert exc.reply is not None and words in exc.reply
    assert_no_token(exc, tg.token)
    assert not tg.outbox


def test_flood_control_carries_retry_after(tg: TelegramEmulator) -> None:
    tg.script(CHAT, flood(35))
    exc = failure(make_adapter(tg), message())
    assert isinstance(exc, RateLimitedError)
    assert exc.retry_after == 35.0


def test_the_emulators_own_per_chat_limit_is_rate_limited(
    tg: TelegramEmulator, clock: ManualClock
) -> None:
    async def go(a: TelegramAdapter) -> DeliveryError:
        await a.send(message(body="một"))
        with pytest.raises(RateLimitedError) as caught:
            await a.send(message(body="hai"))
        clock.advance(caught.value.retry_after or 0)
        await a.send(message(body="hai"))
        return caught.value

    exc = run(make_adapter(tg), go)
    assert exc.retry_after == 1.0 and exc.code == "429"
    assert [d.text for d in tg.delivered_to(CHAT)] == ["một", "hai"]


def test_chat_migrated_is_permanent_and_names_the_new_chat(tg: TelegramEmulator) -> None:
    tg.script(CHAT, migrated(-1009876))
    exc = failure(make_adapter(tg), message())
    assert type(exc) is PermanentError
    assert "-1009876" in exc.reason
    assert exc.code == "400" and "upgraded to a supergroup" in (exc.reply or "")
    assert not exc.address_dead  # the group lives on under its new id


def test_sticky_chat_states(tg: TelegramEmulator) -> None:
    tg.block("1")
    tg.forget_chat("2")
    adapter = make_adapter(tg)

    async def go(a: TelegramAdapter) -> list[DeliveryError]:
        found: list[DeliveryError] = []
        for chat in ("1", "2"):
            with pytest.raises(PermanentError) as caught:
                await a.send(message(chat))
            found.append(caught.value)
        return found

    blocked_chat, unknown_chat = run(adapter, go)
    assert blocked_chat.address_dead and unknown_chat.address_dead


def test_markup_telegram_cannot_parse_is_permanent(tg: TelegramEmulator) -> None:
    exc = failure(make_adapter(tg), message(body="Dòng 1<br>Dòng 2"))
    assert type(exc) is PermanentError and not exc.address_dead
    assert exc.code == "400"
    assert exc.reply == (
        'Bad Request: can\'t parse entities: Unsupported start tag "br" at byte offset 7'
    )


def test_dropped_connection_is_transient(tg: TelegramEmulator) -> None:
    tg.script(CHAT, Disconnect())
    exc = failure(make_adapter(tg), message())
    assert type(exc) is TransientError
    assert_no_token(exc, tg.token)


def test_timeout_is_transient(tg: TelegramEmulator) -> None:
    # The emulator holds the request (released when it stops); the client gives up first.
    tg.script(CHAT, Delay(60))
    exc = failure(make_adapter(tg, http_timeout=0.3), message())
    assert type(exc) is TransientError
    assert exc.code == "timeout"


def test_unreachable_server_is_transient(clock: ManualClock) -> None:
    with TelegramEmulator(clock=clock, monotonic=clock.monotonic) as gone:
        values = settings_values(gone)
    adapter = adapter_for(TelegramAdapter, values, {})  # nothing listens now
    with pytest.raises(TransientError) as caught:
        run(adapter, lambda a: a.open())
    assert_no_token(caught.value, gone.token)
    assert not adapter.is_open


# -- the token ------------------------------------------------------------------------------


def test_revoked_token_fails_open_with_auth_error_and_never_shows_the_token(
    tg: TelegramEmulator,
) -> None:
    tg.revoke_token()
    adapter = make_adapter(tg)
    with pytest.raises(AuthError) as caught:
        # python-telegram-bot's own InvalidToken here reads "The token `...` was rejected".
        run(adapter, lambda a: a.open())
    assert caught.value.code == "401"
    assert "getMe" in caught.value.reason
    assert_no_token(caught.value, tg.token)
    assert not adapter.is_open
    tg.add_token(tg.token)  # the operator fixed it: the next send opens and goes through
    assert send_one(adapter, message()).provider_code == "ok"


def test_malformed_token_is_an_auth_error(tg: TelegramEmulator) -> None:
    adapter = make_adapter(tg, telegram_token="not-a-token-at-all")
    with pytest.raises(AuthError) as caught:
        run(adapter, lambda a: a.open())
    assert caught.value.code == "404"
    assert_no_token(caught.value, "not-a-token:at-all")
    assert "not-a-token-at-all" not in str(caught.value)


def test_token_revoked_while_open_is_an_auth_error_on_send(tg: TelegramEmulator) -> None:
    async def go(a: TelegramAdapter) -> None:
        await a.open()
        tg.revoke_token()
        with pytest.raises(AuthError) as caught:
            await a.send(message())
        assert caught.value.code == "401"
        assert_no_token(caught.value, tg.token)

    run(make_adapter(tg), go)


def test_token_is_scrubbed_from_provider_words_and_repr(tg: TelegramEmulator) -> None:
    tg.script(CHAT, error(400, f"Bad Request: wrong url /bot{tg.token}/sendMessage"))
    adapter = make_adapter(tg)
    exc = failure(adapter, message())
    assert type(exc) is PermanentError
    assert "/bot***/sendMessage" in (exc.reply or "")
    assert_no_token(exc, tg.token)
    for shown in (repr(adapter), str(adapter)):
        assert tg.token not in shown


def test_token_never_reaches_a_log_line(
    tg: TelegramEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tg.script("7", blocked())

    async def go(a: TelegramAdapter) -> None:
        await a.send(message())
        with pytest.raises(PermanentError):
            await a.send(message("7"))

    run(make_adapter(tg), go)
    lines = [record.getMessage() for record in caplog.records]
    # httpx logs every request URL at INFO, python-telegram-bot the API URL at DEBUG.
    assert any(
        r.name == "httpx" and "/bot***/sendMessage" in r.getMessage() for r in caplog.records
    )
    assert any(r.name == "telegram.Bot" and "/bot***" in r.getMessage() for r in caplog.records)
    assert not [line for line in lines if tg.token in line]


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, SecretStr(""), SecretStr("   ")])
def test_missing_token_names_the_variable(token: SecretStr | None) -> None:
    settings = Settings(telegram_token=token)
    with pytest.raises(ValueError, match="DISPATCHER_TELEGRAM_TOKEN"):
        TelegramAdapter.from_settings(settings, AdapterContext())


def test_settings_reach_the_bot(tg: TelegramEmulator) -> None:
    adapter = make_adapter(tg, http_timeout=7.5)
    assert adapter.timeout == 7.5
    assert adapter.base_url == tg.bot_base_url

    async def go(a: TelegramAdapter) -> None:
        await a.open()
        assert a.bot is not None
        assert a.bot.request.read_timeout == 7.5
        assert a.bot.base_url == f"{tg.bot_base_url}{tg.token}"

    run(adapter, go)
