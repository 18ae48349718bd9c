"""Messenger held to material neither our adapter nor our emulator wrote
(``contracts/messenger.json``, each entry citing its source): the adapter sends exactly those
requests, reads each answer as the table says, and the emulator answers those error objects.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from channels.base import (
    AuthError,
    Category,
    DeliveryError,
    Message,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from channels.emulators.base import ManualClock, Reply
from channels.emulators.messenger import MessengerEmulator
from channels.facebook import FacebookAdapter
from tests.channels.support import adapter_for, failure, send_one
from tests.emulators.conftest import START

CONTRACT = json.loads((Path(__file__).parent / "contracts" / "messenger.json").read_text("utf-8"))
REQUEST = CONTRACT["request"]
ERRORS = {entry["name"]: entry for entry in CONTRACT["errors"]}
CLASSES: dict[str, type[DeliveryError]] = {
    "permanent": PermanentError,
    "auth": AuthError,
    "rate_limited": RateLimitedError,
    "transient": TransientError,
}
COMPARED = ("code", "error_subcode", "message")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def messenger(clock: ManualClock) -> Iterator[MessengerEmulator]:
    with MessengerEmulator(
        page_id=REQUEST["page_id"], clock=clock, monotonic=clock.monotonic
    ) as emulator:
        yield emulator


def make_adapter(emulator: MessengerEmulator) -> FacebookAdapter:
    values = {
        "facebook_page_id": emulator.page_id,
        "facebook_page_token": emulator.page_token,
        "facebook_graph_url": emulator.base_url,
        "facebook_api_version": "v21.0",
    }
    return adapter_for(FacebookAdapter, values, {})


def message_for(body: dict[str, Any], kind: Category) -> Message:
    return Message(
        delivery_id=1, address=body["recipient"]["id"], body=body["message"]["text"], kind=kind
    )


@pytest.mark.parametrize("kind", sorted(REQUEST["bodies"]))
def test_the_request_is_the_send_apis(messenger: MessengerEmulator, kind: str) -> None:
    expected = REQUEST["bodies"][kind]
    result = send_one(make_adapter(messenger), message_for(expected, Category(kind)))
    assert result.provider_message_id

    (sent,) = messenger.requests.filter(method="POST", path="/messages")
    assert sent.method == REQUEST["method"]
    assert sent.path == REQUEST["path"]
    assert sent.query == {REQUEST["token_in_query"]: messenger.page_token}
    assert sent.json() == expected
    # The answer carries the Send API's two fields, as the contract's success body does.
    assert sent.response_json().keys() == CONTRACT["success"]["body"].keys()


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_each_answer_is_read_as_the_table_says(messenger: MessengerEmulator, name: str) -> None:
    entry = ERRORS[name]
    expect = entry["expect"]
    body = REQUEST["bodies"]["fraud_warning"]
    messenger.script(body["recipient"]["id"], Reply(entry["status"], entry["body"]))
    exc = failure(make_adapter(messenger), message_for(body, Category.fraud_warning))
    assert type(exc) is CLASSES[expect["class"]], exc
    assert exc.address_dead is expect["address_dead"]
    detail = entry["body"]["error"]
    code = str(detail["code"])
    if "error_subcode" in detail:
        code += f"/{detail['error_subcode']}"
    assert exc.code == code


def _raw_send(emulator: MessengerEmulator, psid: str) -> httpx.Response:
    with httpx.Client(timeout=5.0) as http:
        return http.post(
            f"{emulator.base_url}{REQUEST['path']}",
            params={"access_token": emulator.page_token},
            json={**REQUEST["bodies"]["fraud_warning"], "recipient": {"id": psid}},
        )


def _restricted(code: int, subcode: int | None) -> Callable[[MessengerEmulator], str]:
    def provoke(emulator: MessengerEmulator) -> str:
        emulator.restrict(code, subcode)
        return "1234"

    return provoke


def _unavailable(code: int, subcode: int) -> Callable[[MessengerEmulator], str]:
    def provoke(emulator: MessengerEmulator) -> str:
        emulator.make_unavailable("1234", code, subcode)
        return "1234"

    return provoke


def _forgotten(emulator: MessengerEmulator) -> str:
    emulator.forget("1234")
    return "1234"


# How the emulator is brought to give each answer by its own state (no script of the body).
TRIGGERS: dict[str, Callable[[MessengerEmulator], str]] = {
    "person_not_receiving_10": _unavailable(10, 2018108),
    "person_not_receiving_200": _unavailable(200, 1545041),
    "no_matching_user": _forgotten,
    "subscription_permission_missing": _restricted(10, 2018065),
    "pages_messaging_missing": _restricted(230, None),
    "app_not_live": _restricted(200, 2018028),
    "phone_number_permission_not_live": _restricted(200, 2018027),
    "matching_fee_unpaid": _restricted(200, 2018021),
}


@pytest.mark.parametrize("name", sorted(TRIGGERS))
def test_the_emulator_answers_as_graph_does(messenger: MessengerEmulator, name: str) -> None:
    psid = TRIGGERS[name](messenger)
    response = _raw_send(messenger, psid)
    assert response.status_code >= 400
    got = response.json()["error"]
    expected = ERRORS[name]["body"]["error"]
    assert {k: got.get(k) for k in COMPARED} == {k: expected.get(k) for k in COMPARED}
    assert isinstance(got["type"], str) and got["fbtrace_id"]
    assert not messenger.outbox


def test_a_restriction_holds_for_every_recipient_until_lifted(
    messenger: MessengerEmulator,
) -> None:
    messenger.restrict(200, 2018028)
    assert [_raw_send(messenger, p).status_code for p in ("1", "2")] == [403, 403]
    messenger.lift_restriction()
    assert _raw_send(messenger, "1").status_code == 200


def test_the_contract_cites_its_sources() -> None:
    for entry in [REQUEST, CONTRACT["success"], *CONTRACT["errors"]]:
        assert entry["source"].strip(), entry
