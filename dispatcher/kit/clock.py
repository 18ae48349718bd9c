"""The one clock of the service. Tests move it; code never calls ``datetime.now`` itself."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta


class Clock:
    """Real UTC time, unless frozen or shifted by a test."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frozen: datetime | None = None
        self._offset = timedelta()

    def now(self) -> datetime:
        with self._lock:
            if self._frozen is not None:
                return self._frozen
            return datetime.now(UTC) + self._offset

    def freeze(self, at: datetime) -> None:
        with self._lock:
            self._frozen = at.astimezone(UTC)

    def shift(self, by: timedelta) -> None:
        with self._lock:
            if self._frozen is not None:
                self._frozen += by
            else:
                self._offset += by

    def reset(self) -> None:
        with self._lock:
            self._frozen = None
            self._offset = timedelta()


clock = Clock()


def utcnow() -> datetime:
    return clock.now()
