"""Zalo Official Account OpenAPI v3 emulator (with the OAuth v4 token refresh endpoint).

Speaks, on one port (the adapter points both its OpenAPI and OAuth base URLs here):

- ``POST /v3.0/oa/message/cs`` with header ``access_token`` and JSON
  ``{"recipient":{"user_id":".."},"message":{"text":".."}}`` (or ``message.attachment``): the
  consultation route, the only one that takes free text, and only inside the window (-230).
- ``POST /v3.0/oa/message/template``: a ZBS template Zalo approved, by user id:
  ``{"user_id":"..","template_id":"..","template_data":{..}}``. The template must be registered
  (:meth:`ZaloEmulator.register_template`): unknown id -109, not approved -131, not sendable
  by user id -249, data empty -111, a required parameter missing -1122, a value over its
  ``max_length`` (or under ``min_length``) -1121, a value not in its type's format -1124.
- ``POST /v3.0/oa/message/{transaction|promotion}``: the per-user services Zalo retired on
  2026-03-01; kept only as the SDK shaped them, a structured template
  (``attachment.type = "template"``, ``payload.template_type`` of :data:`TRANSACTION_TYPES` or
  ``promotion``, ``elements``) — free text there is refused with -201, as Zalo refuses it.
- Success: ``{"error":0,"message":"Success","data":{"message_id":"..","user_id":".."}}``.
  Every error is ``{"error":<negative int>,"message":".."}`` with **HTTP 200**, as Zalo does;
  only a scripted gateway failure (:func:`server_error`) answers a 5xx, and with HTML.
- ``POST /v4/oa/access_token`` with header ``secret_key`` and form
  ``app_id, grant_type=refresh_token, refresh_token`` → ``{"access_token":..,
  "refresh_token":..,"expires_in":"90000"}`` (``expires_in`` is a *string*, as Zalo sends it).
  Refresh tokens are single use: each refresh rotates it; the old one is then refused.

Enforced: the access token (-216 unknown, -220 expired: :meth:`ZaloEmulator.expire_access_token`,
or after n more calls: ``expire_token_after(n)``),
text ≤ 2000 characters (-210), followers only (-213), the consultation window for ``cs``
(-230), promotions (the ``promotion`` route, or a template tagged 3) never 22:00–06:00
Vietnam time (-234, judged on the injected clock), an app-wide call rate (-32), optional OA
and per-user quotas (-211, -218), an account-wide set-up fault for every call
(:meth:`ZaloEmulator.break_account`, e.g. -223). Every code of the contract can also be
scripted per user with ``script(user_id, error(-217))``.

Sources: the request shapes are those of zaloplatform/zalo-java-sdk (``src/test/java/v3/``)
and of the ZBS pages quoted in tests/channels/fixtures/zalo_contract.json; the error messages
are Zalo's as quoted by the "Zalo Platform API — Integration Specification" compilation
(§14.2, §14.3). Adapters must classify on the numeric ``error`` code, never on the text.
"""

from __future__ import annotations

import re
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
# The structured templates the retired /transaction route took (zalo-java-sdk and the
# compilation's §5.15): free text never.
TRANSACTION_TYPES = frozenset(
    {
        "transaction_billing",
        "transaction_order",
        "transaction_reward",
        "transaction_contract",
        "transaction_booking",
        "transaction_membership",
        "transaction_event",
        "transaction_transaction",
        "transaction_account",
        "transaction_internal",
        "transaction_partnership",
        "transaction_education",
        "transaction_rating",
    }
)
MAX_TEXT = 2000
ACCESS_TOKEN_TTL = timedelta(seconds=90000)  # ~25 h, as Zalo issues them
REFRESH_TOKEN_TTL = timedelta(days=90)

# Zalo's own messages (typos included) as the compilation's §14.2 / §14.3 quote them.
ERRORS: dict[int, str] = {
    -32: "Your application reached limit call api",
    -109: "Template ID invalid",
    -111: "Template data empty",
    -112: "Template data type not defined",
    -1121: "Parameter data exceeds max length",
    -1122: "Missing template parameter",
    -1124: "Parameter has invalid format",
    -124: "Access token invalid",
    -131: "ZNS template not approved",
    -201: "Parameters are invalid",
    -204: "Offical Account is disable",
    -205: "Offical Account is not exist",
    -209: "Not supported this api",
    -210: "Parameter exceeds allowable limit",
    -211: "Out of quota",
    -212: "App has not registed this api",
    -213: "User has not followed OA",
    -216: "Access token is invalid",
    -217: "User has blocked invitation from OA",
    -218: "Out of quota receive",
    -219: "App is removed or disabled",
    -220: "access_token is expired or removed",
    -221: "The OA needs to be verified to use this feature",
    -223: "Official Account has not authorized this API",
    -224: "The OA needs to upgrade OA Tier Package",
    -227: "User is banned or has been inactive for more than 45 days",
    -230: "User has not interacted with the OA in the past 7 days",
    -232: "User has not interacted, or last interaction expired",
    -233: "message type is invalid or not support",
    -234: "This message cannot be sent at night (10:00PM - 6:00AM)",
    -235: "This API does not support this type of OA",
    -240: "MessageV2 API has been shut down, please switch to MessageV3",
    -242: "Invalid appsecret_proof provided in the API argument",
    -244: "User has restricted this message type from your OA",
    -249: "Template does not support send via UID",
    -320: "Your app needs to connect with Zalo Cloud Account",
    -321: "Zalo Cloud Account out of money or unable to be charged",
}


# -- registered templates (ZBS / ZNS) ------------------------------------------------------------

_FORMATS: dict[str, re.Pattern[str]] = {
    "NUMBER": re.compile(r"^[0-9][0-9.,]*$"),
    "DATE": re.compile(
        r"^(\d{1,2}:\d{2}(:\d{2})? )?\d{1,2}/\d{1,2}/\d{4}$|^\d{1,2}:\d{2}(:\d{2})?$"
    ),
}


@dataclass(frozen=True)
class TemplateParam:
    """One parameter of a registered template, as Zalo's template detail lists it
    (``listParams``: name, require, type, maxLength, minLength, acceptNull)."""

    name: str
    max_length: int = 30
    type: str = "STRING"  # STRING, NUMBER or DATE
    min_length: int = 0
    require: bool = True
    accept_null: bool = False


@dataclass(frozen=True)
class Template:
    """A template the OA registered with Zalo. ``tag``: 1 transaction, 2 customer care,
    3 promotion; ``status`` ENABLE once Zalo approved it; ``uid``: sendable by user id."""

    template_id: str
    params: tuple[TemplateParam, ...]
    tag: int = 1
    status: str = "ENABLE"
    uid: bool = True


def template_data_error(template: Template, data: Any) -> Reply | None:
    """What Zalo answers when ``data`` breaks ``template``'s parameters, or None."""
    if not isinstance(data, dict) or not data:
        return error(-111)
    for param in template.params:
        value = data.get(param.name)
        if value is None or value == "":
            if param.require and not param.accept_null:
                return error(-1122, f"Missing template parameter: {param.name}")
            continue
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            return error(-1124, f"Parameter has invalid format: {param.name}")
        text = str(value)
        if len(text) > param.max_length or len(text) < param.min_length:
            return error(-1121, f"Parameter data exceeds max length: {param.name}")
        pattern = _FORMATS.get(param.type)
        if pattern is not None and not pattern.match(text):
            return error(-1124, f"Parameter has invalid format: {param.name}")
    return None


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


def _structured_template_error(kind: str, message: dict[str, Any]) -> str | None:
    """Why ``message`` is not the structured template the retired ``kind`` route took."""
    if "text" in message:
        return f"message.text is not accepted by the {kind} API; send a template"
    attachment = message.get("attachment")
    payload = attachment.get("payload") if isinstance(attachment, dict) else None
    if not isinstance(attachment, dict) or attachment.get("type") != "template":
        return "message.attachment is invalid!"
    if not isinstance(payload, dict):
        return "message.attachment.payload is invalid!"
    allowed = TRANSACTION_TYPES if kind == "transaction" else {"promotion"}
    if payload.get("template_type") not in allowed:
        return "template_type is invalid!"
    elements = payload.get("elements")
    if not isinstance(elements, list) or not elements:
        return "elements is invalid!"
    return None


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
        templates: Iterable[Template] = (),
        any_template: bool = False,
        clock: Clock | None = None,
        monotonic: Monotonic | None = None,
        host: str = LOCALHOST,
        port: int = 0,
    ) -> None:
        """``followers``: None means every user follows the OA; otherwise only those listed.

        ``api_rate`` (calls/s, None disables): Zalo publishes no number, so the default is a
        guess; tests set small values. ``oa_quota``: transaction + promotion messages the OA may
        still send; ``user_quota``: promotion messages each user may still receive (None:
        unlimited; :meth:`reset_quotas` starts a new period). ``templates``: those the OA
        registered and Zalo approved (more with :meth:`register_template`); ``any_template``
        (for ``dispatcher dev`` and benchmarks only) takes an unknown id as an approved template
        whose parameters are those sent, each up to 200 characters.
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
        self._templates: dict[str, Template] = {t.template_id: t for t in templates}
        self._account_fault: int | None = None
        self.any_template = any_template
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
            self._restricted[user_id] = set(
                message_types or ("transaction", "promotion", "template")
            )

    def restore(self, user_id: str) -> None:
        """Undo every per-user refusal and script for ``user_id``."""
        with self._lock:
            self._flags.pop(user_id, None)
            self._restricted.pop(user_id, None)
            self._window_closed.pop(user_id, None)
        self.follow(user_id)
        self.reset_scripts(user_id)

    def register_template(self, template: Template) -> None:
        with self._lock:
            self._templates[template.template_id] = template

    def template(self, template_id: str, data: Any = None) -> Template | None:
        with self._lock:
            found = self._templates.get(template_id)
        if found is None and self.any_template and isinstance(data, dict) and data:
            return Template(template_id, tuple(TemplateParam(str(k), 200) for k in data))
        return found

    def break_account(self, code: int = -223) -> None:
        """An app / OA / permission set-up fault: every message call answers ``code``."""
        with self._lock:
            self._account_fault = code

    def repair_account(self) -> None:
        with self._lock:
            self._account_fault = None

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
        if kind not in (*MESSAGE_TYPES, "template"):
            return error(-233).to_response()
        with self._lock:
            fault = self._account_fault
        if fault is not None:
            return error(fault).to_response()
        try:
            body = parse_body(request.headers.get("content-type"), await request.body())
        except BodyError:
            return error(-201, "Body is not valid JSON").to_response()
        if kind == "template":
            return await self._template_message(body)
        recipient, message = body.get("recipient"), body.get("message")
        user_id = recipient.get("user_id") if isinstance(recipient, dict) else None
        if not isinstance(user_id, str | int) or str(user_id) == "":
            return error(-201, "recipient.user_id is invalid!").to_response()
        user_id = str(user_id)
        if not isinstance(message, dict):
            return error(-201, "message is invalid!").to_response()
        text, attachment = message.get("text"), message.get("attachment")
        if kind != "cs":
            # The retired per-user routes took a structured template only, never text.
            shape = _structured_template_error(kind, message)
            if shape is not None:
                return error(-201, shape).to_response()
            text = None
        elif text is None and attachment is None:
            return error(-201, "message.text is invalid!").to_response()
        if text is not None and (not isinstance(text, str) or not text.strip()):
            return error(-201, "message.text is invalid!").to_response()
        if isinstance(text, str) and len(text) > MAX_TEXT:
            return error(-210, f"message.text exceeds {MAX_TEXT} characters").to_response()
        return await self._accept(user_id, kind, text, body)

    async def _template_message(self, body: dict[str, Any]) -> Response:
        """``/v3.0/oa/message/template``: a registered, approved template by user id."""
        user_id = body.get("user_id")
        if not isinstance(user_id, str | int) or str(user_id) == "":
            return error(-201, "user_id is invalid!").to_response()
        template_id = body.get("template_id")
        if not isinstance(template_id, str | int) or str(template_id) == "":
            return error(-109).to_response()
        if "message" in body:
            return error(-201, "message is not accepted by the template API").to_response()
        template = self.template(str(template_id), body.get("template_data"))
        if template is None:
            return error(-109).to_response()
        if template.status != "ENABLE":
            return error(-131).to_response()
        if not template.uid:
            return error(-249).to_response()
        broken = template_data_error(template, body.get("template_data"))
        if broken is not None:
            return broken.to_response()
        kind = "promotion" if template.tag == 3 else "template"
        return await self._accept(str(user_id), kind, None, body, tag=str(template.tag))

    async def _accept(
        self,
        user_id: str,
        kind: str,
        text: str | None,
        body: dict[str, Any],
        tag: str | None = None,
    ) -> Response:
        scripted = await self.next_outcome(user_id)
        if scripted is not None:
            return scripted.to_response()
        refusal = self._refusal(user_id, kind)
        if refusal is not None:
            return error(refusal).to_response()
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
                kind="template" if tag is not None else kind,
                message_id=message_id,
                at=self.clock(),
                tag=tag,
                payload=body,
            )
        )
        data: dict[str, Any] = {"message_id": message_id, "user_id": user_id}
        if tag is not None:
            # The template route also says when and what quota paid for it (§5.4).
            with self._lock:
                remain = None if self._oa_quota is None else self._oa_quota - self._oa_used
            data["sent_time"] = str(int(self.clock().timestamp() * 1000))
            data["quota"] = {"quota_type": "purchase_quota", "remain": remain}
        return Reply(200, {"error": 0, "message": "Success", "data": data}).to_response()

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
