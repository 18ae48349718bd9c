"""Zalo Notification Service (ZNS, since 2026 "ZBS Template Message" by phone): a template Zalo
approved, sent to the Zalo account behind a Vietnamese mobile number, follower or not.

    POST https://business.openapi.zalo.me/message/template      header access_token
    {"phone":"84987654321","template_id":"..","template_data":{..},"tracking_id":".."}
    → {"error":0,"message":"Success","data":{"msg_id":"..","sent_time":"<ms>",
       "quota":{"dailyQuota":"500","remainingQuota":"499"}}}

(the compilation's §7.3, quoting Zalo's ZBS page; tests/channels/fixtures/zalo_contract.json).
ZNS uses **the Official Account's own access token** (§7.1: "same token as OA API"), so this
adapter reads the Zalo OA credentials (``DISPATCHER_ZALO_APP_ID``, ``_SECRET_KEY``,
``_ACCESS_TOKEN``, ``_REFRESH_TOKEN``) and shares the rotating pair the ``zalo`` channel keeps
in the state store: two chains for one grant would spend each other's single-use refresh
tokens. Its own settings: ``DISPATCHER_ZNS_API_URL`` and ``DISPATCHER_ZNS_DEVELOPMENT``
(``mode: development``: only the app's or OA's administrators receive, free of charge).

What is sent: the ``zns`` variant of the template, a Zalo template description exactly as for
the ``zalo`` channel (:func:`channels.zalo.parse_template`); free text cannot go by ZNS. The
address is the recipient's phone, normalised to ``84…`` (:func:`normalise_phone`); one that is
not a Vietnamese mobile number is refused before any call, and the address marked dead.
``tracking_id`` is ``d<delivery id>`` (Zalo echoes it in the delivery webhook; at most 48
characters), and Zalo's ``msg_id`` is kept as the provider's message id.

Quota. Every answer carries the OA's daily quota and what remains of it; both are kept in the
state store (``zns:quota``, with the Vietnamese date). When nothing remains, later sends that
day are deferred until midnight, Vietnam time, without calling Zalo; -144 says the same.

Errors (Zalo's ZNS table, https://zalo.cloud/zns/guidelines/handle-error-code, and the
compilation's §14.3), by :data:`ERRORS`:

    codes                                        meaning                       raised
    -124 (then once more)                        access token invalid          refresh once,
                                                                               then AuthError
    -101 -102 -103 -104 -105 -115 -120 -125      app / OA / billing /          AuthError:
    -135 -1351 -136 -137 -138 -1381 -1241        permission set-up, ZNS        account-wide,
                                                 balance                       channel pauses
    -144                                         OA's daily quota used up      RateLimited,
                                                                               channel, midnight
    -147 -1441 -1471 -1472                       template / promotion limits   RateLimited,
                                                                               message, midnight
    -133                                         not at night                  RateLimited,
                                                                               message, 06:00
    -108 -118                                    phone invalid / no Zalo       Permanent,
                                                 account on it                 address dead
    -114 -119 -110 -139 -140 -141 -213           cannot receive now, refused   Permanent,
                                                 ZNS, old app, not a follower  address kept
    -109 -111 -112 -1121 -1122 -1124 -113        template or its data          Permanent
    -117 -131 -132 -146 -116
    -100                                         unknown error, retry later    Transient
    any other code                                                             Permanent
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from channels import http
from channels.base import (
    AdapterContext,
    AuthError,
    ChannelLimits,
    DeliveryError,
    Message,
    PermanentError,
    RateLimitedError,
    RateRule,
    SendResult,
    TransientError,
)
from channels.zalo import (
    NIGHT_END_HOUR,
    REQUIRED,
    TemplateFormatError,
    ZaloAdapter,
    _local,
    is_template,
    parse_template,
    seconds_until_local,
    template_problems,
)

ROUTE = "/message/template"
QUOTA_KEY = "zns:quota"
MAX_TRACKING_ID = 48


@dataclass(frozen=True, slots=True)
class Rule:
    kind: str  # "account", "daily", "limit", "night", "dead", "refused", "template", "retry"
    meaning: str


def _rules(kind: str, codes: dict[int, str]) -> dict[int, Rule]:
    return {code: Rule(kind, meaning) for code, meaning in codes.items()}


ERRORS: dict[int, Rule] = {
    **_rules(
        "account",
        {
            -101: "application invalid",
            -102: "application does not exist",
            -103: "application not activated",
            -104: "app secret key invalid",
            -105: "application not linked to any Official Account",
            -115: "out of ZNS balance",
            -120: "the Official Account has no permission for this feature",
            -125: "Official Account id invalid",
            -135: "the Official Account may not send ZNS (verification and a paid plan)",
            -1351: "Zalo blocked the Official Account from sending ZNS",
            -136: "a Zalo Cloud Account connection is required",
            -137: "the Zalo Cloud Account could not be charged",
            -138: "the app has no permission for this feature",
            -1381: "the OA has not granted the Zalo Cloud Account extension permission",
            -1241: "appsecret_proof invalid",
        },
    ),
    **_rules("daily", {-144: "the OA's daily ZNS quota is used up"}),
    **_rules(
        "limit",
        {
            -147: "the template's daily limit is reached",
            -1441: "the OA's monthly promotion quota is used up",
            -1471: "the monthly follow-up limit for this user is reached",
            -1472: "the daily promotion limit for this user is reached",
        },
    ),
    **_rules("night", {-133: "ZNS cannot be sent at night (22:00-06:00)"}),
    **_rules(
        "dead",
        {
            -108: "phone number invalid",
            -118: "no Zalo account for this phone, or it is deactivated",
        },
    ),
    **_rules(
        "refused",
        {
            -110: "the user's Zalo version is too old",
            -114: "the user cannot receive ZNS (status, opt-out, old app)",
            -119: "the account cannot receive messages",
            -139: "the user refused this type of ZNS",
            -140: "the user is not eligible for this ZNS type",
            -141: "the user refused ZNS from this OA",
            -213: "not a follower (ZNS needs none: the address stays)",
        },
    ),
    **_rules(
        "template",
        {
            -109: "template id invalid",
            -111: "template data empty",
            -112: "template data type not defined",
            -1121: "a parameter exceeds its maximum length",
            -1122: "a template parameter is missing",
            -1124: "a parameter has an invalid format",
            -113: "button invalid",
            -116: "text invalid",
            -117: "no permission for this template",
            -131: "template not approved",
            -132: "parameter invalid",
            -146: "template disabled for low quality",
        },
    ),
    **_rules("retry", {-100: "unknown error, retry later"}),
}

_DIGITS = re.compile(r"[\s.()\-]")
# A Vietnamese mobile number: 84, then 9 digits starting 3, 5, 7, 8 or 9.
_MOBILE = re.compile(r"^84[35789][0-9]{8}$")


def normalise_phone(raw: str) -> str | None:
    """``raw`` as Zalo's ``84…`` form (``0912 345 678``, ``+84912345678``, ``912345678``), or
    None when it is not a Vietnamese mobile number."""
    digits = _DIGITS.sub("", raw.strip())
    if digits.startswith("+"):
        digits = digits[1:]
    if digits.startswith("0"):
        digits = "84" + digits[1:]
    elif not digits.startswith("84") and len(digits) == 9:
        digits = "84" + digits
    return digits if _MOBILE.match(digits) else None


def classify_error(code: int, reply: str, now: datetime) -> DeliveryError:
    """One place that turns a ZNS ``error`` code into our classes (see :data:`ERRORS`)."""
    rule = ERRORS.get(code)
    detail = f"zns {code}: {reply}"
    if rule is None:
        return PermanentError(detail, code=code, reply=reply)
    if rule.kind == "account":
        return AuthError(
            f"{detail} (account-wide: {rule.meaning}; the channel waits until an operator "
            "fixes the Zalo set-up)",
            code=code,
            reply=reply,
        )
    if rule.kind in ("daily", "limit"):
        return RateLimitedError(
            f"{detail} ({rule.meaning}; until midnight)",
            code=code,
            reply=reply,
            retry_after=seconds_until_local(now, 0),
            scope="channel" if rule.kind == "daily" else "message",
        )
    if rule.kind == "night":
        return RateLimitedError(
            f"{detail} (deferred to 06:00)",
            code=code,
            reply=reply,
            retry_after=seconds_until_local(now, NIGHT_END_HOUR),
            scope="message",
        )
    if rule.kind == "retry":
        return TransientError(f"{detail} ({rule.meaning})", code=code, reply=reply)
    return PermanentError(
        f"{detail} ({rule.meaning})", code=code, reply=reply, address_dead=rule.kind == "dead"
    )


def zns_body_problems(body: str) -> list[str]:
    """A ``zns`` variant must be a Zalo template description (ZNS carries no free text)."""
    if not is_template(body):
        return ["a zns variant must be a Zalo template description starting 'template_id: ...'"]
    return template_problems(body)


class ZnsSettings(http.HttpSettings):
    """``DISPATCHER_ZNS_*``; the credentials are the Official Account's (``DISPATCHER_ZALO_*``)."""

    model_config = SettingsConfigDict(env_prefix="DISPATCHER_ZNS_")

    app_id: str | None = Field(default=None, validation_alias="DISPATCHER_ZALO_APP_ID")
    secret_key: SecretStr | None = Field(
        default=None, validation_alias="DISPATCHER_ZALO_SECRET_KEY"
    )
    access_token: SecretStr | None = Field(
        default=None, validation_alias="DISPATCHER_ZALO_ACCESS_TOKEN"
    )
    refresh_token: SecretStr | None = Field(
        default=None, validation_alias="DISPATCHER_ZALO_REFRESH_TOKEN"
    )
    oauth_url: http.HttpUrl = Field(
        default="https://oauth.zaloapp.com", validation_alias="DISPATCHER_ZALO_OAUTH_URL"
    )
    api_url: http.HttpUrl = "https://business.openapi.zalo.me"
    development: bool = False


class ZnsAdapter(ZaloAdapter):
    name = "zns"
    # The body is a template description; Zalo's template limits are checked on its values.
    limits = ChannelLimits(max_body=4000)
    settings_model = ZnsSettings  # type: ignore[assignment]  # the OA credentials, own URL
    # No per-second figure is published for ZNS (the daily quota is the real limit); the same
    # conservative 20/s as the OA API, overridable with DISPATCHER_RATE_LIMITS.
    rate_limits = (RateRule(per_second=20, burst=20),)
    body_problems = staticmethod(zns_body_problems)

    def __init__(self, *, development: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.development = development

    def __repr__(self) -> str:
        return f"ZnsAdapter(app_id={self.app_id!r}, api_url={self.api_url!r})"

    @classmethod
    def create(cls, settings: ZnsSettings, context: AdapterContext) -> ZnsAdapter:  # type: ignore[override]
        values = settings.required(REQUIRED, "zns")
        return cls(
            app_id=values["app_id"],
            secret_key=values["secret_key"],
            access_token=values["access_token"],
            refresh_token=values["refresh_token"],
            context=context,
            api_url=settings.api_url,
            oauth_url=settings.oauth_url,
            timeout=settings.http_timeout,
            development=settings.development,
        )

    def request_for(self, message: Message) -> tuple[str, dict[str, Any]]:
        phone = normalise_phone(message.address)
        if phone is None:
            raise PermanentError(
                "zns: the address is not a Vietnamese mobile number", address_dead=True
            )
        if not is_template(message.body):
            raise PermanentError(
                "zns sends only a template Zalo approved; the zns variant must be a Zalo "
                "template description (template_id: ...)"
            )
        try:
            template = parse_template(message.body)
        except TemplateFormatError as exc:
            raise PermanentError(f"zns template description: {exc}") from None
        payload: dict[str, Any] = {
            "phone": phone,
            "template_id": template.template_id,
            "template_data": template.data(),
            "tracking_id": f"d{message.delivery_id}"[:MAX_TRACKING_ID],
        }
        if self.development:
            payload["mode"] = "development"
        return ROUTE, payload

    async def hold_back(self, message: Message, route: str, now: datetime) -> None:
        quota = await self.quota()
        if quota is not None and quota["remaining"] <= 0 and quota["day"] == _day(now):
            raise RateLimitedError(
                f"zns daily quota of {quota['daily']} is used up; deferred to midnight",
                retry_after=seconds_until_local(now, 0),
                scope="channel",
            )

    def classify(self, code: int, reply: str, now: datetime) -> DeliveryError:
        return classify_error(code, reply, now)

    async def quota(self) -> dict[str, Any] | None:
        """The daily quota and what remained of it after the last send, as Zalo said."""
        stored = await self.context.state.get(QUOTA_KEY)
        if not stored:
            return None
        try:
            found = json.loads(stored)
        except ValueError:
            return None
        return found if isinstance(found, dict) else None

    async def accepted(self, body: dict[str, Any], now: datetime) -> SendResult:
        data = body.get("data")
        data = data if isinstance(data, dict) else {}
        quota = data.get("quota")
        if isinstance(quota, dict):
            try:
                daily, remaining = int(quota["dailyQuota"]), int(quota["remainingQuota"])
            except (KeyError, TypeError, ValueError):
                pass
            else:
                await self.context.state.set(
                    QUOTA_KEY,
                    json.dumps({"daily": daily, "remaining": remaining, "day": _day(now)}),
                )
        msg_id = data.get("msg_id")
        return SendResult(
            provider_message_id=None if msg_id is None else str(msg_id),
            provider_code="0",
            provider_reply=str(body.get("message") or "Success"),
        )


def _day(now: datetime) -> str:
    return _local(now).date().isoformat()
