"""Campaigns' life cycle: create, move through their states, report progress.

draft → submitted → approved → scheduled (send_at ahead) → running → completed;
cancelled from any unfinished state; paused / resumed while scheduled or running.
Approval lives in ``approval``, runs in ``launching`` and ``firing``, transactional messages in
``messages``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dispatcher import audit
from dispatcher.audiences import service as audiences
from dispatcher.auth.schemas import PrincipalOut
from dispatcher.auth.service import Caller
from dispatcher.campaigns.launching import enqueue_plan, first_firing
from dispatcher.campaigns.schemas import CampaignIn, CampaignOut, Counts, RunOut, default_priority
from dispatcher.content import service as content
from dispatcher.content.render import choose_variant
from dispatcher.core.config import Settings
from dispatcher.engine import batches, tallies
from dispatcher.kit.clock import utcnow
from dispatcher.kit.errors import Conflict, Invalid, NotFound
from dispatcher.tables.auth import Principal
from dispatcher.tables.campaigns import (
    ACTIVE_RUN_STATUSES,
    OPEN_RUN_STATUSES,
    Campaign,
    CampaignStatus,
    Run,
    RunStatus,
    is_stream,
)
from dispatcher.tables.content import Template, TemplateVersion
from dispatcher.tables.deliveries import CLAIMABLE_STATUSES, Batch, Delivery, DeliveryStatus

TRANSITIONS: dict[str, dict[str, CampaignStatus]] = {
    # action: {from status: to status}
    "submit": {CampaignStatus.draft: CampaignStatus.submitted},
    "approve": {CampaignStatus.submitted: CampaignStatus.approved},
    "reject": {CampaignStatus.submitted: CampaignStatus.draft},
    "pause": {
        CampaignStatus.scheduled: CampaignStatus.paused,
        CampaignStatus.running: CampaignStatus.paused,
    },
    "resume": {CampaignStatus.paused: CampaignStatus.running},
    "cancel": {
        s: CampaignStatus.cancelled
        for s in CampaignStatus
        if s not in (CampaignStatus.completed, CampaignStatus.cancelled)
    },
}

HINTS: dict[tuple[str, str], str] = {
    ("approve", CampaignStatus.draft): "submit it first",
    ("reject", CampaignStatus.draft): "it is not submitted",
    ("submit", CampaignStatus.submitted): "it is already waiting for approval",
    ("resume", CampaignStatus.running): "it is not paused",
}


def get_campaign(*, session: Session, campaign_id: int, lock: bool = False) -> Campaign:
    query = select(Campaign).where(Campaign.id == campaign_id)
    if lock:
        # FOR NO KEY UPDATE: its status changes, its key does not; rows that reference it
        # (deliveries written meanwhile) need not wait.
        query = query.with_for_update(key_share=True)
    campaign = session.scalar(query)
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} does not exist")
    return campaign


def check_template_covers(
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
    check_template_covers(session, template, version, data.channels)
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
        status=CampaignStatus.draft,
        created_at=now,
        updated_at=now,
        created_by=caller.key_id if caller else None,
        author_id=caller.principal_id if caller else None,
    )
    if caller is not None and caller.unit_id is not None:
        campaign.unit_id = caller.unit_id  # the author's unit owns it (else the root)
    session.add(campaign)
    session.flush()
    return campaign


def transition(campaign: Campaign, action: str) -> CampaignStatus:
    target = TRANSITIONS[action].get(campaign.status)
    if target is None:
        hint = HINTS.get((action, campaign.status))
        allowed = ", ".join(TRANSITIONS[action])
        message = f"cannot {action} a campaign that is {campaign.status}"
        message += f": {hint}" if hint else f" (only when {allowed})"
        raise Conflict(message)
    return target


def audit_event(session: Session, campaign: Campaign, actor: str, action: str, **data: Any) -> None:
    audit.record(
        session,
        actor=actor,
        action=f"campaign.{action}",
        subject=f"campaign:{campaign.id}",
        data={"status": campaign.status, **data},
    )


def submit(*, session: Session, campaign_id: int, caller: Caller | None = None) -> Campaign:
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    campaign.status = transition(campaign, "submit")
    campaign.submitted_at = campaign.updated_at = utcnow()
    campaign.submitted_by = caller.key_id if caller else None
    campaign.submitter_id = caller.principal_id if caller else None
    campaign.status_reason = None
    audit_event(session, campaign, caller.label if caller else "system", "submit")
    return campaign


def pause(*, session: Session, campaign_id: int, caller: Caller | None = None) -> Campaign:
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    campaign.status = transition(campaign, "pause")
    campaign.updated_at = utcnow()
    audit_event(session, campaign, caller.label if caller else "system", "pause")
    session.execute(
        update(Run)
        .where(Run.campaign_id == campaign.id, Run.status.in_(ACTIVE_RUN_STATUSES))
        .values(status=RunStatus.paused)
    )
    return campaign


def resume(
    *, session: Session, campaign_id: int, settings: Settings, caller: Caller | None = None
) -> Campaign:
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    transition(campaign, "resume")
    now = utcnow()
    audit_event(session, campaign, caller.label if caller else "system", "resume")
    runs = session.scalars(
        select(Run).where(Run.campaign_id == campaign.id, Run.status == RunStatus.paused)
    ).all()
    if campaign.schedule is not None:
        # Firings that fell while paused are not caught up: staff paused them on purpose.
        campaign.status = CampaignStatus.scheduled
        campaign.next_fire_at = first_firing(campaign, now)
    elif not runs and campaign.send_at is not None and campaign.send_at > now:
        campaign.status = CampaignStatus.scheduled
    else:
        campaign.status = CampaignStatus.running
    campaign.updated_at = now
    for run in runs:
        run.status = RunStatus.running if run.planned_at is not None else RunStatus.planning
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
    campaign.status = transition(campaign, "cancel")
    now = utcnow()
    audit_event(session, campaign, caller.label if caller else "system", "cancel", reason=reason)
    campaign.updated_at = campaign.completed_at = now
    campaign.next_fire_at = None
    campaign.status_reason = reason
    session.execute(
        update(Run)
        .where(Run.campaign_id == campaign.id, Run.status.in_(OPEN_RUN_STATUSES))
        .values(status=RunStatus.cancelled, finished_at=now)
    )
    # Rows and batches a worker holds right now finish their send and are recorded as they
    # end; open batches' deliveries are written as cancelled rows.
    batches.cancel_open(
        session,
        Batch.campaign_id == campaign.id,
        now=now,
        reason="campaign cancelled",
        actor=caller.label if caller else "system",
        subject=f"campaign:{campaign.id}",
    )
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
    """The campaign's deliveries by status and channel, open batches' included (on
    PostgreSQL from its tallies: a few rows whatever the campaign's size)."""
    result = Counts()
    by_channel: dict[str, dict[str, int]] = defaultdict(dict)
    for status, channel, n in tallies.counts(
        session, campaign_ids=[campaign_id], by=("status", "channel")
    ):
        result.total += n
        result.by_status[status] = result.by_status.get(status, 0) + n
        by_channel[channel][status] = n
    result.by_channel = dict(by_channel)
    return result


def _principal_out(session: Session, principal_id: int | None) -> PrincipalOut | None:
    row = session.get(Principal, principal_id) if principal_id is not None else None
    return PrincipalOut.of(row) if row is not None else None


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
        stream=is_stream(campaign.kind, campaign.name, campaign.channels),
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
        author=_principal_out(session, campaign.author_id),
        submitter=_principal_out(session, campaign.submitter_id),
        approver=_principal_out(session, campaign.approver_id),
        approved_audiences=(
            audiences.version_numbers(session, campaign.approved_audience_versions)
            if campaign.approved_audience_versions is not None
            else None
        ),
        approved_preview_for=campaign.approved_preview_for,
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
