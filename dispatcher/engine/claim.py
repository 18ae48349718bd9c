"""Claim: take a batch with one conditional UPDATE and a lease, then read what rendering it
needs.

A batch the planner wrote as a batch row (:mod:`dispatcher.engine.batches`) is taken whole:
one UPDATE of one row, which returns its recipients and reserved delivery ids; its deliveries
have no rows yet (the record inserts them). Work that has rows (retries, fallback hops, one-off
messages, rows planned before batch rows existed) is taken on the *row path*: the rows that
carry the job's batch id.

Only rows still pending or retrying, and due, are taken; rows of a paused or cancelled run are
left alone, and rows another worker holds are never taken here (only the sweeper takes rows
back, from a holder it has seen stop renewing: :mod:`dispatcher.engine.leases`). The claim
writes the *lease* in the same transaction; the process's heartbeat renews it from then on.
A claim that cannot go on (an error before anything was sent) gives its rows back at once
rather than when its lease lapses.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

import structlog
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Table,
    and_,
    any_,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dispatcher.content import service as content
from dispatcher.content.render import VariantData
from dispatcher.core import secrets
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine import batches, leases
from dispatcher.engine.bulk import WriteTurns
from dispatcher.engine.work import WORKER_NAME, Work
from dispatcher.kit.clock import utcnow
from dispatcher.tables.campaigns import ACTIVE_RUN_STATUSES, Campaign, Run
from dispatcher.tables.deliveries import (
    CLAIMABLE_STATUSES,
    Batch,
    BatchStatus,
    Delivery,
    DeliveryStatus,
    open_delivery,
)
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
batches_t: Table = Batch.__table__  # type: ignore[assignment]
runs_t: Table = Run.__table__  # type: ignore[assignment]
recipients_t: Table = Recipient.__table__  # type: ignore[assignment]
addresses_t: Table = Address.__table__  # type: ignore[assignment]

_stamps = threading.Lock()
_last_stamp: datetime | None = None


class LeaseStampTaken(Exception):
    """Another process's claim of the same run holds this ``lease_until`` (both made it in the
    same microsecond): the claim took nothing, and is made again with a new stamp."""


def _stamp_taken(exc: IntegrityError) -> bool:
    # PostgreSQL names the constraint; SQLite its columns.
    text = str(exc.orig)
    return "uq_leases_run_id_lease_until" in text or "leases.run_id, leases.lease_until" in text


def lease_stamp(seconds: float) -> datetime:
    """A claim's ``lease_until``: ``seconds`` from now, later than any other this process made
    (it identifies the claim among its run's, so two claims never share one). A stamp another
    process made in the same microsecond is refused by the leases' unique key: the claim
    raises :class:`LeaseStampTaken`, having taken nothing."""
    global _last_stamp
    with _stamps:
        stamp = utcnow() + timedelta(seconds=seconds)
        if _last_stamp is not None and stamp <= _last_stamp:
            stamp = _last_stamp + timedelta(microseconds=1)
        _last_stamp = stamp
        return stamp


@dataclass(slots=True)
class ClaimedBatch:
    """A batch row a claim took whole: its deliveries are written by the record."""

    id: int
    job_id: str
    channel: str
    created_at: datetime


@dataclass(slots=True)
class Claim:
    """What a claim took, with what rendering it needs."""

    work: list[Work] = field(default_factory=list)
    # Set when the claim took a batch row rather than rows.
    batch: ClaimedBatch | None = None
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
        # ``open_delivery`` is the predicate of the partial index on the open rows' batch id;
        # the status test itself stays an expression.
        claimable = and_(
            open_delivery(d.status), (d.status + "").in_([s.value for s in CLAIMABLE_STATUSES])
        )
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
        b = batches_t.c
        claim_batch = (
            update(batches_t)
            .where(
                b.job_id == batch_id,
                b.run_id == run_id,
                b.status == BatchStatus.open.value,
                b.available_at <= now,
                active,
            )
            .values(status=BatchStatus.claimed.value, lease_until=lease_until, updated_at=now)
            .returning(b.id, b.channel, b.recipients, b.delivery_ids, b.reclaimed, b.created_at)
        )
        taken: Any = None
        try:
            with self.turns.transaction(first=urgent) as session:
                connection = session.connection()
                if batch_id and not delivery_ids:
                    # A batch row's job (its job carries no ids): one UPDATE of one row.
                    taken = connection.execute(claim_batch).first()
                    claimed = len(batches.decode_ids(taken.delivery_ids)) if taken else 0
                else:
                    claimed = connection.execute(claim_rows).rowcount
                    if not claimed and batch_id:
                        # A batch row's job that came with ids (a caller that read them).
                        taken = connection.execute(claim_batch).first()
                        claimed = len(batches.decode_ids(taken.delivery_ids)) if taken else 0
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
        except IntegrityError as exc:
            if not _stamp_taken(exc):
                raise
            raise LeaseStampTaken(
                f"run {run_id}: lease {lease_until.isoformat()} is another claim's"
            ) from None
        if claimed:
            self.heartbeat.hold(token)
        try:
            claim = self._read_claim(
                run_id, delivery_ids, batch_id, which, lease_until, claimed, now, taken
            )
        except BaseException:
            if claimed:
                # Nothing was sent: give the rows back now rather than when the lease lapses.
                if taken is not None:
                    self._unclaim_batch(run_id, int(taken.id), lease_until)
                else:
                    self._unclaim(run_id, which, lease_until)
                self.heartbeat.drop(token)
            raise
        return claim

    def _read_claim(
        self,
        run_id: int,
        delivery_ids: Sequence[int],
        batch_id: str | None,
        which: ColumnElement[bool],
        lease_until: datetime,
        claimed: int,
        now: datetime,
        taken: Any,
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
                if claim.due is None and batch_id:
                    b = batches_t.c
                    claim.due = session.scalar(
                        select(b.available_at).where(
                            b.job_id == batch_id,
                            b.status == BatchStatus.open.value,
                            b.available_at > now,
                        )
                    )
                return claim
            if taken is not None:
                claim.batch = ClaimedBatch(
                    id=int(taken.id),
                    job_id=str(batch_id),
                    channel=str(taken.channel),
                    created_at=taken.created_at,
                )
                self._read_batch(session, claim, taken)
            else:
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

    def _unclaim_batch(self, run_id: int, batch_pk: int, lease_until: datetime) -> None:
        try:
            with self.turns.transaction() as session:
                if not leases.end(session.connection(), run_id=run_id, lease_until=lease_until):
                    return  # taken over meanwhile: the batch is not ours to give back
                give_back_batch(session, batch_pk, lease_until)
        except Exception:
            log.exception("unclaim_failed")

    @staticmethod
    def _read_batch(session: Session, claim: Claim, taken: Any) -> None:
        """A claimed batch row's deliveries, each with its recipient and live address.

        Two statements of plain SQL through the driver's own cursor (a thousand rows each):
        SQLAlchemy's row processing, one row at a time, cost more than the reads. A birth
        date may come back as ISO text and attributes as JSON text (SQLite); the recipient
        view reads both."""
        channel = str(taken.channel)
        recipient_ids = batches.decode_recipients(taken.recipients)
        delivery_ids = batches.decode_ids(taken.delivery_ids)
        reclaimed = bool(taken.reclaimed)
        people, addresses = claim.people, claim.addresses
        connection = session.connection()
        postgresql = connection.dialect.name == "postgresql"
        # Two index lookups rather than a join: a join's plan, made while the statistics of
        # freshly imported tables were stale, spilled a hash join to disk on PostgreSQL.
        # On PostgreSQL the ids are one array parameter (see _one_of).
        if postgresql:
            ids = pg_array(recipient_ids)
            people_rows = _driver_rows(connection, _PEOPLE_SQL_PG, {"ids": ids})
        else:
            people_rows = _driver_rows(
                connection, _PEOPLE_SQL + _sqlite_in(len(recipient_ids)), tuple(recipient_ids)
            )
        loads = json.loads
        for row in people_rows:
            attributes = row[7]
            if type(attributes) is str:
                attributes = {} if attributes == "{}" else loads(attributes)
            people[row[0]] = {
                "external_id": row[1],
                "full_name": row[2],
                "kind": row[3],
                "province": row[4],
                "birth_date": row[5],
                "language": row[6],
                "attributes": attributes,
            }
        if postgresql:
            address_rows = _driver_rows(
                connection,
                _ADDRESSES_SQL + "= ANY(%(ids)s::bigint[])",
                {"channel": channel, "ids": ids},
            )
        else:
            address_rows = _driver_rows(
                connection,
                _ADDRESSES_SQL_SQLITE + _sqlite_in(len(recipient_ids)),
                (channel, *recipient_ids),
            )
        found = {
            recipient_id: value for recipient_id, value in address_rows if recipient_id in people
        }
        work = claim.work
        append = work.append
        for delivery_id, recipient_id in zip(delivery_ids, recipient_ids, strict=True):
            append(Work(delivery_id, recipient_id, channel, 0, 0, reclaimed))
            value = found.get(recipient_id)
            if value is not None:
                addresses[delivery_id] = value

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

    def release(
        self,
        run_id: int,
        work: list[Work],
        lease_until: datetime,
        batch: ClaimedBatch | None = None,
    ) -> None:
        """Give claimed rows back after a crash inside the batch, so nobody waits a lease."""
        if not work:
            return
        with self.turns.transaction() as session:
            if not leases.end(session.connection(), run_id=run_id, lease_until=lease_until):
                return  # taken over meanwhile: the rows are not ours to give back
            if batch is not None:
                give_back_batch(session, batch.id, lease_until)
                return
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


# A claimed batch row's recipients (PERSON_FIELDS, in that order) and their live addresses
# on its channel, each completed by the dialect's "id in the batch's ids".
_PEOPLE_SQL = (
    "SELECT id, external_id, full_name, kind, province, birth_date, language, attributes "
    "FROM recipients WHERE id "
)
# The attributes as JSON text, as SQLite gives them: most are empty and read as such without a
# parse (psycopg's JSON loading cost 2.5 ms per thousand rows, the text 0.2).
_PEOPLE_SQL_PG = (
    "SELECT id, external_id, full_name, kind, province, birth_date, language, attributes::text "
    "FROM recipients WHERE id = ANY(%(ids)s::bigint[])"
)
_ADDRESSES_SQL = (
    "SELECT recipient_id, value FROM addresses "
    "WHERE channel = %(channel)s AND dead_at IS NULL AND recipient_id "
)
_ADDRESSES_SQL_SQLITE = (
    "SELECT recipient_id, value FROM addresses "
    "WHERE channel = ? AND dead_at IS NULL AND recipient_id "
)


def _driver_rows(connection: Connection, statement: str, params: Any) -> list[Any]:
    """The rows of ``statement`` as the driver returns them (tuples, fetched at once), in the
    connection's transaction."""
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(statement, params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def pg_array(ids: Sequence[int]) -> str:
    """Ids as one PostgreSQL array literal, for ``%(ids)s::bigint[]``: psycopg's dumping of a
    list of a thousand ints cost 0.9 ms of the client's CPU, the text 0.2."""
    return "{" + ",".join(map(str, ids)) + "}"


@lru_cache(maxsize=64)
def _sqlite_in(count: int) -> str:
    return "IN (" + ", ".join("?" * count) + ")"


def _one_of(session: Session, column: Any, ids: list[int]) -> ColumnElement[bool]:
    """``column`` in ``ids``: one array parameter on PostgreSQL. A thousand parameters make a
    statement whose generic plan (psycopg prepares a statement run five times) hash-joins the
    whole addresses table; ``= ANY(array)`` keeps the index lookups."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam("ids", ids, type_=postgresql.ARRAY(BigInteger)))
    return column.in_(ids)


def give_back_batch(session: Session, batch_pk: int, lease_until: datetime) -> None:
    """A claimed batch open again, unsent (its lease ended by the caller)."""
    b = batches_t.c
    session.connection().execute(
        update(batches_t)
        .where(
            b.id == batch_pk,
            b.status == BatchStatus.claimed.value,
            b.lease_until == lease_until,
        )
        .values(status=BatchStatus.open.value, lease_until=None)
    )
