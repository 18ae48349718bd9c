"""Firebase Cloud Messaging HTTP v1 emulator, with a Google OAuth2 token endpoint.

Speaks:

- ``POST /token`` (what a service account's ``token_uri`` points to), form
  ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`` →
  ``{"access_token":"ya29...","expires_in":3600,"token_type":"Bearer"}``; OAuth errors are
  ``{"error":"invalid_grant","error_description":".."}`` (HTTP 400). The JWT's signature is not
  verified, but it must be three base64url parts, ``alg`` RS256, with claims ``iss``, ``scope``,
  ``aud`` (Google's token URI or this emulator's ``/token``), ``iat`` and ``exp`` (≤ 1 h apart).
- ``POST /v1/projects/{project}/messages:send`` with ``Authorization: Bearer <token>`` and
  ``{"message":{"token"|"topic"|"condition":..,"notification":{..},"data":{str:str}},
  "validate_only":false}`` → ``{"name":"projects/P/messages/ID"}``.
- Errors are Google RPC errors: ``{"error":{"code":404,"message":"..","status":"NOT_FOUND",
  "details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError",
  "errorCode":"UNREGISTERED"}]}}``. Authentication failures are 401 ``UNAUTHENTICATED`` with a
  ``google.rpc.ErrorInfo`` detail (reason ``ACCESS_TOKEN_EXPIRED``, ...), as Google answers them.

Enforced: bearer token validity and expiry (:meth:`FcmEmulator.expire_tokens`, or after n more
sends with ``expire_token_after(n)``), its scope, the
project, the message shape (one target; data values strings; no reserved data keys), the
payload limit (4096 bytes, 2048 for topic/condition messages, measured by :func:`payload_size`),
quotas with Retry-After: 600,000/min per project (429 ``RESOURCE_EXHAUSTED`` with the quota's
``ErrorInfo``, as Google answers it: :func:`project_quota_exceeded`) and 240/min per device
(429 ``QUOTA_EXCEEDED`` with a ``QuotaFailure`` naming the target: :func:`target_quota_exceeded`).
The bodies the emulator answers with are held to the providers' own material in
``tests/channels/contracts/fcm.json``.
Per device token or topic: :meth:`FcmEmulator.unregister` (404 UNREGISTERED),
:meth:`~FcmEmulator.invalidate` (400 INVALID_ARGUMENT with the FcmError detail),
:meth:`~FcmEmulator.mismatch`, :meth:`~FcmEmulator.break_apns` (the project's APNs key:
THIRD_PARTY_AUTH_ERROR), or ``script(token, ...)`` with :func:`fcm_error` / :func:`unavailable`
/ :func:`internal` / :func:`quota_exceeded` / :func:`target_quota_exceeded` /
:func:`project_quota_exceeded`. A token with whitespace in it is refused as FCM refuses a string
that is not a registration token.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from .base import (
    LOCALHOST,
    BodyError,
    Clock,
    Delivery,
    Emulator,
    Monotonic,
    Reply,
    ceil_seconds,
    parse_body,
)

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
MAX_PAYLOAD = 4096
MAX_TOPIC_PAYLOAD = 2048
TOKEN_TTL = timedelta(hours=1)

_FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
_QUOTA_FAILURE_TYPE = "type.googleapis.com/google.rpc.QuotaFailure"
_HELP_TYPE = "type.googleapis.com/google.rpc.Help"
DEVICE_RATE_MESSAGE = "Device message rate exceeded."
_MESSAGE_FIELDS = {
    "name",
    "data",
    "notification",
    "android",
    "webpush",
    "apns",
    "fcm_options",
    "token",
    "topic",
    "condition",
}
_NOTIFICATION_FIELDS = {"title", "body", "image"}
_TARGETS = ("token", "topic", "condition")
_TOPIC_RE = re.compile(r"^[a-zA-Z0-9\-_.~%]+$")
_RESERVED_DATA = {"from", "notification", "message_type"}

# errorCode → (HTTP status, RPC status, message)
ERRORS: dict[str, tuple[int, str, str]] = {
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "INVALID_ARGUMENT": (
        400,
        "INVALID_ARGUMENT",
        "The registration token is not a valid FCM registration token",
    ),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Quota exceeded for sending messages."),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
}

# -- canned answers ----------------------------------------------------------------------------


def _rpc_error(
    http: int,
    status: str,
    message: str,
    details: list[dict[str, Any]],
    headers: Mapping[str, str] | None = None,
) -> Reply:
    body: dict[str, Any] = {"code": http, "message": message, "status": status}
    if details:
        body["details"] = details
    return Reply(http, {"error": body}, headers=dict(headers or {}))


def fcm_error(
    error_code: str,
    message: str | None = None,
    *,
    retry_after: int | None = None,
    field: str | None = None,
) -> Reply:
    """An FCM error with its ``FcmError`` detail; ``retry_after`` adds a Retry-After header."""
    http, status, default_message = ERRORS[error_code]
    details: list[dict[str, Any]] = [{"@type": _FCM_ERROR_TYPE, "errorCode": error_code}]
    if field is not None:
        violation = {"field": field, "description": message or default_message}
        details.append({"@type": _BAD_REQUEST_TYPE, "fieldViolations": [violation]})
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return _rpc_error(http, status, message or default_message, details, headers)


def unregistered() -> Reply:
    return fcm_error("UNREGISTERED")


def invalid_argument(message: str | None = None, field: str | None = None) -> Reply:
    return fcm_error("INVALID_ARGUMENT", message, field=field)


def sender_id_mismatch() -> Reply:
    return fcm_error("SENDER_ID_MISMATCH")


def third_party_auth_error() -> Reply:
    return fcm_error("THIRD_PARTY_AUTH_ERROR")


def quota_exceeded(retry_after: int = 60, message: str | None = None) -> Reply:
    """QUOTA_EXCEEDED with no detail saying whose quota (as in the Admin SDK's own tests)."""
    return fcm_error("QUOTA_EXCEEDED", message, retry_after=retry_after)


def target_quota_exceeded(
    subject: str = "device", retry_after: int = 60, message: str = DEVICE_RATE_MESSAGE
) -> Reply:
    """The message's target (a device, a topic) is over its own rate: QUOTA_EXCEEDED with the
    ``google.rpc.QuotaFailure`` FCM's ErrorCode reference promises "to specify which quota was
    exceeded". FCM does not publish the subject it writes; ours names the kind of target."""
    reply = fcm_error("QUOTA_EXCEEDED", message, retry_after=retry_after)
    violation = {"subject": subject, "description": message}
    reply.body["error"]["details"].append({"@type": _QUOTA_FAILURE_TYPE, "violations": [violation]})
    return reply


def project_quota_exceeded(retry_after: int = 60, project_number: str = "000000000000") -> Reply:
    """The project's per-minute send quota, as Google's API front end answers it (a real answer
    quoted in firebase/firebase-admin-go issue #719): an ``ErrorInfo`` with the quota's metadata,
    no FcmError detail."""
    details: list[dict[str, Any]] = [
        {
            "@type": _ERROR_INFO_TYPE,
            "reason": "RATE_LIMIT_EXCEEDED",
            "domain": "googleapis.com",
            "metadata": {
                "quota_limit_value": "600000",
                "consumer": f"projects/{project_number}",
                "quota_metric": "fcm.googleapis.com/send_requests",
                "quota_unit": "1/min/{project}",
                "service": "fcm.googleapis.com",
                "quota_location": "global",
                "quota_limit": "SendsPerMinutePerProject",
            },
        },
        {
            "@type": _HELP_TYPE,
            "links": [
                {
                    "description": "Request a higher quota limit.",
                    "url": "https://cloud.google.com/docs/quotas/help/request_increase",
                }
            ],
        },
    ]
    message = (
        "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute' "
        f"of service 'fcm.googleapis.com' for consumer 'project_number:{project_number}'."
    )
    return _rpc_error(
        429, "RESOURCE_EXHAUSTED", message, details, {"Retry-After": str(retry_after)}
    )


def unavailable(retry_after: int | None = None) -> Reply:
    return fcm_error("UNAVAILABLE", retry_after=retry_after)


def internal(retry_after: int | None = None) -> Reply:
    return fcm_error("INTERNAL", retry_after=retry_after)


def unauthenticated(reason: str = "ACCESS_TOKEN_EXPIRED") -> Reply:
    """Google's answer to a missing, unknown or expired OAuth token."""
    if reason == "CREDENTIALS_MISSING":
        message = "Request is missing required authentication credential."
    else:
        message = "Request had invalid authentication credentials."
    message += (
        " Expected OAuth 2 access token, login cookie or other valid authentication credential."
        " See https://developers.google.com/identity/sign-in/web/devconsole-project."
    )
    return _rpc_error(
        401,
        "UNAUTHENTICATED",
        message,
        [_error_info(reason)],
        {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
    )


def _error_info(reason: str) -> dict[str, Any]:
    return {
        "@type": _ERROR_INFO_TYPE,
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {
            "service": "fcm.googleapis.com",
            "method": "google.firebase.fcm.v1.FcmService.SendMessage",
        },
    }


def _json_error(message: str, field: str | None = None) -> Reply:
    """Malformed request JSON: Google answers without an FcmError detail."""
    details: list[dict[str, Any]] = []
    if field is not None:
        violation = {"field": field, "description": message}
        details.append({"@type": _BAD_REQUEST_TYPE, "fieldViolations": [violation]})
    return _rpc_error(400, "INVALID_ARGUMENT", message, details)


def _oauth_error(error: str, description: str) -> Reply:
    return Reply(400, {"error": error, "error_description": description})


def payload_size(message: Mapping[str, Any]) -> int:
    """The bytes counted against FCM's payload limit: the ``notification`` and ``data`` parts,
    as compact UTF-8 JSON. (FCM does not publish its exact measure; adapters should use this
    same function or stay well below the limit.)"""
    parts = {k: message[k] for k in ("notification", "data") if k in message}
    return len(json.dumps(parts, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def _has_space(token: str) -> bool:
    return any(c.isspace() for c in token)


def _b64json(part: str) -> Any:
    padded = part + "=" * (-len(part) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


@dataclass
class _Issued:
    scopes: frozenset[str]
    expires_at: datetime
    subject: str


class FcmEmulator(Emulator):
    """FCM HTTP v1 for one Firebase project, plus the OAuth token endpoint."""

    def __init__(
        self,
        *,
        project_id: str = "vssid-push-test",
        token_ttl: timedelta = TOKEN_TTL,
        audience: str | None = None,
        project_per_minute: float | None = 600_000,
        device_per_minute: float | None = 240,
        max_payload: int = MAX_PAYLOAD,
        max_topic_payload: int = MAX_TOPIC_PAYLOAD,
        clock: Clock | None = None,
        monotonic: Monotonic | None = None,
        host: str = LOCALHOST,
        port: int = 0,
    ) -> None:
        """``audience``: the JWT ``aud`` to accept; by default Google's token URI or this
        emulator's own ``/token`` URL. Quotas are per minute (None disables), refilled
        smoothly with the full minute as burst."""
        super().__init__(clock=clock, monotonic=monotonic, host=host, port=port)
        self.project_id = project_id
        self.token_ttl = token_ttl
        self.audience = audience
        self.max_payload = max_payload
        self.max_topic_payload = max_topic_payload
        self._issued: dict[str, _Issued] = {}
        self.tokens_issued = 0
        for rule, per_minute in (("project", project_per_minute), ("device", device_per_minute)):
            rate = None if per_minute is None else per_minute / 60.0
            self.limits.set_rule(rule, rate, per_minute)

    # -- credentials -------------------------------------------------------------------------

    @property
    def token_uri(self) -> str:
        """Where a service account's ``token_uri`` should point."""
        return f"{self.base_url}/token"

    def issue_token(
        self, scope: str = FCM_SCOPE, subject: str = "push@vssid-push-test.iam.gserviceaccount.com"
    ) -> str:
        """An access token without the JWT dance (for tests that are not about auth)."""
        token = "ya29.c." + secrets.token_urlsafe(96)
        with self._lock:
            self._issued[token] = _Issued(
                frozenset(scope.split()), self.clock() + self.token_ttl, subject
            )
            self.tokens_issued += 1
        return token

    def expire_tokens(self, token: str | None = None) -> None:
        """Expire one access token, or all of them: the next send answers 401."""
        with self._lock:
            past = self.clock() - timedelta(seconds=1)
            for value, issued in self._issued.items():
                if token is None or value == token:
                    issued.expires_at = past

    def _expire_credential(self, token: str | None) -> None:
        self.expire_tokens(token)  # 401 ACCESS_TOKEN_EXPIRED; a new grant works

    # -- per-target state --------------------------------------------------------------------

    def unregister(self, token: str) -> None:
        """The app was uninstalled / the token rotated: 404 UNREGISTERED from now on."""
        self.scripts.stick(token, unregistered())

    def mismatch(self, token: str) -> None:
        """The token belongs to another sender: 403 SENDER_ID_MISMATCH."""
        self.scripts.stick(token, sender_id_mismatch())

    def invalidate(self, token: str) -> None:
        """The token is not (or no longer) a valid registration token: 400 INVALID_ARGUMENT with
        the FcmError detail, which Firebase's token-management guide says to delete."""
        self.scripts.stick(token, invalid_argument())

    def break_apns(self, token: str) -> None:
        """APNs / Web Push credentials rejected for this device: 401 THIRD_PARTY_AUTH_ERROR."""
        self.scripts.stick(token, third_party_auth_error())

    def restore(self, target: str) -> None:
        self.reset_scripts(target)

    # -- HTTP ------------------------------------------------------------------------------

    def build_app(self) -> ASGIApp:
        return Starlette(
            routes=[
                Route("/token", self._token_endpoint, methods=["POST"]),
                Route("/v1/projects/{project}/messages:send", self._send, methods=["POST"]),
            ]
        )

    async def _token_endpoint(self, request: Request) -> Response:
        try:
            form = parse_body(request.headers.get("content-type"), await request.body())
        except BodyError:
            return _oauth_error("invalid_request", "Malformed request body").to_response()
        grant_type = form.get("grant_type")
        if grant_type != JWT_BEARER:
            return _oauth_error(
                "unsupported_grant_type", f"Invalid grant_type: {grant_type or ''}"
            ).to_response()
        assertion = form.get("assertion")
        if not isinstance(assertion, str) or not assertion:
            return _oauth_error(
                "invalid_request", "Missing required parameter: assertion"
            ).to_response()
        own_uri = f"{request.url.scheme}://{request.url.netloc}/token"
        problem = self._check_assertion(assertion, own_uri)
        if isinstance(problem, Reply):
            return problem.to_response()
        scope, subject = problem
        token = self.issue_token(scope, subject)
        body = {
            "access_token": token,
            "expires_in": int(self.token_ttl.total_seconds()),
            "token_type": "Bearer",
        }
        return Reply(200, body).to_response()

    def _check_assertion(self, assertion: str, own_uri: str) -> Reply | tuple[str, str]:
        parts = assertion.split(".")
        if len(parts) != 3 or not all(parts):
            return _oauth_error("invalid_grant", "Invalid JWT: not a signed JWT (3 parts)")
        try:
            header, claims = _b64json(parts[0]), _b64json(parts[1])
        except (ValueError, binascii.Error):
            return _oauth_error("invalid_grant", "Invalid JWT: undecodable header or claims")
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return _oauth_error("invalid_grant", "Invalid JWT: header and claims must be objects")
        if header.get("alg") != "RS256":
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        scope = claims.get("scope")
        if not isinstance(scope, str) or not scope.strip():
            return _oauth_error("invalid_scope", "Empty or missing scope not allowed.")
        audiences = {self.audience} if self.audience else {GOOGLE_TOKEN_URI, own_uri}
        if claims.get("aud") not in audiences:
            expected = self.audience or GOOGLE_TOKEN_URI
            return _oauth_error(
                "invalid_grant",
                f"Invalid JWT: Failed audience check. The expected value was: {expected}",
            )
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or not issuer:
            return _oauth_error("invalid_grant", "Invalid JWT: missing iss claim")
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int) or not 0 < exp - iat <= 3600:
            return _oauth_error(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                "timeframe. Check your iat and exp values in the JWT claim.",
            )
        return scope, issuer

    def _auth_error(self, header: str | None) -> Reply | None:
        if not header:
            return unauthenticated("CREDENTIALS_MISSING")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return unauthenticated("ACCESS_TOKEN_TYPE_UNSUPPORTED")
        with self._lock:
            issued = self._issued.get(token.strip())
        if issued is None:
            return unauthenticated("ACCESS_TOKEN_TYPE_UNSUPPORTED")
        if issued.expires_at <= self.clock():
            return unauthenticated("ACCESS_TOKEN_EXPIRED")
        if not issued.scopes & {FCM_SCOPE, CLOUD_PLATFORM_SCOPE}:
            return _rpc_error(
                403,
                "PERMISSION_DENIED",
                "Request had insufficient authentication scopes.",
                [_error_info("ACCESS_TOKEN_SCOPE_INSUFFICIENT")],
            )
        self._spend_token_call(token.strip())
        return None

    async def _send(self, request: Request) -> Response:
        denied = self._auth_error(request.headers.get("authorization"))
        if denied is not None:
            return denied.to_response()
        project = request.path_params["project"]
        if project != self.project_id:
            return _rpc_error(
                403,
                "PERMISSION_DENIED",
                "Permission 'cloudmessaging.messages.create' denied on resource "
                f"'//cloudresourcemanager.googleapis.com/projects/{project}' "
                "(or it may not exist).",
                [_error_info("IAM_PERMISSION_DENIED")],
            ).to_response()
        try:
            body = parse_body("application/json", await request.body())
        except BodyError:
            return _json_error("Invalid JSON payload received. Unexpected token.").to_response()
        unknown = set(body) - {"message", "validate_only"}
        if unknown:
            name = sorted(unknown)[0]
            return _json_error(
                f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.',
                name,
            ).to_response()
        message = body.get("message")
        if not isinstance(message, dict):
            return _json_error("Request contains an invalid argument.", "message").to_response()
        problem = self._validate(message)
        if problem is not None:
            return problem.to_response()
        kind = next(t for t in _TARGETS if t in message)
        address = str(message[kind])
        limit = self.max_payload if kind == "token" else self.max_topic_payload
        if payload_size(message) > limit:
            return invalid_argument(
                f"Message is too big: payload exceeds {limit} bytes", "message"
            ).to_response()
        if body.get("validate_only") is True:
            # A dry run: checked, never delivered, not counted against quotas.
            name = f"projects/{self.project_id}/messages/fake_message_id"
            return Reply(200, {"name": name}).to_response()

        scripted = await self.next_outcome(address)
        if scripted is not None:
            return scripted.to_response()
        keys = [("project", self.project_id)]
        if kind == "token":
            keys.append(("device", address))
        limited = self.limits.acquire(*keys)
        if limited is not None:
            rule, wait = limited
            if rule == "device":
                return target_quota_exceeded("device", ceil_seconds(wait)).to_response()
            return project_quota_exceeded(ceil_seconds(wait)).to_response()

        now = self.clock()
        if kind == "token":
            message_id = f"0:{int(now.timestamp() * 1_000_000)}%{secrets.token_hex(8)}"
        else:
            message_id = str(secrets.randbelow(9 * 10**18) + 10**18)
        notification = message.get("notification")
        text = notification.get("body") if isinstance(notification, dict) else None
        self.deliver(
            Delivery(
                address=address,
                text=text,
                kind=kind,
                message_id=message_id,
                at=now,
                payload=message,
            )
        )
        name = f"projects/{self.project_id}/messages/{message_id}"
        return Reply(200, {"name": name}).to_response()

    def _validate(self, message: Mapping[str, Any]) -> Reply | None:
        unknown = sorted(set(message) - _MESSAGE_FIELDS)
        if unknown:
            return _json_error(
                f"Invalid JSON payload received. Unknown name \"{unknown[0]}\" at 'message': "
                "Cannot find field.",
                f"message.{unknown[0]}",
            )
        targets = [t for t in _TARGETS if t in message]
        if not targets:
            return invalid_argument("Recipient of the message is not set.", "message")
        if len(targets) > 1:
            return _json_error(
                "Invalid value at 'message' (oneof), oneof field 'target' is already set. "
                f"Cannot set '{targets[1]}'",
                "message",
            )
        target = message[targets[0]]
        if targets[0] == "token" and (
            not isinstance(target, str) or not target.strip() or _has_space(target)
        ):
            # As FCM answers a token that is not one: the FcmError detail, no BadRequest.
            return invalid_argument()
        if targets[0] == "topic" and (not isinstance(target, str) or not _TOPIC_RE.match(target)):
            return invalid_argument("Invalid topic name.", "message.topic")
        if targets[0] == "condition" and (not isinstance(target, str) or "in topics" not in target):
            return invalid_argument("Invalid condition expression.", "message.condition")
        notification = message.get("notification")
        if notification is not None:
            if not isinstance(notification, dict):
                return _json_error(
                    "Invalid value at 'message.notification'", "message.notification"
                )
            extra = sorted(set(notification) - _NOTIFICATION_FIELDS)
            if extra:
                return _json_error(
                    f'Invalid JSON payload received. Unknown name "{extra[0]}" at '
                    "'message.notification': Cannot find field.",
                    f"message.notification.{extra[0]}",
                )
        data = message.get("data")
        if data is not None:
            if not isinstance(data, dict):
                return _json_error("Invalid value at 'message.data'", "message.data")
            for index, (key, value) in enumerate(data.items()):
                if not isinstance(value, str):
                    return _json_error(
                        f"Invalid value at 'message.data[{index}].value' (TYPE_STRING), "
                        f"{json.dumps(value)}",
                        f"message.data[{index}].value",
                    )
                if key in _RESERVED_DATA or key.startswith(("google.", "gcm.")):
                    return invalid_argument(f"Invalid data payload key: {key}", "message.data")
        return None
