"""Zalo Official Account OpenAPI v3 emulator (with the OAuth v4 token refresh endpoint).

Speaks, on one port (the adapter points both its OpenAPI and OAuth base URLs here):

- ``POST /v3.0/oa/message/{cs|transaction|promotion}`` with header ``access_token`` and JSON
  ``{"recipient":{"user_id":".."},"message":{"text":".."}}`` (or ``message.attachment``) →
  ``{"error":0,"message":"Success","data":{"message_id":"..","user_id":".."}}``.
  Every error is ``{"error":<negative int>,"message":".."}`` with **HTTP 200**, as Zalo does;
  only a scripted gateway failure (:func:`server_error`) answers a 5xx, and with HTML.
- ``POST /v4/oa/access_token`` with header ``secret_key`` and form
  ``app_id, grant_type=refresh_token, refresh_token`` → ``{"access_token":..,
  "refresh_token":..,"expires_in":"90000"}`` (``expires_in`` is a *string*, as Zalo sends it).
  Refresh tokens are single use: each refresh rotates it; the old one is then refused.

Enforced: the access token (-216 unknown, -220 expired: :meth:`ZaloEmulator.expire_access_token`,
or after n more calls: ``expire_token_after(n)``),
text ≤ 2000 characters (-210), followers only (-213), the consultation window for ``cs``
(-230), ``promotion`` never 22:00–06:00 Vietnam time (-234, judged on the injected clock),
an app-wide call rate (-32), optional OA and per-user quotas (-211, -218). Every code of the
contract can also be scripted per user with ``script(user_id, error(-217))``.

Zalo's official docs were not reachable when the contract was written; the message texts and
the OAuth error codes (-14xxx) here are the best available approximation. Adapters must
classify on the numeric ``error`` code, never on the text.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from .base import LOCALHOST, BodyError, Clock, Delivery, Emulator, Monotonic, Reply, parse_body

VIETNAM = timezone(timedelta(hours=7), "ICT")  # Vietnam keeps UTC+7 all year, no DST
MESSAGE_TYPES = ("cs", "transaction", "promotion")
MAX_TEXT = 2000
ACCESS_TOKEN_TTL = timedelta(seconds=90000)  # ~25 h, as Zalo issues them
REFRESH_TOKEN_TTL = timedelta(days=90)

ERRORS: dict[int, str] = {
    -32: "The application has reached the limit of API calls",
    -124: "Access token is invalid",
    -201: "Parameters are invalid",
    -210: "Parameter exceeds the allowed limit",
    -211: "The Official Account has run out of quota",
    -213: "User has not followed the Official Account",
    -216: "Access token is invalid",
    -217: "User has blocked messages from the Official Account",
    -218: "User has reached the limit of messages they can receive",
    -220: "Access token has expired or is no longer valid",
    -227: "User is banned or has been inactive for too long",
    -230: "User has not interacted with the Official Account in the last 7 days",
    -232: "User has not interacted with the Official Account recently (consultation window)",
    -233: "Message type is not supported",
    -234: "Promotion messages cannot be sent at night (22:00 - 06:00)",
    -244: "User has restricted this type of message from the Official Account",
}

# -- canned answers ----------------------------------------------------------------------------


def error(code: int, message: str | None = None) -> Reply:
    """A Zalo API error: always HTTP 200, the code in the body."""
    return Reply(200, {"error": code, "message": message or ERRORS.get(code, "Unknown error")})


def server_error(status: int = 502) -> Reply:
    """The API gateway failing (transient): a 5xx with an HTML body, not Zalo JSON."""
    html = f"<html><head><title>{status}</title></head><body><h1>{status}</h1></body></html>"
    return Reply(status, html, media_type="text/html")


def _oauth_error(code: int, name: str, reason: str) -> Reply:
    return Reply(
        200,
        {
            "error": code,
            "error_name": name,
            "error_reason": reason,
            "ref_doc": "https://developers.zalo.me/docs/official-account/bat-dau/xac-thuc-va-uy-quyen-cho-ung-dung-new",
            "error_description": reason,
        },
    )


@dataclass
class _Token:
    value: str
    expires_at: datetime
    used: bool = False


def _new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(72)


class ZaloEmulator(Emulator):
    """One Zalo Official Account behind one app."""

    def __init__(
        self,
        *,
        app_id: str = "3456789012345678901",
        secret_key: str = "zalo-app-secret-key",
        access_token: str | None = None,
        refresh_token: str | None = None,
        access_token_ttl: timedelta = ACCESS_TOKEN_TTL,
        refresh_token_ttl: timedelta = REFRESH_TOKEN_TTL,
        followers: Iterable[str] | None = None,
        api_rate: float | None = 100.0,
        api_burst: float | None = None,
        oa_quota: int | None = None,
        user_quota: int | None = None,
        clock: Clock | None = None,
        monotonic: Monotonic | None = None,
        host: str = LOCALHOST,
        port: int = 0,
    ) -> None:
        """``followers``: None means every user follows the OA; otherwise only those listed.

        ``api_rate`` (calls/s, None disables): Zalo publishes no number, so the default is a
        guess; tests set small values. ``oa_quota``: transaction + promotion messages the OA may
        still send; ``user_quota``: promotion messages each user may still receive (None:
        unlimited; :meth:`reset_quotas` starts a new period).
        """
        super().__init__(clock=clock, monotonic=monotonic, host=host, port=port)
        self.app_id = app_id
        self.secret_key = secret_key
        self.access_token_ttl = access_token_ttl
        self.refresh_token_ttl = refresh_token_ttl
        now = self.clock()
        first_access = access_token or _new_token("zat_")
        first_refresh = refresh_token or _new_token("zrt_")
        self._access: dict[str, _Token] = {
            first_access: _Token(first_access, now + access_token_ttl)
        }
        self._refresh: dict[str, _Token] = {
            first_refresh: _Token(first_refresh, now + refresh_token_ttl)
        }
        self._current_access = first_access
        self._current_refresh = first_refresh
        self._followers = None if followers is None else set(followers)
        self._unfollowed: set[str] = set()
        self._window_closed: dict[str, int] = {}
        self._flags: dict[str, int] = {}  # user → -217 / -227, a standing refusal
        self._restricted: dict[str, set[str]] = {}
        self._oa_quota = oa_quota
        self._user_quota = user_quota
        self._oa_used = 0
        self._user_used: dict[str, int] = {}
        self.refresh_count = 0
        self.limits.set_rule("api", api_rate, api_burst)

    # -- credentials -------------------------------------------------------------------------

    @property
    def access_token(self) -> str:
        """The newest access token issued."""
        with self._lock:
            return self._current_access

    @property
    def refresh_token(self) -> str:
        """The refresh token that will be accepted next (single use)."""
        with self._lock:
            return self._current_refresh

    def expire_access_token(self, token: str | None = None) -> None:
        """Expire a token now (default: every access token), so the next call answers -220."""
        with self._lock:
            past = self.clock() - timedelta(seconds=1)
            for value, record in self._access.items():
                if token is None or value == token:
                    record.expires_at = past

    def _expire_credential(self, token: str | None) -> None:
        self.expire_access_token(token)  # -220; the refresh token still gets a new one

    def expire_refresh_token(self) -> None:
        with self._lock:
            self._refresh[self._current_refresh].expires_at = self.clock() - timedelta(seconds=1)

    # -- per-user state ----------------------------------------------------------------------

    def follow(self, user_id: str) -> None:
        with self._lock:
            self._unfollowed.discard(user_id)
            if self._followers is not None:
                self._followers.add(user_id)

    def unfollow(self, user_id: str) -> None:
        """The user no longer follows the OA: every message answers -213."""
        with self._lock:
            self._unfollowed.add(user_id)

    def close_window(self, user_id: str, code: int = -230) -> None:
        """The user has not interacted lately: ``cs`` answers -230 (or -232)."""
        with self._lock:
            self._window_closed[user_id] = code

    def open_window(self, user_id: str) -> None:
        with self._lock:
            self._window_closed.pop(user_id, None)

    def block_oa(self, user_id: str) -> None:
        """The user blocked the OA: -217 for every message."""
        with self._lock:
            self._flags[user_id] = -217

    def ban(self, user_id: str) -> None:
        """The user is banned or inactive: -227 for every message."""
        with self._lock:
            self._flags[user_id] = -227

    def restrict(self, user_id: str, *message_types: str) -> None:
        """The user refuses these message types (default: all but ``cs``): -244."""
        with self._lock:
            self._restricted[user_id] = set(message_types or ("transaction", "promotion"))

    def restore(self, user_id: str) -> None:
        """Undo every per-user refusal and script for ``user_id``."""
        with self._lock:
            self._flags.pop(user_id, None)
            self._restricted.pop(user_id, None)
            self._window_closed.pop(user_id, None)
        self.follow(user_id)
        self.reset_scripts(user_id)

    def reset_quotas(self) -> None:
        with self._lock:
            self._oa_used = 0
            self._user_used.clear()

    # -- HTTP ------------------------------------------------------------------------------

    def build_app(self) -> ASGIApp:
        return Starlette(
            routes=[
                Route("/v3.0/oa/message/{kind}", self._message, methods=["POST"]),
                Route("/v4/oa/access_token", self._refresh_endpoint, methods=["POST"]),
            ]
        )

    def _token_error(self, token: str | None) -> Reply | None:
        with self._lock:
            record = self._access.get(token or "")
            if record is None:
                return error(-216)
            if record.expires_at <= self.clock():
                return error(-220)
            self._spend_token_call(record.value)
        return None

    async def _message(self, request: Request) -> Response:
        denied = self._token_error(request.headers.get("access_token"))
        if denied is not None:
            return denied.to_response()
        kind = request.path_params["kind"]
        if kind not in MESSAGE_TYPES:
            return error(-233).to_response()
        try:
            body = parse_body(request.headers.get("content-type"), await request.body())
        except BodyError:
            return error(-201, "Body is not valid JSON").to_response()
        recipient, message = body.get("recipient"), body.get("message")
        user_id = recipient.get("user_id") if isinstance(recipient, dict) else None
        if not isinstance(user_id, str | int) or str(user_id) == "":
            return error(-201, "recipient.user_id is required").to_response()
        user_id = str(user_id)
        if not isinstance(message, dict):
            return error(-201, "message is required").to_response()
        text, attachment = message.get("text"), message.get("attachment")
        if text is None and attachment is None:
            return error(-201, "message.text or message.attachment is required").to_response()
        if text is not None and (not isinstance(text, str) or not text.strip()):
            return error(-201, "message.text must be a non-empty string").to_response()

        scripted = await self.next_outcome(user_id)
        if scripted is not None:
            return scripted.to_response()
        refusal = self._refusal(user_id, kind)
        if refusal is not None:
            return error(refusal).to_response()
        if isinstance(text, str) and len(text) > MAX_TEXT:
            return error(-210, f"message.text exceeds {MAX_TEXT} characters").to_response()
        if self.limits.acquire(("api", "")) is not None:
            return error(-32).to_response()
        quota = self._take_quota(user_id, kind)
        if quota is not None:
            return error(quota).to_response()

        message_id = secrets.token_hex(16)
        self.deliver(
            Delivery(
                address=user_id,
                text=text,
                kind=kind,
                message_id=message_id,
                at=self.clock(),
                payload=body,
            )
        )
        return Reply(
            200,
            {
                "error": 0,
                "message": "Success",
                "data": {"message_id": message_id, "user_id": user_id},
            },
        ).to_response()

    def _refusal(self, user_id: str, kind: str) -> int | None:
        """The standing reason this user cannot get this message now, if any."""
        with self._lock:
            if user_id in self._flags:
                return self._flags[user_id]
            following = user_id not in self._unfollowed and (
                self._followers is None or user_id in self._followers
            )
            if not following:
                return -213
            if kind in self._restricted.get(user_id, set()):
                return -244
            if kind == "cs" and user_id in self._window_closed:
                return self._window_closed[user_id]
        if kind == "promotion":
            hour = self.clock().astimezone(VIETNAM).hour
            if hour >= 22 or hour < 6:
                return -234
        return None

    def _take_quota(self, user_id: str, kind: str) -> int | None:
        if kind == "cs":
            return None  # replies in the consultation window are free
        with self._lock:
            if self._oa_quota is not None and self._oa_used >= self._oa_quota:
                return -211
            used = self._user_used.get(user_id, 0)
            if kind == "promotion" and self._user_quota is not None and used >= self._user_quota:
                return -218
            self._oa_used += 1
            if kind == "promotion":
                self._user_used[user_id] = used + 1
        return None

    async def _refresh_endpoint(self, request: Request) -> Response:
        try:
            form = parse_body(request.headers.get("content-type"), await request.body())
        except BodyError:
            return _oauth_error(-14001, "Invalid parameter", "Body is malformed").to_response()
        if request.headers.get("secret_key") != self.secret_key:
            return _oauth_error(
                -14003, "Invalid parameter", "Invalid secret_key for this app_id"
            ).to_response()
        if str(form.get("app_id", "")) != self.app_id:
            return _oauth_error(-14002, "Invalid parameter", "Invalid app_id").to_response()
        if form.get("grant_type") != "refresh_token":
            return _oauth_error(-14004, "Invalid parameter", "Invalid grant_type").to_response()
        presented = str(form.get("refresh_token", ""))
        now = self.clock()
        with self._lock:
            record = self._refresh.get(presented)
            if record is None or record.used:
                return _oauth_error(
                    -14014, "Invalid refresh_token", "Refresh token is invalid or already used"
                ).to_response()
            if record.expires_at <= now:
                return _oauth_error(
                    -14020, "Expired refresh_token", "Refresh token has expired"
                ).to_response()
            record.used = True  # single use: the old refresh token dies here
            access, refresh = _new_token("zat_"), _new_token("zrt_")
            self._access[access] = _Token(access, now + self.access_token_ttl)
            self._refresh[refresh] = _Token(refresh, now + self.refresh_token_ttl)
            self._current_access, self._current_refresh = access, refresh
            self.refresh_count += 1
        body: dict[str, Any] = {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": str(int(self.access_token_ttl.total_seconds())),
        }
        return Reply(200, body).to_response()
