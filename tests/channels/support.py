"""Driving one adapter against its emulator, as the channel tests do: an adapter built from
settings, run on a fresh event loop and closed afterwards, and the error a send raised."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import pytest

from channels.base import Adapter, AdapterContext, DeliveryError, Message, SendResult
from dispatcher.core.config import Settings

A = TypeVar("A", bound=Adapter)
T = TypeVar("T")


def adapter_for(
    cls: type[A], values: Mapping[str, Any], overrides: Mapping[str, Any], **context: Any
) -> A:
    """``cls`` built from settings: ``values`` (the emulator's), then ``overrides``."""
    settings = Settings(**{"http_timeout": 5.0, **values, **overrides})
    adapter = cls.from_settings(settings, AdapterContext(**context))
    assert isinstance(adapter, cls)
    return adapter


def run(adapter: A, use: Callable[[A], Awaitable[T]], *, open_first: bool = False) -> T:
    """``use(adapter)`` on a fresh event loop (one loop, as in a worker), closing the adapter
    afterwards; ``open_first`` opens it before."""

    async def go() -> T:
        if open_first:
            await adapter.open()
        try:
            return await use(adapter)
        finally:
            await adapter.close()

    return asyncio.run(go())


def send_one(adapter: Adapter, msg: Message) -> SendResult:
    return run(adapter, lambda a: a.send(msg))


def failure(adapter: Adapter, msg: Message) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        send_one(adapter, msg)
    return caught.value


def assert_no_secret(exc: DeliveryError, *secrets: str) -> None:
    """Neither the error nor anything chained to it carries a secret (a chained HTTP client
    error would carry the URL, and a Telegram URL holds the token)."""
    for text in (str(exc), repr(exc), exc.reason, exc.reply or "", exc.code or ""):
        for secret in secrets:
            assert secret not in text
    assert exc.__cause__ is None and exc.__context__ is None
