"""Tests of the Telegram Bot API emulator (and of the shared harness, through it)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import httpx
import pytest
import telegram
from telegram import error as tg_errors

from channels.emulators.base import ANY, OK, Delay, Disconnect, ManualClock, Reply, TokenBucket
from channels.emulators.telegram import (
    DEFAULT_TOKEN,
    TelegramEmulator,
    bad_entities,
    bad_gateway,
    blocked,
    chat_not_found,
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

from .conftest import START


def api(emulator: TelegramEmulator, method: str, token: str = DEFAULT_TOKEN) -> str:
    return f"{emulator.base_url}/bot{token}/{method}"


def send(
    http: httpx.Client, emulator: TelegramEmulator, chat_id: int | str, text: str, **extra: str
) -> httpx.Response:
    return http.post(
        api(emulator, "sendMessage"), data={"chat_id": str(chat_id), "text": text, **extra}
    )


# -- wire format ---------------------------------------------------------------------------------


def test_get_me_answers_the_bot_for_form_json_and_get(
    tg: TelegramEmulator, http: httpx.Client
) -> None:
    for response in (
        http.post(api(tg, "getMe")),
        http.post(api(tg, "getMe"), json={}),
        http.get(api(tg, "getMe")),
        http.post(api(tg, "getme")),  # method names are case-insensitive
    ):
        assert response.status_code == 200
        body = response.json()
        assert body["ok"] is True
        assert body["result"]["id"] == tg.bot_id == 7000000001
        assert body["result"]["is_bot"] is True
        assert body["result"]["username"] == "vss_notify_bot"


def test_send_message_form_encoded(tg: TelegramEmulator, http: httpx.Client) -> None:
    response = send(http, tg, 42, "Xin chào", disable_notification="true")
    assert response.status_code == 200
    result = response.json()["result"]
    assert result["message_id"] == 1
    assert result["chat"] == {"id": 42, "first_name": "Người dùng", "type": "private"}
    assert result["date"] == int(START.timestamp())
    assert result["text"] == "Xin chào"
    assert result["from"]["id"] == tg.bot_id
    delivery = tg.outbox.last()
    assert (delivery.address, delivery.text, delivery.kind) == ("42", "Xin chào", "sendMessage")
    assert delivery.message_id == "1"
    assert delivery.at == START
    assert delivery.payload["disable_notification"] is True  # JSON-encoded form value decoded


def test_send_message_json_and_multipart_bodies(
    tg: TelegramEmulator, http: httpx.Client, clock: ManualClock
) -> None:
    first = http.post(api(tg, "sendMessage"), json={"chat_id": 7, "text": "một"})
    clock.advance(1)  # the per-chat limit is 1 message/s
    second = http.post(
        api(tg, "sendMessage"), files={"chat_id": (None, "7"), "text": (None, "hai")}
    )
    assert first.json()["result"]["message_id"] == 1
    assert second.json()["result"]["message_id"] == 2  # ids count per chat
    assert [d.text for d in tg.delivered_to(7)] == ["một", "hai"]


def test_chat_kinds(tg: TelegramEmulator, http: httpx.Client) -> None:
    group = send(http, tg, -4001, "g").json()["result"]["chat"]
    supergroup = send(http, tg, -1001234567890, "s").json()["result"]["chat"]
    channel = send(http, tg, "@vss_news", "c").json()["result"]["chat"]
    assert group["type"] == "group"
    assert supergroup["type"] == "supergroup"
    assert channel["type"] == "channel" and channel["username"] == "vss_news"
    assert [d.address for d in tg.outbox] == ["-4001", "-1001234567890", "@vss_news"]


def test_wrong_malformed_and_revoked_tokens(tg: TelegramEmulator, http: httpx.Client) -> None:
    wrong = http.post(api(tg, "getMe", token="7000000001:WRONG"))
    assert wrong.status_code == 401
    assert wrong.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    malformed = http.post(api(tg, "getMe", token="not-a-token"))
    assert malformed.status_code == 404
    assert malformed.json()["description"] == "Not Found"
    tg.revoke_token()
    assert http.post(api(tg, "getMe")).status_code == 401
    tg.add_token(DEFAULT_TOKEN)
    assert http.post(api(tg, "getMe")).status_code == 200


def test_unknown_method_and_path_are_not_found(tg: TelegramEmulator, http: httpx.Client) -> None:
    assert http.post(api(tg, "sendRocket")).json() == not_found().body
    assert http.get(f"{tg.base_url}/elsewhere").status_code == 404


@pytest.mark.parametrize(
    ("data", "description"),
    [
        ({"text": "x"}, "Bad Request: chat_id is empty"),
        ({"chat_id": "42"}, "Bad Request: message text is empty"),
        ({"chat_id": "42", "text": ""}, "Bad Request: message text is empty"),
        ({"chat_id": "not a chat", "text": "x"}, "Bad Request: chat not found"),
        (
            {"chat_id": "42", "text": "x", "parse_mode": "BBCode"},
            "Bad Request: unsupported parse_mode",
        ),
        (
            {"chat_id": "42", "text": "<b></b>", "parse_mode": "HTML"},
            "Bad Request: message text is empty",
        ),
    ],
)
def test_parameter_errors(
    tg: TelegramEmulator, http: httpx.Client, data: dict[str, str], description: str
) -> None:
    response = http.post(api(tg, "sendMessage"), data=data)
    assert response.status_code == 400
    assert response.json() == {"ok": False, "error_code": 400, "description": description}
    assert not tg.outbox


# -- text limits and entity parsing ------------------------------------------------------------


def test_text_limit_is_4096_utf16_code_units(tg: TelegramEmulator, http: httpx.Client) -> None:
    ok_texts = ["a" * 4096, "🙂" * 2048, "<b>" + "a" * 4096 + "</b>"]
    for chat, text in enumerate(ok_texts, start=1):
        mode = {"parse_mode": "HTML"} if text.startswith("<") else {}
        assert send(http, tg, chat, text, **mode).status_code == 200, text[:10]
    for chat, text in enumerate(["a" * 4097, "🙂" * 2049, "ệ" * 4097], start=10):
        response = send(http, tg, chat, text)
        assert response.status_code == 400
        assert response.json()["description"] == "Bad Request: message is too long"
    assert len(tg.outbox) == 3


@pytest.mark.parametrize(
    ("text", "mode", "shown"),
    [
        (
            "<b>Kính gửi</b> &lt;ông&gt; &amp; <a href='https://baohiemxahoi.gov.vn'>bà</a>",
            "HTML",
            "Kính gửi <ông> & bà",
        ),
        (
            "Số tiền: 1\\.500\\.000 *đồng* _VND_ __gạch__ ~cũ~ ||ẩn|| `mã` [link](https://x\\.vn)",
            "MarkdownV2",
            "Số tiền: 1.500.000 đồng VND gạch cũ ẩn mã link",
        ),
        (
            "*đậm* _nghiêng_ `mã` [liên kết](https://x.vn). Hết!",
            "Markdown",
            "đậm nghiêng mã liên kết. Hết!",
        ),
        ("1.500.000 *đồng*", None, "1.500.000 *đồng*"),
    ],
)
def test_entities_are_parsed_per_parse_mode(
    tg: TelegramEmulator, http: httpx.Client, text: str, mode: str | None, shown: str
) -> None:
    extra = {"parse_mode": mode} if mode else {}
    response = send(http, tg, 42, text, **extra)
    assert response.status_code == 200, response.json()
    assert response.json()["result"]["text"] == shown


@pytest.mark.parametrize(
    ("text", "mode", "detail"),
    [
        ("Dòng 1<br>Dòng 2", "HTML", 'Unsupported start tag "br" at byte offset 7'),
        ("<b>đậm", "HTML", 'Can\'t find end tag corresponding to start tag "b"'),
        ("<b>x</i>", "HTML", 'Unmatched end tag at byte offset 4, expected "</b>", found "</i>"'),
        (
            "Số tiền 1.500",
            "MarkdownV2",
            "Character '.' is reserved and must be escaped with the preceding '\\'",
        ),
        ("*đậm", "MarkdownV2", "Can't find end of Bold entity at byte offset 0"),
        ("`mã", "MarkdownV2", "Can't find end of Code entity at byte offset 0"),
        ("*đậm", "Markdown", "Can't find end of the entity starting at byte offset 0"),
    ],
)
def test_bad_markup_cannot_parse_entities(
    tg: TelegramEmulator, http: httpx.Client, text: str, mode: str, detail: str
) -> None:
    response = send(http, tg, 42, text, parse_mode=mode)
    assert response.status_code == 400
    assert response.json()["description"] == f"Bad Request: can't parse entities: {detail}"


# -- flood control -------------------------------------------------------------------------------


def test_per_chat_limit_answers_429_with_retry_after(
    tg: TelegramEmulator, http: httpx.Client, clock: ManualClock
) -> None:
    assert send(http, tg, 42, "một").status_code == 200
    limited = send(http, tg, 42, "hai")
    assert limited.status_code == 429
    assert limited.json() == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 1",
        "parameters": {"retry_after": 1},
    }
    assert send(http, tg, 43, "other chat").status_code == 200
    clock.advance(1)
    assert send(http, tg, 42, "hai").status_code == 200
    assert [d.text for d in tg.delivered_to(42)] == ["một", "hai"]


def test_global_limit(clock: ManualClock, http: httpx.Client) -> None:
    with TelegramEmulator(
        global_rate=3, chat_rate=None, clock=clock, monotonic=clock.monotonic
    ) as emulator:
        codes = [send(http, emulator, chat, "x").status_code for chat in range(1, 6)]
        assert codes == [200, 200, 200, 429, 429]
        clock.advance(timedelta(milliseconds=334))  # one token back at 3/s
        assert send(http, emulator, 9, "x").status_code == 200


def test_group_limit_is_per_minute(clock: ManualClock, http: httpx.Client) -> None:
    with TelegramEmulator(
        group_per_minute=2, chat_rate=None, clock=clock, monotonic=clock.monotonic
    ) as emulator:
        assert [send(http, emulator, -500, "x").status_code for _ in range(2)] == [200, 200]
        limited = send(http, emulator, -500, "x")
        assert limited.json()["parameters"] == {"retry_after": 30}
        assert send(http, emulator, 500, "private chats are not groups").status_code == 200


# -- scripted outcomes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "status", "description"),
    [
        (blocked(), 403, "Forbidden: bot was blocked by the user"),
        (user_deactivated(), 403, "Forbidden: user is deactivated"),
        (not_started(), 403, "Forbidden: bot can't initiate conversation with a user"),
        (kicked(), 403, "Forbidden: bot was kicked from the group chat"),
        (chat_not_found(), 400, "Bad Request: chat not found"),
        (message_too_long(), 400, "Bad Request: message is too long"),
        (
            bad_entities(),
            400,
            "Bad Request: can't parse entities: "
            "Can't find end of the entity starting at byte offset 0",
        ),
        (flood(35), 429, "Too Many Requests: retry after 35"),
        (migrated(-1009876), 400, "Bad Request: group chat was upgraded to a supergroup chat"),
        (unauthorized(), 401, "Unauthorized"),
        (not_found(), 404, "Not Found"),
        (server_error(), 500, "Internal Server Error"),
        (server_error(503, "Service Unavailable"), 503, "Service Unavailable"),
    ],
)
def test_scripted_error_once_then_success(
    tg: TelegramEmulator, http: httpx.Client, reply: Reply, status: int, description: str
) -> None:
    tg.script(42, reply)
    failed = send(http, tg, 42, "x")
    assert failed.status_code == status
    assert failed.json()["ok"] is False
    assert failed.json()["error_code"] == status
    assert failed.json()["description"] == description
    assert not tg.outbox
    assert send(http, tg, 42, "x").status_code == 200
    assert len(tg.outbox) == 1


def test_scripted_parameters_and_html_gateway(tg: TelegramEmulator, http: httpx.Client) -> None:
    tg.script(42, flood(35), migrated(-1009876), bad_gateway())
    assert send(http, tg, 42, "x").json()["parameters"] == {"retry_after": 35}
    assert send(http, tg, 42, "x").json()["parameters"] == {"migrate_to_chat_id": -1009876}
    gateway = send(http, tg, 42, "x")
    assert gateway.status_code == 502
    assert gateway.headers["content-type"].startswith("text/html")


def test_flood_n_times_then_ok_and_placeholders(tg: TelegramEmulator, http: httpx.Client) -> None:
    tg.script(42, *[flood(2)] * 3)
    assert tg.pending(42) == 3
    assert [send(http, tg, 42, "x").status_code for _ in range(4)] == [429, 429, 429, 200]
    tg.script(43, server_error(502, "Bad Gateway"), OK, blocked())
    assert [send(http, tg, 43, "x").status_code for _ in range(2)] == [502, 200]
    assert tg.pending(43) == 1
    tg.reset_scripts(43)
    assert tg.pending(43) == 0


def test_dropped_connection(tg: TelegramEmulator, http: httpx.Client) -> None:
    tg.script(42, Disconnect())
    with pytest.raises(httpx.RemoteProtocolError):
        send(http, tg, 42, "x")
    assert send(http, tg, 42, "x").status_code == 200
    assert tg.requests.filter(path="sendMessage")[0].status == 200  # started, never finished


def test_any_address_script(tg: TelegramEmulator, http: httpx.Client) -> None:
    tg.script(ANY, server_error())
    assert send(http, tg, 1, "x").status_code == 500
    assert send(http, tg, 2, "x").status_code == 200


def test_server_errors_for_the_next_k_calls_on_any_chat(
    tg: TelegramEmulator, http: httpx.Client
) -> None:
    tg.script(ANY, *[server_error(503, "Service Unavailable")] * 3)
    assert [send(http, tg, chat, "x").status_code for chat in (1, 2, 3, 4)] == [503] * 3 + [200]
    assert tg.pending(ANY) == 0
    assert [d.address for d in tg.outbox] == ["4"]


def test_token_revoked_after_n_more_calls(tg: TelegramEmulator, http: httpx.Client) -> None:
    tg.expire_token_after(3)
    assert http.post(api(tg, "getMe")).status_code == 200  # every authorised call counts
    assert send(http, tg, 1, "x").status_code == 200
    assert tg.token_calls_left == 1
    assert send(http, tg, 2, "<br>", parse_mode="HTML").status_code == 400  # it used the token
    assert tg.token_calls_left is None, "the countdown is over"
    revoked = send(http, tg, 3, "x")
    assert revoked.status_code == 401
    assert revoked.json() == {"ok": False, "error_code": 401, "description": "Unauthorized"}
    assert http.post(api(tg, "getMe")).status_code == 401
    assert [d.address for d in tg.outbox] == ["1"]
    tg.add_token(tg.token)  # a new token from BotFather: no countdown any more
    assert all(send(http, tg, chat, "x").status_code == 200 for chat in (4, 5, 6))
    tg.expire_token_after(0)
    assert send(http, tg, 7, "x").status_code == 401
    with pytest.raises(ValueError, match="zero or more"):
        tg.expire_token_after(-1)


def test_python_telegram_bot_sees_an_expiring_token_as_invalid(tg: TelegramEmulator) -> None:
    async def scenario() -> list[str]:
        outcomes = []
        tg.expire_token_after(2)  # getMe (initialize) and one send
        async with telegram.Bot(tg.token, base_url=tg.bot_base_url) as bot:
            for chat in (1, 2):
                try:
                    await bot.send_message(chat_id=chat, text="x")
                    outcomes.append("sent")
                except tg_errors.InvalidToken:
                    outcomes.append("invalid token")
        return outcomes

    assert asyncio.run(scenario()) == ["sent", "invalid token"]


def test_stats_endpoint_counts_requests_by_status_and_accepted_per_second(
    tg: TelegramEmulator, http: httpx.Client, clock: ManualClock
) -> None:
    empty = http.get(f"{tg.base_url}/_emulator/stats").json()
    assert empty["requests"] == 0 and empty["accepted"] == 0
    assert empty["accepted_per_second"] == [] and empty["first_accepted_at"] is None
    assert send(http, tg, 1, "x").status_code == 200
    assert send(http, tg, 1, "x").status_code == 429  # one a second per chat
    assert send(http, tg, 2, "x").status_code == 200
    clock.advance(2.5)
    assert send(http, tg, 1, "x").status_code == 200
    stats = http.get(f"{tg.base_url}/_emulator/stats").json()
    assert stats["requests"] == 4, "the stats requests themselves are not recorded"
    assert stats["by_status"] == {"200": 3, "429": 1}
    assert stats["accepted"] == 3
    assert stats["accepted_per_second"] == [2, 0, 1]
    assert stats["first_accepted_at"] == START.isoformat()
    assert "not part of any provider" in stats["note"]
    assert len(tg.requests) == 4
    assert http.post(f"{tg.base_url}/_emulator/stats").status_code == 404  # GET only


def test_sticky_chat_states_until_restored(tg: TelegramEmulator, http: httpx.Client) -> None:
    tg.block(1)
    tg.deactivate(2)
    tg.never_started(3)
    tg.forget_chat(4)
    for _ in range(2):  # sticky: every attempt gets the same answer
        assert (
            send(http, tg, 1, "x").json()["description"] == "Forbidden: bot was blocked by the user"
        )
        assert send(http, tg, 2, "x").json()["description"] == "Forbidden: user is deactivated"
        assert send(http, tg, 3, "x").status_code == 403
        assert send(http, tg, 4, "x").json()["description"] == "Bad Request: chat not found"
    tg.restore(1)
    assert send(http, tg, 1, "x").status_code == 200


def test_delay_drives_client_timeouts_and_is_released_on_stop(clock: ManualClock) -> None:
    emulator = TelegramEmulator(clock=clock, monotonic=clock.monotonic).start()
    emulator.script(42, Delay(60))
    with httpx.Client(timeout=0.2) as client, pytest.raises(httpx.ReadTimeout):
        send(client, emulator, 42, "slow")
    began = time.monotonic()
    emulator.stop()
    assert time.monotonic() - began < 5  # the 60 s hold was released, not waited out
    # The held request was then processed normally (the provider got it; the client gave up).
    assert [d.text for d in emulator.outbox] == ["slow"]


# -- the harness, exercised through this emulator ------------------------------------------------


def test_request_log_records_everything(tg: TelegramEmulator, http: httpx.Client) -> None:
    http.post(api(tg, "getMe", token="1:bad"))
    send(http, tg, 42, "Xin chào")
    first, second = tg.requests.wait_for(2)
    assert (first.status, second.status) == (401, 200)
    assert second.method == "POST"
    assert second.header("content-type") == "application/x-www-form-urlencoded"
    assert "Xin+ch%C3%A0o" in second.text
    assert json.loads(second.response_body)["ok"] is True
    assert second.mentions(DEFAULT_TOKEN) == ["path"]
    assert [r for r, _ in tg.requests.mentioning("Xin chào")] == [second]
    assert tg.requests.filter(path="sendMessage") == [second]


def test_server_lifecycle(clock: ManualClock) -> None:
    emulator = TelegramEmulator(clock=clock, monotonic=clock.monotonic)
    with pytest.raises(RuntimeError):
        _ = emulator.base_url
    with emulator:
        first_port = emulator.port
        assert httpx.post(api(emulator, "getMe")).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.post(api(emulator, "getMe"))
    with emulator:  # restartable; a fresh free port
        assert httpx.post(api(emulator, "getMe")).status_code == 200
        assert emulator.port > 0
    assert first_port > 0


def test_token_bucket_and_manual_clock() -> None:
    clock = ManualClock(START)
    bucket = TokenBucket(rate=2, capacity=2, monotonic=clock.monotonic)
    assert [bucket.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.5]
    clock.advance(0.5)
    assert bucket.try_acquire() == 0.0
    assert bucket.available == pytest.approx(0.0)
    clock.set(START + timedelta(hours=1))
    assert clock() == START + timedelta(hours=1)
    assert bucket.available == 2
    with pytest.raises(ValueError):
        clock.advance(-1)


# -- python-telegram-bot against the emulator --------------------------------------------------


# RetryAfter's own constructor reads its deprecated int-valued attribute; not our concern here.
@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
def test_python_telegram_bot_end_to_end(tg: TelegramEmulator) -> None:
    tg.block(43)
    tg.script(44, flood(35))
    tg.forget_chat(45)
    tg.script(46, server_error(502, "Bad Gateway"), Disconnect())

    async def scenario() -> None:
        async with telegram.Bot(DEFAULT_TOKEN, base_url=tg.bot_base_url) as bot:
            assert bot.username == "vss_notify_bot"
            message = await bot.send_message(
                chat_id=42, text="<b>Thông báo</b> đóng BHXH", parse_mode="HTML"
            )
            assert message.message_id == 1
            assert message.text == "Thông báo đóng BHXH"
            assert message.chat.id == 42
            with pytest.raises(tg_errors.Forbidden, match="bot was blocked by the user"):
                await bot.send_message(chat_id=43, text="x")
            with pytest.raises(tg_errors.RetryAfter) as flood_info:
                await bot.send_message(chat_id=44, text="x")
            assert "Retry in 35" in str(flood_info.value)
            with pytest.raises(tg_errors.BadRequest, match="Chat not found"):
                await bot.send_message(chat_id=45, text="x")
            with pytest.raises(tg_errors.BadRequest, match="Message is too long"):
                await bot.send_message(chat_id=47, text="a" * 4097)
            for _ in range(2):  # a 502, then a connection dropped mid-answer
                with pytest.raises(tg_errors.NetworkError):
                    await bot.send_message(chat_id=46, text="x")
        with pytest.raises(tg_errors.InvalidToken):
            await telegram.Bot("7000000001:WRONG", base_url=tg.bot_base_url).initialize()

    asyncio.run(scenario())
    assert [(d.address, d.text) for d in tg.outbox] == [("42", "Thông báo đóng BHXH")]
    # python-telegram-bot posts form-encoded bodies; the token only ever travels in the path.
    send_request = tg.requests.filter(path="sendMessage")[0]
    assert send_request.header("content-type") == "application/x-www-form-urlencoded"
    assert all(r.mentions(DEFAULT_TOKEN) in (["path"], []) for r in tg.requests)
