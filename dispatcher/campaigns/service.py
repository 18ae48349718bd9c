"""Campaigns: create, move through their states, launch runs, report progress.

draft → submitted → approved → scheduled (send_at ahead) → running → completed;
cancelled from any unfinished state; paused / resumed while scheduled or running.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dispatcher.audiences import service as audiences
from dispatcher.campaigns.models import Campaign, Run
from dispatcher.campaigns.schemas import (
    CampaignIn,
    CampaignOut,
    Counts,
    MessageDelivery,
    MessageIn,
    MessageOut,
    RunOut,
    default_priority,
)
from dispatcher.clock import utcnow
from dispatcher.config import Settings
from dispatcher.content import service as content
from dispatcher.content.models import Template, TemplateVersion
from dispatcher.content.render import choose_variant
from dispatcher.deliveries.models import CLAIMABLE_STATUSES, Delivery, DeliveryStatus
from dispatcher.errors import Conflict, Invalid, NotFound
from dispatcher.jobs import (
    PLAN_RUN,
    SEND_BATCH,
    Job,
    actor_name,
    enqueue_after_commit,
    new_batch_id,
)
from dispatcher.recipients.models import Recipient
from dispatcher.scheduling.service import first_firing

TRANSITIONS: dict[str, dict[str, str]] = {
    # action: {from status: to status}
    "submit": {"draft": "submitted"},
    "approve": {"submitted": "approved"},
    "pause": {"scheduled": "paused", "running": "paused"},
    "resume": {"paused": "running"},
    "cancel": {
        s: "cancelled" for s in ("draft", "submitted", "approved", "scheduled", "running", "paused")
    },
}

HINTS = {
    ("approve", "draft"): "submit it first",
    ("submit", "submitted"): "it is already waiting for approval",
    ("resume", "running"): "it is not paused",
}


def queue_for(campaign: Campaign, settings: Settings) -> str:
    return settings.queue_urgent if campaign.priority == "urgent" else settings.queue_bulk


def get_campaign(*, session: Session, campaign_id: int, lock: bool = False) -> Campaign:
    query = select(Campaign).where(Campaign.id == campaign_id)
    if lock:
        query = query.with_for_update()
    campaign = session.scalar(query)
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} does not exist")
    return campaign


def _check_template_covers(
    session: Session, template: Template, version: TemplateVersion, channels: list[str]
) -> None:
    _, variants = content.versions.get(session, version.id)
    missing = [c for c in channels if choose_variant(variants, c, "vi") is None]
    if missing:
        raise Invalid(
            f"template {template.key!r} v{version.version} has no variant for "
            f"{', '.join(missing)} (add one, or a 'default' variant)",
            loc=["body", "channels"],
        )


def create(*, session: Session, data: CampaignIn) -> Campaign:
    try:
        template = content.get_template(session=session, key=data.template)
    except NotFound:
        raise Invalid(
            f"template {data.template!r} does not exist", loc=["body", "template"]
        ) from None
    version = content.get_version(session=session, template=template)
    _check_template_covers(session, template, version, data.channels)
    audiences.compile_for(session, data.audience)  # saved audiences it names must exist
    now = utcnow()
    campaign = Campaign(
        name=data.name,
        kind=data.kind.value,
        template_id=template.id,
        audience=data.audience,
        channels=data.channels,
        channel_mode=data.channel_mode,
        priority=data.priority or default_priority(data.kind),
        send_at=data.send_at,
        schedule=data.schedule.model_dump(mode="json") if data.schedule else None,
        variables=data.variables,
        status="draft",
        created_at=now,
        updated_at=now,
    )
    session.add(campaign)
    session.flush()
    return campaign


def _transition(campaign: Campaign, action: str) -> str:
    target = TRANSITIONS[action].get(campaign.status)
    if target is None:
        hint = HINTS.get((action, campaign.status))
        allowed = ", ".join(TRANSITIONS[action])
        message = f"cannot {action} a campaign that is {campaign.status}"
        message += f": {hint}" if hint else f" (only when {allowed})"
        raise Conflict(message)
    return target


def submit(*, session: Session, campaign_id: int) -> Campaign:
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    campaign.status = _transition(campaign, "submit")
    campaign.submitted_at = campaign.updated_at = utcnow()
    return campaign


def approve(*, session: Session, campaign_id: int, settings: Settings) -> Campaign:
    """Approve, freezing the template version; launch now unless ``send_at`` is ahead."""
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    _transition(campaign, "approve")
    template = session.get(Template, campaign.template_id)
    assert template is not None
    version = content.get_version(session=session, template=template)
    _check_template_covers(session, template, version, campaign.channels)
    now = utcnow()
    campaign.template_version_id = version.id
    campaign.approved_at = campaign.updated_at = now
    if campaign.schedule is not None:
        campaign.status = "scheduled"
        campaign.next_fire_at = first_firing(campaign, now)
    elif campaign.send_at is not None and campaign.send_at > now:
        campaign.status = "scheduled"
    else:
        launch(session=session, campaign=campaign, settings=settings, at=campaign.send_at or now)
    return campaign


def launch(
    *,
    session: Session,
    campaign: Campaign,
    settings: Settings,
    at: datetime,
    late: bool = False,
    audience: dict[str, Any] | None = None,
    variables: dict[str, Any] | None = None,
) -> Run | None:
    """Make the run for the slot ``at`` and queue its planning; None if that slot already ran."""
    now = utcnow()
    run = Run(
        campaign_id=campaign.id,
        scheduled_for=at,
        slot=at.isoformat(),
        status="planning",
        late=late,
        audience=audience,
        variables=variables or {},
        template_version_id=campaign.template_version_id,
        created_at=now,
        started_at=now,
        planner_heartbeat_at=now,
    )
    try:
        with session.begin_nested():
            session.add(run)
            session.flush()
    except IntegrityError:
        return None
    if campaign.schedule is None:
        # A recurring campaign stays scheduled between its runs.
        campaign.status = "running"
    campaign.updated_at = now
    enqueue_plan(session=session, run=run, campaign=campaign, settings=settings)
    return run


def enqueue_plan(*, session: Session, run: Run, campaign: Campaign, settings: Settings) -> None:
    queue = queue_for(campaign, settings)
    enqueue_after_commit(session, Job(actor_name(PLAN_RUN, queue), queue, (run.id,)))


def launch_due(*, session: Session, settings: Settings, now: datetime | None = None) -> list[Run]:
    """Start every scheduled campaign whose ``send_at`` has come (run by the scheduler)."""
    now = now or utcnow()
    due = session.scalars(
        select(Campaign)
        .where(Campaign.status == "scheduled", Campaign.send_at <= now)
        .where(Campaign.schedule.is_(None))
        .order_by(Campaign.send_at)
        .limit(100)
        .with_for_update(skip_locked=True)
    ).all()
    runs = []
    for campaign in due:
        assert campaign.send_at is not None
        run = launch(session=session, campaign=campaign, settings=settings, at=campaign.send_at)
        if run is not None:
            runs.append(run)
    return runs


def reschedule(*, session: Session, campaign_id: int, schedule: dict[str, Any]) -> Campaign:
    """Change a recurring rule. An approved rule must be approved again before it fires."""
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    if campaign.status not in ("draft", "submitted", "approved", "scheduled", "paused"):
        raise Conflict(f"cannot change the schedule of a campaign that is {campaign.status}")
    if campaign.schedule is None:
        raise Conflict("this campaign has no schedule; it sends once (send_at)")
    campaign.schedule = schedule
    campaign.next_fire_at = None
    if campaign.status != "draft":
        campaign.status = "submitted"
        campaign.approved_at = None
        campaign.status_reason = "schedule changed: needs a new approval"
    campaign.updated_at = utcnow()
    return campaign


def pause(*, session: Session, campaign_id: int) -> Campaign:
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    campaign.status = _transition(campaign, "pause")
    campaign.updated_at = utcnow()
    session.execute(
        update(Run)
        .where(Run.campaign_id == campaign.id, Run.status.in_(("planning", "running")))
        .values(status="paused")
    )
    return campaign


def resume(*, session: Session, campaign_id: int, settings: Settings) -> Campaign:
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    _transition(campaign, "resume")
    now = utcnow()
    runs = session.scalars(
        select(Run).where(Run.campaign_id == campaign.id, Run.status == "paused")
    ).all()
    if campaign.schedule is not None:
        # Firings that fell while paused are not caught up: staff paused them on purpose.
        campaign.status = "scheduled"
        campaign.next_fire_at = first_firing(campaign, now)
    elif not runs and campaign.send_at is not None and campaign.send_at > now:
        campaign.status = "scheduled"
    else:
        campaign.status = "running"
    campaign.updated_at = now
    for run in runs:
        run.status = "running" if run.planned_at is not None else "planning"
        run.planner_heartbeat_at = now
        # The planner also re-queues whatever was left waiting while paused.
        enqueue_plan(session=session, run=run, campaign=campaign, settings=settings)
    return campaign


def cancel(*, session: Session, campaign_id: int, reason: str | None = None) -> Campaign:
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    campaign.status = _transition(campaign, "cancel")
    now = utcnow()
    campaign.updated_at = campaign.completed_at = now
    campaign.next_fire_at = None
    campaign.status_reason = reason
    session.execute(
        update(Run)
        .where(Run.campaign_id == campaign.id, Run.status.in_(("planning", "running", "paused")))
        .values(status="cancelled", finished_at=now)
    )
    # Rows a worker holds right now finish their send and are recorded as they end.
    session.execute(
        update(Delivery)
        .where(Delivery.campaign_id == campaign.id, Delivery.status.in_(CLAIMABLE_STATUSES))
        .values(
            status=DeliveryStatus.cancelled,
            error_reason="campaign cancelled",
            updated_at=now,
        )
    )
    return campaign


def counts(*, session: Session, campaign_id: int) -> Counts:
    rows = session.execute(
        select(Delivery.status, Delivery.channel, func.count())
        .where(Delivery.campaign_id == campaign_id)
        .group_by(Delivery.status, Delivery.channel)
    ).all()
    result = Counts()
    by_channel: dict[str, dict[str, int]] = defaultdict(dict)
    for status, channel, n in rows:
        result.total += n
        result.by_status[status] = result.by_status.get(status, 0) + n
        by_channel[channel][status] = n
    result.by_channel = dict(by_channel)
    return result


def to_out(*, session: Session, campaign: Campaign) -> CampaignOut:
    template = session.get(Template, campaign.template_id)
    version = (
        session.get(TemplateVersion, campaign.template_version_id)
        if campaign.template_version_id
        else None
    )
    runs = session.scalars(
        select(Run).where(Run.campaign_id == campaign.id).order_by(Run.id.desc()).limit(50)
    ).all()
    return CampaignOut(
        id=campaign.id,
        name=campaign.name,
        kind=campaign.kind,
        template=template.key if template else "",
        template_version=version.version if version else None,
        audience=campaign.audience,
        channels=campaign.channels,
        channel_mode=campaign.channel_mode,
        priority=campaign.priority,
        send_at=campaign.send_at,
        schedule=campaign.schedule,
        next_fire_at=campaign.next_fire_at,
        variables=campaign.variables or {},
        status=campaign.status,
        status_reason=campaign.status_reason,
        created_at=campaign.created_at,
        updated_at=campaign.updated_at,
        submitted_at=campaign.submitted_at,
        approved_at=campaign.approved_at,
        completed_at=campaign.completed_at,
        counts=counts(session=session, campaign_id=campaign.id),
        runs=[
            RunOut(
                id=r.id,
                status=r.status,
                scheduled_for=r.scheduled_for,
                planned_count=r.planned_count,
                late=r.late,
                planned_at=r.planned_at,
                started_at=r.started_at,
                finished_at=r.finished_at,
            )
            for r in runs
        ],
    )


# Transactional messages ---------------------------------------------------------------------


def _standing_campaign(session: Session, template: Template) -> Campaign:
    """Each template's transactional messages hang under one always-running campaign."""
    name = f"transactional:{template.key}"
    campaign = session.scalar(
        select(Campaign).where(Campaign.name == name, Campaign.kind == "transactional")
    )
    if campaign is None:
        now = utcnow()
        campaign = Campaign(
            name=name,
            kind="transactional",
            template_id=template.id,
            audience={},
            channels=[],
            priority="urgent",
            variables={},
            status="running",
            created_at=now,
            updated_at=now,
            approved_at=now,
        )
        session.add(campaign)
        session.flush()
    return campaign


def message_out(*, session: Session, run: Run) -> MessageOut:
    deliveries = session.execute(
        select(Delivery.id, Delivery.channel, Delivery.status)
        .where(Delivery.run_id == run.id)
        .order_by(Delivery.id)
    ).all()
    return MessageOut(
        id=run.id,
        campaign_id=run.campaign_id,
        status=run.status,
        created_at=run.created_at,
        deliveries=[MessageDelivery(id=i, channel=c, status=s) for i, c, s in deliveries],
    )


def find_message(*, session: Session, idempotency_key: str) -> Run | None:
    return session.scalar(select(Run).where(Run.idempotency_key == idempotency_key))


def send_message(
    *, session: Session, data: MessageIn, settings: Settings, idempotency_key: str | None
) -> tuple[Run, bool]:
    """Queue one transactional message; returns the run and whether it was new.

    The same ``idempotency_key`` twice returns the first message and sends nothing again.
    """
    if idempotency_key is not None:
        existing = find_message(session=session, idempotency_key=idempotency_key)
        if existing is not None:
            return existing, False
    recipient = session.scalar(select(Recipient).where(Recipient.external_id == data.recipient))
    if recipient is None:
        raise Invalid(f"recipient {data.recipient!r} does not exist", loc=["body", "recipient"])
    try:
        template = content.get_template(session=session, key=data.template)
    except NotFound:
        raise Invalid(
            f"template {data.template!r} does not exist", loc=["body", "template"]
        ) from None
    version = content.get_version(session=session, template=template)
    _check_template_covers(session, template, version, data.channels)
    addresses = {a.channel: a for a in recipient.addresses}
    usable = [c for c in data.channels if c in addresses and addresses[c].dead_at is None]
    if not usable:
        raise Invalid(
            f"recipient {data.recipient!r} has no live address on {', '.join(data.channels)}",
            loc=["body", "channels"],
        )
    campaign = _standing_campaign(session, template)
    now = utcnow()
    run = Run(
        campaign_id=campaign.id,
        scheduled_for=now,
        slot=None,
        status="running",
        template_version_id=version.id,
        variables=data.variables,
        idempotency_key=idempotency_key,
        created_at=now,
        started_at=now,
        planned_at=now,
        planned_count=len(usable),
    )
    try:
        with session.begin_nested():
            session.add(run)
            session.flush()
    except IntegrityError:
        # Another request with the same key won the race; answer with its message.
        assert idempotency_key is not None
        existing = find_message(session=session, idempotency_key=idempotency_key)
        if existing is None:
            raise
        return existing, False
    batch_id = new_batch_id()
    deliveries = [
        Delivery(
            run_id=run.id,
            campaign_id=campaign.id,
            recipient_id=recipient.id,
            channel=channel,
            status=DeliveryStatus.pending,
            batch_id=batch_id,
            available_at=now,
            created_at=now,
            updated_at=now,
        )
        for channel in usable
    ]
    session.add_all(deliveries)
    session.flush()
    queue = settings.queue_urgent
    enqueue_after_commit(
        session,
        Job(
            actor_name(SEND_BATCH, queue),
            queue,
            (run.id, [d.id for d in deliveries], batch_id),
            batch_id=batch_id,
        ),
    )
    return run, True
