"""Tests of the ZNS emulator (ZBS template by phone), beside the OA API on the same port."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from channels.emulators.base import ManualClock
from channels.emulators.zalo import Template, TemplateParam, error
from channels.emulators.zns import ZNS_ERRORS, ZnsEmulator

from .conftest import START

TEMPLATE = Template("412345", (TemplateParam("customer_name", 30), TemplateParam("code", 30)))


@pytest.fixture
def zns(clock: ManualClock) -> Iterator[ZnsEmulator]:
    with ZnsEmulator(
        templates=[TEMPLATE], daily_quota=2, clock=clock, monotonic=clock.monotonic
    ) as emulator:
        yield emulator


def send(
    http: httpx.Client, emulator: ZnsEmulator, token: str | None = None, **overrides: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "phone": "84912345678",
        "template_id": "412345",
        "template_data": {"customer_name": "Lê Thị Hoa", "code": "0123456789"},
        "tracking_id": "d1",
    }
    body.update(overrides)
    response = http.post(
        f"{emulator.base_url}/message/template",
        headers={"access_token": token if token is not None else emulator.access_token},
        json={k: v for k, v in body.items() if v is not None},
    )
    assert response.status_code == 200
    answer: dict[str, Any] = response.json()
    return answer


@pytest.mark.parametrize("phone", ["84912345678", "0912345678", "912345678", "+84912345678"])
def test_the_phone_forms_zalo_accepts(zns: ZnsEmulator, http: httpx.Client, phone: str) -> None:
    answer = send(http, zns, phone=phone)
    assert answer["error"] == 0
    assert set(answer["data"]) == {"msg_id", "sent_time", "sending_mode", "quota"}
    assert answer["data"]["sent_time"] == str(int(START.timestamp() * 1000))
    delivery = zns.outbox.last()
    assert (delivery.address, delivery.kind, delivery.tag) == ("84912345678", "zns", "d1")
    assert delivery.message_id == answer["data"]["msg_id"]


@pytest.mark.parametrize("phone", ["0243826123", "12345", "abc", ""])
def test_a_phone_that_is_not_a_mobile_number_is_108(
    zns: ZnsEmulator, http: httpx.Client, phone: str
) -> None:
    assert send(http, zns, phone=phone) == {"error": -108, "message": ZNS_ERRORS[-108]}


def test_the_daily_quota_counts_down_then_144(zns: ZnsEmulator, http: httpx.Client) -> None:
    assert send(http, zns)["data"]["quota"] == {"dailyQuota": "2", "remainingQuota": "1"}
    assert send(http, zns)["data"]["quota"] == {"dailyQuota": "2", "remainingQuota": "0"}
    assert send(http, zns)["error"] == -144
    zns.reset_quotas()
    assert send(http, zns)["error"] == 0


def test_token_template_and_tracking_id(zns: ZnsEmulator, http: httpx.Client) -> None:
    assert send(http, zns, token="nope")["error"] == -124
    assert send(http, zns, template_id="1")["error"] == -109
    assert send(http, zns, template_data={"customer_name": "Hoa"})["error"] == -1122
    assert send(http, zns, tracking_id=None)["error"] == -201
    assert send(http, zns, tracking_id="x" * 49)["error"] == -201
    zns.register_template(Template("9", TEMPLATE.params, status="PENDING_REVIEW"))
    assert send(http, zns, template_id="9")["error"] == -131
    assert not zns.outbox


def test_people_who_cannot_receive(zns: ZnsEmulator, http: httpx.Client) -> None:
    zns.without_zalo("84911111111")
    zns.refuse("84922222222", -119)
    assert send(http, zns, phone="0911111111")["error"] == -118
    assert send(http, zns, phone="0922222222")["error"] == -119
    zns.script("84912345678", error(-115))
    assert send(http, zns)["error"] == -115
    assert send(http, zns)["error"] == 0


def test_development_mode_reaches_administrators_only(
    clock: ManualClock, http: httpx.Client
) -> None:
    with ZnsEmulator(
        templates=[TEMPLATE], admins={"84912345678"}, clock=clock, monotonic=clock.monotonic
    ) as emulator:
        assert send(http, emulator, mode="development")["error"] == 0
        assert send(http, emulator, mode="development", phone="0987654321")["error"] == -127


def test_an_account_fault_answers_zns_too(zns: ZnsEmulator, http: httpx.Client) -> None:
    zns.break_account(-135)
    assert send(http, zns) == {"error": -135, "message": ZNS_ERRORS[-135]}
