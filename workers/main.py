"""The module dramatiq's worker command loads: the broker from the settings, then the actors.

``dispatcher worker`` runs ``dramatiq workers.main`` with the right queues.
"""

from __future__ import annotations

from dispatcher.core.config import get_settings
from dispatcher.engine import backends
from dispatcher.observability.logging import configure_logging
from workers import actors

configure_logging()
settings = get_settings()
queue = backends.configure(settings)
broker = queue.broker
actors.declare(broker, settings)
