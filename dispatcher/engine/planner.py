"""Turn a run's audience into batches, one keyset page at a time.

Each page is its own transaction: one read of the page's addresses decides each one, and the
opt-outs and dead addresses are written as ``skipped`` delivery rows with their reason (an
``INSERT ... SELECT`` of those addresses, when there are any; final: never written again), the
deliveries to send as *batch rows* of up to ``batch_size`` each, per channel
(:mod:`dispatcher.engine.batches`: the recipients and their deliveries' reserved ids),
advances the run's cursor, names it all in one audit entry, and queues one job per batch
after the commit. The deliveries to send are written by the worker that sends them, once,
with their outcomes. A planner that dies mid-way is restarted by the sweeper and carries on
from the cursor (the page's writes and the cursor commit together, so no page is planned
twice).

Fallback hops (the next channel of a delivery that ended unreached) are still planned as
``pending`` rows, on the row path: they are few, and planned inside the record transaction of
the batch whose deliveries they follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Integer,
    Select,
    String,
    Table,
    and_,
    case,
    exists,
    literal,
    or_,
    select,
)
from sqlalchemy.orm import Session, aliased

from channels.base import ErrorClass
from dispatcher import audit
from dispatcher.audiences import service as audiences
from dispatcher.consent import service as consent
from dispatcher.core.config import Settings
from dispatcher.core.db import Database, UTCDateTime
from dispatcher.engine import batches, jobs
from dispatcher.engine.bulk import chunks, write_turns
from dispatcher.engine.jobs import new_batch_id
from dispatcher.kit.clock import utcnow
from dispatcher.kit.sql import insert_for
from dispatcher.recipients.audience import compile_audience
from dispatcher.scheduling import windows
from dispatcher.tables.campaigns import OPEN_RUN_STATUSES, Campaign, CampaignStatus, Run, RunStatus
from dispatcher.tables.deliveries import Batch, BatchStatus, Delivery, DeliveryStatus, open_delivery
from dispatcher.tables.recipients import Address, Recipient
from dispatcher.units import scope as scopes

if TYPE_CHECKING:
    from dispatcher.engine.work import Work

deliveries_t: Table = Delivery.__table__  # type: ignore[assignment]
COLUMNS = (
    "run_id",
    "campaign_id",
    "recipient_id",
    "channel",
    "status",
    "batch_id",
    "error_class",
    "available_at",
    "created_at",
    "updated_at",
    "attempts",
    "failures",
    "reclaimed",
    "period",
)


# Deliveries planned in one page (one transaction; see plan_page), in whole batches. On
# SQLite a page holds the write turn for a few tens of milliseconds.
PAGE_DELIVERIES = 8000
# Skipped addresses inserted per statement (each is one bound parameter).
SKIP_CHUNK = 5000
# How long a planner that is plan_ahead_batches ahead of the sends waits before it looks again.
PLAN_AHEAD_WAIT_SECONDS = 1.0


def _skip_reason() -> ColumnElement[str]:
    """A skipped row's reason, in one expression for both: a dead address, else an opt-out."""
    return case(
        (Address.dead_at.is_not(None), literal(ErrorClass.address_dead.value, String())),
        else_=literal(ErrorClass.opted_out.value, String()),
    )


class Rows:
    """Builds the ``INSERT ... SELECT`` of delivery rows for one run and one batch.

    The rules of who gets what, in SQL over (Recipient, Address):
    - an address is *usable* when it is not dead and its owner has not opted out of the
      campaign's category on that channel;
    - unusable addresses become ``skipped`` rows with their reason (``address_dead``,
      ``opted_out``), so the audit says why nothing was sent there;
    - in fallback mode only the first usable channel in the campaign's order is planned, and
      only unusable channels before it are recorded as skipped.
    """

    def __init__(
        self, *, session: Session, run: Run, campaign: Campaign, batch_id: str, settings: Settings
    ) -> None:
        self.session = session
        self.run = run
        self.campaign = campaign
        self.batch_id = batch_id
        self.now = utcnow()
        self.batch_size = settings.batch_size
        self.channels = list(campaign.channels)
        # Greetings and news planned outside their send window wait for it to open.
        self.available = {
            channel: windows.next_open(self.now, campaign.kind, channel, settings.send_windows)
            or self.now
            for channel in self.channels
        }
        self.rank = {channel: i for i, channel in enumerate(self.channels)}
        self.opted = consent.opted_out_clause(campaign.kind)

    def usable(self, address: Any = Address) -> ColumnElement[bool]:
        alive = address.dead_at.is_(None)
        opted = consent.opted_out_clause(self.campaign.kind, address)
        return alive if opted is None else and_(alive, ~opted)

    def rank_of(self, address: Any = Address) -> ColumnElement[int]:
        return case(self.rank, value=address.channel, else_=len(self.channels))

    def none_usable_before(self) -> ColumnElement[bool]:
        """No usable address ranks ahead of this one (fallback mode)."""
        other = aliased(Address)
        return ~exists().where(
            other.recipient_id == Address.recipient_id,
            other.channel.in_(self.channels),
            self.rank_of(other) < self.rank_of(),
            self.usable(other),
        )

    def select(
        self, status: str, reason: ColumnElement[str] | None, *where: Any
    ) -> Select[*tuple[Any, ...]]:
        return (
            select(
                literal(self.run.id, Integer()),
                literal(self.campaign.id, Integer()),
                Recipient.id,
                Address.channel,
                literal(status, String()),
                literal(self.batch_id if status == DeliveryStatus.pending else None, String()),
                literal(None, String()) if reason is None else reason,
                case(
                    {c: literal(t, UTCDateTime()) for c, t in self.available.items()},
                    value=Address.channel,
                    else_=literal(self.now, UTCDateTime()),
                ),
                literal(self.now, UTCDateTime()),
                literal(self.now, UTCDateTime()),
                literal(0, Integer()),
                literal(0, Integer()),
                literal(False, Boolean()),
                literal(self.run.period, Integer()),
            )
            .join(Address, Address.recipient_id == Recipient.id)
            .where(Address.channel.in_(self.channels), *where)
        )

    def wait(self) -> float:
        """Seconds until the first of this batch's rows may be sent."""
        return max(0.0, (min(self.available.values()) - self.now).total_seconds())

    def insert(self, rows: Select[*tuple[Any, ...]]) -> list[Any]:
        """Insert; returns the new rows in their audited state (see dispatcher.audit)."""
        statement = (
            insert_for(self.session, deliveries_t)
            .from_select(list(COLUMNS), rows)
            .on_conflict_do_nothing()
            .returning(*audit.state_columns())
        )
        # Core, not the ORM's bulk machinery: nothing here becomes an object.
        return [row._mapping for row in self.session.connection().execute(statement)]

    def plan(self, *where: Any) -> tuple[list[int], int]:
        """Insert the rows for the recipients ``where`` selects: (pending ids, skipped count).

        The new rows, skipped ones with their reason, are named in an audit entry."""
        if self.campaign.channel_mode == "fallback":
            where = (*where, self.none_usable_before())
        skipped = self.skip(*where)
        pending = self.insert(
            self.select(DeliveryStatus.pending.value, None, self.usable(), *where)
        )
        for entry in audit.deliveries_drafts(
            [*skipped, *pending],
            actor="planner",
            action=audit.PLANNED,
            subject=f"run:{self.run.id}",
            skipped=len(skipped),
        ):
            audit.append(self.session, entry)
        return sorted(row["id"] for row in pending), len(skipped)

    def plan_batches(self, *where: Any) -> tuple[list[Batch], int]:
        """Plan the recipients ``where`` selects: their opt-outs and dead addresses as skipped
        rows, the rest as one batch row per channel; returns (the batches, skipped count).

        Everything planned is named in one audit entry: the skipped rows in their state, each
        batch by its job id, size, reserved ids and a digest of its members."""
        if self.campaign.channel_mode == "fallback":
            where = (*where, self.none_usable_before())
        # One read of the page decides every address: to send (usable) or to skip. The
        # skipped ones are inserted by their address ids, as that read found them.
        query = (
            select(Recipient.id, Address.channel, Address.id, self.usable())
            .join(Address, Address.recipient_id == Recipient.id)
            .where(Address.channel.in_(self.channels), *where)
            .order_by(Address.channel, Recipient.id)
        )
        by_channel: dict[str, list[int]] = {}
        unusable: list[int] = []
        for recipient_id, channel, address_id, usable in self.session.execute(query):
            if usable:
                by_channel.setdefault(channel, []).append(int(recipient_id))
            else:
                unusable.append(int(address_id))
        skipped = self.skip_addresses(unusable)
        connection = self.session.connection()
        made: list[Batch] = []
        sized = [
            (channel, chunk)
            for channel in self.channels
            for chunk in chunks(by_channel.get(channel, []), self.batch_size)
        ]
        for channel, recipient_ids in sized:
            ids = batches.reserve_ids(connection, len(recipient_ids))
            batch = Batch(
                job_id=new_batch_id(),
                run_id=self.run.id,
                campaign_id=self.campaign.id,
                channel=channel,
                status=BatchStatus.open.value,
                size=len(ids),
                recipients=batches.encode_recipients(recipient_ids),
                delivery_ids=batches.encode_ids(ids),
                first_id=ids[0],
                last_id=ids[-1],
                min_recipient_id=recipient_ids[0],
                max_recipient_id=recipient_ids[-1],
                available_at=self.available[channel],
                reclaimed=False,
                created_at=self.now,
                updated_at=self.now,
            )
            made.append(batch)
        if made:
            self.session.add_all(made)
            self.session.flush()
        named = [
            {
                "job": b.job_id,
                "channel": b.channel,
                "size": b.size,
                "ids": b.delivery_ids,
                "digest": batches.members_digest(b.recipients, b.delivery_ids, b.channel),
            }
            for b in made
        ]
        subject = f"run:{self.run.id}"
        if skipped:
            drafts = audit.deliveries_drafts(
                skipped,
                actor="planner",
                action=audit.PLANNED,
                subject=subject,
                skipped=len(skipped),
                # Named once, however many entries the skipped rows take.
                first={"batches": named},
            )
        else:
            drafts = [
                audit.draft(
                    actor="planner",
                    action=audit.PLANNED,
                    subject=subject,
                    data={"v": audit.VERSION, "skipped": 0, "batches": named},
                )
            ]
        for entry in drafts:
            audit.append(self.session, entry)
        return made, len(skipped)

    def skip(self, *where: Any) -> list[Any]:
        """Insert the skipped rows (a dead address, an opt-out) of the recipients ``where``
        selects; returns them in their audited state."""
        dead = Address.dead_at.is_not(None)
        unusable = dead if self.opted is None else or_(dead, self.opted)
        return self.insert(
            self.select(DeliveryStatus.skipped.value, _skip_reason(), unusable, *where)
        )

    def skip_addresses(self, address_ids: Sequence[int]) -> list[Any]:
        """Insert the skipped rows of these addresses, which a read of the page found dead or
        opted out (the reason as the address stands now); returns them in their audited
        state."""
        skipped: list[Any] = []
        for chunk in chunks(list(address_ids), SKIP_CHUNK):
            skipped += self.insert(
                self.select(DeliveryStatus.skipped.value, _skip_reason(), Address.id.in_(chunk))
            )
        return skipped

    def next_hops(self, failed: Sequence[tuple[int, str]]) -> list[int]:
        """Fallback: plan each (recipient, failed channel)'s next usable channel."""
        made: list[int] = []
        by_channel: dict[str, list[int]] = {}
        for recipient_id, channel in failed:
            by_channel.setdefault(channel, []).append(recipient_id)
        for channel, recipient_ids in by_channel.items():
            after = self.rank.get(channel, len(self.channels))
            pending, _ = self.plan(Recipient.id.in_(recipient_ids), self.rank_of() > after)
            made += pending
        return made


def plan_page(
    *,
    session: Session,
    run: Run,
    campaign: Campaign,
    settings: Settings,
    max_batches: int | None = None,
) -> int | None:
    """Plan the next page of ``run``; returns how many deliveries it made, None when done.

    A page holds as many whole batches as fit in ``PAGE_DELIVERIES`` (at least one, at most
    ``max_batches``): each page is a transaction with its audience query, audit entry and
    cursor update, whose cost is nearly the same for a hundred recipients as for thousands."""
    fit = max(1, PAGE_DELIVERIES // settings.batch_size)
    if max_batches is not None:
        fit = max(1, min(fit, max_batches))
    per_page = fit * settings.batch_size
    page = max(1, per_page // max(1, len(campaign.channels)))
    # Ages count on the day the run stands for, the same for every page of it.
    today = run.scheduled_for.astimezone(windows.VIETNAM).date()
    # Saved audiences resolve to the versions the approval pinned (runs from before versions
    # were pinned resolve the latest).
    resolve = audiences.resolver(session, pinned=run.audience_versions)
    audience = compile_audience(campaign.audience, today=today, resolve=resolve)
    if run.audience:
        audience = and_(
            audience, compile_audience(run.audience, "run.audience", today=today, resolve=resolve)
        )
    # Whatever the filter says, a campaign reaches only its unit's territory (the root's is the
    # whole country), as the territory is when the page is planned.
    audience = and_(audience, scopes.territory_clause(session, campaign.unit_id))
    ids = session.scalars(
        select(Recipient.id)
        .where(audience, Recipient.id > run.planned_through)
        .order_by(Recipient.id)
        .limit(page)
    ).all()
    if not ids:
        return None
    rows = Rows(session=session, run=run, campaign=campaign, batch_id="", settings=settings)
    # The page's bounds on the addresses too: PostgreSQL carries an equality across a join,
    # not a range, and without them it read every address of the table for each page (a hash
    # join over a sequential scan) once its statistics made that look cheap.
    made, skipped = rows.plan_batches(
        audience,
        Recipient.id > run.planned_through,
        Recipient.id <= ids[-1],
        Address.recipient_id > run.planned_through,
        Address.recipient_id <= ids[-1],
    )
    planned = sum(b.size for b in made)
    run.planned_through = ids[-1]
    run.planned_count += planned + skipped
    run.planner_heartbeat_at = rows.now
    for batch in made:
        assert batch.job_id is not None
        enqueue_batch(
            session=session,
            run=run,
            campaign=campaign,
            ids=[],
            batch_id=batch.job_id,
            settings=settings,
            delay=max(0.0, (batch.available_at - rows.now).total_seconds()),
        )
    return planned + skipped


def enqueue_batch(
    *,
    session: Session,
    run: Run,
    campaign: Campaign,
    ids: list[int],
    batch_id: str,
    settings: Settings,
    delay: float = 0.0,
) -> None:
    """Queue the send of a batch just planned, once the session commits."""
    jobs.enqueue_after_commit(
        session,
        jobs.send_batch(
            run_id=run.id,
            ids=ids,
            batch_id=batch_id,
            priority=campaign.priority,
            settings=settings,
            delay=delay,
        ),
    )


def plan_next_hops(
    *, session: Session, work: Sequence[Work], campaign: Campaign, run: Run, settings: Settings
) -> None:
    """Fallback: the next channel in the campaign's order, for every delivery of a batch that
    ended without reaching its recipient; each hop is its own delivery row (planned in the
    batch's record transaction)."""
    fresh_run = session.get(Run, run.id)
    if fresh_run is None:
        return
    ended = [
        (w.recipient_id, w.channel)
        for w in work
        if w.status in (DeliveryStatus.failed, DeliveryStatus.skipped)
    ]
    rows = Rows(
        session=session,
        run=fresh_run,
        campaign=campaign,
        batch_id=new_batch_id(),
        settings=settings,
    )
    hops = rows.next_hops(ended)
    fresh_run.planned_count += len(hops)
    if hops:
        enqueue_batch(
            session=session,
            run=fresh_run,
            campaign=campaign,
            ids=hops,
            batch_id=rows.batch_id,
            settings=settings,
            delay=rows.wait(),
        )


def unplanned(*, db: Database, run_id: int) -> bool:
    """Whether the run waits for its first page: planning, and nothing planned yet."""
    with db.reading() as session:
        state = session.execute(
            select(Run.status, Run.planned_through).where(Run.id == run_id)
        ).first()
    return state is not None and state[0] == RunStatus.planning and not state[1]


def lock_run(session: Session, run_id: int) -> Run | None:
    """The run, locked for its planner's page: FOR NO KEY UPDATE, so one planner plans a run at
    a time while the workers' writes that only reference the run go on (a delivery's or a
    lease's foreign key takes KEY SHARE on it). FOR UPDATE would hold every claim and record of
    the run until the page commits."""
    return session.scalar(select(Run).where(Run.id == run_id).with_for_update(key_share=True))


def plan_run(*, db: Database, run_id: int, settings: Settings, ahead: bool = True) -> int:
    """Plan every remaining page of a run; returns the deliveries made by this call.

    With ``ahead`` (the actor's way), the planner keeps at most ``plan_ahead_batches`` of the
    run's batches queued and not yet taken by a worker: at that point it stops, with its
    heartbeat fresh, and queues itself again in ``PLAN_AHEAD_WAIT_SECONDS`` (the sweeper
    restarts it should that job be lost). The broker then holds a bounded number of the run's
    jobs, and planning does not take the cores from the sends for longer than it must."""
    made = 0
    turns = write_turns(db)
    while True:
        with turns.transaction(first=True) as session:
            run = lock_run(session, run_id)
            if run is None or run.status != RunStatus.planning:
                return made
            campaign = session.get(Campaign, run.campaign_id)
            assert campaign is not None
            room = None
            if ahead:
                room = settings.plan_ahead_batches - batches.queued(
                    session, run_id, up_to=settings.plan_ahead_batches
                )
                if room <= 0:
                    now = run.planner_heartbeat_at = utcnow()
                    jobs.enqueue_after_commit(
                        session,
                        jobs.plan_run(
                            run_id=run_id,
                            priority=campaign.priority,
                            settings=settings,
                            delay=_ahead_wait(session, run_id, now, settings),
                            waited=True,
                        ),
                    )
                    return made
            count = plan_page(
                session=session, run=run, campaign=campaign, settings=settings, max_batches=room
            )
            if count is None:
                now = utcnow()
                run.status = RunStatus.running
                run.planned_at = run.planner_heartbeat_at = now
                session.flush()
                if complete_if_done(session=session, run=run):
                    return made
            else:
                made += count
                continue
        # Planned, but rows were still open a moment ago. A batch that closed the last of them
        # since may have looked at the run before this commit, seen it still planning and left
        # it: look once more now that it is running (whoever looks last sees everything).
        with turns.transaction(first=True) as session:
            run = session.get(Run, run_id)
            if run is not None:
                complete_if_done(session=session, run=run)
        return made


def _ahead_wait(session: Session, run_id: int, now: datetime, settings: Settings) -> float:
    """Seconds until a planner that is far enough ahead looks again: a second, or, when the
    batches it waits for are not due yet (a send window that opens in the morning), until the
    first of them is. At most half a lease, so that its heartbeat never looks stalled to the
    sweeper (which would start a second planner beside it)."""
    due = batches.next_due(session, run_id)
    wait = 0.0 if due is None else (due - now).total_seconds()
    return min(max(PLAN_AHEAD_WAIT_SECONDS, wait), settings.lease_seconds / 2)


def complete_if_done(*, session: Session, run: Run) -> bool:
    """Mark a fully planned run (and its one-shot campaign) completed when nothing is open."""
    if run.status != RunStatus.running or run.planned_at is None:
        return False
    still_open = session.scalar(
        select(Delivery.id)
        .where(Delivery.run_id == run.id, open_delivery(Delivery.status))
        .limit(1)
    )
    if still_open is not None or batches.run_has_open(session, run.id):
        return False
    now = utcnow()
    run.status = RunStatus.completed
    run.finished_at = now
    campaign = session.get(Campaign, run.campaign_id)
    # A recurring campaign lives on between runs; only a one-shot campaign completes.
    if (
        campaign is not None
        and campaign.schedule is None
        and campaign.kind != "transactional"
        and campaign.status == CampaignStatus.running
    ):
        active = session.scalar(
            select(Run.id)
            .where(
                Run.campaign_id == campaign.id,
                Run.id != run.id,
                Run.status.in_(OPEN_RUN_STATUSES),
            )
            .limit(1)
        )
        if active is None:
            campaign.status = CampaignStatus.completed
            campaign.completed_at = campaign.updated_at = now
    return True
