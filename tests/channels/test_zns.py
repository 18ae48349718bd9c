"""The ZNS adapter against the running ZNS emulator: phones normalised to 84…, the approved
template and its parameters, Zalo's daily quota read from its answers, msg_id kept, and every
row of the error table (:data:`channels.zns.ERRORS`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

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
from channels.emulators.base import ManualClock
from channels.emulators.zalo import Template, TemplateParam, error
from channels.emulators.zns import ZnsEmulator
from channels.zalo import ACCESS_KEY, REFRESH_KEY
from channels.zns import ERRORS, QUOTA_KEY, ZnsAdapter, normalise_phone, zns_body_problems

START = datetime(2025, 3, 10, 3, 0, tzinfo=UTC)  # 10:00 in Vietnam
PHONE = "84912345678"
TEMPLATE_ID = "412345"
HOUR = 3600.0
BODY = (
    f"template_id: {TEMPLATE_ID}\n"
    "customer_name (customer_name): Trần Thị Bình\n"
    "insurance_code (code): 0123456789\n"
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def zns(clock: ManualClock) -> Iterator[ZnsEmulator]:
    template = Template(
        TEMPLATE_ID, (TemplateParam("customer_name", 30), TemplateParam("insurance_code", 30))
    )
    with ZnsEmulator(
        templates=[template], daily_quota=3, clock=clock, monotonic=clock.monotonic
    ) as emulator:
        yield emulator


def adapter(
    emulator: ZnsEmulator, clock: ManualClock, state: StateStore | None = None, **more: object
) -> ZnsAdapter:
    values: dict[str, object] = {
        "zalo_app_id": emulator.app_id,
        "zalo_secret_key": emulator.secret_key,
        "zalo_access_token": emulator.access_token,
        "zalo_refresh_token": emulator.refresh_token,
        "zalo_oauth_url": emulator.base_url,
        "zns_api_url": emulator.base_url,
        **more,
    }
    context = AdapterContext(state=state if state is not None else MemoryState(), now=clock)
    return ZnsAdapter.from_settings(values, context)


def message(address: str = PHONE, i: int = 1, body: str = BODY) -> Message:
    return Message(delivery_id=i, address=address, body=body, kind=Category.transactional)


def send(zns_adapter: ZnsAdapter, *messages: Message) -> list[SendResult | DeliveryError]:
    async def go() -> list[SendResult | DeliveryError]:
        await zns_adapter.open()
        found: list[SendResult | DeliveryError] = []
        try:
            for item in messages:
                try:
                    found.append(await zns_adapter.send(item))
                except DeliveryError as exc:
                    found.append(exc)
        finally:
            await zns_adapter.close()
        return found

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("84912345678", "84912345678"),
        ("0912345678", "84912345678"),
        ("+84 912 345 678", "84912345678"),
        ("0912.345.678", "84912345678"),
        ("912345678", "84912345678"),
        ("0243 826 1234", None),  # a Hanoi landline
        ("12345", None),
        ("u123", None),
    ],
)
def test_phones_are_normalised_to_84(written: str, expected: str | None) -> None:
    assert normalise_phone(written) == expected


def test_a_send_keeps_msg_id_and_zalos_daily_quota(zns: ZnsEmulator, clock: ManualClock) -> None:
    state = MemoryState()
    (result,) = send(adapter(zns, clock, state), message("0912 345 678"))
    assert isinstance(result, SendResult)
    delivery = zns.outbox.last()
    assert (delivery.address, delivery.kind, delivery.tag) == (PHONE, "zns", "d1")
    assert result.provider_message_id == delivery.message_id
    assert zns.requests.last().json() == {
        "phone": PHONE,
        "template_id": TEMPLATE_ID,
        "template_data": {"customer_name": "Trần Thị Bình", "insurance_code": "0123456789"},
        "tracking_id": "d1",
    }
    stored = json.loads(asyncio.run(state.get(QUOTA_KEY)) or "{}")
    assert stored == {"daily": 3, "remaining": 2, "day": "2025-03-10"}


def test_an_exhausted_quota_defers_until_midnight_without_a_call(
    zns: ZnsEmulator, clock: ManualClock
) -> None:
    state = MemoryState()
    results = send(adapter(zns, clock, state), *(message(i=i) for i in range(1, 5)))
    assert [type(r).__name__ for r in results] == [
        "SendResult",
        "SendResult",
        "SendResult",
        "RateLimitedError",
    ]
    deferred = results[-1]
    assert isinstance(deferred, RateLimitedError)
    assert (deferred.scope, deferred.retry_after) == ("channel", 14 * HOUR)
    assert len(zns.requests.filter(path="/message/template")) == 3
    # A new Vietnamese day: the stored figure is yesterday's, so Zalo is asked again.
    clock.advance(15 * HOUR)
    zns.reset_quotas()
    assert isinstance(send(adapter(zns, clock, state), message(i=9))[0], SendResult)


def test_the_daily_quota_code_defers_the_channel(zns: ZnsEmulator, clock: ManualClock) -> None:
    zns.script(PHONE, error(-144))
    (exc,) = send(adapter(zns, clock), message())
    assert isinstance(exc, RateLimitedError)
    assert (exc.scope, exc.retry_after, exc.code) == ("channel", 14 * HOUR, "-144")


EXPECTED = {
    "account": (AuthError, False),
    "daily": (RateLimitedError, False),
    "limit": (RateLimitedError, False),
    "night": (RateLimitedError, False),
    "dead": (PermanentError, True),
    "refused": (PermanentError, False),
    "template": (PermanentError, False),
    "retry": (TransientError, False),
}


@pytest.mark.parametrize("code", sorted(ERRORS))
def test_every_code_of_the_table(zns: ZnsEmulator, clock: ManualClock, code: int) -> None:
    zns.script(PHONE, error(code, "zalo says no"))
    (exc,) = send(adapter(zns, clock), message())
    expected, dead = EXPECTED[ERRORS[code].kind]
    assert type(exc) is expected
    assert isinstance(exc, DeliveryError)
    assert exc.code == str(code)
    assert exc.address_dead is dead
    if expected is AuthError:
        assert "account-wide" in exc.reason
    assert zns.refresh_count == 0


def test_not_a_follower_and_invitation_codes_keep_the_address() -> None:
    assert ERRORS[-213].kind == "refused"
    assert ERRORS[-118].kind == "dead"


def test_an_unknown_code_is_permanent(zns: ZnsEmulator, clock: ManualClock) -> None:
    zns.script(PHONE, error(-9999))
    (exc,) = send(adapter(zns, clock), message())
    assert type(exc) is PermanentError


def test_the_emulators_own_refusals(zns: ZnsEmulator, clock: ManualClock) -> None:
    zns.without_zalo("84987654321")
    zns.refuse("84911111111", -141)
    results = send(
        adapter(zns, clock),
        message("0987654321", 1),
        message("0911111111", 2),
        message("0243 826 1234", 3),
        message(PHONE, 4, body="Thông báo BHXH"),
    )
    assert [
        (type(r).__name__, getattr(r, "code", None), getattr(r, "address_dead", None))
        for r in results
    ] == [
        ("PermanentError", "-118", True),
        ("PermanentError", "-141", False),
        ("PermanentError", None, True),  # not a mobile number: no call
        ("PermanentError", None, False),  # free text cannot go by ZNS
    ]
    assert len(zns.requests.filter(path="/message/template")) == 2


def test_an_expired_token_is_refreshed_into_the_oas_shared_pair(
    zns: ZnsEmulator, clock: ManualClock
) -> None:
    state = MemoryState()
    zns.expire_access_token()
    (result,) = send(adapter(zns, clock, state), message())
    assert isinstance(result, SendResult)
    assert zns.refresh_count == 1
    # The zalo channel reads the same keys: one grant, one chain of single-use refresh tokens.
    assert asyncio.run(state.get(ACCESS_KEY)) == zns.access_token
    assert asyncio.run(state.get(REFRESH_KEY)) == zns.refresh_token


def test_development_mode_reaches_administrators_only(clock: ManualClock) -> None:
    template = Template(
        TEMPLATE_ID, (TemplateParam("customer_name", 30), TemplateParam("insurance_code", 30))
    )
    with ZnsEmulator(
        templates=[template], admins={PHONE}, clock=clock, monotonic=clock.monotonic
    ) as emulator:
        results = send(
            adapter(emulator, clock, zns_development=True),
            message(PHONE, 1),
            message("0987654321", 2),
        )
    assert isinstance(results[0], SendResult)
    assert isinstance(results[1], PermanentError)
    assert results[1].code == "-127"
    assert emulator.requests.filter(path="/message/template")[0].json()["mode"] == "development"


def test_a_zns_variant_must_be_a_template_description() -> None:
    assert zns_body_problems(BODY) == []
    assert zns_body_problems("Xin chào") != []
    assert zns_body_problems(BODY + "amount (currency): -5\n") == [
        "parameter amount (currency) must be a positive whole number of đồng"
    ]


def test_missing_credentials_are_named(clock: ManualClock) -> None:
    with pytest.raises(ValueError, match="DISPATCHER_ZALO_REFRESH_TOKEN"):
        ZnsAdapter.from_settings(
            {"zalo_app_id": "1", "zalo_secret_key": "s", "zalo_access_token": "a"},
            AdapterContext(state=MemoryState(), now=clock),
        )
