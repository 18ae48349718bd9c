"""Zalo's own request and response bodies (tests/channels/fixtures/zalo_contract.json, each
entry naming its source): the adapters produce exactly those requests, and the emulators
accept exactly those and refuse what Zalo refuses. An emulator written by the adapter's hands
cannot hide a shared misunderstanding here: the fixture is not ours."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from channels.base import AdapterContext, Category, MemoryState, Message, SendResult
from channels.emulators.base import ManualClock
from channels.emulators.zalo import Template, TemplateParam, ZaloEmulator
from channels.emulators.zns import ZnsEmulator
from channels.zalo import ZaloAdapter
from channels.zns import ZnsAdapter

CONTRACT: dict[str, Any] = json.loads(
    (Path(__file__).parent / "fixtures" / "zalo_contract.json").read_text(encoding="utf-8")
)
START = datetime(2025, 3, 10, 3, 0, tzinfo=UTC)  # 10:00 in Vietnam


def template_of(entry: dict[str, Any]) -> Template:
    spec = entry["template"]
    return Template(
        spec["template_id"],
        tuple(TemplateParam(p["name"], p["max_length"], type=p["type"]) for p in spec["params"]),
        tag=spec["tag"],
    )


def description(entry: dict[str, Any], types: dict[str, str]) -> str:
    """The ``zalo``/``zns`` variant that renders to the fixture's template data."""
    request = entry["request"]
    lines = [f"template_id: {request['template_id']}"]
    lines += [f"{k} ({types[k]}): {v}" for k, v in request["template_data"].items()]
    return "\n".join(lines)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def emulator(clock: ManualClock) -> Iterator[ZnsEmulator]:
    templates = [template_of(CONTRACT["uid_template"]), template_of(CONTRACT["zns_phone_template"])]
    # The fixtures' ids are the same template; the ZNS entry's parameters win (registered last).
    with ZnsEmulator(templates=templates[:1], clock=clock, monotonic=clock.monotonic) as running:
        yield running


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


def post(http: httpx.Client, emulator: ZaloEmulator, path: str, body: Any) -> dict[str, Any]:
    response = http.post(
        emulator.base_url + path, headers={"access_token": emulator.access_token}, json=body
    )
    assert response.status_code == 200, "Zalo answers with HTTP 200, errors included"
    answer: dict[str, Any] = response.json()
    return answer


def path_of(entry: dict[str, Any]) -> str:
    return str(httpx.URL(entry["url"]).path)


def run(adapter: ZaloAdapter, message: Message) -> SendResult:
    async def go() -> SendResult:
        await adapter.open()
        try:
            return await adapter.send(message)
        finally:
            await adapter.close()

    return asyncio.run(go())


def build(cls: type[ZaloAdapter], emulator: ZaloEmulator, clock: ManualClock) -> ZaloAdapter:
    prefix = "zalo" if cls is ZaloAdapter else "zns"
    values = {
        "zalo_app_id": emulator.app_id,
        "zalo_secret_key": emulator.secret_key,
        "zalo_access_token": emulator.access_token,
        "zalo_refresh_token": emulator.refresh_token,
        "zalo_oauth_url": emulator.base_url,
        f"{prefix}_api_url": emulator.base_url,
    }
    return cls.from_settings(values, AdapterContext(state=MemoryState(), now=clock))


# -- the emulators accept Zalo's own requests ------------------------------------------------


def test_the_sdk_consultation_text_is_accepted(emulator: ZnsEmulator, http: httpx.Client) -> None:
    entry = CONTRACT["cs_text"]
    answer = post(http, emulator, path_of(entry), entry["request"])
    assert answer["error"] == 0
    assert set(answer["data"]) >= {"message_id", "user_id"}


def test_the_sdk_structured_transaction_is_accepted(
    emulator: ZnsEmulator, http: httpx.Client
) -> None:
    entry = CONTRACT["transaction_structured"]
    assert post(http, emulator, path_of(entry), entry["request"])["error"] == 0


def test_the_uid_template_request_is_accepted_with_zalos_answer_shape(
    emulator: ZnsEmulator, http: httpx.Client
) -> None:
    entry = CONTRACT["uid_template"]
    answer = post(http, emulator, path_of(entry), entry["request"])
    assert answer["error"] == 0
    assert set(answer) == set(entry["response"])
    assert set(answer["data"]) == set(entry["response"]["data"])
    assert answer["data"]["user_id"] == entry["request"]["user_id"]


def test_the_zns_request_is_accepted_with_zalos_answer_shape(
    emulator: ZnsEmulator, http: httpx.Client
) -> None:
    entry = CONTRACT["zns_phone_template"]
    emulator.register_template(template_of(entry))
    answer = post(http, emulator, path_of(entry), entry["request"])
    assert answer["error"] == 0
    assert set(answer["data"]) == set(entry["response"]["data"])
    assert set(answer["data"]["quota"]) == set(entry["response"]["data"]["quota"])
    assert all(isinstance(v, str) for v in answer["data"]["quota"].values())


# -- ... and refuse what Zalo refuses -------------------------------------------------------


def test_text_on_a_template_only_route_is_refused(
    emulator: ZnsEmulator, http: httpx.Client
) -> None:
    refusal = CONTRACT["refusals"]["text_on_template_route"]
    answer = post(http, emulator, f"/v3.0/oa/message/{refusal['route']}", refusal["request"])
    assert answer["error"] == refusal["error"]
    assert not emulator.outbox


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"template_id": "0000000000"}, "unknown_template_id"),
        ({"template_data": {"customer": "A" * 31}}, "parameter_too_long"),
        ({"template_data": {"customer": "An", "amount": "100000"}}, "parameter_missing"),
        (
            {"template_data": {"customer": "An", "order_code": "PE1", "amount": "một trăm"}},
            "parameter_bad_format",
        ),
    ],
)
@pytest.mark.parametrize("entry_name", ["uid_template", "zns_phone_template"])
def test_template_refusals_carry_zalos_codes_and_messages(
    emulator: ZnsEmulator,
    http: httpx.Client,
    change: dict[str, Any],
    refusal: str,
    entry_name: str,
) -> None:
    entry = CONTRACT[entry_name]
    emulator.register_template(template_of(entry))
    body = {**entry["request"], **change}
    if entry_name == "zns_phone_template" and "template_data" in change:
        # The same faults against the ZNS entry's own parameter names.
        data = dict(change["template_data"])
        data.pop("order_code", None)
        if refusal != "parameter_missing":
            data.setdefault("cid", "PE1")
        body["template_data"] = data
    answer = post(http, emulator, path_of(entry), body)
    expected = CONTRACT["refusals"][refusal]
    assert answer["error"] == expected["error"]
    assert answer["message"].startswith(expected["message"])
    assert not emulator.outbox


def test_an_unapproved_template_is_refused(emulator: ZnsEmulator, http: httpx.Client) -> None:
    entry = CONTRACT["uid_template"]
    pending = template_of(entry)
    emulator.register_template(Template(pending.template_id, pending.params, status="REJECT"))
    answer = post(http, emulator, path_of(entry), entry["request"])
    assert answer == CONTRACT["refusals"]["template_not_approved"]


# -- the adapters produce exactly Zalo's requests ------------------------------------------


def test_the_zalo_adapter_sends_the_uid_template_request_exactly(
    emulator: ZnsEmulator, clock: ManualClock
) -> None:
    entry = CONTRACT["uid_template"]
    types = {"customer": "customer_name", "order_code": "code", "amount": "currency"}
    message = Message(
        delivery_id=1,
        address=entry["request"]["user_id"],
        body=description(entry, types),
        kind=Category.transactional,
    )
    result = run(build(ZaloAdapter, emulator, clock), message)
    request = emulator.requests.last()
    assert request.path == path_of(entry)
    assert request.json() == entry["request"]
    assert request.mentions(emulator.access_token) == ["headers"]  # the access_token header
    assert result.provider_message_id == request.response_json()["data"]["message_id"]


def test_the_zalo_adapter_sends_the_consultation_text_exactly(
    emulator: ZnsEmulator, clock: ManualClock
) -> None:
    entry = CONTRACT["cs_text"]
    message = Message(
        delivery_id=1,
        address=entry["request"]["recipient"]["user_id"],
        body=entry["request"]["message"]["text"],
        kind=Category.fraud_warning,
    )
    run(build(ZaloAdapter, emulator, clock), message)
    request = emulator.requests.last()
    assert request.path == path_of(entry)
    assert request.json() == entry["request"]


@pytest.mark.parametrize("written", ["84987654321", "0987654321", "+84 987 654 321"])
def test_the_zns_adapter_sends_the_phone_template_request_exactly(
    emulator: ZnsEmulator, clock: ManualClock, written: str
) -> None:
    entry = CONTRACT["zns_phone_template"]
    emulator.register_template(template_of(entry))
    types = {"customer": "customer_name", "cid": "code", "amount": "currency"}
    message = Message(
        delivery_id=88213,
        address=written,
        body=description(entry, types),
        kind=Category.transactional,
    )
    result = run(build(ZnsAdapter, emulator, clock), message)
    request = emulator.requests.last()
    assert request.path == path_of(entry)
    # Our tracking id is the delivery's; everything else is the fixture's, byte for byte.
    assert request.json() == {**entry["request"], "tracking_id": "d88213"}
    assert result.provider_message_id == request.response_json()["data"]["msg_id"]
