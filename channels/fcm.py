"""A Firebase Cloud Messaging HTTP v1 client: service-account OAuth2 and ``messages:send``.

Not an adapter by itself: the ``vssid`` channel uses it to nudge a citizen's devices. One
:class:`FcmClient` holds one :class:`httpx.AsyncClient` and one OAuth2 access token for the
service account, cached until shortly before it expires (:data:`REFRESH_MARGIN`). A refresh
signs an RS256 JWT assertion with google-auth and runs in a worker thread (google-auth's
transport is blocking), one refresh at a time however many sends are waiting for it.

Errors, classified as the Firebase Admin SDK does (``firebase_admin/messaging.py``): on the
``errorCode`` of the ``google.firebase.fcm.v1.FcmError`` detail first, then on the canonical
``error.status``, then on the HTTP status; never on the message text. Requests carry
``X-GOOG-API-FORMAT-VERSION: 2``, as the Admin SDK's do, for these detailed errors.

    errorCode / status                         HTTP     raised
    UNREGISTERED                               404      PermanentError(address_dead=True):
    INVALID_ARGUMENT (FcmError detail, no      400      the device token is dead and the
      BadRequest naming another field)                  caller drops it (Firebase's
    NOT_FOUND (status, no FcmError detail)     404      token-management guide)
    INVALID_ARGUMENT (no FcmError detail:      400      PermanentError: the request was
      the request, not the token)                       wrong, the token may be fine
    SENDER_ID_MISMATCH                         403      PermanentError (kept: if every token
                                                        says so, our project is wrong)
    THIRD_PARTY_AUTH_ERROR, APNS_AUTH_ERROR    401      AuthError: account-wide (below)
    UNAUTHENTICATED (no FCM code)              401      refresh the token once, retry once;
                                                        then AuthError
    PERMISSION_DENIED (no FCM code)            403      AuthError: account-wide
    QUOTA_EXCEEDED / RESOURCE_EXHAUSTED        429      RateLimitedError, retry_after =
                                                        Retry-After (or RetryInfo) but at
                                                        least 60 s; scope from the details
                                                        (:func:`quota_scope`)
    UNAVAILABLE, INTERNAL, other 5xx, 408      5xx      TransientError (retry_after =
                                                        Retry-After when given)
    network failure, timeout                   —        TransientError
    any other 4xx                              4xx      PermanentError

Account-wide faults (:data:`ACCOUNT_WIDE`): the answer says the project's own set-up is broken,
so every push would fail the same way. They raise :class:`AuthError`, which pauses the channel,
alerts once and keeps the deliveries waiting (``dispatcher.engine.send``):

    fault                              what is broken
    THIRD_PARTY_AUTH_ERROR             the project's APNs certificate / key or web-push key:
    (APNS_AUTH_ERROR, its old name)    every iOS or web device of the project
    PERMISSION_DENIED (no FCM code)    the service account's IAM role, the project id, the scope
    UNAUTHENTICATED after a refresh    the service account itself

The payload (``notification`` + ``data``) is measured before sending, as compact UTF-8 JSON
(:func:`payload_size`); over :data:`MAX_PAYLOAD` bytes is a PermanentError and no request is
made. Device tokens, access tokens and the private key never appear in exception messages,
logs or reprs.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import math
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import google.auth.exceptions
import google.auth.transport.requests
import httpx
import structlog
from google.oauth2 import service_account
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from channels import http
from channels.base import (
    AuthError,
    DeliveryError,
    PermanentError,
    RateLimitedError,
    TransientError,
)

log = structlog.get_logger(__name__)

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
MAX_PAYLOAD = 4096  # bytes of notification + data, for a message to one device token
MIN_QUOTA_WAIT = 60.0  # FCM's quota is per minute: retrying sooner only burns more of it
# Refresh this long before the token's end, so a send never carries a token that expires in
# flight. Capped at half the lifetime so that a short-lived token is still reused.
REFRESH_MARGIN = timedelta(minutes=5)
DEFAULT_TOKEN_LIFETIME = timedelta(hours=1)  # Google's tokens; used if expires_in is absent
ELLIPSIS = "…"

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
QUOTA_FAILURE_TYPE = "type.googleapis.com/google.rpc.QuotaFailure"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
# The header the Admin SDK sends so that errors carry their FcmError details.
API_FORMAT_HEADERS = {"X-GOOG-API-FORMAT-VERSION": "2"}

# FcmError codes that mean the project's own set-up is broken (see the module's table).
ACCOUNT_WIDE = frozenset({"THIRD_PARTY_AUTH_ERROR", "APNS_AUTH_ERROR"})
PERMANENT_CODES = frozenset({"INVALID_ARGUMENT", "SENDER_ID_MISMATCH"})
TRANSIENT_CODES = frozenset({"UNAVAILABLE", "INTERNAL"})
TOKEN_FIELD = "message.token"  # noqa: S105 - a field's name, not a secret

ACCOUNT_VAR = "DISPATCHER_FCM_SERVICE_ACCOUNT"
ACCOUNT_FILE_VAR = "DISPATCHER_FCM_SERVICE_ACCOUNT_FILE"
PROJECT_VAR = "DISPATCHER_FCM_PROJECT_ID"
REDACTED = "[redacted]"


def _utcnow() -> datetime:
    return datetime.now(UTC)


# -- configuration ------------------------------------------------------------------------------


class FcmSettings(http.HttpSettings):
    """Firebase Cloud Messaging, for pushes to the VssID app: ``DISPATCHER_FCM_*``."""

    model_config = SettingsConfigDict(env_prefix="DISPATCHER_FCM_")

    project_id: str | None = None
    service_account: SecretStr | None = Field(
        default=None, description="The service account's JSON key (or use ..._FILE)."
    )
    service_account_file: str | None = None
    endpoint: http.HttpUrl = "https://fcm.googleapis.com"
    token_uri: str | None = Field(
        default=None, description="Override the key's token_uri (a test emulator)."
    )


@dataclass(frozen=True)
class FcmConfig:
    """What an :class:`FcmClient` needs, checked once. The key is kept out of the repr."""

    project_id: str
    service_account: Mapping[str, Any] = field(repr=False)
    endpoint: str = "https://fcm.googleapis.com"
    timeout: float = 15.0

    @property
    def client_email(self) -> str:
        return str(self.service_account.get("client_email", ""))

    @classmethod
    def from_settings(cls, settings: Any) -> FcmConfig:
        """Read the service account (inline JSON, else a file) and the project, from
        :class:`FcmSettings` or the service's settings (their ``fcm_*`` values given in code).

        Raises a :class:`ValueError` naming the ``DISPATCHER_*`` variable to fix; the message
        never quotes the key. The project falls back to the key's own ``project_id`` (as the
        Firebase Admin SDK does), since a Firebase service-account key always carries it.
        """
        own = FcmSettings.load(settings)
        secret = own.service_account
        path = own.service_account_file
        if secret is not None and secret.get_secret_value().strip():
            info = _parse_account(secret.get_secret_value(), ACCOUNT_VAR)
            source = ACCOUNT_VAR
        elif path:
            try:
                text = Path(path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(
                    f"{ACCOUNT_FILE_VAR}: cannot read the service-account key file {path!r} "
                    f"({type(exc).__name__})"
                ) from None
            info = _parse_account(text, ACCOUNT_FILE_VAR)
            source = ACCOUNT_FILE_VAR
        else:
            raise ValueError(
                f"the vssid channel needs an FCM service-account key: set {ACCOUNT_VAR} "
                f"(the key's JSON) or {ACCOUNT_FILE_VAR} (a path to it)"
            )
        if own.token_uri:
            info["token_uri"] = own.token_uri
        project = own.project_id or info.get("project_id")
        if not isinstance(project, str) or not project.strip():
            raise ValueError(
                f"{PROJECT_VAR} is not set and the service-account key names no project_id"
            )
        config = cls(
            project_id=project.strip(),
            service_account=info,
            endpoint=own.endpoint,
            timeout=own.http_timeout,
        )
        build_credentials(config.service_account, source)  # fail now, not at the first send
        return config


def _parse_account(text: str, variable: str) -> dict[str, Any]:
    try:
        info = json.loads(text)
    except ValueError:
        # The decoder's message can quote the text around the fault: say where, never what.
        raise ValueError(f"{variable}: the service-account key is not valid JSON") from None
    if not isinstance(info, dict):
        raise ValueError(f"{variable}: the service-account key must be a JSON object")
    missing = [k for k in ("client_email", "private_key") if not info.get(k)]
    if missing:
        raise ValueError(f"{variable}: the service-account key lacks {', '.join(missing)}")
    return info


def build_credentials(
    info: Mapping[str, Any], variable: str = ACCOUNT_VAR
) -> service_account.Credentials:
    """google-auth credentials for the FCM scope; a :class:`ValueError` names ``variable``."""
    if not info.get("token_uri"):
        raise ValueError(f"{variable}: the service-account key lacks token_uri")
    try:
        return service_account.Credentials.from_service_account_info(dict(info), scopes=[FCM_SCOPE])
    except (ValueError, TypeError, IndexError):
        # cryptography's and google-auth's messages are generic, but do not risk echoing key
        # material: the variable and the failing part are enough to act on.
        raise ValueError(f"{variable}: the service-account private_key cannot be loaded") from None


# -- payload ------------------------------------------------------------------------------------


def build_message(
    token: str, title: str | None, body: str | None, data: Mapping[str, str] | None
) -> dict[str, Any]:
    """The ``message`` object of a ``messages:send`` request for one device token."""
    message: dict[str, Any] = {"token": token}
    notification = {k: v for k, v in (("title", title), ("body", body)) if v is not None}
    if notification:
        message["notification"] = notification
    if data:
        message["data"] = dict(data)
    return message


def payload_size(message: Mapping[str, Any]) -> int:
    """Bytes counted against :data:`MAX_PAYLOAD`: ``notification`` and ``data`` as compact
    UTF-8 JSON. FCM does not publish its exact measure; this one is what the test emulator
    enforces, and Vietnamese text counts 2–3 bytes a letter."""
    parts = {k: message[k] for k in ("notification", "data") if k in message}
    return len(json.dumps(parts, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def fit_body(
    title: str | None,
    body: str,
    data: Mapping[str, str] | None = None,
    limit: int = MAX_PAYLOAD,
) -> str:
    """``body``, shortened with an ellipsis if needed so the push fits ``limit`` bytes.

    Cuts between characters, never between a letter and its combining accent (Vietnamese in
    NFD form); returns "" when not even an empty body fits (the send then fails on size).
    """

    def size(text: str) -> int:
        return payload_size(build_message("", title, text, data))

    if size(body) <= limit:
        return body
    low, high = 0, len(body)  # invariant: body[:low] + "…" fits (or low == 0)
    while low < high:
        middle = (low + high + 1) // 2
        if size(body[:middle] + ELLIPSIS) <= limit:
            low = middle
        else:
            high = middle - 1
    cut = low
    while 0 < cut < len(body) and unicodedata.combining(body[cut]):
        cut -= 1
    shortened = body[:cut].rstrip() + ELLIPSIS
    return shortened if size(shortened) <= limit else ""


# -- classification -----------------------------------------------------------------------------


def _error_object(payload: Any) -> dict[str, Any]:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return payload["error"]
    return {}


def error_details(payload: Any, kind: str) -> list[dict[str, Any]]:
    """The details of a Google RPC error body whose ``@type`` is ``kind``."""
    details = _error_object(payload).get("details")
    if not isinstance(details, list):
        return []
    return [d for d in details if isinstance(d, dict) and d.get("@type") == kind]


def fcm_error_code(payload: Any) -> str | None:
    """The ``errorCode`` of the ``FcmError`` detail, if any (found by its type, as the Admin SDK
    does)."""
    for detail in error_details(payload, FCM_ERROR_TYPE):
        code = detail.get("errorCode")
        if isinstance(code, str) and code:
            return code
    return None


def _rpc_status(payload: Any) -> str | None:
    status = _error_object(payload).get("status")
    return status if isinstance(status, str) else None


def token_is_dead(payload: Any) -> bool:
    """FCM says the device token itself is dead: drop it (Firebase's token-management guide).

    UNREGISTERED; INVALID_ARGUMENT *with* the FcmError detail (a malformed payload answers with a
    ``BadRequest`` detail instead, or names a field other than the token); and the canonical
    NOT_FOUND without an FCM code. A bare HTTP 404 (a proxy's page) is not enough.
    """
    code = fcm_error_code(payload)
    if code == "UNREGISTERED":
        return True
    if code == "INVALID_ARGUMENT":
        fields = {
            str(v.get("field"))
            for d in error_details(payload, BAD_REQUEST_TYPE)
            for v in d.get("fieldViolations") or []
            if isinstance(v, dict)
        }
        return fields <= {TOKEN_FIELD}
    return code is None and _rpc_status(payload) == "NOT_FOUND"


def quota_scope(payload: Any) -> str:
    """Whose quota a 429 spent, from the structured details: ``"message"`` for the message's
    target (one device or topic), ``"channel"`` for the project.

    A ``google.rpc.QuotaFailure`` names each violated quota's subject (``project:<id>`` for a
    project, by ``google/rpc/error_details.proto``); FCM returns one with QUOTA_EXCEEDED "to
    specify which quota was exceeded". An ``ErrorInfo`` whose quota metadata is per project
    (``quota_unit`` ``1/min/{project}``), any ``project:`` subject, or no scope at all, is the
    project's: pausing everyone for a minute is the safe reading.
    """
    for info in error_details(payload, ERROR_INFO_TYPE):
        metadata = info.get("metadata")
        if isinstance(metadata, dict) and (
            "{project}" in str(metadata.get("quota_unit", ""))
            or "PerProject" in str(metadata.get("quota_limit", ""))
        ):
            return "channel"
    subjects = [
        str(v.get("subject") or "")
        for d in error_details(payload, QUOTA_FAILURE_TYPE)
        for v in d.get("violations") or []
        if isinstance(v, dict)
    ]
    if subjects and not any(s.startswith("project:") for s in subjects):
        return "message"
    return "channel"


def _retry_delay(payload: Any) -> float | None:
    """A ``google.rpc.RetryInfo`` detail's ``retryDelay`` ("42s"), in seconds."""
    for detail in error_details(payload, RETRY_INFO_TYPE):
        delay = detail.get("retryDelay")
        if isinstance(delay, str) and delay.endswith("s"):
            with contextlib.suppress(ValueError):
                seconds = float(delay[:-1])
                if math.isfinite(seconds) and seconds >= 0:
                    return seconds
    return None


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A Retry-After header (seconds, or an HTTP date judged against ``now``) in seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def needs_refresh(status: int, payload: Any) -> bool:
    """Google refused the OAuth token itself (401 UNAUTHENTICATED without an FCM code)."""
    if fcm_error_code(payload) is not None:
        return False  # e.g. THIRD_PARTY_AUTH_ERROR: 401, but the APNs key, not our token
    return status == 401 or _rpc_status(payload) == "UNAUTHENTICATED"


def classify(
    status: int,
    payload: Any,
    headers: Mapping[str, str],
    *,
    now: datetime,
    reply: str | None = None,
) -> DeliveryError:
    """Turn an FCM error answer into our error classes (see the module's table)."""
    error = _error_object(payload)
    code = fcm_error_code(payload)
    rpc_status = _rpc_status(payload)
    text = error.get("message") if isinstance(error.get("message"), str) else None
    label = code or rpc_status or f"HTTP {status}"
    reason = f"fcm {label}" + (f": {text}" if text else "")
    wait = retry_after_seconds(headers.get("retry-after"), now)
    if wait is None:
        wait = _retry_delay(payload)
    kwargs: dict[str, Any] = {"code": label, "reply": reply}

    if token_is_dead(payload):
        return PermanentError(reason, address_dead=True, **kwargs)
    if code in ACCOUNT_WIDE:
        return AuthError(reason, **kwargs)
    if code in PERMANENT_CODES:
        return PermanentError(reason, **kwargs)
    if code == "QUOTA_EXCEEDED" or status == 429 or rpc_status == "RESOURCE_EXHAUSTED":
        # The project's quota and one device's (or topic's) answer alike; only the structured
        # details tell them apart. One busy phone must not pause the whole channel.
        return RateLimitedError(
            reason,
            retry_after=max(MIN_QUOTA_WAIT, wait or 0.0),
            scope=quota_scope(payload),
            **kwargs,
        )
    if code in TRANSIENT_CODES or status >= 500 or status == 408:
        return TransientError(reason, retry_after=wait, **kwargs)
    if code is None and rpc_status in TRANSIENT_CODES:
        return TransientError(reason, retry_after=wait, **kwargs)
    if needs_refresh(status, payload):
        return AuthError(reason, **kwargs)
    if code is None and (status == 403 or rpc_status == "PERMISSION_DENIED"):
        # Wrong project, a missing IAM role, a token without the FCM scope: every message
        # would fail the same way, so this is the channel's credential, not this message.
        return AuthError(reason, **kwargs)
    return PermanentError(reason, **kwargs)


def _scrub(text: str, *secrets: str | None) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


# -- the client ---------------------------------------------------------------------------------


class _TimedRequest(google.auth.transport.requests.Request):
    """google-auth's requests transport with our timeout (its default is 120 s)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self._timeout = timeout

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: Any = None,
        **kwargs: Any,
    ) -> Any:
        return super().__call__(
            url, method, body, headers, timeout=timeout or self._timeout, **kwargs
        )


class FcmClient:
    """Sends to single device tokens through ``projects/{project}/messages:send``.

    Create it inside the event loop that will use it; :meth:`aclose` releases the HTTP
    connections. ``now`` is the service's clock: it decides when the cached token is stale.
    ``transport`` replaces httpx's network transport (tests).
    """

    def __init__(
        self,
        config: FcmConfig,
        *,
        now: Callable[[], datetime] = _utcnow,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.url = f"{config.endpoint}/v1/projects/{config.project_id}/messages:send"
        self._now = now
        self._credentials = build_credentials(config.service_account)
        self._request = _TimedRequest(config.timeout)
        self._http = http.client(
            timeout=config.timeout,
            transport=transport,
            headers={"Content-Type": "application/json; charset=UTF-8", **API_FORMAT_HEADERS},
        )
        self._token: str | None = None
        self._fresh_until: datetime | None = None
        self._refreshing: asyncio.Future[None] | None = None
        self.refreshes = 0  # OAuth tokens fetched, for metrics and tests

    def __repr__(self) -> str:
        return (
            f"<FcmClient project={self.config.project_id!r} account={self.config.client_email!r}>"
        )

    async def aclose(self) -> None:
        await self._http.aclose()
        with contextlib.suppress(Exception):
            self._request.session.close()

    # -- OAuth ----------------------------------------------------------------------------------

    def _usable(self, rejected: str | None) -> bool:
        return (
            self._token is not None
            and self._token != rejected
            and self._fresh_until is not None
            and self._now() < self._fresh_until
        )

    async def _access_token(self, rejected: str | None = None) -> str:
        """The cached token, or a fresh one. ``rejected``: a token FCM just refused.

        Every waiter shares one in-flight refresh (single flight): a burst of sends at start,
        or fifty sends all answered 401 at once, cost one token request, not fifty. The
        refresh is shielded, so a cancelled send never leaves google-auth's credentials
        half-updated by an orphaned thread racing the next refresh.
        """
        if not self._usable(rejected):
            refreshing = self._refreshing
            if refreshing is None:
                refreshing = self._refreshing = asyncio.ensure_future(self._refresh())
                refreshing.add_done_callback(self._refresh_done)
            # Whatever that refresh brings is newer than the token FCM refused. Even a token
            # already stale by our clock is used once rather than refreshed in a loop: FCM
            # has the last word, and a refusal there is the caller's single retry.
            await asyncio.shield(refreshing)
        assert self._token is not None
        return self._token

    def _refresh_done(self, future: asyncio.Future[None]) -> None:
        if self._refreshing is future:
            self._refreshing = None
        if not future.cancelled():
            future.exception()  # retrieved here too, so no "never retrieved" warning

    async def _refresh(self) -> None:
        started = self._now()
        try:
            # google-auth's transport blocks; a thread keeps the event loop sending.
            await asyncio.to_thread(self._credentials.refresh, self._request)
        except google.auth.exceptions.TransportError as exc:
            raise TransientError(
                f"fcm token endpoint unreachable ({type(exc).__name__})", code="oauth"
            ) from None
        except google.auth.exceptions.RefreshError as exc:
            detail = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
            reason = _scrub(f"fcm OAuth token refused: {detail}"[:300], self._token)
            if exc.retryable:
                raise TransientError(reason, code="oauth") from None
            raise AuthError(reason, code="oauth") from None
        token = self._credentials.token
        if not isinstance(token, str) or not token:
            raise AuthError("fcm token endpoint returned no access token", code="oauth")
        expiry = self._credentials.expiry
        if expiry is not None:
            # google-auth stamps a naive UTC expiry from the wall clock; only the remaining
            # lifetime is taken from it, and the deadline is kept on the service's clock.
            lifetime = expiry - datetime.now(UTC).replace(tzinfo=None)
        else:
            lifetime = DEFAULT_TOKEN_LIFETIME
        lifetime = max(lifetime, timedelta(0))
        margin = min(REFRESH_MARGIN, lifetime / 2)
        self._token = token
        self._fresh_until = started + lifetime - margin
        self.refreshes += 1
        log.info(
            "fcm_token_refreshed",
            account=self.config.client_email,
            lifetime_s=int(lifetime.total_seconds()),
        )

    # -- sending --------------------------------------------------------------------------------

    async def _post(self, access_token: str, content: bytes) -> httpx.Response:
        return await http.request(
            self._http,
            "POST",
            self.url,
            provider="fcm",
            content=content,
            headers={"Authorization": f"Bearer {access_token}"},
        )

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            return None

    async def send(
        self,
        token: str,
        title: str | None,
        body: str | None,
        data: Mapping[str, str] | None = None,
    ) -> str:
        """Push one message to one device; returns FCM's message ``name``.

        Raises a :class:`~channels.base.DeliveryError` subclass per the module's table.
        """
        if not token or not token.strip():
            raise PermanentError("fcm: empty device token", code="INVALID_ARGUMENT")
        message = build_message(token, title, body, data)
        size = payload_size(message)
        if size > MAX_PAYLOAD:
            raise PermanentError(
                f"fcm payload is {size} bytes, over the {MAX_PAYLOAD}-byte limit",
                code="payload_too_large",
            )
        content = json.dumps({"message": message}, ensure_ascii=False).encode("utf-8")

        access = await self._access_token()
        response = await self._post(access, content)
        if needs_refresh(response.status_code, self._json(response)):
            # The token may have been revoked or expired early (or our clock runs behind
            # Google's): one refresh, one retry; a second refusal is a real auth fault.
            access = await self._access_token(rejected=access)
            response = await self._post(access, content)

        payload = self._json(response)
        if response.is_success:
            name = payload.get("name") if isinstance(payload, dict) else None
            if isinstance(name, str) and name:
                return name
            raise TransientError(
                f"fcm answered {response.status_code} without a message name", code="no_name"
            )
        reply = _scrub(response.text[:500], token, access)
        error = classify(
            response.status_code, payload, response.headers, now=self._now(), reply=reply
        )
        reason = _scrub(error.reason, token, access)
        if isinstance(error, AuthError) and needs_refresh(response.status_code, payload):
            reason += " (again after refreshing the OAuth token)"
        error.reason = reason
        error.args = (reason,)
        raise error
