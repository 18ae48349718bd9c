"""Zalo Official Account (OpenAPI v3), with the OAuth v4 single-use refresh-token rotation.

Message type, chosen from :attr:`Message.kind` (:data:`MESSAGE_TYPES`):

    kind                               Zalo type     why
    transactional                      transaction   the citizen's own file; costs OA quota
    fraud_warning, disaster_support    cs            "consultation": free, but only inside the
                                                     user's interaction window (-230/-232)
    greeting, policy_news              promotion     broadcast content; never 22:00–06:00

Zalo answers errors with **HTTP 200** and ``{"error": <negative int>, "message": ..}``, so the
body's code is always what is classified (:func:`classify_error`), per CHANNELS.md:

    code              meaning                                raised
    -32               app reached its API call limit         RateLimitedError, no retry_after
    -211, -218        OA / user receive quota exhausted      RateLimitedError until the next
                                                             midnight, Vietnam time
    -234              promotion at night                     RateLimitedError until 06:00 VN
                                                             (60 s if our clock already says
                                                             06:xx: the provider lags a bit)
    -216, -220, -124  access token invalid / expired         refresh once, retry once; then
                                                             AuthError
    -213              user does not follow the OA            PermanentError, address dead
    -227, -217        user banned/inactive, blocked the OA   PermanentError, address dead
    -244              user restricted this message type      PermanentError
    -230, -232        outside the consultation window        PermanentError (another channel)
    -201, -210, -233  bad parameter, too long, bad type      PermanentError
    any other code    unknown refusal                        PermanentError

HTTP 5xx without a Zalo code, network failures, timeouts and non-JSON answers are
:class:`TransientError`.

Promotions are also held back *before* calling the API during the night (judged on
``context.now()`` in Asia/Ho_Chi_Minh): a :class:`RateLimitedError` whose ``retry_after`` ends
at 06:00 local, so the delivery is deferred rather than failed and no call is wasted.

Tokens. The access/refresh pair rotates on every refresh and the refresh token is single use,
so the current pair lives in the shared :class:`~channels.base.StateStore` under
``zalo:access_token`` / ``zalo:refresh_token``; the settings only seed it (they are read when a
key is absent and written to the store only once a refresh produced a new pair, so a worker
starting late can never overwrite a rotated pair with the stale seed). Token values never
appear in exception messages, logs or reprs (a refresh is logged with 8-hex-digit SHA-256
fingerprints only, enough to tell rotations apart).
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import structlog
from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from channels import http
from channels.base import (
    Adapter,
    AdapterContext,
    AuthError,
    Category,
    ChannelLimits,
    DeliveryError,
    Message,
    PermanentError,
    RateLimitedError,
    RateRule,
    SendResult,
    TransientError,
)

log = structlog.get_logger(__name__)


def _vietnam_zone() -> tzinfo:
    try:
        return ZoneInfo("Asia/Ho_Chi_Minh")
    except ZoneInfoNotFoundError:
        # A slim image without the tz database: Vietnam has kept UTC+7 without DST since 1975,
        # so the fixed offset gives the same answers.
        return timezone(timedelta(hours=7), "ICT")


VIETNAM = _vietnam_zone()

MESSAGE_TYPES: dict[Category, str] = {
    Category.transactional: "transaction",
    Category.fraud_warning: "cs",
    Category.disaster_support: "cs",
    Category.greeting: "promotion",
    Category.policy_news: "promotion",
}

ACCESS_KEY = "zalo:access_token"
REFRESH_KEY = "zalo:refresh_token"

NIGHT_START_HOUR = 22  # promotions are refused from 22:00 ...
NIGHT_END_HOUR = 6  # ... until 06:00, Vietnam time
# A -234 in the first hour after 06:00 by our clock means the provider's clock lags ours a
# little: waiting for the *next* 06:00 would lose a whole day, so try again shortly instead.
CLOCK_SKEW_RETRY = 60.0

RATE_CODES = frozenset({-32})
QUOTA_CODES = frozenset({-211, -218})
NIGHT_CODE = -234
AUTH_CODES = frozenset({-216, -220, -124})
WINDOW_CODES = frozenset({-230, -232})
DEAD_CODES = frozenset({-213, -217, -227})

# The settings every send needs.
REQUIRED = ("app_id", "secret_key", "access_token", "refresh_token")


class ZaloSettings(http.HttpSettings):
    """The Official Account: ``DISPATCHER_ZALO_*``. The access/refresh pair rotates; after the
    first refresh the current pair lives in the database, and these only seed it."""

    model_config = SettingsConfigDict(env_prefix="DISPATCHER_ZALO_")

    app_id: str | None = None
    secret_key: SecretStr | None = None
    access_token: SecretStr | None = None
    refresh_token: SecretStr | None = None
    api_url: http.HttpUrl = "https://openapi.zalo.me"
    oauth_url: http.HttpUrl = "https://oauth.zaloapp.com"


# -- time ---------------------------------------------------------------------------------------


def _local(now: datetime) -> datetime:
    if now.tzinfo is None:  # the service clock is aware UTC; be safe with a naive one
        now = now.replace(tzinfo=UTC)
    return now.astimezone(VIETNAM)


def is_night(now: datetime) -> bool:
    """Whether Zalo refuses promotion messages at ``now`` (22:00–06:00 Vietnam time)."""
    hour = _local(now).hour
    return hour >= NIGHT_START_HOUR or hour < NIGHT_END_HOUR


def seconds_until_local(now: datetime, hour: int) -> float:
    """Seconds from ``now`` to the next ``hour``:00 on Vietnam's wall clock (strictly after)."""
    local = _local(now)
    target = local.replace(hour=hour, minute=0, second=0, microsecond=0)
    if target <= local:
        target += timedelta(days=1)
    return target.timestamp() - local.timestamp()


# -- classification -----------------------------------------------------------------------------


def classify_error(code: int, reply: str, now: datetime) -> DeliveryError:
    """One place that turns a Zalo ``error`` code into our error classes (see the module table).

    Auth codes come back as :class:`AuthError`; :meth:`ZaloAdapter.send` refreshes the token on
    them before giving up.
    """
    detail = f"zalo {code}: {reply}"
    if code in RATE_CODES:
        return RateLimitedError(f"{detail} (API call limit)", code=code, reply=reply)
    if code in QUOTA_CODES:
        # Zalo publishes no reset time; quotas are daily, so the next Vietnamese midnight.
        # The OA's quota (-211) stops the channel; one user's receive quota (-218) only them.
        wait = seconds_until_local(now, 0)
        return RateLimitedError(
            f"{detail} (quota exhausted until midnight)",
            code=code,
            reply=reply,
            retry_after=wait,
            scope="channel" if code == -211 else "message",
        )
    if code == NIGHT_CODE:
        wait = seconds_until_local(now, NIGHT_END_HOUR)
        if _local(now).hour == NIGHT_END_HOUR:
            wait = CLOCK_SKEW_RETRY
        # Only promotions wait for the morning; transactional Zalo messages go on.
        return RateLimitedError(
            f"{detail} (promotion deferred to 06:00)",
            code=code,
            reply=reply,
            retry_after=wait,
            scope="message",
        )
    if code in AUTH_CODES:
        return AuthError(f"{detail} (access token refused)", code=code, reply=reply)
    if code in WINDOW_CODES:
        return PermanentError(
            f"{detail} (outside the consultation window; use another channel)",
            code=code,
            reply=reply,
        )
    dead = code in DEAD_CODES
    return PermanentError(detail, code=code, reply=reply, address_dead=dead)


def _fingerprint(token: str) -> str:
    """A short, non-reversible label for a token, so logs can tell two tokens apart."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


# -- the adapter --------------------------------------------------------------------------------


class ZaloAdapter(Adapter):
    name = "zalo"
    limits = ChannelLimits(max_body=2000)
    settings_model = ZaloSettings
    # Zalo publishes no numeric rate limit (CHANNELS.md). 20/s with a burst of 20 is a
    # conservative guess that still clears a province-sized campaign in hours; the app-wide
    # -32 answer remains the backstop (classified as rate limited). DISPATCHER_RATE_LIMITS
    # can raise or lower it without a release.
    rate_limits = (RateRule(per_second=20, burst=20),)

    def __init__(
        self,
        *,
        app_id: str,
        secret_key: str,
        access_token: str,
        refresh_token: str,
        context: AdapterContext,
        api_url: str = "https://openapi.zalo.me",
        oauth_url: str = "https://oauth.zaloapp.com",
        timeout: float = 15.0,
    ) -> None:
        self.app_id = app_id
        self.api_url = api_url.rstrip("/")
        self.oauth_url = oauth_url.rstrip("/")
        self.timeout = timeout
        self.context = context
        # Secrets live in underscored attributes and are never formatted into text.
        self._secret_key = secret_key
        self._seed_access = access_token
        self._seed_refresh = refresh_token
        self._client: httpx.AsyncClient | None = None
        self._refresh_lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"ZaloAdapter(app_id={self.app_id!r}, api_url={self.api_url!r})"

    @classmethod
    def create(cls, settings: ZaloSettings, context: AdapterContext) -> ZaloAdapter:
        values: dict[str, str] = {}
        missing: list[str] = []
        variables = settings.variables()
        for field in REQUIRED:
            value = getattr(settings, field)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if not value:
                missing.append(variables[field])
            else:
                values[field] = str(value)
        if missing:
            raise ValueError(f"the zalo channel needs {', '.join(missing)} to be set")
        return cls(
            app_id=values["app_id"],
            secret_key=values["secret_key"],
            access_token=values["access_token"],
            refresh_token=values["refresh_token"],
            context=context,
            api_url=settings.api_url,
            oauth_url=settings.oauth_url,
            timeout=settings.http_timeout,
        )

    async def open(self) -> None:
        if self._client is None:
            self._client = http.client(timeout=self.timeout)
        if self._refresh_lock is None:
            self._refresh_lock = asyncio.Lock()

    async def close(self) -> None:
        # The lock belongs to the event loop that used it; a later open() starts afresh.
        self._refresh_lock = None
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- tokens ---------------------------------------------------------------------------

    async def _stored_access(self) -> str:
        return await self.context.state.get(ACCESS_KEY) or self._seed_access

    async def _stored_refresh(self) -> str:
        return await self.context.state.get(REFRESH_KEY) or self._seed_refresh

    async def _fresh_access_token(self, failed: str) -> str:
        """An access token other than ``failed``: another worker's, or one we refresh now."""
        assert self._refresh_lock is not None
        async with self._refresh_lock:
            # Re-read first: another coroutine here, or another worker process sharing the
            # store, may already have rotated the pair; spending the refresh token again would
            # only invalidate theirs.
            current = await self._stored_access()
            if current != failed:
                return current
            refresh_token = await self._stored_refresh()
            try:
                access, refresh = await self._refresh(refresh_token)
            except AuthError:
                # Lost a race with another process that used the same refresh token first:
                # its new pair may have landed in the store meanwhile.
                current = await self._stored_access()
                if current != failed:
                    return current
                raise
            # The refresh token first: it is the one that cannot be recovered. A crash between
            # the two writes leaves a stale access token, which simply triggers one more refresh.
            await self.context.state.set(REFRESH_KEY, refresh)
            await self.context.state.set(ACCESS_KEY, access)
            log.info(
                "zalo_token_refreshed",
                old=_fingerprint(failed),
                new=_fingerprint(access),
            )
            return access

    async def _refresh(self, refresh_token: str) -> tuple[str, str]:
        """Spend the single-use refresh token for a new (access, refresh) pair."""
        assert self._client is not None
        # Unreachable, the OAuth server refused nothing: a TransientError.
        response = await http.request(
            self._client,
            "POST",
            f"{self.oauth_url}/v4/oa/access_token",
            provider="zalo token refresh",
            headers={"secret_key": self._secret_key},
            data={
                "app_id": self.app_id,
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
            },
        )
        if response.status_code >= 500:
            raise TransientError(
                f"zalo token refresh failed: HTTP {response.status_code}",
                code=response.status_code,
            )
        try:
            body = response.json()
        except ValueError:
            raise TransientError(
                f"zalo token refresh answered non-JSON (HTTP {response.status_code})",
                code=response.status_code,
            ) from None
        access = body.get("access_token") if isinstance(body, dict) else None
        refresh = body.get("refresh_token") if isinstance(body, dict) else None
        if isinstance(access, str) and access and isinstance(refresh, str) and refresh:
            return access, refresh
        code = body.get("error") if isinstance(body, dict) else None
        reason = ""
        if isinstance(body, dict):
            reason = str(body.get("error_reason") or body.get("error_name") or "")
        raise AuthError(
            f"zalo token refresh refused: {code} {reason}".strip(),
            code=code if isinstance(code, int | str) else response.status_code,
            reply=reason or None,
        )

    # -- sending --------------------------------------------------------------------------

    async def _post(self, message_type: str, token: str, message: Message) -> dict[str, Any]:
        """One send call; the decoded Zalo body, or a TransientError when there is none."""
        assert self._client is not None
        response = await http.request(
            self._client,
            "POST",
            f"{self.api_url}/v3.0/oa/message/{message_type}",
            provider="zalo",
            headers={"access_token": token},
            json={"recipient": {"user_id": message.address}, "message": {"text": message.body}},
        )
        try:
            body = response.json()
        except ValueError:
            body = None
        # Zalo's code is authoritative whatever the HTTP status; a 5xx without one (a gateway
        # page) or any answer without one is a blip.
        if isinstance(body, dict) and isinstance(body.get("error"), int):
            if body["error"] == 0 and response.status_code >= 400:
                raise TransientError(
                    f"zalo answered HTTP {response.status_code}", code=response.status_code
                )
            return body
        raise TransientError(
            f"zalo answered HTTP {response.status_code} without an error code",
            code=response.status_code,
            reply=response.text[:200] or None,
        )

    async def send(self, message: Message) -> SendResult:
        if self._client is None or self._refresh_lock is None:
            await self.open()
        message_type = MESSAGE_TYPES[message.kind]
        now = self.context.now()
        if message_type == "promotion" and is_night(now):
            # Checked here rather than left to -234: deferred, not failed, and no call spent.
            raise RateLimitedError(
                "promotion messages are not sent 22:00–06:00 Vietnam time; deferred to 06:00",
                retry_after=seconds_until_local(now, NIGHT_END_HOUR),
                scope="message",
            )
        token = await self._stored_access()
        body = await self._post(message_type, token, message)
        if body["error"] in AUTH_CODES:
            # Expired or revoked: rotate once and try once more; a second refusal is ours.
            token = await self._fresh_access_token(failed=token)
            body = await self._post(message_type, token, message)
        code: int = body["error"]
        if code != 0:
            raise classify_error(code, str(body.get("message") or ""), now)
        data = body.get("data")
        message_id = data.get("message_id") if isinstance(data, dict) else None
        return SendResult(
            provider_message_id=None if message_id is None else str(message_id),
            provider_code="0",
            provider_reply=str(body.get("message") or "Success"),
        )
