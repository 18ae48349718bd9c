"""The channel adapter interface: what every provider plugin implements and returns.

An adapter sends one rendered message to one address and either returns the provider's answer
or raises a :class:`DeliveryError` subclass that says what the pipeline should do next:

- :class:`TransientError` — a blip; retry with backoff.
- :class:`RateLimitedError` — the provider asks us to slow down; wait ``retry_after``.
- :class:`AuthError` — our credential is refused; a channel-wide fault.
- :class:`PermanentError` — this message will never go through; ``address_dead`` says the
  address itself is gone (later campaigns skip it).

Adapters are created once per worker process and kept open across batches, so they hold
their connections (an SMTP pool, one HTTP client) between :meth:`Adapter.open` and
:meth:`Adapter.close`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar


class ErrorClass(StrEnum):
    transient = "transient"
    rate_limited = "rate_limited"
    auth = "auth"
    permanent = "permanent"


class Category(StrEnum):
    """What a message is about; decides unsubscribe headers, message types and consent."""

    greeting = "greeting"
    disaster_support = "disaster_support"
    fraud_warning = "fraud_warning"
    policy_news = "policy_news"
    transactional = "transactional"


@dataclass(frozen=True, slots=True)
class Message:
    """A rendered message on its way to one address."""

    delivery_id: int
    address: str
    body: str
    kind: Category
    subject: str | None = None
    html: str | None = None
    locale: str = "vi"
    # Present for kinds a recipient may opt out of (RFC 8058 for email).
    unsubscribe_url: str | None = None
    campaign_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SendResult:
    """The provider accepted the message."""

    provider_message_id: str | None = None
    provider_code: str | None = None
    provider_reply: str | None = None


class DeliveryError(Exception):
    """A classified failure. ``code`` and ``reply`` are the provider's own words."""

    error_class: ClassVar[ErrorClass]

    def __init__(
        self,
        reason: str,
        *,
        code: str | int | None = None,
        reply: str | None = None,
        retry_after: float | None = None,
        address_dead: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = None if code is None else str(code)
        self.reply = reply
        self.retry_after = retry_after
        self.address_dead = address_dead


class TransientError(DeliveryError):
    error_class = ErrorClass.transient


class RateLimitedError(DeliveryError):
    error_class = ErrorClass.rate_limited


class AuthError(DeliveryError):
    error_class = ErrorClass.auth


class PermanentError(DeliveryError):
    error_class = ErrorClass.permanent


@dataclass(frozen=True, slots=True)
class ChannelLimits:
    """What a rendered message may be, checked when a template is previewed or saved."""

    max_body: int | None = None  # characters (UTF-16 code units where the provider counts so)
    max_subject: int | None = None
    max_payload_bytes: int | None = None
    needs_subject: bool = False
    html_body: bool = False  # the body is an HTML dialect (Telegram), autoescaped when rendered


class Adapter(ABC):
    """One provider. Subclasses set ``name`` and implement :meth:`send`."""

    name: ClassVar[str]
    limits: ClassVar[ChannelLimits] = ChannelLimits()

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Open connections; called once before the first send."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; called at worker shutdown."""

    @abstractmethod
    async def send(self, message: Message) -> SendResult:
        """Send one message, or raise a :class:`DeliveryError` subclass."""

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Any) -> Adapter:
        """Build the adapter from the service's settings."""
