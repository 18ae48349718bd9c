"""An SMS gateway over HTTP, as a third party would add a channel to the dispatcher.

Everything the service needs is declared on the adapter class: its limits (the renderer and
the template preview check them), its rate rule, and its own settings, read from
``DISPATCHER_SMS_GATEWAY_*`` (the URL, the API key, the sender's brand name) with the HTTP
timeout every channel shares. The HTTP plumbing (a pooled client, transport failures as
transient errors) is the service's own :mod:`channels.http`.

The gateway's contract: ``POST {url}/messages`` with a bearer key and
``{"from", "to", "text", "reference"}``; ``201 {"id": ..}`` when accepted, else
``{"error": code, "message": ..}`` with 400 (``invalid_number`` means the number is dead),
401/403 (the key), 429 (``Retry-After``) or 5xx.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from channels import http
from channels.base import (
    Adapter,
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

DEAD_NUMBER = "invalid_number"


class SmsGatewaySettings(http.HttpSettings):
    """``DISPATCHER_SMS_GATEWAY_URL``, ``_API_KEY``, ``_SENDER``."""

    model_config = SettingsConfigDict(env_prefix="DISPATCHER_SMS_GATEWAY_")

    url: http.HttpUrl | None = None
    api_key: SecretStr | None = None
    sender: str = Field(
        default="BHXH",
        pattern=r"^[A-Za-z0-9]{1,11}$",
        description="The brand name shown as the sender: up to 11 letters and digits.",
    )


def classify(response: httpx.Response) -> DeliveryError:
    """The gateway's refusal as one of the service's error classes."""
    try:
        body = response.json()
    except ValueError:
        body = None
    code = str(body.get("error")) if isinstance(body, dict) and body.get("error") else None
    words = str(body.get("message") or "") if isinstance(body, dict) else response.text[:200]
    recorded = code or str(response.status_code)
    reason = f"sms gateway {response.status_code} {recorded}: {words}".strip()
    status = response.status_code
    if status == 429:
        retry_after = response.headers.get("retry-after")
        wait = float(retry_after) if retry_after and retry_after.isdigit() else None
        return RateLimitedError(reason, code=recorded, reply=words, retry_after=wait)
    if status in (401, 403):
        return AuthError(reason, code=recorded, reply=words)
    if status >= 500:
        return TransientError(reason, code=recorded, reply=words)
    return PermanentError(reason, code=recorded, reply=words, address_dead=code == DEAD_NUMBER)


class SmsGatewayAdapter(Adapter):
    """Text messages to phone numbers (``message.address``) through the gateway."""

    name = "sms_gateway"
    # Three concatenated parts of Vietnamese text (UCS-2: 67 characters each) fit 201.
    limits = ChannelLimits(max_body=201)
    rate_limits = (RateRule(per_second=50, burst=10),)
    settings_model = SmsGatewaySettings

    def __init__(self, *, url: str, api_key: str, sender: str, timeout: float) -> None:
        self.url = url
        self.sender = sender
        self.timeout = timeout
        self._api_key = api_key
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return f"SmsGatewayAdapter(url={self.url!r}, sender={self.sender!r})"

    @classmethod
    def create(cls, settings: SmsGatewaySettings, context: AdapterContext) -> SmsGatewayAdapter:
        key = settings.api_key.get_secret_value() if settings.api_key else ""
        if not settings.url or not key:
            raise ValueError(
                "the sms_gateway channel needs DISPATCHER_SMS_GATEWAY_URL and "
                "DISPATCHER_SMS_GATEWAY_API_KEY"
            )
        return cls(
            url=settings.url, api_key=key, sender=settings.sender, timeout=settings.http_timeout
        )

    async def open(self) -> None:
        if self._client is None:
            self._client = http.client(
                timeout=self.timeout, headers={"Authorization": f"Bearer {self._api_key}"}
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def send(self, message: Message) -> SendResult:
        if self._client is None:
            await self.open()
        assert self._client is not None
        payload: dict[str, Any] = {
            "from": self.sender,
            "to": message.address,
            "text": message.body,
            "reference": str(message.delivery_id),
        }
        response = await http.request(
            self._client, "POST", f"{self.url}/messages", provider="sms gateway", json=payload
        )
        if not response.is_success:
            raise classify(response)
        try:
            body = response.json()
        except ValueError:
            body = None  # accepted all the same: never send it twice
        message_id = body.get("id") if isinstance(body, dict) else None
        return SendResult(
            provider_message_id=None if message_id is None else str(message_id),
            provider_code=str(response.status_code),
        )
