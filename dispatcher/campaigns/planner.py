"""Turn a run's audience into delivery rows, one keyset page at a time.

Each page is its own transaction: it inserts the page's deliveries with one
``INSERT ... SELECT`` (no recipient is ever loaded into Python), advances the run's cursor, and
queues one batch job of delivery ids after the commit. A planner that dies mid-way is restarted
by the sweeper and carries on from the cursor; the unique (run, recipient, channel) constraint
makes a repeated page harmless.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, ColumnElement, Integer, Select, String, literal, select
from sqlalchemy.orm import Session

from dispatcher.campaigns.models import Campaign, Run
from dispatcher.campaigns.service import queue_for
from dispatcher.clock import utcnow
from dispatcher.config import Settings
from dispatcher.consent import service as consent
from dispatcher.db import Database, UTCDateTime
from dispatcher.deliveries.models import OPEN_STATUSES, Delivery, DeliveryStatus
from dispatcher.jobs import SEND_BATCH, Job, actor_name, enqueue_after_commit, new_batch_id
from dispatcher.recipients.audience import compile_audience
from dispatcher.recipients.models import Address, Recipient
from dispatcher.sql import insert_for


def plan_page(*, session: Session, run: Run, campaign: Campaign, settings: Settings) -> int | None:
    """Plan the next page of ``run``; returns how many deliveries it made, None when done."""
    channels = list(campaign.channels)
    page = max(1, settings.batch_size // max(1, len(channels)))
    audience = compile_audience(campaign.audience)
    ids = session.scalars(
        select(Recipient.id)
        .where(audience, Recipient.id > run.planned_through)
        .order_by(Recipient.id)
        .limit(page)
    ).all()
    if not ids:
        return None
    now = utcnow()
    batch_id = new_batch_id()
    page_rows = (
        Recipient.id > run.planned_through,
        Recipient.id <= ids[-1],
        Address.channel.in_(channels),
        Address.dead_at.is_(None),
    )
    opted_out = consent.opted_out_clause(campaign.kind)

    def rows(
        status: str, reason: str | None, *where: ColumnElement[bool]
    ) -> Select[*tuple[Any, ...]]:
        return (
            select(
                literal(run.id, Integer()),
                literal(campaign.id, Integer()),
                Recipient.id,
                Address.channel,
                literal(status, String()),
                literal(batch_id if status == DeliveryStatus.pending else None, String()),
                literal(reason, String()),
                literal(now, UTCDateTime()),
                literal(now, UTCDateTime()),
                literal(now, UTCDateTime()),
                literal(0, Integer()),
                literal(0, Integer()),
                literal(False, Boolean()),
            )
            .join(Address, Address.recipient_id == Recipient.id)
            .where(audience, *page_rows, *where)
        )

    columns = [
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
    ]
    insert = insert_for(session, Delivery)
    if opted_out is not None:
        # The audit shows who was left out and why, not just who was sent to.
        skipped = rows(DeliveryStatus.skipped.value, "opted_out", opted_out)
        result = session.execute(
            insert.from_select(columns, skipped).on_conflict_do_nothing().returning(Delivery.id)
        )
        run.planned_count += len(result.all())
    sendable = rows(
        DeliveryStatus.pending.value, None, *([~opted_out] if opted_out is not None else [])
    )
    statement = (
        insert.from_select(columns, sendable).on_conflict_do_nothing().returning(Delivery.id)
    )
    delivery_ids = sorted(session.scalars(statement).all())
    run.planned_through = ids[-1]
    run.planned_count += len(delivery_ids)
    run.planner_heartbeat_at = now
    if delivery_ids:
        queue = queue_for(campaign, settings)
        enqueue_after_commit(
            session,
            Job(
                actor_name(SEND_BATCH, queue),
                queue,
                (run.id, delivery_ids, batch_id),
                batch_id=batch_id,
            ),
        )
    return len(delivery_ids)


def plan_run(*, db: Database, run_id: int, settings: Settings) -> int:
    """Plan every remaining page of a run; returns the deliveries made by this call."""
    made = 0
    while True:
        with db.transaction() as session:
            run = session.scalar(select(Run).where(Run.id == run_id).with_for_update())
            if run is None or run.status != "planning":
                return made
            campaign = session.get(Campaign, run.campaign_id)
            assert campaign is not None
            count = plan_page(session=session, run=run, campaign=campaign, settings=settings)
            if count is None:
                now = utcnow()
                run.status = "running"
                run.planned_at = run.planner_heartbeat_at = now
                session.flush()
                complete_if_done(session=session, run=run)
                return made
            made += count


def complete_if_done(*, session: Session, run: Run) -> bool:
    """Mark a fully planned run (and its one-shot campaign) completed when nothing is open."""
    if run.status != "running" or run.planned_at is None:
        return False
    still_open = session.scalar(
        select(Delivery.id)
        .where(Delivery.run_id == run.id, Delivery.status.in_(OPEN_STATUSES))
        .limit(1)
    )
    if still_open is not None:
        return False
    now = utcnow()
    run.status = "completed"
    run.finished_at = now
    campaign = session.get(Campaign, run.campaign_id)
    if campaign is not None and campaign.kind != "transactional" and campaign.status == "running":
        active = session.scalar(
            select(Run.id)
            .where(
                Run.campaign_id == campaign.id,
                Run.id != run.id,
                Run.status.in_(("planning", "running", "paused")),
            )
            .limit(1)
        )
        if active is None:
            campaign.status = "completed"
            campaign.completed_at = campaign.updated_at = now
    return True
