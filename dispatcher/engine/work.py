"""What a batch carries on its way: each claimed delivery as :class:`Work`, the tries made for
it (:class:`AttemptRecord`), and the counts a finished batch reports (:class:`BatchReport`).

The claim fills in the rows, the render their messages, the send their tries and outcomes; the
record writes them all at once (see :mod:`dispatcher.engine.batch`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import datetime

from channels.base import Message
from channels.pool import Account
from dispatcher.tables.deliveries import DeliveryStatus, Outcome

# Who made a claim or an attempt, as the leases and the audit name it.
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(slots=True)
class AttemptRecord:
    number: int
    started_at: datetime
    duration_ms: int
    outcome: Outcome
    error_class: str | None = None
    provider_code: str | None = None
    provider_reply: str | None = None
    provider_message_id: str | None = None


@dataclass(slots=True)
class Work:
    """A claimed delivery on its way through the batch."""

    delivery_id: int
    recipient_id: int
    channel: str
    attempts: int
    failures: int
    reclaimed: bool
    message: Message | None = None
    locale: str | None = None
    # The channel account it goes through (None: the environment's), set once per batch.
    account: Account | None = None
    # The result, filled in as the batch goes.
    status: DeliveryStatus = DeliveryStatus.failed
    tries: list[AttemptRecord] = field(default_factory=list)
    provider_message_id: str | None = None
    error_class: str | None = None
    error_reason: str | None = None
    retry_after: float | None = None
    # An exact instant to wait for (a send window's opening), rather than a delay.
    not_before: datetime | None = None
    address_dead: bool = False


@dataclass(slots=True)
class BatchReport:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retrying: int = 0
    skipped: int = 0
    # Rows whose lease was taken over before their outcomes were written: nothing was written.
    lost: int = 0

    def count(self, status: DeliveryStatus) -> None:
        name = status.value if status.value in ("sent", "retrying", "skipped") else "failed"
        setattr(self, name, getattr(self, name) + 1)
