"""Zalo Official Account (OpenAPI v3), with the OAuth v4 single-use refresh-token rotation.

Which route, from what the Zalo variant of the template renders to (:func:`is_template`):

    rendered body                      route                          who can get it
    a Zalo template description        POST /v3.0/oa/message/template followers, any time (a
    (``template_id:`` + parameters)    {"user_id","template_id",      promotion-tagged one
                                       "template_data"}               never 22:00–06:00)
    plain text                         POST /v3.0/oa/message/cs       only people who wrote to
                                       {"recipient":{"user_id"},      the OA in the last 7 days
                                        "message":{"text"}}           (-230/-232 otherwise)

Why the template route and not ``/message/transaction`` / ``/message/promotion``: Zalo's own
Java SDK only ever sent structured templates there (zaloplatform/zalo-java-sdk
``src/test/java/v3/SendTransactionMessage.java``: ``attachment.type = "template"``,
``template_type = "transaction_order"``, banner/header/text/table elements and buttons), never
text; and Zalo's notice on its transaction-message page, "Dịch vụ Tin UID Giao dịch (165 vnd)
và UID Truyền thông cá nhân sẽ được dừng cung cấp từ 01/03/2026", retired those per-user
services on 2026-03-01 in favour of ZBS Template Messages: templates Zalo approved beforehand,
sent by user id to ``/v3.0/oa/message/template`` with ``template_id`` and ``template_data``
(as quoted, with the request and answer bodies, by the "Zalo Platform API — Integration
Specification" compilation of 2026-08-20, §1.2 and §5.4, citing
docs.zaloplatforms.com/docs/ZBS/gui-tin-template-qua-uid/api-gui-tin-qua-uid). A structured
payload composed at send time would be refused today, so the adapter never builds one; the
contract fixtures (tests/channels/fixtures/zalo_contract.json) hold both bodies and say where
each comes from.

The template description is what the ``zalo`` (and ``zns``) variants of our templates are
(:func:`parse_template`), one item a line, validated when the template is saved
(:func:`template_problems`: parameter names, the types Zalo offers and the lengths it imposes
on each)::

    template_id: 312345
    tag: transaction
    customer_name (customer_name): {{ recipient.full_name }}
    insurance_code (code): {{ recipient.external_id }}

Zalo answers errors with **HTTP 200** and ``{"error": <negative int>, "message": ..}``, so the
body's code is always what is classified (:func:`classify_error`), per CHANNELS.md and the
error table of the same compilation (§14.2, §14.3):

    code              meaning                                raised
    -32               app reached its API call limit         RateLimitedError, no retry_after
    -211, -218        OA / user receive quota exhausted      RateLimitedError until the next
                                                             midnight, Vietnam time
    -234              promotion at night                     RateLimitedError until 06:00 VN
                                                             (60 s if our clock already says
                                                             06:xx: the provider lags a bit)
    -216, -220, -124  access token invalid / expired         refresh once, retry once; then
                                                             AuthError
    ACCOUNT_CODES     app, OA or permission set-up broken    AuthError: the channel account
    (-204, -205,      (not activated, API not registered,    pauses and alerts once; the
    -209, -212,       app removed, OA unverified, not        deliveries wait. No refresh:
    -219, -221,       authorised, tier, v2 API shut, bad     a new token cures none of them
    -223, -224,       appsecret_proof, no / unpaid Zalo
    -235, -240,       Cloud Account)
    -242, -320,
    -321)
    -213              user does not follow the OA            PermanentError, address dead
    -227              user banned / inactive 45 days         PermanentError, address dead
    -217              "user has blocked invitation from      PermanentError, address kept
                      OA" (not "blocked the OA")
    -244              user restricted this message type      PermanentError
    -230, -232        outside the consultation window        PermanentError (another channel)
    -109, -131,       template unknown, not approved, not    PermanentError (the template,
    -249, -111,       sendable by user id; data empty,       not the address)
    -112, -1121,      too long, missing, badly formatted
    -1122, -1124
    -201, -210, -233  bad parameter, too long, bad type      PermanentError
    any other code    unknown refusal                        PermanentError

HTTP 5xx without a Zalo code, network failures, timeouts and non-JSON answers are
:class:`TransientError`.

Promotions are also held back *before* calling the API during the night (judged on
``context.now()`` in Asia/Ho_Chi_Minh): a :class:`RateLimitedError` whose ``retry_after`` ends
at 06:00 local, so the delivery is deferred rather than failed and no call is wasted. A
template is a promotion when its ``tag`` says so or the campaign's kind is a greeting or policy
news; consultation replies go out around the clock.

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
import re
import unicodedata
from dataclasses import dataclass
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

# Kinds whose Zalo templates are promotional (Zalo tag 3): never sent 22:00–06:00.
PROMOTION_KINDS = frozenset({Category.greeting, Category.policy_news})

TEMPLATE_ROUTE = "/v3.0/oa/message/template"
CS_ROUTE = "/v3.0/oa/message/cs"

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
DEAD_CODES = frozenset({-213, -227})
# -217 reads "User has blocked invitation from OA": an invitation refused, not the OA blocked,
# so the address stays alive (the compilation's §14.2 quotes Zalo's message verbatim).
# Account-wide: the app, the OA or a permission is not set up; every recipient would get the
# same answer, so the channel account pauses (AuthError) instead of failing message by message.
ACCOUNT_CODES: dict[int, str] = {
    -204: "the Official Account is disabled",
    -205: "the Official Account does not exist",
    -209: "the app is not activated for this API",
    -212: "the app has not registered the Official Account API",
    -219: "the app is removed or disabled",
    -221: "the Official Account must be verified for this feature",
    -223: "the Official Account has not authorised this API for the app",
    -224: "the Official Account must upgrade its tier package",
    -235: "this API does not support this type of Official Account",
    -240: "the v2 message API is shut down",
    -242: "the appsecret_proof is invalid",
    -320: "the app must be connected to a Zalo Cloud Account",
    -321: "the Zalo Cloud Account is out of money or cannot be charged",
}
# A template Zalo will not send, or data that breaks its parameters: the template's problem.
TEMPLATE_CODES: dict[int, str] = {
    -109: "unknown template id",
    -111: "template data is empty",
    -112: "template data type not defined",
    -1121: "a parameter exceeds its maximum length",
    -1122: "a template parameter is missing",
    -1124: "a parameter has an invalid format",
    -131: "the template is not approved",
    -249: "the template cannot be sent by user id",
}

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


# -- Zalo templates ----------------------------------------------------------------------------

# The parameter types Zalo's template editor offers ("cài đặt kỹ thuật" of a parameter, integer
# codes 1-15 at template creation) and the longest value each accepts, in characters, with the
# data formats Zalo documents for them: the compilation's §7.9 (ZBS Template Message, citing
# the template-creation page), Zalo Cloud's guide to parameter formats
# (zalo.cloud/blog/cac-dinh-dang-du-lieu-khi-truyen-vao-tham-so-tren-noi-dung-zns: "Tên khách
# hàng (30)") and @warriorteam/redai-zalo-sdk ``types/zns.d.ts`` (ZNSParamType). Zalo refuses a
# longer value with -1121 and a badly formatted one with -1124.
PARAM_TYPES: dict[str, int] = {
    "customer_name": 30,
    "phone_number": 15,
    "address": 200,
    "code": 30,
    "custom_label": 30,
    "transaction_status": 30,
    "contact_info": 50,
    "gender_title": 5,
    "product_brand": 200,
    "quantity_amount": 20,
    "time": 20,
    "otp": 10,
    "url": 200,
    "currency": 12,
    "bank_note": 90,
}
# Zalo's template tags: 1 transaction, 2 customer care, 3 promotion (the last never at night).
TAGS = ("transaction", "customer_care", "promotion")
PARAM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,49}$")
TEMPLATE_ID = re.compile(r"^[A-Za-z0-9]{1,40}$")
_PARAM_LINE = re.compile(r"^([^\s(:]+)\s*\(\s*([^)]*?)\s*\)\s*:(.*)$")
_NUMBER = re.compile(r"^[0-9][0-9.,]*$")
_INTEGER = re.compile(r"^[1-9][0-9]*$")
_PHONE = re.compile(r"^\+?[0-9][0-9 .]*$")
# hh:mm:ss, hh:mm, hh:mm:ss dd/mm/yyyy, hh:mm dd/mm/yyyy, dd/mm/yyyy, mm/yyyy
_TIME = re.compile(
    r"^\d{2}:\d{2}(:\d{2})?$|^(\d{2}:\d{2}(:\d{2})? )?\d{2}/\d{2}/\d{4}$|^\d{2}/\d{4}$"
)
# The characters Zalo forbids in a bank transfer note.
_BANK_NOTE = re.compile(r"^[^@\[\]^_!\"•#$%¥&'()*+,€\-./:;{|<}=~>?]*$")
_FORMATS: dict[str, tuple[re.Pattern[str], str]] = {
    "quantity_amount": (_NUMBER, "a number"),
    "currency": (_INTEGER, "a positive whole number of đồng"),
    "bank_note": (_BANK_NOTE, "free of @[]^_!\"•#$%¥&'()*+,€-./:;{|<}=~>?"),
    "otp": (re.compile(r"^[0-9A-Za-z]+$"), "letters and digits"),
    "phone_number": (_PHONE, "a phone number"),
    "time": (_TIME, "hh:mm[:ss], [hh:mm[:ss] ]dd/mm/yyyy or mm/yyyy"),
    "url": (re.compile(r"^https?://\S+$"), "an http(s) URL"),
}


class TemplateFormatError(ValueError):
    """A Zalo template description that Zalo would refuse; ``problems`` lists every fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class TemplateParam:
    name: str
    type: str
    value: str


@dataclass(frozen=True, slots=True)
class ZaloTemplate:
    """A registered Zalo template and the values of its parameters for one recipient."""

    template_id: str
    tag: str | None
    params: tuple[TemplateParam, ...]

    def data(self) -> dict[str, str]:
        """``template_data`` as Zalo takes it: every value a string, by parameter name."""
        return {param.name: param.value for param in self.params}

    @property
    def promotional(self) -> bool:
        return self.tag == "promotion"


def _lines(body: str) -> list[str]:
    return [
        line.strip()
        for line in body.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def is_template(body: str) -> bool:
    """Whether a rendered body is a Zalo template description (else it is free text)."""
    lines = _lines(body)
    return bool(lines) and lines[0].lower().startswith("template_id:")


def _param_problems(param: TemplateParam) -> list[str]:
    problems = []
    if not PARAM_NAME.match(param.name):
        problems.append(
            f"parameter name {param.name!r}: lowercase letters, digits and _ only, "
            "starting with a letter, at most 50"
        )
    limit = PARAM_TYPES.get(param.type)
    if limit is None:
        problems.append(
            f"parameter {param.name}: unknown type {param.type!r}; Zalo offers "
            + ", ".join(PARAM_TYPES)
        )
        return problems
    if not param.value:
        problems.append(f"parameter {param.name} is empty")
    elif len(param.value) > limit:
        problems.append(
            f"parameter {param.name} ({param.type}) is {len(param.value)} characters; "
            f"Zalo allows {limit}"
        )
    found = _FORMATS.get(param.type)
    if param.value and found is not None and not found[0].match(param.value):
        problems.append(f"parameter {param.name} ({param.type}) must be {found[1]}")
    return problems


def parse_template(body: str) -> ZaloTemplate:
    """The template description a ``zalo``/``zns`` variant rendered to; values are normalised
    to NFC first (Zalo counts characters, and a decomposed Vietnamese name is longer).

    Raises :class:`TemplateFormatError` listing every problem: a missing or malformed
    ``template_id``, an unknown tag, a line that is not ``name (type): value``, a repeated or
    badly named parameter, an unknown type, a value empty, too long or not in its type's
    format.
    """
    problems: list[str] = []
    template_id: str | None = None
    tag: str | None = None
    params: list[TemplateParam] = []
    seen: set[str] = set()
    for line in _lines(unicodedata.normalize("NFC", body)):
        key, _, rest = line.partition(":")
        if key.strip().lower() == "template_id" and template_id is None and not params:
            template_id = rest.strip()
            if not TEMPLATE_ID.match(template_id):
                problems.append(f"template_id {template_id!r} is not a Zalo template id")
            continue
        if key.strip().lower() == "tag" and tag is None and not params:
            tag = rest.strip().lower()
            if tag not in TAGS:
                problems.append(f"tag {tag!r}: one of {', '.join(TAGS)}")
            continue
        match = _PARAM_LINE.match(line)
        if match is None:
            problems.append(f"line {line[:40]!r} is not 'name (type): value'")
            continue
        param = TemplateParam(match[1], match[2].lower(), match[3].strip())
        if param.name in seen:
            problems.append(f"parameter {param.name} appears twice")
        seen.add(param.name)
        problems += _param_problems(param)
        params.append(param)
    if template_id is None:
        problems.insert(0, "the first line must be 'template_id: <the id Zalo approved>'")
    if not params:
        problems.append("a Zalo template needs at least one parameter")
    if problems:
        raise TemplateFormatError(problems)
    assert template_id is not None
    return ZaloTemplate(template_id=template_id, tag=tag, params=tuple(params))


def template_problems(body: str) -> list[str]:
    """What stops a rendered ``zalo`` variant from being sent: nothing for free text (the
    consultation route), every problem of a template description otherwise."""
    if not is_template(body):
        return []
    try:
        parse_template(body)
    except TemplateFormatError as exc:
        return exc.problems
    return []


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
    if code in ACCOUNT_CODES:
        return AuthError(
            f"{detail} (account-wide: {ACCOUNT_CODES[code]}; the channel waits until an "
            "operator fixes the Zalo set-up)",
            code=code,
            reply=reply,
        )
    if code in TEMPLATE_CODES:
        return PermanentError(f"{detail} ({TEMPLATE_CODES[code]})", code=code, reply=reply)
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
    # Checked when a template is saved (dispatcher.content): a template description must be
    # one Zalo would take; free text is for the consultation route.
    body_problems = staticmethod(template_problems)

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
        values = settings.required(REQUIRED, "zalo")
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

    async def _post(self, route: str, token: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One send call; the decoded Zalo body, or a TransientError when there is none."""
        assert self._client is not None
        response = await http.request(
            self._client,
            "POST",
            f"{self.api_url}{route}",
            provider=self.name,
            headers={"access_token": token},
            json=payload,
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

    def request_for(self, message: Message) -> tuple[str, dict[str, Any]]:
        """The route and JSON body for ``message`` (see the module's route table)."""
        if is_template(message.body):
            try:
                template = parse_template(message.body)
            except TemplateFormatError as exc:
                raise PermanentError(f"zalo template description: {exc}") from None
            return TEMPLATE_ROUTE, {
                "user_id": message.address,
                "template_id": template.template_id,
                "template_data": template.data(),
            }
        # Free text: only the consultation route takes it, inside the 7-day window.
        return CS_ROUTE, {
            "recipient": {"user_id": message.address},
            "message": {"text": message.body},
        }

    async def hold_back(self, message: Message, route: str, now: datetime) -> None:
        """Raise to defer ``message`` without calling Zalo (promotions at night)."""
        promotional = route == TEMPLATE_ROUTE and (
            message.kind in PROMOTION_KINDS or parse_template(message.body).promotional
        )
        if promotional and is_night(now):
            # Checked here rather than left to -234: deferred, not failed, and no call spent.
            raise RateLimitedError(
                "promotion messages are not sent 22:00–06:00 Vietnam time; deferred to 06:00",
                retry_after=seconds_until_local(now, NIGHT_END_HOUR),
                scope="message",
            )

    def classify(self, code: int, reply: str, now: datetime) -> DeliveryError:
        return classify_error(code, reply, now)

    async def accepted(self, body: dict[str, Any], now: datetime) -> SendResult:
        data = body.get("data")
        message_id = data.get("message_id") if isinstance(data, dict) else None
        return SendResult(
            provider_message_id=None if message_id is None else str(message_id),
            provider_code="0",
            provider_reply=str(body.get("message") or "Success"),
        )

    async def send(self, message: Message) -> SendResult:
        if self._client is None or self._refresh_lock is None:
            await self.open()
        route, payload = self.request_for(message)
        now = self.context.now()
        await self.hold_back(message, route, now)
        token = await self._stored_access()
        body = await self._post(route, token, payload)
        if body["error"] in AUTH_CODES:
            # Expired or revoked: rotate once and try once more; a second refusal is ours.
            token = await self._fresh_access_token(failed=token)
            body = await self._post(route, token, payload)
        code: int = body["error"]
        if code != 0:
            raise self.classify(code, str(body.get("message") or ""), now)
        return await self.accepted(body, now)
