"""Leases: a live worker keeps the batch it claimed; only a dead worker's batch is taken over.

A claim writes a :class:`~dispatcher.tables.deliveries.Lease` row in the same transaction as
its rows, whose ``lease_until`` stamp it also is. Then:

- **The holder renews it while it lives.** A thread of the worker process (:class:`Heartbeat`)
  adds one to the lease's ``beats`` every ``lease_heartbeat_seconds`` (at most a quarter of the
  lease), for every batch the process is working on, whatever its other threads are doing:
  rendering, waiting at the send gate, sending, or retrying a record while PostgreSQL is away.
  A batch that ends (recorded, given back, or abandoned after an error) stops being renewed.
- **Only the sweeper takes rows back, and only from a lease it saw lapse.** Workers claim
  pending and retrying rows, never claimed ones. The sweeper (:class:`LeaseWatch`) compares
  each lease's ``beats`` with what it saw before, on its own monotonic clock: a lease counts as
  lapsed once its ``beats`` stayed the same for a whole ``lease_seconds`` of the sweeper's
  watching, with the database answering at each look. A look that fails, or a gap between two
  looks longer than half a lease (the sweeper itself was held up), starts the watch again. So
  an outage of any length (PostgreSQL down, when neither the holder nor the sweeper can write;
  Redis down; a starved CPU) never makes a live holder's lease look lapsed: after it, the
  holder has a whole lease to renew before anyone judges it. No clock of another host is read.
- **A holder whose lease was lost writes nothing** (fencing): its record deletes its lease row
  first, in the same transaction, and only while the lease is not marked lost; otherwise the
  transaction is rolled back whole. The rows' own ``lease_until`` check stays as a second fence.
  The rows taken over are flagged ``reclaimed``, so their next send is audited as a possible
  duplicate.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import datetime
from enum import StrEnum

import structlog
from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.orm import Session

from dispatcher.core.config import Settings
from dispatcher.kit.clock import utcnow
from dispatcher.tables.deliveries import Lease

log = structlog.get_logger(__name__)

# After a failed renewal (the database away), the next one is tried this soon.
RETRY_SECONDS = 1.0


class LeaseLost(Exception):
    """The lease of a claim was taken over: its holder must write nothing."""


class LeaseState(StrEnum):
    held = "held"  # still ours
    lost = "lost"  # taken over by the sweeper
    ended = "ended"  # gone: its record (or release) committed


def new_token() -> str:
    return uuid.uuid4().hex


def heartbeat_seconds(settings: Settings) -> float:
    """How often a worker renews its leases: the setting, at most a quarter of the lease."""
    return min(settings.lease_heartbeat_seconds, settings.lease_seconds / 4)


def take(
    connection: Connection,
    *,
    token: str,
    run_id: int,
    lease_until: datetime,
    batch_id: str | None,
    worker: str,
    now: datetime,
) -> None:
    """Write the lease of a claim (in the claim's transaction)."""
    connection.execute(
        insert(Lease).values(
            token=token,
            run_id=run_id,
            lease_until=lease_until,
            batch_id=batch_id,
            worker=worker,
            claimed_at=now,
            renewed_at=now,
            beats=0,
        )
    )


def end(connection: Connection, *, run_id: int, lease_until: datetime) -> bool:
    """End the lease in the transaction that closes its rows; False when it is no longer ours
    (lost, or already ended): that transaction must then write nothing."""
    result = connection.execute(
        delete(Lease).where(
            Lease.run_id == run_id, Lease.lease_until == lease_until, Lease.lost_at.is_(None)
        )
    )
    return bool(result.rowcount)


def state(session: Session, *, run_id: int, lease_until: datetime) -> LeaseState:
    lost_at = session.execute(
        select(Lease.lost_at).where(Lease.run_id == run_id, Lease.lease_until == lease_until)
    ).first()
    if lost_at is None:
        return LeaseState.ended
    return LeaseState.held if lost_at[0] is None else LeaseState.lost


class Heartbeat:
    """Renews the leases a worker process holds, from a thread of its own.

    The thread runs while the process holds a lease, and ends when it holds none.
    ``transaction`` opens the write transaction (on SQLite the pipeline's writers' turn, taken
    first, so a renewal waits for at most the write in progress and one other).
    """

    def __init__(
        self,
        *,
        interval: float,
        transaction: Callable[[], AbstractContextManager[Session]],
    ) -> None:
        self.interval = interval
        self.transaction = transaction
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failing = False
        # Waited on between renewals (never set): an Event rather than time.sleep, which tests
        # may stub out for the pipeline's own waits.
        self._pause = threading.Event()

    def hold(self, token: str) -> None:
        with self._lock:
            self._held.add(token)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="dispatcher-lease-heartbeat", daemon=True
                )
                self._thread.start()

    def drop(self, token: str) -> None:
        with self._lock:
            self._held.discard(token)

    @property
    def held(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._held)

    def beat(self) -> int:
        """Renew every lease held now; returns how many were still ours."""
        tokens = sorted(self.held)
        if not tokens:
            return 0
        with self.transaction() as session:
            result = session.execute(
                update(Lease)
                .where(Lease.token.in_(tokens), Lease.lost_at.is_(None))
                .values(beats=Lease.beats + 1, renewed_at=utcnow()),
                execution_options={"synchronize_session": False},
            )
            renewed = int(getattr(result, "rowcount", 0) or 0)
        if renewed < len(tokens):
            # Taken over while we lived (the process was starved for a whole lease): those
            # batches find out before sending or when recording, and write nothing.
            log.warning("leases_lost", held=len(tokens), renewed=renewed)
        return renewed

    def _run(self) -> None:
        while True:
            self._pause.wait(min(self.interval, RETRY_SECONDS) if self._failing else self.interval)
            with self._lock:
                if not self._held:
                    self._thread = None
                    return
            try:
                self.beat()
            except Exception as exc:
                if not self._failing:
                    log.warning("lease_renewal_failed", error=str(exc)[:300])
                self._failing = True
            else:
                if self._failing:
                    log.info("lease_renewal_recovered")
                self._failing = False


class LeaseWatch:
    """What one sweeper has seen of the leases: each lease's ``beats``, and since when (on this
    process's monotonic clock) it has seen that same number.

    A lease has lapsed when the sweeper has seen the same ``beats`` for ``lease_seconds``,
    through looks no more than ``max_gap`` apart. A failed look (:meth:`forget`) or a longer gap
    starts every watch again: the holder may not have been able to renew meanwhile.
    """

    def __init__(
        self,
        lease_seconds: float,
        *,
        max_gap: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lease_seconds = lease_seconds
        self.max_gap = lease_seconds / 2 if max_gap is None else max_gap
        self.clock = clock
        self._seen: dict[str, tuple[int, float]] = {}
        self._last_look: float | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, clock: Callable[[], float] = time.monotonic
    ) -> LeaseWatch:
        # Looks come every sweep interval (plus the sweep's own time): never ask for more.
        gap = max(settings.lease_seconds / 2, 3 * settings.sweep_interval_seconds)
        return cls(settings.lease_seconds, max_gap=gap, clock=clock)

    def forget(self) -> None:
        """The database could not be read: what was seen says nothing about the time since."""
        self._seen.clear()
        self._last_look = None

    def look(self, leases: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
        """Note the leases held now, as (token, beats); returns those that have lapsed."""
        now = self.clock()
        if self._last_look is None or now - self._last_look > self.max_gap:
            self._seen.clear()
        self._last_look = now
        seen: dict[str, tuple[int, float]] = {}
        lapsed: list[tuple[str, int]] = []
        for token, beats in leases:
            before = self._seen.get(token)
            if before is None or before[0] != beats:
                seen[token] = (beats, now)
                continue
            seen[token] = before
            if now - before[1] >= self.lease_seconds:
                lapsed.append((token, beats))
        self._seen = seen
        return lapsed
