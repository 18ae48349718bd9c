"""The ``null`` channel: accepts every message and sends nothing. For dry runs and benchmarks."""

from __future__ import annotations

from typing import Any

from channels.base import Adapter, AdapterContext, Message, SendResult
from channels.limits import LIMITS


class NullAdapter(Adapter):
    name = "null"
    limits = LIMITS["null"]

    async def send(self, message: Message) -> SendResult:
        return SendResult(provider_message_id=f"null-{message.delivery_id}", provider_code="ok")

    @classmethod
    def from_settings(cls, settings: Any, context: AdapterContext) -> NullAdapter:
        return cls()
