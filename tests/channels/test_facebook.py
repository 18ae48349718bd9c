"""The Facebook Messenger adapter against the Graph API emulator.

Every row of the CHANNELS.md Messenger table is scripted per PSID and must come back as the
right error class, with ``address_dead`` where due and Graph's ``code/subcode`` recorded. The
emulator runs on a hand-driven clock: the 24-hour window and the page rate limit never depend
on today's date or on real time passing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
import pytest
from pydantic import SecretStr

from channels import facebook, registry
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
from channels.emulators.messenger import MessengerEmulator, error
from channels.facebook import TOKEN_LOGGERS, FacebookAdapter, classify_error, messaging_for
from channels.registry import declared_limits as LIMITS
from dispatcher.core.config import Settings
from tests.channels.support import adapter_for, assert_no_secret, failure, run, send_one
from tests.emulators.conftest import START

T = TypeVar("T")
PSID = "6543210987654321"
# Answers without a Graph error object, as a front proxy would give them.
PROXY_502 = Reply(502, "<html>502 Bad Gateway</html>", media_type="text/html")
PROXY_404 = Reply(404, "Not here", media_type="text/plain")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def messenger(clock: ManualClock) -> Iterator[MessengerEmulator]:
    with MessengerEmulator(clock=clock, monotonic=clock.monotonic) as emulator:
        yield emulator


def settings_values(emulator: MessengerEmulator) -> dict[str, Any]:
    return {
        "facebook_page_id": emulator.page_id,
        "facebook_page_token": emulator.page_token,
        "facebook_graph_url": emulator.base_url,
        "facebook_api_version": "v21.0",
    }


def make_adapter(emulator: MessengerEmulator, **overrides: Any) -> FacebookAdapter:
    return adapter_for(FacebookAdapter, settings_values(emulator), overrides)


def message(
    address: str = PSID,
    kind: Category = Category.transactional,
    body: str = "Kính gửi Ông/Bà: sổ BHXH của Ông/Bà đã được cập nhật.",
    delivery_id: int = 1,
) -> Message:
    return Message(delivery_id=delivery_id, address=address, body=body, kind=kind)


def assert_no_token(exc: DeliveryError, token: str) -> None:
    assert_no_secret(exc, token)


def test_declares_its_limits_and_is_registered() -> None:
    assert registry.get("facebook") is FacebookAdapter
    assert FacebookAdapter.name == "facebook"
    assert FacebookAdapter.limits is LIMITS["facebook"]
    (rule,) = FacebookAdapter.rate_limits
    assert (rule.per_second, rule.burst, rule.per_address) == (250, 50, False)


# -- success and the kind → messaging type table ----------------------------------------------


@pytest.mark.parametrize(
    ("kind", "messaging_type", "tag"),
    [
        (Category.transactional, "MESSAGE_TAG", "ACCOUNT_UPDATE"),
        (Category.fraud_warning, "UPDATE", None),
        (Category.greeting, "UPDATE", None),
        (Category.policy_news, "UPDATE", None),
        (Category.disaster_support, "UPDATE", None),
    ],
)
def test_sends_with_the_messaging_type_of_its_kind(
    messenger: MessengerEmulator, kind: Category, messaging_type: str, tag: str | None
) -> None:
    result = send_one(make_adapter(messenger), message(kind=kind))
    delivery = messenger.outbox.last()
    assert (delivery.address, delivery.kind, delivery.tag) == (PSID, messaging_type, tag)
    assert delivery.text == "Kính gửi Ông/Bà: sổ BHXH của Ông/Bà đã được cập nhật."
    assert delivery.payload["recipient"] == {"id": PSID}
    assert ("tag" in delivery.payload) is (tag is not None)
    assert result.provider_message_id == delivery.message_id
    assert result.provider_code == "ok"
    assert result.provider_reply is not None and messenger.page_token not in result.provider_reply
    # The token travels only as the access_token query parameter, on the versioned path.
    (request,) = messenger.requests.filter(method="POST", path="/messages")
    assert request.path == f"/v21.0/{messenger.page_id}/messages"
    assert request.mentions(messenger.page_token) == ["query"]
    assert request.query["access_token"] == messenger.page_token


def test_unknown_kind_never_borrows_a_tag() -> None:
    assert messaging_for("something_new") == ("UPDATE", None)
    assert messaging_for("transactional") == ("MESSAGE_TAG", "ACCOUNT_UPDATE")


def test_outside_the_window_only_tagged_kinds_get_through(messenger: MessengerEmulator) -> None:
    messenger.close_window(PSID)
    adapter = make_adapter(messenger)

    async def go(a: FacebookAdapter) -> tuple[DeliveryError, SendResult]:
        with pytest.raises(PermanentError) as caught:
            await a.send(message(kind=Category.greeting))
        return caught.value, await a.send(message(kind=Category.transactional))

    refused, sent = run(adapter, go)
    assert "outside the 24-hour window" in refused.reason
    assert not refused.address_dead
    assert refused.code == "10/2018278"
    assert sent.provider_message_id == messenger.outbox.last().message_id
    assert messenger.outbox.last().tag == "ACCOUNT_UPDATE"


def test_one_client_for_many_concurrent_sends(
    messenger: MessengerEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[httpx.AsyncClient] = []

    class CountingClient(httpx.AsyncClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(facebook.httpx, "AsyncClient", CountingClient)
    adapter = make_adapter(messenger)

    async def go(a: FacebookAdapter) -> list[SendResult]:
        await a.open()
        await a.open()  # idempotent
        return list(
            await asyncio.gather(*(a.send(message(f"{PSID}{i}", delivery_id=i)) for i in range(25)))
        )

    results = run(adapter, go)
    assert len(made) == 1
    assert made[0].is_closed  # close() closed it
    assert not adapter.is_open
    assert len({r.provider_message_id for r in results}) == 25
    assert len(messenger.outbox) == 25


def test_close_is_idempotent_and_a_later_send_reopens(messenger: MessengerEmulator) -> None:
    async def go(a: FacebookAdapter) -> None:
        await a.close()  # before open: harmless
        await a.open()
        await a.close()
        await a.close()
        for name in TOKEN_LOGGERS:
            assert not logging.getLogger(name).filters
        await a.send(message())
        assert a.is_open

    run(make_adapter(messenger), go)
    assert len(messenger.outbox) == 1


# -- the CHANNELS.md table, scripted per PSID --------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected", "dead", "code", "retry_after"),
    [
        (error(10, 2018278), PermanentError, False, "10/2018278", None),
        (error(551, 1545041), PermanentError, True, "551/1545041", None),
        (error(200, 1545041), PermanentError, True, "200/1545041", None),
        (error(10, 2018108), PermanentError, True, "10/2018108", None),
        (error(100, 2018001), PermanentError, True, "100/2018001", None),
        (error(190), AuthError, False, "190", None),
        (error(190, 463), AuthError, False, "190/463", None),
        (error(190, 460), AuthError, False, "190/460", None),
        (error(4), RateLimitedError, False, "4", None),
        (error(17), RateLimitedError, False, "17", None),
        (error(32), RateLimitedError, False, "32", None),
        (error(613), RateLimitedError, False, "613", None),
        (error(80001), RateLimitedError, False, "80001", None),
        (error(368), RateLimitedError, False, "368", 3600.0),
        (error(1200), TransientError, False, "1200", None),
        (error(1), TransientError, False, "1", None),
        (error(2), TransientError, False, "2", None),
        # Not in the table: any other 5xx is transient, anything else permanent.
        (error(99, status=502, message="Bad gateway"), TransientError, False, "99", None),
        (error(100), PermanentError, False, "100", None),
        # Account-wide: a permission of the app or Page is missing (pauses the channel).
        (error(10), AuthError, False, "10", None),
        (error(10, 2018065), AuthError, False, "10/2018065", None),
        (error(200), AuthError, False, "200", None),
        (error(200, 2018028), AuthError, False, "200/2018028", None),
        (error(200, 2018027), AuthError, False, "200/2018027", None),
        (error(200, 2018021), AuthError, False, "200/2018021", None),
        (error(230), AuthError, False, "230", None),
        (PROXY_502, TransientError, False, "502", None),
        (PROXY_404, PermanentError, False, "404", None),
    ],
)
def test_error_table(
    messenger: MessengerEmulator,
    reply: Reply,
    expected: type[DeliveryError],
    dead: bool,
    code: str,
    retry_after: float | None,
) -> None:
    messenger.script(PSID, reply)
    exc = failure(make_adapter(messenger), message())
    assert type(exc) is expected
    assert exc.address_dead is dead
    assert exc.code == code
    assert exc.retry_after == retry_after
    assert exc.reply  # the provider's own words are kept
    if isinstance(reply.body, dict):
        assert reply.body["error"]["message"][:40] in exc.reply
        assert reply.body["error"]["message"][:40] in exc.reason
    assert_no_token(exc, messenger.page_token)
    assert not messenger.outbox


def test_outside_window_reason_is_not_a_dead_address(messenger: MessengerEmulator) -> None:
    messenger.script(PSID, error(10, 2018278))
    exc = failure(make_adapter(messenger), message(kind=Category.policy_news))
    assert "outside the 24-hour window" in exc.reason and not exc.address_dead


def test_the_emulators_own_states(clock: ManualClock) -> None:
    with MessengerEmulator(
        clock=clock, monotonic=clock.monotonic, page_rate=1, page_burst=1
    ) as emulator:
        emulator.forget("111")
        emulator.make_unavailable("222", 200, 1545041)

        async def go(a: FacebookAdapter) -> list[DeliveryError]:
            found: list[DeliveryError] = []
            for psid in ("111", "222"):
                with pytest.raises(PermanentError) as dead:
                    await a.send(message(psid))
                found.append(dead.value)
            await a.send(message("333"))
            with pytest.raises(RateLimitedError) as limited:  # the page's 1 call/s is spent
                await a.send(message("444"))
            found.append(limited.value)
            clock.advance(1)
            await a.send(message("444"))
            emulator.expire_token()
            with pytest.raises(AuthError) as expired:
                await a.send(message("555"))
            found.append(expired.value)
            return found

        forgotten, unavailable, limited, expired = run(make_adapter(emulator), go)
    assert (forgotten.code, forgotten.address_dead) == ("100/2018001", True)
    assert (unavailable.code, unavailable.address_dead) == ("200/1545041", True)
    assert (limited.code, limited.retry_after) == ("613", None)
    assert expired.code == "190/463"
    assert [d.address for d in emulator.outbox] == ["333", "444"]


def test_dropped_connection_is_transient(messenger: MessengerEmulator) -> None:
    messenger.script(PSID, Disconnect())
    exc = failure(make_adapter(messenger), message())
    assert type(exc) is TransientError and exc.code == "network"
    assert_no_token(exc, messenger.page_token)


def test_timeout_is_transient(messenger: MessengerEmulator) -> None:
    # The emulator holds the request (released when it stops); the client gives up first.
    messenger.script(PSID, Delay(60))
    exc = failure(make_adapter(messenger, http_timeout=0.3), message())
    assert type(exc) is TransientError and exc.code == "timeout"


def test_unreachable_server_is_transient(clock: ManualClock) -> None:
    with MessengerEmulator(clock=clock, monotonic=clock.monotonic) as gone:
        values = settings_values(gone)
    adapter = adapter_for(FacebookAdapter, values, {})  # nothing listens now
    with pytest.raises(TransientError) as caught:
        send_one(adapter, message())
    assert_no_token(caught.value, gone.page_token)


def test_classify_error_is_pure() -> None:
    window = classify_error(400, 10, 2018278, "{}", "(#10) outside of allowed window")
    assert type(window) is PermanentError and "outside the 24-hour window" in window.reason
    assert type(classify_error(503, None, None, "503")) is TransientError
    assert type(classify_error(429, None, None, "429")) is RateLimitedError


# -- the token ------------------------------------------------------------------------------


def test_token_is_scrubbed_from_provider_words_and_repr(messenger: MessengerEmulator) -> None:
    token = messenger.page_token
    messenger.script(PSID, error(100, message=f"(#100) Invalid token {token} in request"))
    adapter = make_adapter(messenger)
    exc = failure(adapter, message())
    assert type(exc) is PermanentError
    assert "Invalid token *** in request" in (exc.reply or "")
    assert_no_token(exc, token)
    assert token not in repr(adapter)


def test_token_never_reaches_a_log_line(
    messenger: MessengerEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    messenger.script("7", error(613))

    async def go(a: FacebookAdapter) -> None:
        await a.send(message())
        with pytest.raises(RateLimitedError):
            await a.send(message("7"))

    run(make_adapter(messenger), go)
    lines = [(record.name, record.getMessage()) for record in caplog.records]
    # httpx logs every request URL, query string included, at INFO.
    assert any(name == "httpx" and "access_token=***" in line for name, line in lines)
    assert not [line for _, line in lines if messenger.page_token in line]


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page_id", "token", "named"),
    [
        (None, SecretStr("EAAGtoken"), ["DISPATCHER_FACEBOOK_PAGE_ID"]),
        ("104857600000001", None, ["DISPATCHER_FACEBOOK_PAGE_TOKEN"]),
        ("104857600000001", SecretStr("  "), ["DISPATCHER_FACEBOOK_PAGE_TOKEN"]),
        (None, None, ["DISPATCHER_FACEBOOK_PAGE_ID", "DISPATCHER_FACEBOOK_PAGE_TOKEN"]),
    ],
)
def test_missing_settings_name_the_variables(
    page_id: str | None, token: SecretStr | None, named: list[str]
) -> None:
    settings = Settings(facebook_page_id=page_id, facebook_page_token=token)
    with pytest.raises(ValueError) as caught:
        FacebookAdapter.from_settings(settings, AdapterContext())
    for variable in named:
        assert variable in str(caught.value)
    if len(named) == 1:
        other = {"DISPATCHER_FACEBOOK_PAGE_ID", "DISPATCHER_FACEBOOK_PAGE_TOKEN"} - set(named)
        assert other.pop() not in str(caught.value)


def test_settings_reach_the_client(messenger: MessengerEmulator) -> None:
    adapter = make_adapter(messenger, http_timeout=7.5, facebook_api_version="v19.0")
    assert adapter.url == f"{messenger.base_url}/v19.0/{messenger.page_id}/messages"

    async def go(a: FacebookAdapter) -> None:
        await a.open()
        client = a._client
        assert client is not None and client.timeout.read == 7.5

    run(adapter, go)
