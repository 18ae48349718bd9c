"""What a worker lends the channel adapters it builds: durable state, the clock, and services.

Every service the engine can lend is offered here by name; each adapter is handed only those
its class declares (``Adapter.needs``), checked against the protocol it names, when
:meth:`channels.base.Adapter.from_settings` builds it. Nothing else in the engine knows which
channel needs what.
"""

from __future__ import annotations

from typing import Any

from channels.base import AdapterContext
from channels.pool import AdapterPool
from channels.vssid import DEVICES_SERVICE, INBOX_SERVICE
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine.channel_state import DatabaseState
from dispatcher.inbox.stores import DatabaseDevices, DatabaseInbox
from dispatcher.kit.clock import utcnow


def services(db: Database) -> dict[str, Any]:
    """The services adapters may ask for, by name."""
    return {INBOX_SERVICE: DatabaseInbox(db), DEVICES_SERVICE: DatabaseDevices(db)}


def adapter_pool(settings: Settings, db: Database) -> AdapterPool:
    """The process's adapters, built on first use with what the engine lends."""
    return AdapterPool(
        settings, AdapterContext(state=DatabaseState(db), now=utcnow, services=services(db))
    )
