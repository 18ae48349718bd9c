"""The ``null`` channel: accepts every message and sends nothing. For dry runs and benchmarks."""

from __future__ import annotations

from typing import Any

from channels.base import Adapter, AdapterContext, Message, SendResult


class NullAdapter(Adapter):
    name = "null"

    async def send(self, message: Message) -> SendResult:
        return SendResult(provider_message_id=f"null-{message.delivery_id}", provider_code="ok")

    @classmethod
    def create(cls, settings: Any, context: AdapterContext) -> NullAdapter:
        return cls()
