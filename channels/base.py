"""The channel adapter interface: what every provider plugin implements and returns.

An adapter sends one rendered message to one address and either returns the provider's answer
or raises a :class:`DeliveryError` subclass that says what the pipeline should do next:

- :class:`TransientError` — a blip; retry with backoff.
- :class:`RateLimitedError` — the provider asks us to slow down; wait ``retry_after``.
- :class:`AuthError` — an account-wide fault: our credential, the app, the account or one of
  its permissions is refused, so every message would fail alike. The channel pauses, alerts
  once and keeps its deliveries waiting until a probe succeeds or an operator resumes it. Each
  adapter's docstring has a table of the provider codes it raises this for.
- :class:`PermanentError` — this message will never go through; ``address_dead`` says the
  address itself is gone (later campaigns skip it).

Adapters are created once per worker process and kept open across batches, so they hold
their connections (an SMTP pool, one HTTP client) between :meth:`Adapter.open` and
:meth:`Adapter.close`.

Besides ``send``, an adapter declares on its class everything the service needs to know of it:

- ``limits`` (:class:`ChannelLimits`): what a rendered message may be, and whether its body
  is an HTML dialect (autoescaped); the renderer and the template preview read them;
- ``rate_limits`` (:class:`RateRule`): the provider's published limits, which the pipeline
  enforces across every worker;
- ``settings_model`` (:class:`channels.settings.ChannelSettings`): its own settings, read from
  ``DISPATCHER_<NAME>_*`` and checked when a process starts;
- ``needs``: the services it must be lent (``{"vssid.inbox": Inbox}``: a name and the
  runtime-checkable protocol the service's object must implement).

The service builds it with :meth:`Adapter.from_settings`, which reads those settings, checks
and lends the declared services, and calls the adapter's :meth:`Adapter.create`. A third party
ships an adapter through an entry point (:mod:`channels.registry`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, Protocol, Self

from channels.settings import ChannelSettings


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


def as_text(value: object) -> str | None:
    """A provider's id, code or words as the text the record keeps. The contract says text, but
    a plugin may hand over a number (a JSON id) or bytes (a raw reply), which a database's text
    column refuses; bytes are read as UTF-8, anything undecodable replaced."""
    if value is None or type(value) is str:
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


class DeliveryError(Exception):
    """A classified failure. ``code`` and ``reply`` are the provider's own words, kept as text
    (:func:`as_text`)."""

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
        self.reason = as_text(reason) or ""
        self.code = as_text(code)
        self.reply = as_text(reply)
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
    """Account-wide: the channel account (credential, app, permissions) is broken, not this
    message. Pauses the channel rather than failing the delivery."""

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


def utf16_length(text: str) -> int:
    """Length as providers count it (JavaScript / UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


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
    # The services adapters may be lent, by name ("vssid.inbox"); each adapter is handed only
    # those its class declares in ``Adapter.needs``.
    services: dict[str, Any] = field(default_factory=dict)


class Adapter(ABC):
    """One provider. Subclasses set ``name`` and implement :meth:`send` and :meth:`create`."""

    name: ClassVar[str]
    limits: ClassVar[ChannelLimits] = ChannelLimits()
    rate_limits: ClassVar[tuple[RateRule, ...]] = ()
    settings_model: ClassVar[type[ChannelSettings]] = ChannelSettings
    needs: ClassVar[Mapping[str, type]] = {}

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Open connections; called once before the first send."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; called at worker shutdown."""

    @abstractmethod
    async def send(self, message: Message) -> SendResult:
        """Send one message, or raise a :class:`DeliveryError` subclass."""

    @classmethod
    def from_settings(cls, settings: Any, context: AdapterContext) -> Self:
        """Build the adapter: its own settings read (values given in code taken from the
        service's ``settings``), the services it declares checked and lent, then
        :meth:`create`. A bad setting raises a ``ConfigError`` naming the variable; a missing
        service a :class:`LookupError`, one of the wrong shape a :class:`TypeError`."""
        own = cls.settings_model.load(settings)
        return cls.create(own, dataclasses.replace(context, services=cls._lent(context)))

    @classmethod
    def _lent(cls, context: AdapterContext) -> dict[str, Any]:
        lent = {}
        for key, protocol in cls.needs.items():
            service = context.services.get(key)
            kind = f"{protocol.__module__}.{protocol.__qualname__}"
            if service is None:
                raise LookupError(
                    f"the {cls.name} channel needs context.services[{key!r}] (an object "
                    f"implementing {kind}); the service lends it when it builds the worker's "
                    "AdapterContext"
                )
            if not isinstance(service, protocol):
                raise TypeError(
                    f"context.services[{key!r}] is a {type(service).__name__}, which does not "
                    f"implement {kind}"
                )
            lent[key] = service
        return lent

    @classmethod
    @abstractmethod
    def create(cls, settings: Any, context: AdapterContext) -> Self:
        """Build the adapter from its own settings (an instance of ``settings_model``) and
        the context, holding the services it declared."""
