"""Which channel account a batch sends through, resolved once per batch and kept per process.

A campaign sends through its unit's account for each channel, or its nearest ancestor's, or the
environment's (:mod:`dispatcher.units.accounts`). A worker resolves it once per batch, from
what it resolved before as long as no account changed since: a change bumps a version in the
database, read with one primary-key lookup per batch, and the next batch resolves afresh.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from channels.pool import Account
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine.work import Work
from dispatcher.units import accounts


class AccountResolver:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._version: int | None = None
        self._known: dict[tuple[int, str], Account] = {}
        self._lock = threading.Lock()

    def resolve(self, unit_id: int | None, channels: Iterable[str]) -> dict[str, Account]:
        wanted = sorted(set(channels))
        if unit_id is None:
            return {channel: Account.root(channel) for channel in wanted}
        with self.db.transaction() as session:
            current = accounts.version(session)
            with self._lock:
                if current != self._version:
                    self._known, self._version = {}, current
                found = {c: a for c in wanted if (a := self._known.get((unit_id, c)))}
            if current == 0:
                # No account was ever set: every channel is the environment's.
                return {channel: Account.root(channel) for channel in wanted}
            missing = [c for c in wanted if c not in found]
            if missing:
                found |= accounts.resolve(session, self.settings, unit_id, missing)
                with self._lock:
                    if self._version == current:
                        self._known.update({(unit_id, c): found[c] for c in missing})
        return found

    def assign(self, work: list[Work], unit_id: int | None) -> None:
        """Give each item of a batch the account of its channel."""
        chosen = self.resolve(unit_id, {item.channel for item in work})
        for item in work:
            item.account = chosen[item.channel]
