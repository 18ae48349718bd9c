"""The one clock of the service. Tests move it; code never calls ``datetime.now`` itself."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta


class Clock:
    """Real UTC time, unless frozen or shifted by a test.

    Its state is one tuple, replaced whole: reading the time takes no lock (every send reads
    it, from every worker thread), and changes are serialised among themselves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (frozen instant or None, offset from real time)
        self._state: tuple[datetime | None, timedelta] = (None, timedelta())

    def now(self) -> datetime:
        frozen, offset = self._state
        if frozen is not None:
            return frozen
        now = datetime.now(UTC)
        return now + offset if offset else now

    def freeze(self, at: datetime) -> None:
        with self._lock:
            self._state = (at.astimezone(UTC), self._state[1])

    def shift(self, by: timedelta) -> None:
        with self._lock:
            frozen, offset = self._state
            if frozen is not None:
                self._state = (frozen + by, offset)
            else:
                self._state = (None, offset + by)

    def reset(self) -> None:
        with self._lock:
            self._state = (None, timedelta())


clock = Clock()


def utcnow() -> datetime:
    return clock.now()
