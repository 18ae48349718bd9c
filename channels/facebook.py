"""Facebook Messenger Send API (Graph API) for one Page, over one kept-open httpx client.

``POST {graph}/{version}/{PAGE_ID}/messages?access_token=<PAGE_TOKEN>`` with
``{"recipient":{"id":PSID},"messaging_type":..,"message":{"text":..},"tag":..}``; the Page-scoped
id (PSID) is ``message.address`` and the answer's ``message_id`` is the provider's message id.

Messaging type by what the message is about (:data:`MESSAGING`). Messenger lets a Page write
freely only within 24 hours of the person's last message; outside it only a ``MESSAGE_TAG`` with
a non-promotional tag is allowed, so:

=======================================  ==============  ==============  ====================
kind                                     messaging_type  tag             outside the window
=======================================  ==============  ==============  ====================
transactional                            MESSAGE_TAG     ACCOUNT_UPDATE  delivered
fraud_warning, greeting, policy_news,    UPDATE          (none)          10/2018278 → P
disaster_support
=======================================  ==============  ==============  ====================

``ACCOUNT_UPDATE`` covers non-promotional updates about the person's own social-insurance
account; broadcasts (fraud warnings, greetings, news) are not about one person's account, so
they must not borrow the tag (Meta answers misuse with 368 blocks).

Graph errors are classified on ``(code, error_subcode)`` as the table in CHANNELS.md says
(:func:`classify_error`), never on the message text: the 24-hour window is permanent for this
message but says nothing of the address; "person not available" and "no matching user" mark the
address dead; 4/17/32/613/80001 and 368 are rate limits (368 with a long wait); 1/2/1200, other
5xx, network errors and timeouts are transient; anything else is permanent. An answer with no
Graph error object (a front proxy's page) is classified on its HTTP status alone.

Account-wide faults (:func:`account_wide`) raise :class:`AuthError`: the Page, its token or the
app is refused, every recipient would fail alike, so the channel pauses, alerts once and keeps
the deliveries waiting (``dispatcher.engine.send``) instead of failing them one by one:

=====================================  ==================================================
code – subcode                         what is broken
=====================================  ==================================================
190 (any subcode)                      the Page token: invalid, expired, revoked
10, 200–299, 230, 3                    a permission of the app or Page is missing or was
(other than the per-recipient pairs)   removed (Graph API error handling: 10 and 200–299
                                       "API Permission", 3 "API Method"), e.g.
10 – 2018065                           page_messaging_subscriptions not granted
200 – 2018028, 2018027                 the app is not reviewed / not live for
                                       pages_messaging(_phone_number)
200 – 2018021                          the phone-matching fee is unpaid
230                                    pages_messaging not granted
=====================================  ==================================================

The per-recipient pairs in those code families stay per message: 10 – 2018278 (outside the
window) and the "person not available" pairs of :data:`ADDRESS_DEAD`.

The page token travels only as the ``access_token`` query parameter. It is scrubbed from every
error we raise, and a logging filter redacts it from the ``httpx`` logger (which logs each
request URL, query string included, at INFO) while the adapter is open.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
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
from channels.redact import RedactSecrets, scrub

# kind → (messaging_type, tag). Kinds missing here (a future category) go as UPDATE: never
# claim a tag the content has not been vetted for.
MESSAGING: Mapping[Category, tuple[str, str | None]] = {
    Category.transactional: ("MESSAGE_TAG", "ACCOUNT_UPDATE"),
    Category.fraud_warning: ("UPDATE", None),
    Category.greeting: ("UPDATE", None),
    Category.policy_news: ("UPDATE", None),
    Category.disaster_support: ("UPDATE", None),
}
DEFAULT_MESSAGING: tuple[str, str | None] = ("UPDATE", None)

OUTSIDE_WINDOW = (10, 2018278)
ADDRESS_DEAD = frozenset({(551, 1545041), (200, 1545041), (10, 2018108), (100, 2018001)})
AUTH_CODES = frozenset({190})
# Graph's permission families (10, 200-299, 230 "requires pages_messaging", 3 "API method"):
# account-wide unless the pair is one of the per-recipient ones above.
PERMISSION_CODES = frozenset({3, 10, 230, *range(200, 300)})
RATE_LIMIT_CODES = frozenset({4, 17, 32, 613, 80001})
POLICY_BLOCK_CODE = 368
# A policy block lasts hours to days and Graph gives no end time: wait long, not 30 s.
POLICY_BLOCK_RETRY_AFTER = 3600.0
TRANSIENT_CODES = frozenset({1, 2, 1200})

CONNECTION_POOL_SIZE = http.POOL_SIZE
TOKEN_LOGGERS = ("httpx",)


class FacebookSettings(http.HttpSettings):
    """The Page: ``DISPATCHER_FACEBOOK_*``."""

    model_config = SettingsConfigDict(env_prefix="DISPATCHER_FACEBOOK_")

    page_id: str | None = None
    page_token: SecretStr | None = None
    graph_url: http.HttpUrl = "https://graph.facebook.com"
    api_version: str = "v21.0"


def messaging_for(kind: Category | str) -> tuple[str, str | None]:
    """The ``messaging_type`` and ``tag`` a message of this kind is sent with."""
    try:
        return MESSAGING.get(Category(kind), DEFAULT_MESSAGING)
    except ValueError:
        return DEFAULT_MESSAGING


def account_wide(code: int | None, subcode: int | None) -> bool:
    """The error says the Page, its token or the app is refused, not this recipient."""
    if code is None or (code, subcode) == OUTSIDE_WINDOW or (code, subcode) in ADDRESS_DEAD:
        return False
    return code in AUTH_CODES or code in PERMISSION_CODES


def classify_error(
    status: int, code: int | None, subcode: int | None, reply: str, text: str = ""
) -> DeliveryError:
    """One place that turns a Graph API error into our error classes.

    ``reply`` is the provider's whole error object and ``text`` its ``message`` (both already
    scrubbed); ``code`` and ``subcode`` are None when the answer held no Graph error object (a
    proxy's HTML page, say). The recorded code is ``"code/subcode"`` (or ``"code"``), the
    table's own key.
    """
    if code is None:
        words = str(status)
    elif subcode is None:
        words = str(code)
    else:
        words = f"{code}/{subcode}"
    recorded = words
    if text:
        words = f"{words}: {text[:200]}"
    if code is None:
        if status >= 500:
            return TransientError(f"messenger http {status}", code=recorded, reply=reply)
        if status == 429:  # a front proxy's throttle rather than Graph's own error
            return RateLimitedError(f"messenger http {status}", code=recorded, reply=reply)
        return PermanentError(f"messenger http {status}", code=recorded, reply=reply)
    pair = (code, subcode)
    if pair == OUTSIDE_WINDOW:
        return PermanentError(
            f"messenger: outside the 24-hour window ({words})",
            code=recorded,
            reply=reply,
        )
    if pair in ADDRESS_DEAD:
        return PermanentError(
            f"messenger: recipient unavailable ({words})",
            code=recorded,
            reply=reply,
            address_dead=True,
        )
    if code in AUTH_CODES:
        return AuthError(f"messenger: page token refused ({words})", code=recorded, reply=reply)
    if account_wide(code, subcode):
        return AuthError(
            f"messenger: the page or app lacks a permission ({words})", code=recorded, reply=reply
        )
    if code in RATE_LIMIT_CODES:
        return RateLimitedError(f"messenger: rate limited ({words})", code=recorded, reply=reply)
    if code == POLICY_BLOCK_CODE:
        return RateLimitedError(
            f"messenger: page temporarily blocked for policy ({words})",
            code=recorded,
            reply=reply,
            retry_after=POLICY_BLOCK_RETRY_AFTER,
        )
    if code in TRANSIENT_CODES or status >= 500:
        return TransientError(f"messenger: temporary failure ({words})", code=recorded, reply=reply)
    return PermanentError(f"messenger: refused ({words})", code=recorded, reply=reply)


def _as_int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


class FacebookAdapter(Adapter):
    """Sends text messages from one Facebook Page to people by their Page-scoped id."""

    name = "facebook"
    limits = ChannelLimits(max_body=2000)
    settings_model = FacebookSettings
    # The Send API allows ~300 calls/s per Page; keep a margin below it.
    rate_limits = (RateRule(per_second=250, burst=50),)

    def __init__(
        self,
        *,
        page_id: str,
        page_token: str,
        graph_url: str = "https://graph.facebook.com",
        api_version: str = "v21.0",
        timeout: float = 15.0,
        pool_size: int = CONNECTION_POOL_SIZE,
    ) -> None:
        if not page_id or not page_token:
            raise ValueError(
                "the facebook channel needs DISPATCHER_FACEBOOK_PAGE_ID and "
                "DISPATCHER_FACEBOOK_PAGE_TOKEN"
            )
        self.page_id = page_id
        self._token = page_token
        # Longest first, so the raw token is replaced before any shorter encoded form.
        forms = {page_token, quote(page_token, safe=""), quote_plus(page_token)}
        self._secrets = sorted(forms, key=len, reverse=True)
        self.graph_url = graph_url.rstrip("/")
        self.api_version = api_version.strip("/")
        self.timeout = timeout
        self.pool_size = pool_size
        self._client: httpx.AsyncClient | None = None
        self._log_filter = RedactSecrets(self._secrets)

    def __repr__(self) -> str:
        return f"FacebookAdapter(page_id={self.page_id!r}, open={self.is_open})"

    @classmethod
    def create(cls, settings: FacebookSettings, context: AdapterContext) -> FacebookAdapter:
        page_id = (settings.page_id or "").strip()
        secret = settings.page_token
        token = (secret.get_secret_value() if secret is not None else "").strip()
        missing = [
            name
            for name, value in (
                ("DISPATCHER_FACEBOOK_PAGE_ID", page_id),
                ("DISPATCHER_FACEBOOK_PAGE_TOKEN", token),
            )
            if not value
        ]
        if missing:
            raise ValueError(f"the facebook channel needs {' and '.join(missing)}")
        return cls(
            page_id=page_id,
            page_token=token,
            graph_url=settings.graph_url,
            api_version=settings.api_version,
            timeout=settings.http_timeout,
        )

    @property
    def url(self) -> str:
        """The Send API endpoint for this Page (no token: it goes as a query parameter)."""
        return f"{self.graph_url}/{self.api_version}/{self.page_id}/messages"

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._client is not None

    async def open(self) -> None:
        if self._client is not None:
            return
        for name in TOKEN_LOGGERS:
            logging.getLogger(name).addFilter(self._log_filter)
        self._client = http.client(
            timeout=self.timeout, pool_size=self.pool_size, headers={"Accept": "application/json"}
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()
        for name in TOKEN_LOGGERS:
            logging.getLogger(name).removeFilter(self._log_filter)

    # -- sending ----------------------------------------------------------------------------

    def payload(self, message: Message) -> dict[str, Any]:
        """The Send API body for ``message`` (see :data:`MESSAGING`)."""
        messaging_type, tag = messaging_for(message.kind)
        body: dict[str, Any] = {
            "recipient": {"id": message.address},
            "messaging_type": messaging_type,
            "message": {"text": message.body},
        }
        if tag is not None:
            body["tag"] = tag
        return body

    async def send(self, message: Message) -> SendResult:
        if self._client is None:
            await self.open()  # a send before open(), or after close(), opens lazily
        client = self._client
        assert client is not None
        # httpx errors can quote the request URL, and with it the token: scrubbed.
        response = await http.request(
            client,
            "POST",
            self.url,
            provider="messenger",
            scrub=self.scrub,
            params={"access_token": self._token},
            json=self.payload(message),
        )
        if response.is_success:
            return self._result(response)
        raise self._error(response)

    # -- answers ----------------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        """``text`` with every form of the page token replaced by ``***``."""
        return scrub(text, self._secrets)

    def _result(self, response: httpx.Response) -> SendResult:
        try:
            body = response.json()
        except ValueError:
            body = None
        message_id = body.get("message_id") if isinstance(body, dict) else None
        # A 2xx means Graph accepted the message: never retry it (that would send it twice),
        # even when the body is not what we expect.
        return SendResult(
            provider_message_id=None if message_id is None else str(message_id),
            provider_code="ok",
            provider_reply=self.scrub(response.text)[:500],
        )

    def _error(self, response: httpx.Response) -> DeliveryError:
        try:
            body = response.json()
        except ValueError:
            body = None
        detail = body.get("error") if isinstance(body, dict) else None
        if not isinstance(detail, dict):
            reply = self.scrub(f"{response.status_code} {response.text}".strip())[:500]
            return classify_error(response.status_code, None, None, reply)
        reply = self.scrub(json.dumps(detail, ensure_ascii=False, separators=(",", ":")))[:500]
        return classify_error(
            response.status_code,
            _as_int(detail.get("code")),
            _as_int(detail.get("error_subcode")),
            reply,
            self.scrub(str(detail.get("message") or "")),
        )
