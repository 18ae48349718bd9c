"""FCM held to Firebase's own material (``contracts/fcm.json``, each entry citing its source):
the client sends exactly the Admin SDK's request, reads each documented answer as the Admin SDK
and Firebase's token-management guide say, and the emulator answers exactly those bodies.

Without this, the client and the emulator could share a misunderstanding and agree with each
other: the fixture is the third party neither of them wrote.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from channels.base import (
    AuthError,
    DeliveryError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from channels.emulators.base import ManualClock, Reply
from channels.emulators.fcm import FcmEmulator
from channels.fcm import FcmClient, FcmConfig
from tests.channels import test_fcm as support

CONTRACT = json.loads((Path(__file__).parent / "contracts" / "fcm.json").read_text("utf-8"))
ERRORS = {entry["name"]: entry for entry in CONTRACT["errors"]}
REQUEST = CONTRACT["request"]
TOKEN = REQUEST["body"]["message"]["token"]
CLASSES: dict[str, type[DeliveryError]] = {
    "permanent": PermanentError,
    "auth": AuthError,
    "rate_limited": RateLimitedError,
    "transient": TransientError,
}


@pytest.fixture(scope="module")
def key_pem() -> str:
    return support.generate_key_pem()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(support.START)


def _emulator(clock: ManualClock, **limits: Any) -> FcmEmulator:
    return FcmEmulator(
        project_id=REQUEST["project"], clock=clock, monotonic=clock.monotonic, **limits
    )


@pytest.fixture
def fcm(clock: ManualClock) -> Iterator[FcmEmulator]:
    with _emulator(clock) as emulator:
        yield emulator


def _send(emulator: FcmEmulator, clock: ManualClock, key_pem: str, token: str = TOKEN) -> Any:
    """One send of the fixture's message; the error raised, or the message name."""
    message = REQUEST["body"]["message"]
    config = FcmConfig.from_settings(support.make_settings(emulator, key_pem))

    async def go() -> Any:
        client = FcmClient(config, now=clock)
        try:
            return await client.send(
                token,
                message["notification"]["title"],
                message["notification"]["body"],
                message["data"],
            )
        except DeliveryError as exc:
            return exc
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_the_request_is_the_admin_sdks(fcm: FcmEmulator, clock: ManualClock, key_pem: str) -> None:
    name = _send(fcm, clock, key_pem)
    assert isinstance(name, str) and name.startswith(f"projects/{REQUEST['project']}/messages/")

    (sent,) = fcm.requests.filter(method="POST", path="messages:send")
    assert sent.method == REQUEST["method"]
    assert fcm.base_url + sent.path == REQUEST["url"].replace(
        "https://fcm.googleapis.com", fcm.base_url
    )
    for header, value in REQUEST["headers"].items():
        assert sent.header(header) == value, header
    assert sent.json() == REQUEST["body"]


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_each_documented_answer_is_read_as_firebase_says(
    fcm: FcmEmulator, clock: ManualClock, key_pem: str, name: str
) -> None:
    entry = ERRORS[name]
    expect = entry["expect"]
    fcm.script(TOKEN, Reply(entry["status"], entry["body"]))
    error = _send(fcm, clock, key_pem)
    assert type(error) is CLASSES[expect["class"]], error
    assert error.address_dead is expect["drop_token"]
    if "code" in expect:
        assert error.code == expect["code"]
    if "scope" in expect:
        assert isinstance(error, RateLimitedError) and error.scope == expect["scope"]
    # None of these is a refusal of our OAuth token: one request, no refresh.
    assert len(fcm.requests.filter(path="messages:send")) == 1


def _same(expected: Any, actual: Any) -> bool:
    """Equal, except where the fixture's source elided a value as ``xxx`` (any word fits)."""
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(_same(v, actual[k]) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(_same(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, str) and "xxx" in expected and isinstance(actual, str):
        pattern = re.escape(expected).replace("xxx", r"\w+")
        return re.fullmatch(pattern, actual) is not None
    return bool(expected == actual)


def _raw_send(emulator: FcmEmulator, message: dict[str, Any]) -> httpx.Response:
    with httpx.Client(timeout=5.0) as http:
        return http.post(
            f"{emulator.base_url}/v1/projects/{emulator.project_id}/messages:send",
            headers={"Authorization": f"Bearer {emulator.issue_token()}"},
            json={"message": message},
        )


def _unregistered(fcm: FcmEmulator) -> httpx.Response:
    fcm.unregister(TOKEN)
    return _raw_send(fcm, {"token": TOKEN})


def _invalid_token(fcm: FcmEmulator) -> httpx.Response:
    return _raw_send(fcm, {"token": "not a registration token"})


def _invalidated_token(fcm: FcmEmulator) -> httpx.Response:
    fcm.invalidate(TOKEN)
    return _raw_send(fcm, {"token": TOKEN})


def _invalid_data(fcm: FcmEmulator) -> httpx.Response:
    return _raw_send(fcm, ERRORS["invalid_data_value"]["request_message"])


def _apns_broken(fcm: FcmEmulator) -> httpx.Response:
    fcm.break_apns(TOKEN)
    return _raw_send(fcm, {"token": TOKEN})


# How the emulator is brought to give each answer on its own (no script of the body).
TRIGGERS: dict[str, tuple[str, Callable[[FcmEmulator], httpx.Response]]] = {
    "unregistered": ("unregistered", _unregistered),
    "malformed token": ("invalid_registration_token", _invalid_token),
    "invalidated token": ("invalid_registration_token", _invalidated_token),
    "invalid data value": ("invalid_data_value", _invalid_data),
    "apns key broken": ("third_party_auth_error", _apns_broken),
}


@pytest.mark.parametrize("trigger", sorted(TRIGGERS))
def test_the_emulator_answers_as_fcm_does(fcm: FcmEmulator, trigger: str) -> None:
    name, provoke = TRIGGERS[trigger]
    response = provoke(fcm)
    assert response.status_code == ERRORS[name]["status"]
    assert _same(ERRORS[name]["body"], response.json()), response.json()
    assert not fcm.outbox


def test_the_emulators_quotas_answer_as_fcm_does(clock: ManualClock) -> None:
    with _emulator(clock, project_per_minute=1) as small:
        assert _raw_send(small, {"token": "a"}).status_code == 200
        project = _raw_send(small, {"token": "b"})
    assert project.status_code == ERRORS["project_quota"]["status"]
    assert _same(ERRORS["project_quota"]["body"], project.json()), project.json()

    with _emulator(clock, device_per_minute=1) as small:
        assert _raw_send(small, {"token": TOKEN}).status_code == 200
        device = _raw_send(small, {"token": TOKEN})
    assert device.status_code == ERRORS["target_quota"]["status"]
    assert _same(ERRORS["target_quota"]["body"], device.json()), device.json()


def test_the_contract_cites_its_sources() -> None:
    for entry in [REQUEST, CONTRACT["success"], *CONTRACT["errors"]]:
        assert entry["source"].strip(), entry
