"""Fixtures for the emulators' own tests: a hand-driven clock and one running emulator each.

Every emulator here runs on the :class:`ManualClock` (wall time *and* rate-limit time), so no
test depends on today's date or on real time passing, and each test gets fresh instances.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from channels.emulators.base import ManualClock
from channels.emulators.fcm import FcmEmulator
from channels.emulators.messenger import MessengerEmulator
from channels.emulators.telegram import TelegramEmulator
from channels.emulators.zalo import ZaloEmulator

# A Monday, 10:00 in Vietnam (03:00 UTC): daytime, so promotion messages are allowed.
START = datetime(2025, 3, 10, 3, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as client:
        yield client


@pytest.fixture
def tg(clock: ManualClock) -> Iterator[TelegramEmulator]:
    with TelegramEmulator(clock=clock, monotonic=clock.monotonic) as emulator:
        yield emulator


@pytest.fixture
def zalo(clock: ManualClock) -> Iterator[ZaloEmulator]:
    with ZaloEmulator(clock=clock, monotonic=clock.monotonic) as emulator:
        yield emulator


@pytest.fixture
def messenger(clock: ManualClock) -> Iterator[MessengerEmulator]:
    with MessengerEmulator(clock=clock, monotonic=clock.monotonic) as emulator:
        yield emulator


@pytest.fixture
def fcm(clock: ManualClock) -> Iterator[FcmEmulator]:
    with FcmEmulator(clock=clock, monotonic=clock.monotonic) as emulator:
        yield emulator
