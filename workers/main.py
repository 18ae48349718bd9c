"""The module dramatiq's worker command loads: the broker from the settings, then the actors.

``dispatcher worker`` runs ``dramatiq workers.main`` with the right queues.
"""

from __future__ import annotations

from dispatcher import jobs
from dispatcher.config import get_settings
from dispatcher.logging import configure_logging
from workers import actors

configure_logging()
settings = get_settings()
queue = jobs.configure(settings)
broker = queue.broker
actors.declare(broker, settings)
