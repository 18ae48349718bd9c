"""The scheduler process: launches due campaigns and runs the sweeper, as a single leader.

Leadership is a Redis key with a TTL that the leader renews; a second scheduler waits as a hot
standby and takes over within the TTL when the leader dies. Every step is also safe to run
twice (unique run slots, conditional updates), so a brief overlap does no harm.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import asdict

import redis
import structlog
from sqlalchemy.exc import InterfaceError, OperationalError

from dispatcher import audit
from dispatcher.core import secrets
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine import jobs
from dispatcher.engine.backends import Backends
from dispatcher.engine.leases import LeaseWatch
from dispatcher.tables import partitions
from workers.sweeper import sweep

log = structlog.get_logger(__name__)
# How often the leader makes sure the coming months' partitions exist (and once on taking over).
PARTITIONS_EVERY_SECONDS = 3600.0


def leader_key(namespace: str) -> str:
    """The lock the leading scheduler holds, one per service (see ``redis_namespace``)."""
    return jobs.redis_key(namespace, "scheduler", "leader")


_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class Leadership:
    def __init__(self, client: redis.Redis | None, ttl_seconds: float, *, key: str) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = int(ttl_seconds * 1000)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leading = client is None

    def hold(self) -> bool:
        """Take or renew leadership; True while this process leads."""
        if self.client is None:
            return True
        try:
            if self.leading:
                self.leading = bool(self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))
            if not self.leading:
                self.leading = bool(self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))
        except redis.RedisError as exc:
            log.warning("leadership_check_failed", error=str(exc))
            self.leading = False
        return self.leading

    def release(self) -> None:
        if self.client is not None and self.leading:
            try:
                if self.client.get(self.key) == self.token.encode():
                    self.client.delete(self.key)
            except redis.RedisError:
                pass
        self.leading = False


def seal_audit(db: Database, settings: Settings) -> None:
    with db.transaction() as session:
        audit.seal(
            session, secrets.audit_key(session, settings), witness_path=settings.audit_witness
        )


def ensure_partitions(db: Database, settings: Settings) -> list[str]:
    """PostgreSQL: the delivery and attempt partitions of this month and the next
    ``partition_months_ahead`` ones (nothing on SQLite); returns those it made."""
    with db.transaction() as session:
        made = partitions.ensure_ahead(session.connection(), settings.partition_months_ahead)
    if made:
        log.info("partitions_made", partitions=made)
    return made


def run_scheduler(
    *,
    db: Database,
    settings: Settings,
    queue: Backends,
    stop: threading.Event,
    leader_ttl: float | None = None,
) -> None:
    """Loop until ``stop`` is set: while leading, sweep every ``sweep_interval_seconds``."""
    client = queue.redis
    ttl = leader_ttl or max(3 * settings.sweep_interval_seconds, 10.0)
    leadership = Leadership(client, ttl, key=leader_key(settings.redis_namespace))
    # What this process has seen of the workers' leases, sweep after sweep.
    watch = LeaseWatch.from_settings(settings)
    was_leading = False
    next_seal = time.monotonic() + settings.audit_seal_interval_seconds
    next_partitions = time.monotonic()
    try:
        while not stop.is_set():
            leading = leadership.hold()
            if leading != was_leading:
                log.info("scheduler_leadership", leading=leading, token=leadership.token)
                was_leading = leading
                # Whatever was seen before is stale: a new leader watches from now on.
                watch.forget()
                next_partitions = time.monotonic()
            if leading:
                try:
                    report = asdict(
                        sweep(db=db, settings=settings, markers=queue.markers, leases=watch)
                    )
                    if any(report.values()):
                        log.info("sweep", **report)
                except (OperationalError, InterfaceError):
                    # The database is away: neither the workers nor we can write. A lease
                    # counts as unrenewed only for what is watched once it answers again.
                    watch.forget()
                    log.exception("sweep_failed")
                except Exception:
                    log.exception("sweep_failed")
                if time.monotonic() >= next_partitions:
                    next_partitions = time.monotonic() + PARTITIONS_EVERY_SECONDS
                    try:
                        ensure_partitions(db, settings)
                    except Exception:
                        log.exception("partitions_failed")
                if time.monotonic() >= next_seal:
                    next_seal = time.monotonic() + settings.audit_seal_interval_seconds
                    try:
                        seal_audit(db, settings)
                    except Exception:
                        log.exception("audit_seal_failed")
            # A standby polls often: it takes over within the TTL plus half a second.
            stop.wait(settings.sweep_interval_seconds if leading else min(ttl / 10, 0.5))
    finally:
        leadership.release()
