"""Claim: take a batch's rows with one conditional UPDATE and a lease, then read what
rendering them needs.

Only rows still pending or retrying, and due, are taken; rows of a paused or cancelled run are
left alone, and rows another worker holds are never taken here (only the sweeper takes rows
back, from a holder it has seen stop renewing: :mod:`dispatcher.engine.leases`). The claim
writes the *lease* in the same transaction; the process's heartbeat renews it from then on.
A claim that cannot go on (an error before anything was sent) gives its rows back at once
rather than when its lease lapses.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import ColumnElement, Table, and_, func, select, update
from sqlalchemy.orm import Session

from dispatcher.content import service as content
from dispatcher.content.render import VariantData
from dispatcher.core import secrets
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine import leases
from dispatcher.engine.bulk import WriteTurns
from dispatcher.engine.work import WORKER_NAME, Work
from dispatcher.kit.clock import utcnow
from dispatcher.tables.campaigns import ACTIVE_RUN_STATUSES, Campaign, Run
from dispatcher.tables.deliveries import CLAIMABLE_STATUSES, Delivery, DeliveryStatus
from dispatcher.tables.recipients import Address, Recipient

log = structlog.get_logger(__name__)

# Runs whose rows may be claimed (and so recovered when their work is lost).
ACTIVE_RUN = ACTIVE_RUN_STATUSES
# What a template may see of a recipient, in the order the claim reads them.
PERSON_FIELDS = (
    "external_id",
    "full_name",
    "kind",
    "province",
    "birth_date",
    "language",
    "attributes",
)
deliveries_t: Table = Delivery.__table__  # type: ignore[assignment]
runs_t: Table = Run.__table__  # type: ignore[assignment]
recipients_t: Table = Recipient.__table__  # type: ignore[assignment]
addresses_t: Table = Address.__table__  # type: ignore[assignment]

_stamps = threading.Lock()
_last_stamp: datetime | None = None


def lease_stamp(seconds: float) -> datetime:
    """A claim's ``lease_until``: ``seconds`` from now, later than any other this process made
    (it identifies the claim among its run's, so two claims never share one)."""
    global _last_stamp
    with _stamps:
        stamp = utcnow() + timedelta(seconds=seconds)
        if _last_stamp is not None and stamp <= _last_stamp:
            stamp = _last_stamp + timedelta(microseconds=1)
        _last_stamp = stamp
        return stamp


@dataclass(slots=True)
class Claim:
    """What a claim took, with what rendering it needs."""

    work: list[Work] = field(default_factory=list)
    campaign: Campaign | None = None
    run: Run | None = None
    people: dict[int, dict[str, Any]] = field(default_factory=dict)
    # Each claimed row's live address on its channel, by delivery id.
    addresses: dict[int, str] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    variants: dict[tuple[str, str], VariantData] = field(default_factory=dict)
    # Set when nothing was claimable yet: when the earliest row of the batch falls due.
    due: datetime | None = None


class Claims:
    """Takes and gives back claims for one worker process."""

    def __init__(
        self, *, db: Database, settings: Settings, turns: WriteTurns, heartbeat: leases.Heartbeat
    ) -> None:
        self.db = db
        self.settings = settings
        self.turns = turns
        self.heartbeat = heartbeat
        # Read with the first claim: the unsubscribe links are signed with it.
        self.signing_key: bytes | None = None

    def take(
        self,
        run_id: int,
        delivery_ids: Sequence[int],
        batch_id: str | None,
        lease_until: datetime,
        *,
        token: str,
        urgent: bool = False,
    ) -> Claim:
        """Take the batch's claimable rows, then read what rendering them needs.

        The write transaction holds only the conditional UPDATE and the lease (on SQLite the
        writers take turns, and hold the lock for as little as possible). The rows it took are
        then read, with their recipients and addresses, as the rows of this batch that are
        claimed until exactly our ``lease_until``: the same test the record makes before it
        writes. From its commit on, the heartbeat renews the lease ``token``.
        """
        now = utcnow()
        d = deliveries_t.c
        # Rows carry the id of the batch meant to claim them (the planner, a retry or the
        # sweeper set it), so the indexed batch id picks them, not a list of 500 ids. The run
        # and the status are compared as expressions (``run_id + 0``, ``status || ''``) so that
        # no database walks the run's or the status's index instead: with a million rows
        # pending, SQLite took the run's index and PostgreSQL ANDed the batch's index with a
        # scan of every pending row's entry in the status index.
        # Claimed rows are never taken here, however old their lease: only the sweeper takes
        # rows back, from a holder it has seen stop renewing (dispatcher.engine.leases).
        claimable = (d.status + "").in_([s.value for s in CLAIMABLE_STATUSES])
        which = d.batch_id == batch_id if batch_id else d.id.in_(list(delivery_ids))
        active = (
            select(runs_t.c.id)
            .where(runs_t.c.id == run_id, runs_t.c.status.in_(ACTIVE_RUN))
            .exists()
        )
        claim_rows = (
            update(deliveries_t)
            .where(which, (d.run_id + 0) == run_id, d.available_at <= now, claimable, active)
            .values(status=DeliveryStatus.claimed.value, lease_until=lease_until, updated_at=now)
        )
        with self.turns.transaction(first=urgent) as session:
            connection = session.connection()
            claimed = connection.execute(claim_rows).rowcount
            if claimed:
                leases.take(
                    connection,
                    token=token,
                    run_id=run_id,
                    lease_until=lease_until,
                    batch_id=batch_id,
                    worker=WORKER_NAME,
                    now=now,
                )
                if self.signing_key is None:
                    self.signing_key = secrets.signing_key(session, self.settings)
        if claimed:
            self.heartbeat.hold(token)
        try:
            return self._read_claim(run_id, delivery_ids, which, lease_until, claimed, now)
        except BaseException:
            if claimed:
                # Nothing was sent: give the rows back now rather than when the lease lapses.
                self._unclaim(run_id, which, lease_until)
                self.heartbeat.drop(token)
            raise

    def _read_claim(
        self,
        run_id: int,
        delivery_ids: Sequence[int],
        which: ColumnElement[bool],
        lease_until: datetime,
        claimed: int,
        now: datetime,
    ) -> Claim:
        d = deliveries_t.c
        with self.db.reading() as session:
            run = session.get(Run, run_id)
            if run is None or (not claimed and run.status not in ACTIVE_RUN):
                return Claim(run=run)
            campaign = session.get(Campaign, run.campaign_id)
            assert campaign is not None
            claim = Claim(campaign=campaign, run=run)
            if not claimed:
                # A job that arrives before its rows are due (clock skew between hosts, an
                # early broker) is put back for when they are, rather than dropped.
                claim.due = session.scalar(
                    select(func.min(d.available_at)).where(
                        d.id.in_(list(delivery_ids)),
                        d.status.in_([s.value for s in CLAIMABLE_STATUSES]),
                        d.available_at > now,
                    )
                )
                return claim
            self._read_claimed(session, claim, which, lease_until)
            version_id = run.template_version_id or campaign.template_version_id
            assert version_id is not None, f"run {run.id} has no template version"
            claim.defaults, claim.variants = content.versions.get(session, version_id)
        return claim

    def _unclaim(self, run_id: int, which: ColumnElement[bool], lease_until: datetime) -> None:
        d = deliveries_t.c
        try:
            with self.turns.transaction() as session:
                if not leases.end(session.connection(), run_id=run_id, lease_until=lease_until):
                    return  # taken over meanwhile: the rows are not ours to give back
                session.connection().execute(
                    update(deliveries_t)
                    .where(
                        which,
                        d.status == DeliveryStatus.claimed.value,
                        d.lease_until == lease_until,
                    )
                    .values(status=DeliveryStatus.pending.value, lease_until=None)
                )
        except Exception:
            log.exception("unclaim_failed")

    @staticmethod
    def _read_claimed(
        session: Session, claim: Claim, which: ColumnElement[bool], lease_until: datetime
    ) -> None:
        """Our claimed rows, each with its recipient and its live address on its channel."""
        d, r, a = deliveries_t.c, recipients_t.c, addresses_t.c
        people, addresses, work = claim.people, claim.addresses, claim.work
        query = (
            select(
                d.id,
                d.recipient_id,
                d.channel,
                d.attempts,
                d.failures,
                d.reclaimed,
                r.external_id,
                r.full_name,
                r.kind,
                r.province,
                r.birth_date,
                r.language,
                r.attributes,
                a.value,
            )
            .select_from(
                deliveries_t.outerjoin(recipients_t, r.id == d.recipient_id).outerjoin(
                    addresses_t,
                    and_(
                        a.recipient_id == d.recipient_id,
                        a.channel == d.channel,
                        a.dead_at.is_(None),
                    ),
                )
            )
            # ``+ ''`` keeps SQLite on the batch's index rather than the status index.
            .where(
                which, (d.status + "") == DeliveryStatus.claimed.value, d.lease_until == lease_until
            )
            .order_by(d.id)
        )
        for row in session.connection().execute(query).all():
            delivery_id, recipient_id = row[0], row[1]
            work.append(Work(delivery_id, recipient_id, row[2], row[3], row[4], bool(row[5])))
            if recipient_id not in people and row[6] is not None:
                people[recipient_id] = dict(zip(PERSON_FIELDS, row[6:13], strict=True))
            if row[13] is not None:
                addresses[delivery_id] = row[13]

    def release(self, run_id: int, work: list[Work], lease_until: datetime) -> None:
        """Give claimed rows back after a crash inside the batch, so nobody waits a lease."""
        if not work:
            return
        with self.turns.transaction() as session:
            if not leases.end(session.connection(), run_id=run_id, lease_until=lease_until):
                return  # taken over meanwhile: the rows are not ours to give back
            session.execute(
                update(Delivery)
                .where(
                    Delivery.id.in_([w.delivery_id for w in work]),
                    Delivery.status == DeliveryStatus.claimed,
                    Delivery.lease_until == lease_until,
                )
                .values(status=DeliveryStatus.pending, lease_until=None),
                execution_options={"synchronize_session": False},
            )
