"""A Firebase Cloud Messaging HTTP v1 client: service-account OAuth2 and ``messages:send``.

Not an adapter by itself: the ``vssid`` channel uses it to nudge a citizen's devices. One
:class:`FcmClient` holds one :class:`httpx.AsyncClient` and one OAuth2 access token for the
service account, cached until shortly before it expires (:data:`REFRESH_MARGIN`). A refresh
signs an RS256 JWT assertion with google-auth and runs in a worker thread (google-auth's
transport is blocking), one refresh at a time however many sends are waiting for it.

Errors, per CHANNELS.md (classified on ``error.details[].errorCode`` first, then on
``error.status`` / the HTTP status for answers without an FCM code):

    errorCode / status                         HTTP     raised
    UNREGISTERED                               404      PermanentError(address_dead=True):
                                                        the caller drops the device token
    INVALID_ARGUMENT, SENDER_ID_MISMATCH,      400/403  PermanentError
    THIRD_PARTY_AUTH_ERROR                     /401
    UNAUTHENTICATED (no FCM code)              401      refresh the token once, retry once;
                                                        then AuthError
    PERMISSION_DENIED (no FCM code)            403      AuthError (wrong project, IAM role or
                                                        scope: a channel-wide fault)
    QUOTA_EXCEEDED / RESOURCE_EXHAUSTED        429      RateLimitedError, retry_after =
                                                        Retry-After but at least 60 s; scope
                                                        "message" for a device's own quota
                                                        ("Device message rate exceeded"),
                                                        else "channel" (the project's)
    UNAVAILABLE, INTERNAL, other 5xx, 408      5xx      TransientError (retry_after =
                                                        Retry-After when given)
    network failure, timeout                   —        TransientError
    any other 4xx                              4xx      PermanentError

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

PERMANENT_CODES = frozenset({"INVALID_ARGUMENT", "SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR"})
TRANSIENT_CODES = frozenset({"UNAVAILABLE", "INTERNAL"})

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


def fcm_error_code(payload: Any) -> str | None:
    """The ``errorCode`` of the ``FcmError`` detail of a Google RPC error body, if any."""
    details = _error_object(payload).get("details")
    if not isinstance(details, list):
        return None
    for detail in details:
        if isinstance(detail, dict) and isinstance(detail.get("errorCode"), str):
            return str(detail["errorCode"])
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
        return False  # e.g. THIRD_PARTY_AUTH_ERROR: 401, but the device's APNs key, not ours
    return status == 401 or _error_object(payload).get("status") == "UNAUTHENTICATED"


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
    rpc_status = error.get("status") if isinstance(error.get("status"), str) else None
    text = error.get("message") if isinstance(error.get("message"), str) else None
    label = code or rpc_status or f"HTTP {status}"
    reason = f"fcm {label}" + (f": {text}" if text else "")
    wait = retry_after_seconds(headers.get("retry-after"), now)
    kwargs: dict[str, Any] = {"code": label, "reply": reply}

    if code == "UNREGISTERED":
        return PermanentError(reason, address_dead=True, **kwargs)
    if code in PERMANENT_CODES:
        return PermanentError(reason, **kwargs)
    if code == "QUOTA_EXCEEDED" or status == 429 or rpc_status == "RESOURCE_EXHAUSTED":
        # FCM answers the project's quota and one device's quota (240/min) with the same code;
        # only the message tells them apart. One busy phone must not pause the whole channel.
        scope = "message" if text and "device" in text.lower() else "channel"
        return RateLimitedError(
            reason, retry_after=max(MIN_QUOTA_WAIT, wait or 0.0), scope=scope, **kwargs
        )
    if code in TRANSIENT_CODES or status >= 500 or status == 408:
        return TransientError(reason, retry_after=wait, **kwargs)
    if needs_refresh(status, payload):
        return AuthError(reason, **kwargs)
    if status == 403 or rpc_status == "PERMISSION_DENIED":
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
            headers={"Content-Type": "application/json; charset=UTF-8"},
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
