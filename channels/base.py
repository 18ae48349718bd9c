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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Protocol


class ErrorClass(StrEnum):
    """Why a delivery did not go: the one vocabulary of ``deliveries.error_class`` and
    ``attempts.error_class``. It sits here, under the tables, because adapters name the first
    four; the engine names the rest itself."""

    # An adapter's failure (the DeliveryError classes below).
    transient = "transient"
    rate_limited = "rate_limited"
    auth = "auth"
    permanent = "permanent"
    # The engine's: the address went dead at the provider (an attempt's class), or the row was
    # skipped for a dead address or an opt-out when planned.
    address_dead = "address_dead"
    opted_out = "opted_out"
    # The engine's: nothing to send (no live address, no variant or a template error) ...
    no_address = "no_address"
    template = "template"
    # ... or not now: outside the send window, or the channel is paused (neither spends the
    # delivery's attempt budget).
    send_window = "send_window"
    deferred = "deferred"


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
    # The recipient's external id (social-insurance number), for channels that keep records
    # per person (the VssID inbox).
    recipient: str | None = None
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
    """Slow down. ``scope="channel"`` (the default) pauses the whole channel account for every
    worker; ``scope="message"`` defers only this message (e.g. a Zalo promotion at night)."""

    error_class = ErrorClass.rate_limited

    def __init__(self, reason: str, *, scope: str = "channel", **kwargs: Any) -> None:
        super().__init__(reason, **kwargs)
        self.scope = scope


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


@dataclass(frozen=True, slots=True)
class RateRule:
    """A provider's published limit, enforced by the pipeline across every worker (Redis).

    ``per_address`` rules hold per recipient address (Telegram: one message a second per
    chat); the others for the whole channel account. ``DISPATCHER_RATE_LIMITS`` overrides the
    channel-wide ``per_second``.
    """

    per_second: float
    burst: int = 1
    per_address: bool = False


class StateStore(Protocol):
    """Durable key-value state shared by every worker (e.g. an OAuth token pair that rotates).

    Keys are namespaced by the adapter (``"zalo:refresh_token"``). Values are secrets: never
    log them.
    """

    async def get(self, key: str) -> str | None: ...

    async def set(self, key: str, value: str) -> None: ...


class MemoryState:
    """A :class:`StateStore` for tests and one-process use."""

    def __init__(self, initial: dict[str, str] | None = None) -> None:
        self.values = dict(initial or {})

    async def get(self, key: str) -> str | None:
        return self.values.get(key)

    async def set(self, key: str, value: str) -> None:
        self.values[key] = value


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class AdapterContext:
    """What the service lends an adapter besides its settings."""

    state: StateStore = field(default_factory=MemoryState)
    # The service's clock (aware UTC); adapters never read the wall clock themselves.
    now: Callable[[], datetime] = _utcnow
    # Per-channel services an adapter may need (e.g. "inbox" and "devices" for VssID).
    services: dict[str, Any] = field(default_factory=dict)


class Adapter(ABC):
    """One provider. Subclasses set ``name`` and implement :meth:`send`."""

    name: ClassVar[str]
    limits: ClassVar[ChannelLimits] = ChannelLimits()
    rate_limits: ClassVar[tuple[RateRule, ...]] = ()

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Open connections; called once before the first send."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; called at worker shutdown."""

    @abstractmethod
    async def send(self, message: Message) -> SendResult:
        """Send one message, or raise a :class:`DeliveryError` subclass."""

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Any, context: AdapterContext) -> Adapter:
        """Build the adapter from the service's settings."""
