"""Which channel account a batch sends through, resolved once per batch and kept per process.

A campaign sends through its unit's account for each channel, or its nearest ancestor's, or the
environment's (:mod:`dispatcher.units.accounts`). A worker resolves it once per batch, from
what it resolved before as long as no account changed since: a change bumps a version in the
database, read once per batch with the time the tree of units last changed (one small
statement; none at all for the root unit's campaigns, which always send through the
environment's accounts), and the next batch resolves afresh.

Dead addresses are kept per account as well. The root account marks ``addresses.dead_at`` as
before (the record does, and the planner skips them). A unit's account keeps its own marks
(``account_dead_addresses``): a batch skips the addresses its account found dead (one query
per batch, only for units' accounts), and after the send, the addresses it found dead are
marked for it, not for every account of the channel.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import structlog
from sqlalchemy import select, tuple_

from channels.base import ErrorClass
from channels.pool import Account
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine.work import Work
from dispatcher.kit.clock import utcnow
from dispatcher.kit.sql import insert_for
from dispatcher.tables.channel_accounts import AccountDeadAddress
from dispatcher.tables.deliveries import DeliveryStatus
from dispatcher.tables.units import Unit
from dispatcher.units import accounts

log = structlog.get_logger(__name__)


class AccountResolver:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._version: tuple[str, Any] | None = None
        self._known: dict[tuple[int, str], Account] = {}
        self._root_id: int | None = None
        self._lock = threading.Lock()

    def resolve(self, unit_id: int | None, channels: Iterable[str]) -> dict[str, Account]:
        wanted = sorted(set(channels))
        if unit_id is None or unit_id == self._root_id:
            # The root unit has no account of its own: its campaigns (every campaign of an
            # install with one unit) send through the environment's, with no query at all.
            return {channel: Account.root(channel) for channel in wanted}
        with self.db.transaction() as session:
            if self._root_id is None:
                self._root_id = session.scalar(select(Unit.id).where(Unit.parent_id.is_(None)))
                if unit_id == self._root_id:
                    return {channel: Account.root(channel) for channel in wanted}
            current = accounts.stamp(session)
            with self._lock:
                if current != self._version:
                    self._known, self._version = {}, current
                found = {c: a for c in wanted if (a := self._known.get((unit_id, c)))}
            if not current[0]:
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
        """Give each item of a batch the account of its channel, and skip those whose address
        that account found dead (a unit's account: the root's were skipped when planned)."""
        chosen = self.resolve(unit_id, {item.channel for item in work})
        own: list[Work] = []
        for item in work:
            item.account = account = chosen[item.channel]
            if not account.is_root and item.message is not None:
                own.append(item)
        if not own:
            return
        a = AccountDeadAddress
        pairs = sorted({(item.account.key, item.recipient_id) for item in own if item.account})
        with self.db.transaction() as session:
            dead = {
                (key, recipient): value
                for key, recipient, value in session.execute(
                    select(a.account_key, a.recipient_id, a.value).where(
                        tuple_(a.account_key, a.recipient_id).in_(pairs)
                    )
                )
            }
        if not dead:
            return
        for item in own:
            assert item.account is not None and item.message is not None
            if dead.get((item.account.key, item.recipient_id)) == item.message.address:
                item.status = DeliveryStatus.skipped
                item.error_class = ErrorClass.address_dead
                item.error_reason = f"address dead at {item.account.key}"
                item.message = None

    def keep_dead(self, work: list[Work]) -> None:
        """After the send: the addresses a unit's account found dead are marked for that
        account only (the record marks the root account's, as before). A mark that cannot be
        written now is only logged: the address is found dead again at its next send."""
        marks = []
        now = utcnow()
        for item in work:
            if item.address_dead and item.account is not None and not item.account.is_root:
                item.address_dead = False
                address = item.message.address if item.message else ""
                marks.append(
                    {
                        "account_key": item.account.key,
                        "recipient_id": item.recipient_id,
                        "value": address,
                        "dead_at": now,
                        "reason": (item.error_reason or "dead")[:200],
                    }
                )
        if not marks:
            return
        try:
            with self.db.transaction() as session:
                for mark in marks:
                    statement = insert_for(session, AccountDeadAddress).values(**mark)
                    session.execute(
                        statement.on_conflict_do_update(
                            index_elements=["account_key", "recipient_id"],
                            set_={k: mark[k] for k in ("value", "dead_at", "reason")},
                        )
                    )
        except Exception as exc:
            log.warning("account_dead_marks_failed", marks=len(marks), error=str(exc)[:300])
