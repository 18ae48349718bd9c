"""The Zalo adapter against the running Zalo emulator.

Message types per kind, every row of the CHANNELS.md error table, the night rule for
promotions, and the single-use refresh-token rotation shared through the state store. The
emulator and the adapter share one :class:`ManualClock`, so nothing depends on today's date and
nothing sleeps.
"""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime

import pytest
import structlog

from channels.base import (
    AdapterContext,
    AuthError,
    Category,
    DeliveryError,
    MemoryState,
    Message,
    PermanentError,
    RateLimitedError,
    SendResult,
    StateStore,
    TransientError,
)
from channels.emulators.base import Delay, Disconnect, ManualClock, Reply
from channels.emulators.zalo import (
    ERRORS,
    VIETNAM,
    Template,
    TemplateParam,
    ZaloEmulator,
    error,
    server_error,
)
from channels.zalo import (
    ACCESS_KEY,
    ACCOUNT_CODES,
    REFRESH_KEY,
    TemplateFormatError,
    ZaloAdapter,
    is_template,
    parse_template,
    template_problems,
)
from dispatcher.content.schemas import TemplateIn
from dispatcher.content.service import validate
from dispatcher.core.config import Settings
from dispatcher.kit.errors import Invalid

# A Monday, 10:00 in Vietnam (03:00 UTC): daytime, so promotions are allowed.
START = datetime(2025, 3, 10, 3, 0, tzinfo=UTC)
APP_ID = "3456789012345678901"
SECRET_KEY = "zalo-secret-key-for-tests-0123456789"
SEED_ACCESS = "zat_seed_access_token_abcdefghijklmnopqrstuvwxyz0123456789"
SEED_REFRESH = "zrt_seed_refresh_token_abcdefghijklmnopqrstuvwxyz0123456789"
USER = "8412345678901234567"
HOUR = 3600.0
TRANSACTION_TEMPLATE = "300101"
PROMOTION_TEMPLATE = "300103"
PARAMS = (TemplateParam("customer_name", 30), TemplateParam("insurance_code", 30))
TEMPLATES = (
    Template(TRANSACTION_TEMPLATE, PARAMS, tag=1),
    Template(PROMOTION_TEMPLATE, PARAMS, tag=3),
)

Outcome = SendResult | DeliveryError


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def zalo(clock: ManualClock) -> Iterator[ZaloEmulator]:
    with ZaloEmulator(
        app_id=APP_ID,
        secret_key=SECRET_KEY,
        access_token=SEED_ACCESS,
        refresh_token=SEED_REFRESH,
        templates=TEMPLATES,
        clock=clock,
        monotonic=clock.monotonic,
    ) as emulator:
        yield emulator


def settings(emulator: ZaloEmulator, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "zalo_app_id": APP_ID,
        "zalo_secret_key": SECRET_KEY,
        "zalo_access_token": SEED_ACCESS,
        "zalo_refresh_token": SEED_REFRESH,
        "zalo_api_url": emulator.base_url,
        "zalo_oauth_url": emulator.base_url,
        "http_timeout": 5.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def adapter(
    emulator: ZaloEmulator,
    clock: ManualClock,
    state: StateStore | None = None,
    **overrides: object,
) -> ZaloAdapter:
    context = AdapterContext(state=state if state is not None else MemoryState(), now=clock)
    return ZaloAdapter.from_settings(settings(emulator, **overrides), context)


def description(i: int = 1, template_id: str = TRANSACTION_TEMPLATE) -> str:
    """A rendered ``zalo`` variant: the Zalo template and its parameters for one person."""
    return (
        f"template_id: {template_id}\n"
        "customer_name (customer_name): Nguyễn Văn An\n"
        f"insurance_code (code): BH{i:08d}\n"
    )


def message(
    kind: Category = Category.transactional,
    address: str = USER,
    i: int = 1,
    template_id: str = TRANSACTION_TEMPLATE,
) -> Message:
    """A message by template (the route for followers at any time)."""
    return Message(delivery_id=i, address=address, body=description(i, template_id), kind=kind)


def text_message(
    kind: Category = Category.fraud_warning, address: str = USER, i: int = 1
) -> Message:
    """Free text: the consultation route, inside the 7-day window only."""
    return Message(delivery_id=i, address=address, body=f"Thông báo BHXH số {i}", kind=kind)


async def _outcome(zalo_adapter: ZaloAdapter, item: Message) -> Outcome:
    try:
        return await zalo_adapter.send(item)
    except DeliveryError as exc:
        return exc


def send(zalo_adapter: ZaloAdapter, *messages: Message) -> list[Outcome]:
    """Open the adapter, send each message in turn, close it: the results or the errors."""

    async def go() -> list[Outcome]:
        await zalo_adapter.open()
        try:
            return [await _outcome(zalo_adapter, m) for m in messages]
        finally:
            await zalo_adapter.close()

    return asyncio.run(go())


def send_one(zalo_adapter: ZaloAdapter, item: Message | None = None) -> Outcome:
    return send(zalo_adapter, item or message())[0]


def refreshes(emulator: ZaloEmulator) -> list[dict[str, str]]:
    """The forms of every token refresh the emulator received."""
    from urllib.parse import parse_qsl

    return [dict(parse_qsl(r.text)) for r in emulator.requests.filter(path="/v4/oa/access_token")]


def message_calls(emulator: ZaloEmulator) -> int:
    return len(emulator.requests.filter(path="/v3.0/oa/message/"))


def assert_no_secrets(exc: BaseException, emulator: ZaloEmulator) -> None:
    secrets = {SECRET_KEY, SEED_ACCESS, SEED_REFRESH, emulator.access_token, emulator.refresh_token}
    shown = [str(exc), repr(exc)]
    if isinstance(exc, DeliveryError):
        shown += [exc.reason, exc.reply or "", exc.code or ""]
    for secret in secrets:
        assert all(secret not in text for text in shown), "a secret leaked into the error"


# -- sending ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Category))
def test_a_template_goes_by_the_template_route_for_every_kind(
    zalo: ZaloEmulator, clock: ManualClock, kind: Category
) -> None:
    result = send_one(adapter(zalo, clock), message(kind))
    assert isinstance(result, SendResult)
    delivery = zalo.outbox.last()
    assert (delivery.address, delivery.kind, delivery.text) == (USER, "template", None)
    assert result.provider_message_id == delivery.message_id
    assert result.provider_code == "0"
    request = zalo.requests.last()
    assert request.path == "/v3.0/oa/message/template"
    assert request.json() == {
        "user_id": USER,
        "template_id": TRANSACTION_TEMPLATE,
        "template_data": {"customer_name": "Nguyễn Văn An", "insurance_code": "BH00000001"},
    }
    assert request.mentions(SEED_ACCESS) == ["headers"]


@pytest.mark.parametrize("kind", list(Category))
def test_free_text_goes_by_the_consultation_route_only(
    zalo: ZaloEmulator, clock: ManualClock, kind: Category
) -> None:
    result = send_one(adapter(zalo, clock), text_message(kind))
    assert isinstance(result, SendResult)
    delivery = zalo.outbox.last()
    assert (delivery.kind, delivery.text) == ("cs", "Thông báo BHXH số 1")
    request = zalo.requests.last()
    assert request.path == "/v3.0/oa/message/cs"
    assert request.json() == {
        "recipient": {"user_id": USER},
        "message": {"text": "Thông báo BHXH số 1"},
    }
    # Never the retired per-user routes.
    assert not zalo.requests.filter(path="/v3.0/oa/message/transaction")
    assert not zalo.requests.filter(path="/v3.0/oa/message/promotion")


def test_a_broken_template_description_is_refused_without_a_call(
    zalo: ZaloEmulator, clock: ManualClock
) -> None:
    broken = Message(
        delivery_id=1,
        address=USER,
        body="template_id: 300101\ncustomer_name (customer_name): " + "A" * 31,
        kind=Category.transactional,
    )
    exc = send_one(adapter(zalo, clock), broken)
    assert type(exc) is PermanentError
    assert "Zalo allows 30" in exc.reason
    assert message_calls(zalo) == 0


def test_one_client_is_opened_and_closed(zalo: ZaloEmulator, clock: ManualClock) -> None:
    zalo_adapter = adapter(zalo, clock)

    async def go() -> None:
        await zalo_adapter.open()
        client = zalo_adapter._client
        assert client is not None
        for i in range(3):
            await zalo_adapter.send(message(i=i))
        assert zalo_adapter._client is client
        await zalo_adapter.close()
        assert client.is_closed

    asyncio.run(go())
    assert len(zalo.outbox) == 3


# -- the error table ---------------------------------------------------------------------------

# (code, class, address_dead, retry_after at START = 10:00 in Vietnam)
ERROR_TABLE: list[tuple[int, type[DeliveryError], bool, float | None]] = [
    (-32, RateLimitedError, False, None),
    (-211, RateLimitedError, False, 14 * HOUR),  # until midnight
    (-218, RateLimitedError, False, 14 * HOUR),
    (-234, RateLimitedError, False, 20 * HOUR),  # until 06:00 tomorrow
    (-213, PermanentError, True, None),
    (-230, PermanentError, False, None),
    (-232, PermanentError, False, None),
    (-227, PermanentError, True, None),
    (-217, PermanentError, False, None),  # an invitation blocked, not the OA: address kept
    (-109, PermanentError, False, None),  # unknown template
    (-131, PermanentError, False, None),  # template not approved
    (-1121, PermanentError, False, None),  # a parameter too long
    (-1122, PermanentError, False, None),
    (-1124, PermanentError, False, None),
    (-249, PermanentError, False, None),
    (-244, PermanentError, False, None),
    (-201, PermanentError, False, None),
    (-210, PermanentError, False, None),
    (-233, PermanentError, False, None),
    (-999, PermanentError, False, None),  # a code the table does not know
]


@pytest.mark.parametrize(("code", "expected", "dead", "retry_after"), ERROR_TABLE)
def test_error_codes_are_classified(
    zalo: ZaloEmulator,
    clock: ManualClock,
    code: int,
    expected: type[DeliveryError],
    dead: bool,
    retry_after: float | None,
) -> None:
    zalo.script(USER, error(code))  # HTTP 200 with the code in the body, as Zalo answers
    exc = send_one(adapter(zalo, clock))
    assert type(exc) is expected
    assert exc.code == str(code)
    assert exc.reply == ERRORS.get(code, "Unknown error")
    assert exc.address_dead is dead
    assert exc.retry_after == retry_after
    if code in (-230, -232):
        assert "consultation window" in exc.reason
    assert not zalo.outbox
    assert_no_secrets(exc, zalo)


@pytest.mark.parametrize("code", sorted(ACCOUNT_CODES))
def test_account_wide_codes_pause_the_channel_without_a_refresh(
    zalo: ZaloEmulator, clock: ManualClock, code: int
) -> None:
    zalo.break_account(code)
    exc = send_one(adapter(zalo, clock))
    assert type(exc) is AuthError, "an AuthError pauses the channel account and alerts once"
    assert exc.code == str(code)
    assert exc.reply == ERRORS[code]
    assert "account-wide" in exc.reason
    assert not exc.address_dead
    assert zalo.refresh_count == 0, "a new token cures no set-up fault"
    assert message_calls(zalo) == 1


def test_the_account_codes_are_those_of_the_contract() -> None:
    contract = {-209, -212, -219, -221, -223, -224, -240, -242, -320, -321}
    assert contract <= set(ACCOUNT_CODES)
    assert not set(ACCOUNT_CODES) & {-213, -217, -227, -230, -232, -244, -216, -220, -124}


@pytest.mark.parametrize("code", [-216, -220, -124])
def test_auth_codes_refresh_once_then_raise_auth_error(
    zalo: ZaloEmulator, clock: ManualClock, code: int
) -> None:
    # Refused twice: the refresh succeeds, the retried send is refused again.
    zalo.script(USER, error(code), error(code))
    exc = send_one(adapter(zalo, clock))
    assert type(exc) is AuthError
    assert exc.code == str(code)
    assert exc.reply == ERRORS[code]
    assert zalo.refresh_count == 1
    assert message_calls(zalo) == 2
    assert_no_secrets(exc, zalo)


@pytest.mark.parametrize("code", [-216, -220, -124])
def test_auth_code_once_is_recovered_by_a_refresh(
    zalo: ZaloEmulator, clock: ManualClock, code: int
) -> None:
    zalo.script(USER, error(code))
    result = send_one(adapter(zalo, clock))
    assert isinstance(result, SendResult)
    assert zalo.refresh_count == 1
    assert zalo.requests.last().mentions(zalo.access_token) == ["headers"]


def test_refusals_from_the_emulators_own_state(zalo: ZaloEmulator, clock: ManualClock) -> None:
    zalo.unfollow("1")
    zalo.block_oa("2")
    zalo.ban("3")
    zalo.restrict("4")
    zalo.close_window("5")
    results = send(
        adapter(zalo, clock),
        message(address="1"),
        message(address="2"),
        message(address="3"),
        message(Category.greeting, address="4"),
        text_message(Category.fraud_warning, address="5"),
        message(Category.transactional, address="5"),  # the window concerns cs only
        Message(delivery_id=7, address="6", body="ệ" * 2001, kind=Category.fraud_warning),
    )
    assert [(type(r).__name__, getattr(r, "code", None)) for r in results] == [
        ("PermanentError", "-213"),
        ("PermanentError", "-217"),
        ("PermanentError", "-227"),
        ("PermanentError", "-244"),
        ("PermanentError", "-230"),
        ("SendResult", None),
        ("PermanentError", "-210"),
    ]
    assert [getattr(r, "address_dead", None) for r in results] == [
        True,
        False,  # -217
        True,
        False,
        False,
        None,
        False,
    ]


def test_quota_waits_until_midnight_in_vietnam(zalo: ZaloEmulator, clock: ManualClock) -> None:
    clock.set(datetime(2025, 3, 10, 23, 15, tzinfo=VIETNAM))
    zalo.script(USER, error(-211))
    exc = send_one(adapter(zalo, clock))
    assert isinstance(exc, RateLimitedError)
    assert exc.retry_after == 45 * 60


def test_night_code_just_after_six_retries_shortly(zalo: ZaloEmulator, clock: ManualClock) -> None:
    # Our clock says 06:00:30, the provider's still says night: a lag of seconds, not a day.
    clock.set(datetime(2025, 3, 11, 6, 0, 30, tzinfo=VIETNAM))
    zalo.script(USER, error(-234))
    exc = send_one(adapter(zalo, clock), message(Category.greeting))
    assert isinstance(exc, RateLimitedError)
    assert exc.retry_after == 60


@pytest.mark.parametrize(
    "reply",
    [
        server_error(502),
        server_error(503),
        Reply(200, "<html>maintenance</html>", media_type="text/html"),
        Reply(200, {"unexpected": True}),
        Disconnect(),
    ],
    ids=["502-html", "503-html", "200-not-json", "200-no-code", "dropped"],
)
def test_gateway_and_network_failures_are_transient(
    zalo: ZaloEmulator, clock: ManualClock, reply: Reply
) -> None:
    zalo.script(USER, reply)
    exc = send_one(adapter(zalo, clock))
    assert type(exc) is TransientError
    assert zalo.refresh_count == 0


def test_a_zalo_code_wins_over_the_http_status(zalo: ZaloEmulator, clock: ManualClock) -> None:
    zalo.script(USER, Reply(503, {"error": -32, "message": "busy"}))
    exc = send_one(adapter(zalo, clock))
    assert type(exc) is RateLimitedError
    assert (exc.code, exc.reply) == ("-32", "busy")


def test_timeout_is_transient(zalo: ZaloEmulator, clock: ManualClock) -> None:
    # The emulator holds the request (released when it stops); the client gives up first.
    zalo.script(USER, Delay(30))
    exc = send_one(adapter(zalo, clock, http_timeout=0.2))
    assert type(exc) is TransientError
    assert "timed out" in exc.reason


def test_unreachable_api_is_transient(zalo: ZaloEmulator, clock: ManualClock) -> None:
    exc = send_one(adapter(zalo, clock, zalo_api_url="http://127.0.0.1:1"))
    assert type(exc) is TransientError


# -- promotions at night -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local", "retry_after"),
    [
        (datetime(2025, 3, 10, 22, 0, tzinfo=VIETNAM), 8 * HOUR),
        (datetime(2025, 3, 10, 22, 30, tzinfo=VIETNAM), 7.5 * HOUR),
        (datetime(2025, 3, 11, 0, 0, tzinfo=VIETNAM), 6 * HOUR),
        (datetime(2025, 3, 11, 5, 59, tzinfo=VIETNAM), 60.0),
    ],
)
@pytest.mark.parametrize("kind", [Category.greeting, Category.policy_news])
def test_promotions_at_night_are_deferred_before_calling_zalo(
    zalo: ZaloEmulator,
    clock: ManualClock,
    local: datetime,
    retry_after: float,
    kind: Category,
) -> None:
    clock.set(local)
    exc = send_one(adapter(zalo, clock), message(kind))
    assert type(exc) is RateLimitedError
    assert exc.retry_after == retry_after
    assert "deferred" in exc.reason
    assert message_calls(zalo) == 0  # judged on our clock: no call spent, no -234 needed


def test_night_is_judged_in_vietnam_whatever_the_clock_zone(zalo: ZaloEmulator) -> None:
    # 16:30 UTC is 23:30 in Hanoi.
    clock = ManualClock(datetime(2025, 3, 10, 16, 30, tzinfo=UTC))
    exc = send_one(adapter(zalo, clock), message(Category.greeting))
    assert isinstance(exc, RateLimitedError)
    assert exc.retry_after == 6.5 * HOUR


def test_promotions_go_out_from_six_until_ten_pm(zalo: ZaloEmulator, clock: ManualClock) -> None:
    zalo_adapter = adapter(zalo, clock)
    clock.set(datetime(2025, 3, 10, 21, 59, 59, tzinfo=VIETNAM))
    assert isinstance(send_one(zalo_adapter, message(Category.greeting, i=1)), SendResult)
    clock.set(datetime(2025, 3, 11, 5, 59, 59, tzinfo=VIETNAM))
    assert isinstance(send_one(zalo_adapter, message(Category.greeting, i=2)), RateLimitedError)
    clock.set(datetime(2025, 3, 11, 6, 0, tzinfo=VIETNAM))
    assert isinstance(send_one(zalo_adapter, message(Category.policy_news, i=3)), SendResult)
    assert [d.payload["template_data"]["insurance_code"] for d in zalo.outbox] == [
        "BH00000001",
        "BH00000003",
    ]


def test_a_promotion_tagged_template_waits_for_the_morning_whatever_the_kind(
    zalo: ZaloEmulator, clock: ManualClock
) -> None:
    clock.set(datetime(2025, 3, 10, 22, 30, tzinfo=VIETNAM))
    tagged = Message(
        delivery_id=1,
        address=USER,
        body="template_id: 300103\ntag: promotion\ncustomer_name (customer_name): An\n"
        "insurance_code (code): BH1\n",
        kind=Category.transactional,
    )
    exc = send_one(adapter(zalo, clock), tagged)
    assert isinstance(exc, RateLimitedError)
    assert message_calls(zalo) == 0


def test_consultation_replies_go_at_night_for_promotional_kinds(
    zalo: ZaloEmulator, clock: ManualClock
) -> None:
    clock.set(datetime(2025, 3, 10, 23, 0, tzinfo=VIETNAM))
    assert isinstance(send_one(adapter(zalo, clock), text_message(Category.greeting)), SendResult)


@pytest.mark.parametrize(
    "kind", [Category.transactional, Category.fraud_warning, Category.disaster_support]
)
def test_transaction_and_cs_are_sent_at_night(
    zalo: ZaloEmulator, clock: ManualClock, kind: Category
) -> None:
    clock.set(datetime(2025, 3, 10, 22, 30, tzinfo=VIETNAM))
    assert isinstance(send_one(adapter(zalo, clock), message(kind)), SendResult)
    assert zalo.outbox.last().kind == "template"


# -- the access token and its single-use refresh token ---------------------------------------


def test_seed_from_settings_is_used_while_the_store_is_empty(
    zalo: ZaloEmulator, clock: ManualClock
) -> None:
    state = MemoryState()
    assert isinstance(send_one(adapter(zalo, clock, state)), SendResult)
    assert zalo.requests.last().mentions(SEED_ACCESS) == ["headers"]
    assert zalo.refresh_count == 0
    # Nothing to persist until a refresh rotates the pair.
    assert state.values == {}


def test_expired_token_is_refreshed_once_and_the_new_pair_persisted(
    zalo: ZaloEmulator, clock: ManualClock
) -> None:
    state = MemoryState()
    zalo.expire_access_token()
    with structlog.testing.capture_logs() as logs:
        results = send(adapter(zalo, clock, state), message(i=1), message(i=2))
    assert all(isinstance(r, SendResult) for r in results)
    assert zalo.refresh_count == 1
    assert len(zalo.outbox) == 2
    assert state.values == {ACCESS_KEY: zalo.access_token, REFRESH_KEY: zalo.refresh_token}
    assert zalo.access_token != SEED_ACCESS and zalo.refresh_token != SEED_REFRESH
    (form,) = refreshes(zalo)
    assert form == {"app_id": APP_ID, "grant_type": "refresh_token", "refresh_token": SEED_REFRESH}
    refresh_request = zalo.requests.filter(path="/v4/oa/access_token")[0]
    assert refresh_request.header("secret_key") == SECRET_KEY
    secrets = (SECRET_KEY, SEED_ACCESS, SEED_REFRESH, zalo.access_token, zalo.refresh_token)
    assert not any(secret in repr(logs) for secret in secrets)

    # A day later the new token expires too: the rotated refresh token is spent, not the seed.
    clock.advance(90_000)
    rotated = state.values[REFRESH_KEY]
    assert isinstance(send_one(adapter(zalo, clock, state), message(i=3)), SendResult)
    assert zalo.refresh_count == 2
    assert [f["refresh_token"] for f in refreshes(zalo)] == [SEED_REFRESH, rotated]
    assert state.values[REFRESH_KEY] == zalo.refresh_token != rotated


def test_a_restarted_worker_uses_the_persisted_pair(zalo: ZaloEmulator, clock: ManualClock) -> None:
    state = MemoryState()
    zalo.expire_access_token()
    assert isinstance(send_one(adapter(zalo, clock, state), message(i=1)), SendResult)
    assert zalo.refresh_count == 1

    # A new process: same settings (the stale seed), same durable store.
    restarted = adapter(zalo, clock, state)
    assert isinstance(send_one(restarted, message(i=2)), SendResult)
    assert zalo.refresh_count == 1
    assert zalo.requests.last().mentions(state.values[ACCESS_KEY]) == ["headers"]
    # Only the very first call carried the stale seed.
    assert [r.path for r, _ in zalo.requests.mentioning(SEED_ACCESS)] == [
        "/v3.0/oa/message/template"
    ]
    assert len(zalo.outbox) == 2


def test_concurrent_sends_in_one_worker_refresh_once(
    zalo: ZaloEmulator, clock: ManualClock
) -> None:
    zalo_adapter = adapter(zalo, clock)
    zalo.expire_access_token()

    async def go() -> list[SendResult]:
        await zalo_adapter.open()
        try:
            return await asyncio.gather(*(zalo_adapter.send(message(i=i)) for i in range(8)))
        finally:
            await zalo_adapter.close()

    assert len(asyncio.run(go())) == 8
    assert zalo.refresh_count == 1
    assert len(refreshes(zalo)) == 1


def test_a_failed_refresh_is_an_auth_error(zalo: ZaloEmulator, clock: ManualClock) -> None:
    state = MemoryState()
    zalo.expire_access_token()
    zalo.expire_refresh_token()
    exc = send_one(adapter(zalo, clock, state))
    assert type(exc) is AuthError
    assert exc.code == "-14020"
    assert zalo.refresh_count == 0
    assert state.values == {}  # nothing half-written
    assert not zalo.outbox
    assert_no_secrets(exc, zalo)


def test_a_wrong_secret_key_is_an_auth_error(zalo: ZaloEmulator, clock: ManualClock) -> None:
    zalo.expire_access_token()
    exc = send_one(adapter(zalo, clock, zalo_secret_key="not-the-secret-key-0123456789"))
    assert type(exc) is AuthError
    assert exc.code == "-14003"
    assert "not-the-secret-key-0123456789" not in str(exc)
    assert_no_secrets(exc, zalo)


def test_an_unreachable_oauth_server_is_transient(zalo: ZaloEmulator, clock: ManualClock) -> None:
    zalo.expire_access_token()
    exc = send_one(adapter(zalo, clock, zalo_oauth_url="http://127.0.0.1:1"))
    assert type(exc) is TransientError
    assert_no_secrets(exc, zalo)


class InterleavedState:
    """The shared store as a second worker sees it, with another worker's actions slotted in.

    ``other`` runs once, around the n-th read of ``key`` (before it, or just after it so this
    worker holds the value it read): a deterministic stand-in for another process acting
    between two of this worker's steps. No sleeps, no races.
    """

    def __init__(
        self,
        shared: MemoryState,
        key: str,
        n: int,
        other: Callable[[], Awaitable[None]],
        *,
        after: bool = False,
    ) -> None:
        self.shared = shared
        self.key, self.n, self.other, self.after = key, n, other, after
        self.reads = 0

    async def get(self, key: str) -> str | None:
        due = False
        if key == self.key:
            self.reads += 1
            due = self.reads == self.n
        if due and not self.after:
            await self.other()
        value = await self.shared.get(key)
        if due and self.after:
            await self.other()
        return value

    async def set(self, key: str, value: str) -> None:
        await self.shared.set(key, value)


def test_a_second_worker_picks_up_the_token_another_refreshed(
    zalo: ZaloEmulator, clock: ManualClock
) -> None:
    shared = MemoryState()
    first = adapter(zalo, clock, shared)

    async def first_worker_refreshes() -> None:
        await first.open()
        await first.send(message(i=1))
        await first.close()

    # Worker two reads the (expired) token, is refused; before it re-reads the store, worker
    # one meets the same refusal and refreshes.
    second = adapter(zalo, clock, InterleavedState(shared, ACCESS_KEY, 2, first_worker_refreshes))
    zalo.expire_access_token()
    result = send_one(second, message(i=2))
    assert isinstance(result, SendResult)
    assert zalo.refresh_count == 1
    assert len(refreshes(zalo)) == 1  # worker two did not spend the refresh token
    assert [d.payload["template_data"]["insurance_code"] for d in zalo.outbox] == [
        "BH00000001",
        "BH00000002",
    ]
    assert zalo.requests.last().mentions(shared.values[ACCESS_KEY]) == ["headers"]


def test_losing_the_refresh_race_uses_the_winners_token(
    zalo: ZaloEmulator, clock: ManualClock
) -> None:
    shared = MemoryState()
    first = adapter(zalo, clock, shared)

    async def first_worker_refreshes() -> None:
        await first.open()
        await first.send(message(i=1))
        await first.close()

    # Worker two has already read the refresh token when worker one spends it: its own refresh
    # is refused, and it falls back on the pair worker one stored.
    second = adapter(
        zalo, clock, InterleavedState(shared, REFRESH_KEY, 1, first_worker_refreshes, after=True)
    )
    zalo.expire_access_token()
    result = send_one(second, message(i=2))
    assert isinstance(result, SendResult)
    assert zalo.refresh_count == 1
    assert [f["refresh_token"] for f in refreshes(zalo)] == [SEED_REFRESH, SEED_REFRESH]
    assert shared.values[ACCESS_KEY] == zalo.access_token
    assert len(zalo.outbox) == 2


# -- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "variable"),
    [
        ("zalo_app_id", "DISPATCHER_ZALO_APP_ID"),
        ("zalo_secret_key", "DISPATCHER_ZALO_SECRET_KEY"),
        ("zalo_access_token", "DISPATCHER_ZALO_ACCESS_TOKEN"),
        ("zalo_refresh_token", "DISPATCHER_ZALO_REFRESH_TOKEN"),
    ],
)
def test_missing_settings_are_named(zalo: ZaloEmulator, field: str, variable: str) -> None:
    with pytest.raises(ValueError, match=variable) as caught:
        ZaloAdapter.from_settings(settings(zalo, **{field: None}), AdapterContext())
    for secret in (SECRET_KEY, SEED_ACCESS, SEED_REFRESH):
        assert secret not in str(caught.value)


def test_repr_shows_no_secret(zalo: ZaloEmulator, clock: ManualClock) -> None:
    shown = repr(adapter(zalo, clock))
    assert APP_ID in shown
    for secret in (SECRET_KEY, SEED_ACCESS, SEED_REFRESH):
        assert secret not in shown


def test_rate_rule_is_declared() -> None:
    (rule,) = ZaloAdapter.rate_limits
    assert (rule.per_second, rule.burst, rule.per_address) == (20, 20, False)
    assert ZaloAdapter.limits.max_body == 2000


def test_rate_limit_scopes_say_what_to_pause() -> None:
    """The OA's own limits pause Zalo for everyone; a user's quota or the night rule do not."""
    from channels.zalo import classify_error

    noon = datetime(2025, 3, 10, 5, 0, tzinfo=UTC)
    assert classify_error(-32, "limit", noon).scope == "channel"  # type: ignore[attr-defined]
    assert classify_error(-211, "quota", noon).scope == "channel"  # type: ignore[attr-defined]
    assert classify_error(-218, "user quota", noon).scope == "message"  # type: ignore[attr-defined]
    assert classify_error(-234, "night", noon).scope == "message"  # type: ignore[attr-defined]


# -- the template description (what a zalo variant renders to) ----------------------------


def test_a_description_maps_variables_to_template_parameters() -> None:
    body = (
        "# the card-expiry template\n"
        "template_id: 412345\n"
        "tag: transaction\n"
        "customer_name (customer_name): Nguyễn Thị Hoàng Anh\n"
        "expiry (time): 31/12/2026\n"
        "amount (currency): 1250000\n"
    )
    assert is_template(body)
    template = parse_template(body)
    assert (template.template_id, template.tag, template.promotional) == (
        "412345",
        "transaction",
        False,
    )
    assert template.data() == {
        "customer_name": "Nguyễn Thị Hoàng Anh",
        "expiry": "31/12/2026",
        "amount": "1250000",
    }
    assert not is_template("Xin chào, hồ sơ của Ông/Bà đã được tiếp nhận.")
    assert template_problems("Xin chào") == []  # free text: the consultation route


def test_values_are_measured_after_nfc_normalisation() -> None:
    decomposed = unicodedata.normalize("NFD", "Nguyễn Thị Hoàng Anh Trần Văn")  # 29 in NFC
    assert len(decomposed) > 30
    body = f"template_id: 1\ncustomer_name (customer_name): {decomposed}\n"
    assert template_problems(body) == []
    assert parse_template(body).data()["customer_name"] == unicodedata.normalize("NFC", decomposed)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("customer_name (customer_name): An", "the first line must be 'template_id"),
        ("template_id: 1", "at least one parameter"),
        ("template_id: 12-34\nx (code): 1", "not a Zalo template id"),
        ("template_id: 1\ntag: greeting\nx (code): 1", "tag 'greeting'"),
        ("template_id: 1\nname: An", "is not 'name (type): value'"),
        ("template_id: 1\nTên (customer_name): An", "parameter name 'Tên'"),
        ("template_id: 1\nx (colour): An", "unknown type 'colour'"),
        ("template_id: 1\nx (customer_name): ", "parameter x is empty"),
        ("template_id: 1\nx (customer_name): " + "A" * 31, "is 31 characters; Zalo allows 30"),
        ("template_id: 1\nx (gender_title): Quý đơn vị", "Zalo allows 5"),
        ("template_id: 1\nx (code): 1\nx (code): 2", "appears twice"),
        ("template_id: 1\nx (currency): 1.250.000", "positive whole number"),
        ("template_id: 1\nx (time): 2026-12-31", "must be hh:mm"),
        ("template_id: 1\nx (url): baohiemxahoi.gov.vn", "http(s) URL"),
        ("template_id: 1\nx (bank_note): BHXH/2026", "free of"),
    ],
)
def test_what_zalo_would_refuse_is_named(body: str, problem: str) -> None:
    problems = template_problems(body) if is_template(body) else []
    if not is_template(body):
        with pytest.raises(TemplateFormatError) as caught:
            parse_template(body)
        problems = caught.value.problems
    assert any(problem in p for p in problems), problems


def test_a_template_is_checked_when_it_is_saved() -> None:
    good = TemplateIn(
        key="zalo_check",
        variants=[
            {
                "channel": "zalo",
                "body": "template_id: 1\ncustomer_name (customer_name): "
                '{{ recipient.full_name | truncate(30, true, "…", 0) }}\n',
            }
        ],
    )
    validate(good, isolated=False)
    bad = TemplateIn(
        key="zalo_check",
        variants=[
            {
                "channel": "zns",
                "body": "template_id: 1\ntitle (gender_title): {{ recipient.honorific }}",
            }
        ],
    )
    with pytest.raises(Invalid, match="Zalo allows 5"):
        validate(bad, isolated=False)  # "Ông/Bà", "Quý đơn vị": over Zalo's 5 characters
