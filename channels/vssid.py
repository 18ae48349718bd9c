"""The ``vssid`` channel: an item in the VssID app's inbox, and a push that points to it.

VssID is the agency's own app. A delivery is two things (CHANNELS.md, "VssID"):

1. **the record** — an item in the in-app inbox the service keeps, which the app reads over
   its authenticated API (:class:`Inbox`);
2. **the nudge** — an FCM push to each of the account's devices (:class:`Devices`) telling
   the app to open that item: ``notification {title, body}`` and
   ``data {"inbox_item", "kind", "delivery"}``.

The service implements both protocols (on its own tables); the adapter declares them in
``VssidAdapter.needs`` and is lent them as ``context.services["vssid.inbox"]`` and
``context.services["vssid.devices"]``.

Outcome of :meth:`VssidAdapter.send`, the inbox item having been written:

    pushes                                        result
    no devices, or every token dead               sent ("inbox"/"inbox+0push"): the inbox
                                                  is the record, the app shows it when opened
    at least one push accepted                    sent ("inbox+{n}push"); failures on the
                                                  other devices are listed in the reply
    none accepted; one was an account-wide fault  AuthError: the channel pauses, alerts once
    (our OAuth token or IAM role refused, the     and keeps the delivery waiting (the APNs
    project's APNs / web-push key broken)         key of an iOS-only account breaks them all)
    none accepted; one was rate limited           RateLimitedError (the longest retry_after;
                                                  scope "message" if only devices' own
                                                  quotas were hit, else "channel")
    none accepted; one failed transiently         TransientError: the retry runs send again,
                                                  and Inbox.add is idempotent per delivery
    none accepted; all refused permanently        PermanentError, refusals listed; the
    (sender mismatch, a request FCM refused)      address stays alive

A token FCM reports dead (:func:`channels.fcm.token_is_dead`: UNREGISTERED, INVALID_ARGUMENT
with the FcmError detail, NOT_FOUND) is dropped through :meth:`Devices.drop`, as Firebase's
token-management guide says, and is not an error for the delivery. When some pushes went
through, the delivery is sent even if another device met an account-wide fault: the nudge
reached the person, and the next delivery that meets it alone pauses the channel. Device tokens
never appear in replies, errors or logs: they are named by :func:`token_fingerprint` (a short
SHA-256), which the service can compute too.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import structlog

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
from channels.fcm import FcmClient, FcmConfig, FcmSettings, fit_body

log = structlog.get_logger(__name__)

INBOX_SERVICE = "vssid.inbox"
DEVICES_SERVICE = "vssid.devices"
# Pushes in flight for one delivery. An account has a handful of devices; the cap only keeps
# a pathological account (hundreds of stale tokens) from monopolising the HTTP pool.
MAX_PARALLEL_PUSHES = 16
MAX_REPLY = 500


@runtime_checkable
class Inbox(Protocol):
    """The in-app inbox: the record of a VssID delivery (the service's table)."""

    async def add(
        self,
        *,
        delivery_id: int,
        recipient: str,
        account: str,
        title: str,
        body: str,
        html: str | None,
        kind: str,
    ) -> str:
        """File the item and return its id. Idempotent per ``delivery_id``: a second call for
        the same delivery (a retry) returns the first item's id and adds nothing."""
        ...


@runtime_checkable
class Devices(Protocol):
    """The FCM registration tokens of VssID accounts (the service's table)."""

    async def tokens(self, account: str) -> list[str]:
        """The account's current device tokens (possibly none)."""
        ...

    async def drop(self, token: str, reason: str) -> None:
        """Forget a token FCM reported dead (the app was uninstalled, the token rotated or
        was never valid)."""
        ...


def token_fingerprint(token: str) -> str:
    """A short, stable name for a device token that reveals nothing of it."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class _Push:
    token: str
    name: str | None = None
    error: DeliveryError | None = None
    drop_failed: bool = False


class VssidAdapter(Adapter):
    """Inbox item plus FCM pushes. The FCM client is built in :meth:`open`, once."""

    name = "vssid"
    # An FCM push (payload <= 4 KB) whose title and body also fill the in-app inbox.
    limits = ChannelLimits(max_subject=100, max_payload_bytes=4096, needs_subject=True)
    settings_model = FcmSettings
    needs: ClassVar[Mapping[str, type]] = {INBOX_SERVICE: Inbox, DEVICES_SERVICE: Devices}
    # FCM allows 600,000 messages a minute per project (10,000/s). A delivery pushes to every
    # device of the account (often two: a phone and a tablet), so the channel is held to half
    # of that in deliveries; bursts of 1,000 are far below the per-minute bucket.
    rate_limits = (RateRule(per_second=5000, burst=1000),)

    def __init__(
        self,
        *,
        inbox: Inbox,
        devices: Devices,
        fcm: FcmConfig,
        context: AdapterContext | None = None,
    ) -> None:
        self.inbox = inbox
        self.devices = devices
        self.fcm_config = fcm
        self.context = context or AdapterContext()
        self._fcm: FcmClient | None = None

    @classmethod
    def create(cls, settings: FcmSettings, context: AdapterContext) -> VssidAdapter:
        return cls(
            inbox=context.services[INBOX_SERVICE],
            devices=context.services[DEVICES_SERVICE],
            fcm=FcmConfig.from_settings(settings),
            context=context,
        )

    def __repr__(self) -> str:
        return f"<VssidAdapter project={self.fcm_config.project_id!r}>"

    @property
    def fcm(self) -> FcmClient:
        """The open FCM client (after :meth:`open`)."""
        if self._fcm is None:
            raise RuntimeError("the vssid adapter is not open")
        return self._fcm

    async def open(self) -> None:
        if self._fcm is None:
            self._fcm = FcmClient(self.fcm_config, now=self.context.now)

    async def close(self) -> None:
        client, self._fcm = self._fcm, None
        if client is not None:
            await client.aclose()

    # -- sending --------------------------------------------------------------------------------

    async def send(self, message: Message) -> SendResult:
        account = message.address.strip()
        if not account:
            raise PermanentError("no VssID account", code="address")
        if not message.recipient:
            # The inbox files items per person; without the person there is no record.
            raise PermanentError(
                "the message carries no recipient id for the VssID inbox", code="no_recipient"
            )
        title = message.subject or ""
        try:
            item = await self.inbox.add(
                delivery_id=message.delivery_id,
                recipient=message.recipient,
                account=account,
                title=title,
                body=message.body,
                html=message.html,
                kind=message.kind.value,
            )
            tokens = list(dict.fromkeys(await self.devices.tokens(account)))
        except DeliveryError:
            raise
        except Exception as exc:
            # The service's own database, not the provider: a blip to retry, and the retry is
            # safe because the inbox is idempotent per delivery.
            raise TransientError(
                f"vssid inbox/devices unavailable: {type(exc).__name__}: {exc}"[:300],
                code="inbox",
            ) from exc

        if not tokens:
            # Filed in the inbox for when the app is next opened, but nobody was told: that is
            # not a delivery, and a fallback campaign moves on to the next channel.
            raise PermanentError(
                f"no VssID device registered (kept as inbox item {item})",
                code="no_device",
                reply=f"inbox item {item}; no registered devices",
                address_dead=True,
            )

        data = {
            "inbox_item": item,
            "kind": message.kind.value,
            "delivery": str(message.delivery_id),
        }
        body = fit_body(title, message.body, data)
        if self._fcm is None:
            await self.open()
        slots = asyncio.Semaphore(MAX_PARALLEL_PUSHES)

        async def push(token: str) -> _Push:
            async with slots:
                try:
                    name = await self.fcm.send(token, title, body, data)
                except DeliveryError as exc:
                    if isinstance(exc, PermanentError) and exc.address_dead:
                        return _Push(token, error=exc, drop_failed=not await self._drop(token, exc))
                    return _Push(token, error=exc)
                return _Push(token, name=name)

        pushes = await asyncio.gather(*(push(token) for token in tokens))
        return self._result(item, pushes, message.delivery_id)

    async def _drop(self, token: str, error: DeliveryError) -> bool:
        try:
            await self.devices.drop(token, error.reason)
        except Exception as exc:
            # Not the delivery's problem: the token stays, FCM refuses it again next time and
            # the drop is tried again then.
            log.warning(
                "vssid_drop_failed",
                token=token_fingerprint(token),
                # A database error may quote its parameters: the token among them.
                error=f"{type(exc).__name__}: {exc}".replace(token, "[redacted]")[:200],
            )
            return False
        log.info("vssid_token_dropped", token=token_fingerprint(token), reason=error.reason)
        return True

    def _result(self, item: str, pushes: list[_Push], delivery_id: int) -> SendResult:
        sent = [p for p in pushes if p.error is None]
        dead = [p for p in pushes if p.error is not None and p.error.address_dead]
        failed = [p for p in pushes if p.error is not None and not p.error.address_dead]
        parts = [f"inbox item {item}", f"{len(sent)}/{len(pushes)} pushes sent"]
        if dead:
            names = ", ".join(
                token_fingerprint(p.token) + (" (drop failed)" if p.drop_failed else "")
                for p in dead
            )
            parts.append(f"dropped {len(dead)} dead: {names}")
        if failed:
            names = ", ".join(
                f"{token_fingerprint(p.token)} {p.error.code or p.error.error_class.value}"
                for p in failed
                if p.error is not None
            )
            parts.append(f"failed {len(failed)}: {names}")
        reply = "; ".join(parts)

        if not sent:
            errors = [p.error for p in failed if p.error is not None]
            raised = _worst(errors)
            if raised is None:
                # Every device refused for good (dead tokens: dropped): the person cannot be
                # reached on VssID; the inbox item stays for when the app is reinstalled.
                raised = PermanentError(
                    f"no VssID device took the push (kept as inbox item {item})",
                    code="no_device",
                    address_dead=not failed,
                )
            raised.reply = reply[:MAX_REPLY]
            raise raised
        if failed:
            log.warning("vssid_pushes_failed", delivery_id=delivery_id, reply=reply[:MAX_REPLY])
        return SendResult(
            provider_message_id=item,
            provider_code=f"inbox+{len(sent)}push",
            provider_reply=reply[:MAX_REPLY],
        )


def _worst(errors: list[DeliveryError]) -> DeliveryError | None:
    """The error a delivery whose pushes all failed should raise, or None (a success).

    Auth first (the channel's credential is broken: alert), then rate limits (wait the longest
    retry_after asked for), then transient (retry). Permanent refusals alone raise nothing:
    those devices will never take a push, and the inbox item is already the record.
    """
    auth = [e for e in errors if isinstance(e, AuthError)]
    if auth:
        return AuthError(auth[0].reason, code=auth[0].code)
    limited = [e for e in errors if isinstance(e, RateLimitedError)]
    if limited:
        longest = max(limited, key=lambda e: e.retry_after or 0.0)
        # The project's quota pauses the channel; devices' own quotas defer this delivery only.
        channel_wide = any(e.scope == "channel" for e in limited)
        return RateLimitedError(
            longest.reason,
            code=longest.code,
            retry_after=longest.retry_after,
            scope="channel" if channel_wide else "message",
        )
    transient = [e for e in errors if isinstance(e, TransientError)]
    if transient:
        waits = [e.retry_after for e in transient if e.retry_after is not None]
        first = transient[0]
        return TransientError(
            f"every push failed: {first.reason}",
            code=first.code,
            retry_after=max(waits) if waits else None,
        )
    return None
