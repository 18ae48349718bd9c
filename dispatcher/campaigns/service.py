"""Campaigns: create, move through their states, launch runs, report progress.

draft → submitted → approved → scheduled (send_at ahead) → running → completed;
cancelled from any unfinished state; paused / resumed while scheduled or running.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dispatcher import audit
from dispatcher.audiences import service as audiences
from dispatcher.auth.service import Caller
from dispatcher.campaigns.models import Campaign, Run
from dispatcher.campaigns.schemas import (
    CampaignIn,
    CampaignOut,
    ChannelPreviewOut,
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
from dispatcher.content.render import Rendered, choose_variant
from dispatcher.deliveries.models import CLAIMABLE_STATUSES, Delivery, DeliveryStatus
from dispatcher.errors import Conflict, Forbidden, Invalid, NotFound
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

log = structlog.get_logger(__name__)

TRANSITIONS: dict[str, dict[str, str]] = {
    # action: {from status: to status}
    "submit": {"draft": "submitted"},
    "approve": {"submitted": "approved"},
    "reject": {"submitted": "draft"},
    "pause": {"scheduled": "paused", "running": "paused"},
    "resume": {"paused": "running"},
    "cancel": {
        s: "cancelled" for s in ("draft", "submitted", "approved", "scheduled", "running", "paused")
    },
}

HINTS = {
    ("approve", "draft"): "submit it first",
    ("reject", "draft"): "it is not submitted",
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


def create(*, session: Session, data: CampaignIn, caller: Caller | None = None) -> Campaign:
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
        created_by=caller.key_id if caller else None,
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


def _audit(session: Session, campaign: Campaign, actor: str, action: str, **data: Any) -> None:
    audit.record(
        session,
        actor=actor,
        action=f"campaign.{action}",
        subject=f"campaign:{campaign.id}",
        data={"status": campaign.status, **data},
    )


def submit(*, session: Session, campaign_id: int, caller: Caller | None = None) -> Campaign:
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    campaign.status = _transition(campaign, "submit")
    campaign.submitted_at = campaign.updated_at = utcnow()
    campaign.submitted_by = caller.key_id if caller else None
    campaign.status_reason = None
    _audit(session, campaign, caller.label if caller else "system", "submit")
    return campaign


@dataclass(frozen=True, slots=True)
class ChannelPreview:
    channel: str
    rendered: Rendered | None


def previews(*, session: Session, campaign: Campaign, version_id: int) -> list[ChannelPreview]:
    """Each channel's message as the sample person would get it: what an approver reads."""
    return [
        ChannelPreview(
            channel,
            content.render_sample(
                session=session,
                version_id=version_id,
                channel=channel,
                variables=campaign.variables or {},
            ),
        )
        for channel in campaign.channels
    ]


def preview_out(*, session: Session, campaign: Campaign) -> list[ChannelPreviewOut]:
    version_id = campaign.template_version_id
    if version_id is None:
        template = session.get(Template, campaign.template_id)
        assert template is not None
        version_id = content.get_version(session=session, template=template).id
    out = []
    for item in previews(session=session, campaign=campaign, version_id=version_id):
        r = item.rendered
        out.append(
            ChannelPreviewOut(
                channel=item.channel,
                locale=r.locale if r else None,
                subject=r.subject if r else None,
                body=r.body if r else None,
                html=r.html if r else None,
                problem=None if r else "the template has no variant for this channel",
            )
        )
    return out


def preview_hash(*, session: Session, campaign: Campaign, version_id: int) -> str:
    digest = hashlib.sha256()
    for item in previews(session=session, campaign=campaign, version_id=version_id):
        r = item.rendered
        parts = [item.channel] + ([r.subject or "", r.body, r.html or ""] if r else ["-"])
        digest.update("\x1f".join(parts).encode() + b"\x1e")
    return digest.hexdigest()


def audience_count(*, session: Session, campaign: Campaign) -> int:
    where = audiences.compile_for(session, campaign.audience)
    return session.scalar(select(func.count()).select_from(Recipient).where(where)) or 0


def approve(
    *, session: Session, campaign_id: int, settings: Settings, caller: Caller | None = None
) -> Campaign:
    """Approve, freezing the template version, the preview and the audience count; launch now
    unless ``send_at`` is ahead. The key that submitted a campaign cannot approve it."""
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    _transition(campaign, "approve")
    if caller is not None and campaign.submitted_by == caller.key_id:
        raise Forbidden(
            f"{caller.label} submitted this campaign; a different approver must approve it"
        )
    template = session.get(Template, campaign.template_id)
    assert template is not None
    version = content.get_version(session=session, template=template)
    _check_template_covers(session, template, version, campaign.channels)
    now = utcnow()
    campaign.template_version_id = version.id
    campaign.approved_at = campaign.updated_at = now
    campaign.approved_by = caller.key_id if caller else None
    campaign.approved_preview_hash = preview_hash(
        session=session, campaign=campaign, version_id=version.id
    )
    campaign.approved_audience_count = audience_count(session=session, campaign=campaign)
    campaign.status_reason = None
    if campaign.schedule is not None:
        campaign.status = "scheduled"
        campaign.next_fire_at = first_firing(campaign, now)
    elif campaign.send_at is not None and campaign.send_at > now:
        campaign.status = "scheduled"
    else:
        campaign.status = "approved"
    start = campaign.next_fire_at or campaign.send_at or now
    campaign.approval_expires_at = max(start, now) + timedelta(
        seconds=settings.approval_ttl_seconds
    )
    _audit(
        session,
        campaign,
        caller.label if caller else "system",
        "approve",
        template_version=version.version,
        preview_hash=campaign.approved_preview_hash,
        audience_count=campaign.approved_audience_count,
        expires_at=campaign.approval_expires_at,
    )
    if campaign.status == "approved":
        launch(session=session, campaign=campaign, settings=settings, at=campaign.send_at or now)
    return campaign


def reject(
    *, session: Session, campaign_id: int, reason: str, caller: Caller | None = None
) -> Campaign:
    """Send a submitted campaign back to its editors, saying why."""
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    campaign.status = _transition(campaign, "reject")
    campaign.status_reason = f"rejected: {reason}"
    campaign.submitted_at = campaign.submitted_by = None
    campaign.updated_at = utcnow()
    _audit(session, campaign, caller.label if caller else "system", "reject", reason=reason)
    return campaign


def withdraw(*, session: Session, campaign: Campaign, reason: str, actor: str = "system") -> None:
    """Take an approval back: the campaign waits for a new approval, saying why."""
    campaign.status = "submitted"
    campaign.status_reason = f"approval withdrawn: {reason}"
    campaign.approved_at = campaign.approved_by = campaign.approval_expires_at = None
    campaign.approved_preview_hash = campaign.approved_audience_count = None
    campaign.next_fire_at = None
    campaign.updated_at = utcnow()
    log.warning("approval_withdrawn", campaign_id=campaign.id, reason=reason)
    _audit(session, campaign, actor, "withdraw", reason=reason)


def approval_problem(*, session: Session, campaign: Campaign, now: datetime) -> str | None:
    """Why the campaign's approval no longer holds, or None. Checked before each launch.

    The audience count is compared before the first run only: a recurring campaign's
    audience grows and shrinks between firings by design.
    """
    if campaign.approved_preview_hash is None:
        return None  # approved before approvals were frozen (or a transactional campaign)
    first = session.scalar(select(Run.id).where(Run.campaign_id == campaign.id).limit(1)) is None
    if first and campaign.approval_expires_at is not None and now > campaign.approval_expires_at:
        return "it expired before the campaign was sent"
    template = session.get(Template, campaign.template_id)
    assert template is not None
    latest = content.get_version(session=session, template=template)
    if latest.id != campaign.template_version_id:
        return f"template {template.key!r} has a new version (v{latest.version})"
    assert campaign.template_version_id is not None
    seen = preview_hash(session=session, campaign=campaign, version_id=campaign.template_version_id)
    if seen != campaign.approved_preview_hash:
        return "the rendered preview changed"
    if first:
        count = audience_count(session=session, campaign=campaign)
        if count != campaign.approved_audience_count:
            return f"the audience changed from {campaign.approved_audience_count} to {count}"
    return None


def still_approved(*, session: Session, campaign: Campaign, now: datetime) -> bool:
    problem = approval_problem(session=session, campaign=campaign, now=now)
    if problem is None:
        return True
    withdraw(session=session, campaign=campaign, reason=problem)
    return False


def withdraw_for_template(*, session: Session, template_id: int, version: int) -> list[int]:
    """A new template version withdraws approvals that have not started sending."""
    waiting = session.scalars(
        select(Campaign)
        .where(Campaign.template_id == template_id)
        .where(Campaign.status.in_(("approved", "scheduled")))
        .where(Campaign.approved_preview_hash.is_not(None))
        .with_for_update()
    ).all()
    for campaign in waiting:
        withdraw(
            session=session,
            campaign=campaign,
            reason=f"the template has a new version (v{version})",
        )
    return [c.id for c in waiting]


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
        if not still_approved(session=session, campaign=campaign, now=now):
            continue
        run = launch(session=session, campaign=campaign, settings=settings, at=campaign.send_at)
        if run is not None:
            runs.append(run)
    return runs


def reschedule(
    *,
    session: Session,
    campaign_id: int,
    schedule: dict[str, Any],
    caller: Caller | None = None,
) -> Campaign:
    """Change a recurring rule. An approved rule must be approved again before it fires."""
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    if campaign.status not in ("draft", "submitted", "approved", "scheduled", "paused"):
        raise Conflict(f"cannot change the schedule of a campaign that is {campaign.status}")
    if campaign.schedule is None:
        raise Conflict("this campaign has no schedule; it sends once (send_at)")
    campaign.schedule = schedule
    campaign.next_fire_at = None
    actor = caller.label if caller else "system"
    if campaign.status != "draft":
        withdraw(session=session, campaign=campaign, reason="the schedule changed", actor=actor)
    campaign.updated_at = utcnow()
    _audit(session, campaign, actor, "reschedule", schedule=schedule)
    return campaign


def pause(*, session: Session, campaign_id: int, caller: Caller | None = None) -> Campaign:
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    campaign.status = _transition(campaign, "pause")
    campaign.updated_at = utcnow()
    _audit(session, campaign, caller.label if caller else "system", "pause")
    session.execute(
        update(Run)
        .where(Run.campaign_id == campaign.id, Run.status.in_(("planning", "running")))
        .values(status="paused")
    )
    return campaign


def resume(
    *, session: Session, campaign_id: int, settings: Settings, caller: Caller | None = None
) -> Campaign:
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    _transition(campaign, "resume")
    now = utcnow()
    _audit(session, campaign, caller.label if caller else "system", "resume")
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


def cancel(
    *,
    session: Session,
    campaign_id: int,
    reason: str | None = None,
    caller: Caller | None = None,
) -> Campaign:
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    campaign.status = _transition(campaign, "cancel")
    now = utcnow()
    _audit(session, campaign, caller.label if caller else "system", "cancel", reason=reason)
    campaign.updated_at = campaign.completed_at = now
    campaign.next_fire_at = None
    campaign.status_reason = reason
    session.execute(
        update(Run)
        .where(Run.campaign_id == campaign.id, Run.status.in_(("planning", "running", "paused")))
        .values(status="cancelled", finished_at=now)
    )
    # Rows a worker holds right now finish their send and are recorded as they end.
    audit.change_deliveries(
        session,
        [Delivery.campaign_id == campaign.id, Delivery.status.in_(CLAIMABLE_STATUSES)],
        {
            "status": DeliveryStatus.cancelled,
            "error_reason": "campaign cancelled",
            "updated_at": now,
        },
        actor=caller.label if caller else "system",
        action=audit.CANCELLED,
        subject=f"campaign:{campaign.id}",
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
        created_by=campaign.created_by,
        submitted_by=campaign.submitted_by,
        approved_by=campaign.approved_by,
        approved_audience_count=campaign.approved_audience_count,
        approval_expires_at=campaign.approval_expires_at,
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
    audit.name_deliveries(
        session,
        [d.id for d in deliveries],
        actor="api",
        action=audit.PLANNED,
        subject=f"run:{run.id}",
    )
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
