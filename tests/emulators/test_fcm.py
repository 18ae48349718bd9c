"""Tests of the FCM HTTP v1 emulator and its Google OAuth2 token endpoint."""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta
from typing import Any

import httpx
import pytest

from channels.emulators.base import ANY, Delay, Disconnect, ManualClock, Reply
from channels.emulators.fcm import (
    CLOUD_PLATFORM_SCOPE,
    FCM_SCOPE,
    GOOGLE_TOKEN_URI,
    JWT_BEARER,
    FcmEmulator,
    fcm_error,
    internal,
    invalid_argument,
    payload_size,
    quota_exceeded,
    sender_id_mismatch,
    third_party_auth_error,
    unauthenticated,
    unavailable,
    unregistered,
)

from .conftest import START

DEVICE = "fGx1:APA91bHtestDeviceTokenForTheLocalEmulator"
SERVICE_ACCOUNT = "push@vssid-push-test.iam.gserviceaccount.com"


def b64(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def make_jwt(header: dict[str, Any] | None = None, **claims: Any) -> str:
    """A service-account assertion as google-auth builds it (signature not checked)."""
    iat = int(START.timestamp())
    body: dict[str, Any] = {"iss": SERVICE_ACCOUNT, "scope": FCM_SCOPE, "aud": GOOGLE_TOKEN_URI}
    body.update(iat=iat, exp=iat + 3600)
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    head = header or {"alg": "RS256", "typ": "JWT", "kid": "0123456789abcdef"}
    return f"{b64(head)}.{b64(body)}.{b64(b'not-a-real-signature')}"


def request_token(http: httpx.Client, fcm: FcmEmulator, **form: str) -> httpx.Response:
    return http.post(fcm.token_uri, data={"grant_type": JWT_BEARER, **form})


def push(
    http: httpx.Client,
    fcm: FcmEmulator,
    message: dict[str, Any] | None = None,
    token: str | None = None,
    project: str | None = None,
    **extra: Any,
) -> httpx.Response:
    if message is None:
        message = {"token": DEVICE, "notification": {"title": "BHXH", "body": "Đã ghi nhận"}}
    bearer = token if token is not None else fcm.issue_token()
    return http.post(
        f"{fcm.base_url}/v1/projects/{project or fcm.project_id}/messages:send",
        headers={"Authorization": f"Bearer {bearer}"},
        json={"message": message, **extra},
    )


def rpc_error(response: httpx.Response) -> dict[str, Any]:
    detail: dict[str, Any] = response.json()["error"]
    assert detail["code"] == response.status_code
    return detail


def fcm_code(response: httpx.Response) -> str | None:
    details = rpc_error(response).get("details", [])
    codes = [d["errorCode"] for d in details if d["@type"].endswith("FcmError")]
    return codes[0] if codes else None


# -- OAuth token endpoint ----------------------------------------------------------------------


def test_jwt_bearer_grant_then_send(fcm: FcmEmulator, http: httpx.Client) -> None:
    granted = request_token(http, fcm, assertion=make_jwt())
    assert granted.status_code == 200
    body = granted.json()
    assert body["expires_in"] == 3600 and body["token_type"] == "Bearer"
    assert body["access_token"].startswith("ya29.")
    sent = push(http, fcm, token=body["access_token"])
    assert sent.status_code == 200
    assert re.fullmatch(
        r"projects/vssid-push-test/messages/0:\d+%[0-9a-f]{16}", sent.json()["name"]
    )
    delivery = fcm.outbox.last()
    assert (delivery.address, delivery.kind, delivery.text) == (DEVICE, "token", "Đã ghi nhận")
    assert sent.json()["name"].endswith(delivery.message_id)
    assert fcm.tokens_issued == 1


def test_own_token_uri_is_an_accepted_audience(fcm: FcmEmulator, http: httpx.Client) -> None:
    granted = request_token(http, fcm, assertion=make_jwt(aud=fcm.token_uri))
    assert granted.status_code == 200


@pytest.mark.parametrize(
    ("form", "error", "fragment"),
    [
        ({"grant_type": "client_credentials"}, "unsupported_grant_type", "Invalid grant_type"),
        ({}, "invalid_request", "Missing required parameter: assertion"),
        ({"assertion": "only.two"}, "invalid_grant", "3 parts"),
        ({"assertion": "@@@.@@@.sig"}, "invalid_grant", "undecodable"),
        ({"assertion": make_jwt(header={"alg": "HS256"})}, "invalid_grant", "Signature"),
        ({"assertion": make_jwt(scope=None)}, "invalid_scope", "Empty or missing scope"),
        ({"assertion": make_jwt(aud="https://x.test/token")}, "invalid_grant", "audience check"),
        ({"assertion": make_jwt(aud=None)}, "invalid_grant", "audience check"),
        ({"assertion": make_jwt(iss=None)}, "invalid_grant", "iss"),
        (
            {"assertion": make_jwt(exp=int(START.timestamp()) + 7200)},
            "invalid_grant",
            "iat and exp",
        ),
    ],
)
def test_token_endpoint_errors(
    fcm: FcmEmulator, http: httpx.Client, form: dict[str, str], error: str, fragment: str
) -> None:
    response = request_token(http, fcm, **form)
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert fragment in response.json()["error_description"]
    assert fcm.tokens_issued == 0


# -- bearer token on sends ---------------------------------------------------------------------


def test_missing_unknown_and_expired_tokens_are_401(fcm: FcmEmulator, http: httpx.Client) -> None:
    url = f"{fcm.base_url}/v1/projects/{fcm.project_id}/messages:send"
    missing = http.post(url, json={"message": {"token": DEVICE}})
    unknown = push(http, fcm, token="ya29.forged")
    good = fcm.issue_token()
    fcm.expire_tokens()
    expired = push(http, fcm, token=good)
    for response, reason in (
        (missing, "CREDENTIALS_MISSING"),
        (unknown, "ACCESS_TOKEN_TYPE_UNSUPPORTED"),
        (expired, "ACCESS_TOKEN_EXPIRED"),
    ):
        assert response.status_code == 401
        detail = rpc_error(response)
        assert detail["status"] == "UNAUTHENTICATED"
        assert detail["details"][0]["reason"] == reason
        assert "invalid_token" in response.headers["www-authenticate"]
    assert not fcm.outbox


def test_tokens_expire_after_an_hour_of_emulated_time(
    fcm: FcmEmulator, http: httpx.Client, clock: ManualClock
) -> None:
    token = fcm.issue_token()
    clock.advance(timedelta(minutes=59, seconds=59))
    assert push(http, fcm, token=token).status_code == 200
    clock.advance(1)
    assert push(http, fcm, token=token).status_code == 401


def test_access_token_expires_after_n_sends(fcm: FcmEmulator, http: httpx.Client) -> None:
    token = request_token(http, fcm, assertion=make_jwt()).json()["access_token"]
    fcm.expire_token_after(3)
    assert [push(http, fcm, token=token).status_code for _ in range(3)] == [200] * 3
    expired = push(http, fcm, token=token)
    assert expired.status_code == 401
    assert rpc_error(expired)["details"][0]["reason"] == "ACCESS_TOKEN_EXPIRED"
    assert len(fcm.outbox) == 3
    renewed = request_token(http, fcm, assertion=make_jwt()).json()["access_token"]
    assert push(http, fcm, token=renewed).status_code == 200


def test_unavailable_for_the_next_k_sends_to_any_device(
    fcm: FcmEmulator, http: httpx.Client
) -> None:
    fcm.script(ANY, *[unavailable(retry_after=1)] * 2, internal())
    token = fcm.issue_token()
    answers = [push(http, fcm, token=token) for _ in range(4)]
    assert [a.status_code for a in answers] == [503, 503, 500, 200]
    assert answers[0].headers["retry-after"] == "1"
    assert len(fcm.outbox) == 1


def test_scope_and_project_are_checked(fcm: FcmEmulator, http: httpx.Client) -> None:
    narrow = fcm.issue_token(scope="https://www.googleapis.com/auth/userinfo.email")
    insufficient = push(http, fcm, token=narrow)
    assert insufficient.status_code == 403
    assert rpc_error(insufficient)["status"] == "PERMISSION_DENIED"
    assert push(http, fcm, token=fcm.issue_token(scope=CLOUD_PLATFORM_SCOPE)).status_code == 200
    other = push(http, fcm, project="someone-else")
    assert other.status_code == 403
    assert "projects/someone-else" in rpc_error(other)["message"]


# -- message validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "fragment", "has_fcm_error"),
    [
        ({"notification": {"title": "x"}}, "Recipient of the message is not set", True),
        ({"token": DEVICE, "topic": "news"}, "oneof field 'target' is already set", False),
        ({"token": DEVICE, "data": {"amount": 1500000}}, "message.data[0].value", False),
        ({"token": DEVICE, "data": {"from": "vss"}}, "Invalid data payload key: from", True),
        ({"token": DEVICE, "data": {"google.x": "1"}}, "Invalid data payload key", True),
        ({"token": DEVICE, "priority": "high"}, 'Unknown name "priority"', False),
        ({"token": DEVICE, "notification": {"text": "x"}}, 'Unknown name "text"', False),
        ({"token": ""}, "not a valid FCM registration token", True),
        ({"topic": "/topics/news"}, "Invalid topic name", True),
        ({"condition": "news || sport"}, "Invalid condition", True),
    ],
)
def test_invalid_messages(
    fcm: FcmEmulator,
    http: httpx.Client,
    message: dict[str, Any],
    fragment: str,
    has_fcm_error: bool,
) -> None:
    response = push(http, fcm, message)
    assert response.status_code == 400
    assert rpc_error(response)["status"] == "INVALID_ARGUMENT"
    assert fragment in rpc_error(response)["message"]
    assert (fcm_code(response) == "INVALID_ARGUMENT") is has_fcm_error
    assert not fcm.outbox


def test_malformed_body(fcm: FcmEmulator, http: httpx.Client) -> None:
    url = f"{fcm.base_url}/v1/projects/{fcm.project_id}/messages:send"
    headers = {"Authorization": f"Bearer {fcm.issue_token()}", "Content-Type": "application/json"}
    assert http.post(url, headers=headers, content=b"{oops").status_code == 400
    unknown_top = http.post(url, headers=headers, json={"message": {"token": DEVICE}, "dry": True})
    assert 'Unknown name "dry"' in rpc_error(unknown_top)["message"]
    assert http.post(url, headers=headers, json={}).status_code == 400


def _message_of_size(size: int, **target: str) -> dict[str, Any]:
    message: dict[str, Any] = {**target, "data": {"body": ""}}
    message["data"]["body"] = "x" * (size - payload_size(message))
    assert payload_size(message) == size
    return message


def test_payload_limit_4096_bytes_2048_for_topics(fcm: FcmEmulator, http: httpx.Client) -> None:
    assert push(http, fcm, _message_of_size(4096, token=DEVICE)).status_code == 200
    too_big = push(http, fcm, _message_of_size(4097, token=DEVICE))
    assert too_big.status_code == 400 and fcm_code(too_big) == "INVALID_ARGUMENT"
    assert push(http, fcm, _message_of_size(2048, topic="news")).status_code == 200
    assert push(http, fcm, _message_of_size(2049, topic="news")).status_code == 400
    # Multi-byte text counts in bytes: 1366 × "ệ" (3 bytes each) is over 4096.
    vietnamese = {"token": DEVICE, "data": {"body": "ệ" * 1366}}
    assert push(http, fcm, vietnamese).status_code == 400


def test_topic_and_condition_targets(fcm: FcmEmulator, http: httpx.Client) -> None:
    topic = push(http, fcm, {"topic": "bhxh-thong-bao", "data": {"k": "v"}})
    condition = push(http, fcm, {"condition": "'a' in topics && 'b' in topics"})
    assert re.fullmatch(r"projects/vssid-push-test/messages/\d+", topic.json()["name"])
    assert condition.status_code == 200
    assert [(d.kind, d.address) for d in fcm.outbox] == [
        ("topic", "bhxh-thong-bao"),
        ("condition", "'a' in topics && 'b' in topics"),
    ]


def test_validate_only_delivers_nothing(fcm: FcmEmulator, http: httpx.Client) -> None:
    response = push(http, fcm, validate_only=True)
    assert response.json() == {"name": "projects/vssid-push-test/messages/fake_message_id"}
    assert not fcm.outbox


# -- per-device states and scripted outcomes -----------------------------------------------------


def test_device_states_until_restored(fcm: FcmEmulator, http: httpx.Client) -> None:
    fcm.unregister("dead")
    fcm.mismatch("foreign")
    fcm.break_apns("iphone")
    for _ in range(2):
        dead = push(http, fcm, {"token": "dead"})
        assert (dead.status_code, rpc_error(dead)["status"], fcm_code(dead)) == (
            404,
            "NOT_FOUND",
            "UNREGISTERED",
        )
        foreign = push(http, fcm, {"token": "foreign"})
        assert (foreign.status_code, fcm_code(foreign)) == (403, "SENDER_ID_MISMATCH")
        iphone = push(http, fcm, {"token": "iphone"})
        assert (iphone.status_code, fcm_code(iphone)) == (401, "THIRD_PARTY_AUTH_ERROR")
    fcm.restore("dead")
    assert push(http, fcm, {"token": "dead"}).status_code == 200


@pytest.mark.parametrize(
    ("reply", "status", "code", "retry_after"),
    [
        (unregistered(), 404, "UNREGISTERED", None),
        (invalid_argument(), 400, "INVALID_ARGUMENT", None),
        (sender_id_mismatch(), 403, "SENDER_ID_MISMATCH", None),
        (third_party_auth_error(), 401, "THIRD_PARTY_AUTH_ERROR", None),
        (quota_exceeded(), 429, "QUOTA_EXCEEDED", "60"),
        (unavailable(retry_after=5), 503, "UNAVAILABLE", "5"),
        (unavailable(), 503, "UNAVAILABLE", None),
        (internal(), 500, "INTERNAL", None),
        (fcm_error("INTERNAL", retry_after=2), 500, "INTERNAL", "2"),
        (unauthenticated(), 401, None, None),  # Google's auth front end: no FcmError detail
    ],
)
def test_every_error_code_can_be_scripted_once(
    fcm: FcmEmulator,
    http: httpx.Client,
    reply: Reply,
    status: int,
    code: str | None,
    retry_after: str | None,
) -> None:
    fcm.script(DEVICE, reply)
    failed = push(http, fcm)
    assert failed.status_code == status
    assert fcm_code(failed) == code
    assert failed.headers.get("retry-after") == retry_after
    assert not fcm.outbox
    assert push(http, fcm).status_code == 200


def test_delay_and_dropped_connection(fcm: FcmEmulator, http: httpx.Client) -> None:
    fcm.script(DEVICE, Delay(0.01), Disconnect())
    assert push(http, fcm).status_code == 200  # held briefly, then served
    with pytest.raises(httpx.RemoteProtocolError):
        push(http, fcm)
    assert push(http, fcm).status_code == 200
    assert len(fcm.outbox) == 2


# -- quotas --------------------------------------------------------------------------------------


def test_project_quota_answers_429_with_retry_after(http: httpx.Client, clock: ManualClock) -> None:
    with FcmEmulator(project_per_minute=2, clock=clock, monotonic=clock.monotonic) as fcm:
        assert [push(http, fcm, {"token": f"d{i}"}).status_code for i in range(2)] == [200, 200]
        limited = push(http, fcm, {"topic": "news"})
        assert limited.status_code == 429
        assert rpc_error(limited)["status"] == "RESOURCE_EXHAUSTED"
        # Google's quota front end answers, not FCM: an ErrorInfo naming the project's quota.
        assert fcm_code(limited) is None
        (info,) = [d for d in rpc_error(limited)["details"] if d["@type"].endswith("ErrorInfo")]
        assert info["reason"] == "RATE_LIMIT_EXCEEDED"
        assert info["metadata"]["quota_unit"] == "1/min/{project}"
        assert limited.headers["retry-after"] == "30"
        clock.advance(30)
        assert push(http, fcm, {"topic": "news"}).status_code == 200


def test_device_quota(http: httpx.Client, clock: ManualClock) -> None:
    with FcmEmulator(device_per_minute=1, clock=clock, monotonic=clock.monotonic) as fcm:
        assert push(http, fcm).status_code == 200
        limited = push(http, fcm)
        assert (limited.status_code, fcm_code(limited)) == (429, "QUOTA_EXCEEDED")
        assert rpc_error(limited)["message"] == "Device message rate exceeded."
        details = rpc_error(limited)["details"]
        (failure,) = [d for d in details if d["@type"].endswith("QuotaFailure")]
        assert [v["subject"] for v in failure["violations"]] == ["device"]
        assert limited.headers["retry-after"] == "60"
        assert push(http, fcm, {"token": "another-device"}).status_code == 200


def test_bearer_token_travels_only_in_the_authorization_header(
    fcm: FcmEmulator, http: httpx.Client
) -> None:
    token = request_token(http, fcm, assertion=make_jwt()).json()["access_token"]
    push(http, fcm, token=token)
    grant, send = fcm.requests.wait_for(2)
    assert grant.mentions(token) == []
    assert send.mentions(token) == ["headers"]
    assert grant.header("content-type") == "application/x-www-form-urlencoded"
