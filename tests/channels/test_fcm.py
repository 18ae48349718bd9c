"""The FCM HTTP v1 client against the FCM emulator: OAuth, classification, payload, secrets.

The emulator runs on a hand-driven clock shared with the client, so token expiry is a
``clock.advance`` and no test depends on today's date or on time passing. The service-account
key is generated per test session with ``cryptography`` and never written to the repository.
"""

from __future__ import annotations

import asyncio
import base64
import json
import unicodedata
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from structlog.testing import capture_logs

from channels.base import (
    AuthError,
    DeliveryError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from channels.emulators.base import Delay, Disconnect, ManualClock, Reply
from channels.emulators.fcm import (
    GOOGLE_TOKEN_URI,
    FcmEmulator,
    fcm_error,
    internal,
    invalid_argument,
    quota_exceeded,
    sender_id_mismatch,
    third_party_auth_error,
    unauthenticated,
    unavailable,
    unregistered,
)
from channels.emulators.fcm import payload_size as emulator_payload_size
from channels.fcm import (
    FCM_SCOPE,
    MAX_PAYLOAD,
    FcmClient,
    FcmConfig,
    build_message,
    fit_body,
    payload_size,
    retry_after_seconds,
)
from dispatcher.core.config import Settings
from tests.support import free_port

# A Monday, 10:00 in Vietnam: any fixed instant will do, as long as it is not "today".
START = datetime(2025, 3, 10, 3, 0, tzinfo=UTC)
PROJECT = "vssid-push-test"
CLIENT_EMAIL = "push@vssid-push-test.iam.gserviceaccount.com"
DEVICE = "fGx1:APA91bHdeviceTokenOfTheCitizensPhone_0123456789"


# -- helpers shared with test_vssid ------------------------------------------------------------


def generate_key_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def service_account_info(key_pem: str, **changes: Any) -> dict[str, Any]:
    """A key file as the Firebase console issues it (with Google's token URI)."""
    info: dict[str, Any] = {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": key_pem,
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    info.update(changes)
    return {k: v for k, v in info.items() if v is not None}


def make_settings(emulator: FcmEmulator, key_pem: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "fcm_project_id": emulator.project_id,
        "fcm_service_account": json.dumps(service_account_info(key_pem)),
        "fcm_service_account_file": None,
        "fcm_endpoint": emulator.base_url,
        "fcm_token_uri": emulator.token_uri,
        "http_timeout": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


def key_fragments(key_pem: str) -> list[str]:
    """Pieces of the private key that must never be echoed anywhere."""
    body = "".join(line for line in key_pem.splitlines() if "-----" not in line)
    return ["PRIVATE KEY", body[40:80], body[-80:-40]]


def sends(emulator: FcmEmulator) -> list[int]:
    """HTTP statuses of the messages:send requests, in order."""
    return [r.status for r in emulator.requests.filter(method="POST", path="messages:send")]


def grants(emulator: FcmEmulator) -> int:
    return len(emulator.requests.filter(method="POST", path="/token"))


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def key_pem() -> str:
    return generate_key_pem()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def fcm(clock: ManualClock) -> Iterator[FcmEmulator]:
    with FcmEmulator(clock=clock, monotonic=clock.monotonic) as emulator:
        yield emulator


@pytest.fixture
def settings(fcm: FcmEmulator, key_pem: str) -> Settings:
    return make_settings(fcm, key_pem)


@asynccontextmanager
async def open_client(settings: Settings, clock: ManualClock) -> AsyncIterator[FcmClient]:
    client = FcmClient(FcmConfig.from_settings(settings), now=clock)
    try:
        yield client
    finally:
        await client.aclose()


def send_one(settings: Settings, clock: ManualClock, token: str = DEVICE, **kw: Any) -> str:
    async def go() -> str:
        async with open_client(settings, clock) as client:
            return await client.send(token, kw.get("title", "BHXH"), kw.get("body", "Chào"), None)

    return asyncio.run(go())


def failure(settings: Settings, clock: ManualClock, token: str = DEVICE) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        send_one(settings, clock, token)
    return caught.value


# -- OAuth -------------------------------------------------------------------------------------


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def test_one_token_for_many_sends_signed_rs256_with_our_key(
    fcm: FcmEmulator, settings: Settings, clock: ManualClock, key_pem: str
) -> None:
    async def go() -> list[str]:
        async with open_client(settings, clock) as client:
            # A burst before any token exists: one grant, not one per send (single flight).
            burst = await asyncio.gather(
                *(client.send(f"device-{i}", "BHXH", f"Tin {i}", {"i": str(i)}) for i in range(25))
            )
            later = [await client.send(DEVICE, "BHXH", "Tin", None) for _ in range(5)]
            assert client.refreshes == 1
            return [*burst, *later]

    names = asyncio.run(go())
    assert len(set(names)) == 30
    assert all(n.startswith(f"projects/{PROJECT}/messages/0:") for n in names)
    assert fcm.tokens_issued == 1 and grants(fcm) == 1
    assert sends(fcm) == [200] * 30

    # The grant is the JWT-bearer flow: an RS256 assertion for the FCM scope, signed by our key.
    grant = fcm.requests.filter(path="/token")[0]
    assertion = dict(x.split("=", 1) for x in grant.text.split("&"))["assertion"]
    head, claims, signature = assertion.split(".")
    assert json.loads(_b64decode(head))["alg"] == "RS256"
    body = json.loads(_b64decode(claims))
    # google-auth always names Google's token endpoint as the audience, whatever token_uri is.
    assert (body["iss"], body["scope"], body["aud"]) == (CLIENT_EMAIL, FCM_SCOPE, GOOGLE_TOKEN_URI)
    private = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    private.public_key().verify(
        _b64decode(signature),
        f"{head}.{claims}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def test_token_is_refreshed_shortly_before_it_expires(
    fcm: FcmEmulator, settings: Settings, clock: ManualClock
) -> None:
    async def go() -> None:
        async with open_client(settings, clock) as client:
            await client.send(DEVICE, "a", "b", None)
            clock.advance(timedelta(minutes=54))  # well inside the hour: reused
            await client.send(DEVICE, "a", "b", None)
            assert fcm.tokens_issued == 1
            clock.advance(timedelta(minutes=2))  # 56 min: inside the 5-min margin
            await client.send(DEVICE, "a", "b", None)
            assert fcm.tokens_issued == 2
            clock.advance(timedelta(hours=3))  # long idle: the token died meanwhile
            await client.send(DEVICE, "a", "b", None)
            assert fcm.tokens_issued == 3

    asyncio.run(go())
    # Refreshed ahead of time: FCM never had to refuse a token.
    assert sends(fcm) == [200, 200, 200, 200]


def test_a_401_refreshes_once_and_retries_once(
    fcm: FcmEmulator, settings: Settings, clock: ManualClock
) -> None:
    async def go() -> None:
        async with open_client(settings, clock) as client:
            await client.send(DEVICE, "a", "b", None)
            fcm.expire_tokens()  # revoked early, by Google's clock: our cache still trusts it
            # Ten sends refused at once share one refresh.
            await asyncio.gather(*(client.send(f"d{i}", "a", "b", None) for i in range(10)))
            assert client.refreshes == 2

    asyncio.run(go())
    assert fcm.tokens_issued == 2
    statuses = sends(fcm)
    assert statuses.count(401) == 10 and statuses.count(200) == 11


def test_a_second_401_after_the_refresh_is_an_auth_error(
    fcm: FcmEmulator, settings: Settings, clock: ManualClock
) -> None:
    fcm.script(DEVICE, unauthenticated(), unauthenticated("ACCESS_TOKEN_TYPE_UNSUPPORTED"))
    error = failure(settings, clock)
    assert type(error) is AuthError
    assert error.code == "UNAUTHENTICATED"
    assert "refresh" in error.reason
    assert fcm.tokens_issued == 2  # the first token, and exactly one refresh
    assert sends(fcm) == [401, 401]  # the send, and exactly one retry


def test_refused_grant_is_an_auth_error_without_key_material(
    clock: ManualClock, key_pem: str
) -> None:
    # An emulator expecting another audience refuses our assertion (invalid_grant).
    with FcmEmulator(audience="https://elsewhere.test/token", clock=clock) as strict:
        error = failure(make_settings(strict, key_pem), clock)
    assert type(error) is AuthError
    assert "invalid_grant" in str(error)
    for fragment in key_fragments(key_pem):
        assert fragment not in str(error)
        assert fragment not in repr(error)


def test_unreachable_token_endpoint_is_transient(
    fcm: FcmEmulator, clock: ManualClock, key_pem: str
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/token"
    error = failure(make_settings(fcm, key_pem, fcm_token_uri=closed), clock)
    assert type(error) is TransientError
    assert sends(fcm) == []


# -- classification ----------------------------------------------------------------------------


PERMISSION_DENIED = Reply(
    403,
    {"error": {"code": 403, "message": "Permission denied", "status": "PERMISSION_DENIED"}},
)
BAD_GATEWAY = Reply(502, "<html>502 Bad Gateway</html>", media_type="text/html")


@pytest.mark.parametrize(
    ("reply", "kind", "code", "dead", "retry_after"),
    [
        (unregistered(), PermanentError, "UNREGISTERED", True, None),
        (invalid_argument(), PermanentError, "INVALID_ARGUMENT", True, None),
        (sender_id_mismatch(), PermanentError, "SENDER_ID_MISMATCH", False, None),
        (third_party_auth_error(), AuthError, "THIRD_PARTY_AUTH_ERROR", False, None),
        (quota_exceeded(), RateLimitedError, "QUOTA_EXCEEDED", False, 60),
        (quota_exceeded(retry_after=5), RateLimitedError, "QUOTA_EXCEEDED", False, 60),
        (quota_exceeded(retry_after=300), RateLimitedError, "QUOTA_EXCEEDED", False, 300),
        (unavailable(), TransientError, "UNAVAILABLE", False, None),
        (unavailable(retry_after=7), TransientError, "UNAVAILABLE", False, 7),
        (internal(), TransientError, "INTERNAL", False, None),
        (fcm_error("INTERNAL", retry_after=2), TransientError, "INTERNAL", False, 2),
        (BAD_GATEWAY, TransientError, "HTTP 502", False, None),
        (Disconnect(), TransientError, "network", False, None),
        (PERMISSION_DENIED, AuthError, "PERMISSION_DENIED", False, None),
    ],
)
def test_every_fcm_answer_maps_to_its_class(
    fcm: FcmEmulator,
    settings: Settings,
    clock: ManualClock,
    reply: Reply,
    kind: type[DeliveryError],
    code: str,
    dead: bool,
    retry_after: float | None,
) -> None:
    fcm.script(DEVICE, reply)
    error = failure(settings, clock)
    assert type(error) is kind
    assert error.code == code
    assert error.address_dead is dead
    assert error.retry_after == retry_after
    # None of these is a refusal of our OAuth token: no refresh, no retry. In particular
    # THIRD_PARTY_AUTH_ERROR is a 401 about the device's APNs credential, not ours.
    assert fcm.tokens_issued == 1
    assert len(sends(fcm)) == 1
    assert DEVICE not in str(error) and DEVICE not in (error.reply or "")


def test_real_quota_answer_waits_at_least_a_minute(clock: ManualClock, key_pem: str) -> None:
    with FcmEmulator(project_per_minute=2, clock=clock, monotonic=clock.monotonic) as small:
        settings = make_settings(small, key_pem)

        async def go() -> RateLimitedError:
            async with open_client(settings, clock) as client:
                await client.send("d1", "a", "b", None)
                await client.send("d2", "a", "b", None)
                with pytest.raises(RateLimitedError) as caught:
                    await client.send("d3", "a", "b", None)
                return caught.value

        error = asyncio.run(go())
    assert small.requests.filter(path="messages:send")[-1].status == 429
    assert error.retry_after == 60  # the emulator said 30 s: FCM's quota is per minute
    assert error.scope == "channel"  # the project's quota: every worker slows down


def test_a_devices_own_quota_defers_only_that_message(clock: ManualClock, key_pem: str) -> None:
    with FcmEmulator(device_per_minute=1, clock=clock, monotonic=clock.monotonic) as small:
        settings = make_settings(small, key_pem)

        async def go() -> RateLimitedError:
            async with open_client(settings, clock) as client:
                await client.send(DEVICE, "a", "b", None)
                await client.send("another-device", "a", "b", None)
                with pytest.raises(RateLimitedError) as caught:
                    await client.send(DEVICE, "a", "b", None)
                return caught.value

        error = asyncio.run(go())
    assert (error.scope, error.retry_after) == ("message", 60)


def test_timeout_is_transient(fcm: FcmEmulator, clock: ManualClock, key_pem: str) -> None:
    fcm.script(DEVICE, Delay(30))  # released when the emulator stops
    error = failure(make_settings(fcm, key_pem, http_timeout=0.2), clock)
    assert type(error) is TransientError
    assert error.code == "timeout"


def test_retry_after_as_seconds_or_http_date() -> None:
    assert retry_after_seconds("120", START) == 120
    assert retry_after_seconds(format_datetime(START + timedelta(seconds=90)), START) == 90
    assert retry_after_seconds(format_datetime(START - timedelta(seconds=9)), START) == 0
    assert retry_after_seconds("soon", START) is None
    assert retry_after_seconds(None, START) is None


# -- payload -----------------------------------------------------------------------------------


def _data_of_size(size: int) -> dict[str, str]:
    data = {"pad": ""}
    data["pad"] = "x" * (size - payload_size(build_message(DEVICE, "BHXH", "Chào", data)))
    return data


def test_payload_limit_is_checked_before_sending(
    fcm: FcmEmulator, settings: Settings, clock: ManualClock
) -> None:
    fits, over = _data_of_size(MAX_PAYLOAD), _data_of_size(MAX_PAYLOAD + 1)
    # Our measure is the emulator's: the largest message we let through, it accepts.
    assert emulator_payload_size(build_message(DEVICE, "BHXH", "Chào", fits)) == MAX_PAYLOAD

    async def go() -> None:
        async with open_client(settings, clock) as client:
            await client.send(DEVICE, "BHXH", "Chào", fits)
            with pytest.raises(PermanentError) as caught:
                await client.send(DEVICE, "BHXH", "Chào", over)
            assert caught.value.code == "payload_too_large"
            assert "4097" in caught.value.reason

    asyncio.run(go())
    assert sends(fcm) == [200]  # the oversized one never left


def test_fit_body_trims_vietnamese_text_to_the_limit() -> None:
    data = {"inbox_item": "item-1", "kind": "policy_news", "delivery": "42"}
    short = "Thông báo điều chỉnh lương hưu."
    assert fit_body("BHXH", short, data) == short

    long = "Bảo hiểm xã hội Việt Nam thông báo về việc điều chỉnh lương hưu. " * 100
    trimmed = fit_body("BHXH", long, data)
    assert trimmed.endswith("…") and long.startswith(trimmed[:-1])
    size = payload_size(build_message(DEVICE, "BHXH", trimmed, data))
    assert MAX_PAYLOAD - 8 < size <= MAX_PAYLOAD

    # Decomposed (NFD) text: never split a letter from its accent.
    decomposed = unicodedata.normalize("NFD", long)
    cut = fit_body("BHXH", decomposed, data)
    assert not unicodedata.combining(decomposed[len(cut) - 1])
    assert payload_size(build_message(DEVICE, "BHXH", cut, data)) <= MAX_PAYLOAD

    assert fit_body("x" * MAX_PAYLOAD, "body") == ""  # nothing can fit: the send will refuse


# -- secrets and settings ----------------------------------------------------------------------


def test_secrets_stay_out_of_reprs_errors_and_logs(
    fcm: FcmEmulator, settings: Settings, clock: ManualClock, key_pem: str
) -> None:
    fcm.script(DEVICE, invalid_argument(f"The registration token {DEVICE} is not valid"))

    async def go() -> tuple[str, DeliveryError]:
        async with open_client(settings, clock) as client:
            with pytest.raises(PermanentError) as caught:
                await client.send(DEVICE, "a", "b", None)
            return repr(client) + repr(client.config), caught.value

    with capture_logs() as logs:
        reprs, error = asyncio.run(go())
    access = fcm.requests.filter(path="messages:send")[0].header("authorization")
    assert access is not None and access.startswith("Bearer ya29.")
    access_token = access.removeprefix("Bearer ")
    shown = " ".join([reprs, str(error), repr(error), error.reason, error.reply or "", str(logs)])
    assert "[redacted]" in error.reason  # FCM quoted the token back; we did not pass it on
    for secret in [DEVICE, access_token, *key_fragments(key_pem)]:
        assert secret not in shown
    assert any(entry["event"] == "fcm_token_refreshed" for entry in logs)


SA_VAR = r"DISPATCHER_FCM_SERVICE_ACCOUNT\b"  # the inline key's variable, not ..._FILE


def _account(key_pem: str, **changes: Any) -> str:
    return json.dumps(service_account_info(key_pem, **changes))


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"fcm_service_account": None}, SA_VAR),
        ({"fcm_service_account": "  "}, SA_VAR),
        ({"fcm_service_account": '{"private_key": "-----BEGIN'}, SA_VAR),
        ({"fcm_service_account": "[1, 2]"}, SA_VAR),
        # The inline key wins over a file when both are set.
        ({"fcm_service_account": "PEM", "fcm_service_account_file": "/x"}, SA_VAR),
        (
            {"fcm_service_account": None, "fcm_service_account_file": "/nonexistent/key.json"},
            "DISPATCHER_FCM_SERVICE_ACCOUNT_FILE",
        ),
        ({"fcm_project_id": None, "drop_project": True}, "DISPATCHER_FCM_PROJECT_ID"),
        ({"private_key": "not a key"}, SA_VAR),
        ({"private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}, SA_VAR),
        ({"client_email": None}, SA_VAR),
    ],
)
def test_missing_or_bad_settings_name_the_variable(
    fcm: FcmEmulator, key_pem: str, overrides: dict[str, Any], variable: str
) -> None:
    overrides = dict(overrides)
    key_changes: dict[str, Any] = {}
    if overrides.pop("drop_project", False):
        key_changes["project_id"] = None
    for field in ("private_key", "client_email"):
        if field in overrides:
            key_changes[field] = overrides.pop(field)
    if key_changes:
        overrides.setdefault("fcm_service_account", _account(key_pem, **key_changes))
    settings = make_settings(fcm, key_pem, **overrides)
    with pytest.raises(ValueError, match=variable) as caught:
        FcmConfig.from_settings(settings)
    for fragment in key_fragments(key_pem):
        assert fragment not in str(caught.value)


def test_key_from_a_file_and_project_from_the_key(
    fcm: FcmEmulator, clock: ManualClock, key_pem: str, tmp_path: Path
) -> None:
    key_file = tmp_path / "service-account.json"
    key_file.write_text(_account(key_pem))
    settings = make_settings(
        fcm,
        key_pem,
        fcm_service_account=None,
        fcm_service_account_file=str(key_file),
        fcm_project_id=None,
    )
    config = FcmConfig.from_settings(settings)
    assert config.project_id == PROJECT  # from the key's own project_id
    assert key_pem not in repr(config)
    assert send_one(settings, clock).startswith(f"projects/{PROJECT}/messages/")


def test_token_uri_override_replaces_the_keys() -> None:
    settings = Settings(
        fcm_project_id=PROJECT,
        fcm_service_account=json.dumps(service_account_info(generate_key_pem())),
        fcm_token_uri="http://127.0.0.1:9/token",
    )
    config = FcmConfig.from_settings(settings)
    assert config.service_account["token_uri"] == "http://127.0.0.1:9/token"
    assert config.endpoint == "https://fcm.googleapis.com"
    assert isinstance(config.timeout, float)


def test_a_200_without_a_name_is_transient(settings: Settings, clock: ManualClock) -> None:
    # Not something the emulator can be asked for: an in-process transport stands in.
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"unexpected": True})

    async def go() -> None:
        config = FcmConfig.from_settings(settings)
        client = FcmClient(config, now=clock, transport=httpx.MockTransport(handler))
        try:
            with pytest.raises(TransientError):
                await client.send(DEVICE, "a", "b", None)
        finally:
            await client.aclose()

    asyncio.run(go())
