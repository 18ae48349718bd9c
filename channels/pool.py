"""The adapters a worker process has open, created on first use and kept across batches."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from channels import registry
from channels.base import Adapter, AdapterContext

log = structlog.get_logger(__name__)


class AdapterPool:
    def __init__(self, settings: Any, context: AdapterContext | None = None) -> None:
        self.settings = settings
        self.context = context or AdapterContext()
        self._adapters: dict[str, Adapter] = {}
        self._lock: asyncio.Lock | None = None

    async def get(self, channel: str) -> Adapter:
        """The open adapter for ``channel``; must be awaited on the process's send loop."""
        adapter = self._adapters.get(channel)
        if adapter is not None:
            return adapter
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            adapter = self._adapters.get(channel)
            if adapter is None:
                adapter = registry.get(channel).from_settings(self.settings, self.context)
                await adapter.open()
                self._adapters[channel] = adapter
                log.info("adapter_opened", channel=channel)
        return adapter

    def add(self, adapter: Adapter) -> None:
        """Use an adapter built elsewhere (tests, embedding)."""
        self._adapters[adapter.name] = adapter

    async def close(self) -> None:
        adapters, self._adapters = self._adapters, {}
        for adapter in adapters.values():
            with contextlib.suppress(Exception):
                await adapter.close()
