"""Campaigns: create, move through their states, launch runs, report progress.

draft → submitted → approved → scheduled (send_at ahead) → running → completed;
cancelled from any unfinished state; paused / resumed while scheduled or running.
"""

from __future__ import annotations

import hashlib
import json
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
from dispatcher.auth.schemas import PrincipalOut
from dispatcher.auth.service import Caller, Role
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
from dispatcher.content import service as content
from dispatcher.content.render import Rendered, choose_variant
from dispatcher.core.config import Settings
from dispatcher.engine import jobs
from dispatcher.engine.jobs import enqueue_after_commit, new_batch_id
from dispatcher.kit.clock import utcnow
from dispatcher.kit.errors import Conflict, Forbidden, Invalid, NotFound
from dispatcher.scheduling import rules
from dispatcher.scheduling.rules import calendar_variables
from dispatcher.scheduling.service import first_firing
from dispatcher.tables.auth import Principal
from dispatcher.tables.campaigns import STREAM_PREFIX, Campaign, Run, is_stream
from dispatcher.tables.content import Template, TemplateVersion
from dispatcher.tables.deliveries import CLAIMABLE_STATUSES, Delivery, DeliveryStatus
from dispatcher.tables.recipients import Recipient

log = structlog.get_logger(__name__)

# Roles that read every transactional message; any other key reads only its own.
READ_EVERY_MESSAGE = frozenset({Role.operator, Role.admin})

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
        author_id=caller.principal_id if caller else None,
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
    campaign.submitter_id = caller.principal_id if caller else None
    campaign.status_reason = None
    _audit(session, campaign, caller.label if caller else "system", "submit")
    return campaign


@dataclass(frozen=True, slots=True)
class ChannelPreview:
    channel: str
    rendered: Rendered | None


def send_moment(campaign: Campaign, now: datetime) -> datetime:
    """The instant the campaign's next run stands for, whose calendar its messages carry: the
    next firing of its rule, its ``send_at``, or now (it sends when approved)."""
    if campaign.schedule is not None:
        return campaign.next_fire_at or first_firing(campaign, now) or now
    return campaign.send_at or campaign.approved_preview_for or now


def run_variables(campaign: Campaign, at: datetime) -> dict[str, Any]:
    """The variables a run standing for ``at`` gives its templates, merged as the sending
    pipeline merges them: the calendar of ``at``, the campaign's, then a firing's own."""
    firing = rules.firing_variables(rules.parse(campaign.schedule), at) if campaign.schedule else {}
    return {**calendar_variables(at), **(campaign.variables or {}), **firing}


def previews(
    *, session: Session, campaign: Campaign, version_id: int, at: datetime
) -> list[ChannelPreview]:
    """Each channel's message as the sample person would get it from the run standing for
    ``at``: what an approver reads."""
    variables = run_variables(campaign, at)
    return [
        ChannelPreview(
            channel,
            content.render_sample(
                session=session, version_id=version_id, channel=channel, variables=variables
            ),
        )
        for channel in campaign.channels
    ]


def preview_out(
    *, session: Session, campaign: Campaign, now: datetime | None = None
) -> list[ChannelPreviewOut]:
    """The preview of the campaign's next run (its frozen template version once approved)."""
    version_id = campaign.template_version_id
    if version_id is None:
        template = session.get(Template, campaign.template_id)
        assert template is not None
        version_id = content.get_version(session=session, template=template).id
    at = send_moment(campaign, now or utcnow())
    out = []
    for item in previews(session=session, campaign=campaign, version_id=version_id, at=at):
        r = item.rendered
        out.append(
            ChannelPreviewOut(
                channel=item.channel,
                rendered_for=at,
                locale=r.locale if r else None,
                subject=r.subject if r else None,
                body=r.body if r else None,
                html=r.html if r else None,
                problem=None if r else "the template has no variant for this channel",
            )
        )
    return out


def preview_hash(*, session: Session, campaign: Campaign, version_id: int, at: datetime) -> str:
    digest = hashlib.sha256()
    for item in previews(session=session, campaign=campaign, version_id=version_id, at=at):
        r = item.rendered
        parts = [item.channel] + ([r.subject or "", r.body, r.html or ""] if r else ["-"])
        digest.update("\x1f".join(parts).encode() + b"\x1e")
    return digest.hexdigest()


def audience_count(*, session: Session, campaign: Campaign) -> int:
    where = audiences.compile_for(session, campaign.audience)
    return session.scalar(select(func.count()).select_from(Recipient).where(where)) or 0


def _check_two_people(campaign: Campaign, caller: Caller | None) -> None:
    """Two people: whoever wrote or submitted a campaign cannot approve it, through any of
    their keys; a system's key never approves."""
    if caller is None:
        return
    if not caller.is_person:
        raise Forbidden(f"{caller.label} belongs to a system; only a person approves campaigns")
    if caller.principal_id == campaign.submitter_id:
        raise Forbidden(
            f"{caller.who} submitted this campaign; a different approver must approve it"
        )
    if caller.principal_id == campaign.author_id:
        raise Forbidden(f"{caller.who} wrote this campaign; a different approver must approve it")


def approve(
    *, session: Session, campaign_id: int, settings: Settings, caller: Caller | None = None
) -> Campaign:
    """Approve, freezing the template version, the saved audience versions and the preview of
    the first run; launch now unless ``send_at`` is ahead. Neither the author nor the submitter
    may approve."""
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    _transition(campaign, "approve")
    _check_two_people(campaign, caller)
    template = session.get(Template, campaign.template_id)
    assert template is not None
    version = content.get_version(session=session, template=template)
    _check_template_covers(session, template, version, campaign.channels)
    now = utcnow()
    first = first_firing(campaign, now)
    at = first or campaign.send_at or now  # what the first run stands for
    pinned = audiences.resolve_versions(session, campaign.audience)
    campaign.template_version_id = version.id
    campaign.approved_at = campaign.updated_at = now
    campaign.approved_by = caller.key_id if caller else None
    campaign.approver_id = caller.principal_id if caller else None
    campaign.approved_audience_versions = {name: v.id for name, v in sorted(pinned.items())}
    campaign.approved_preview_for = at
    campaign.approved_preview_hash = preview_hash(
        session=session, campaign=campaign, version_id=version.id, at=at
    )
    campaign.approved_audience_count = audience_count(session=session, campaign=campaign)
    campaign.status_reason = None
    if campaign.schedule is not None:
        campaign.status = "scheduled"
        campaign.next_fire_at = first
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
        saved_audiences={name: v.version for name, v in sorted(pinned.items())},
        preview_for=at,
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
    campaign.submitted_at = campaign.submitted_by = campaign.submitter_id = None
    campaign.updated_at = utcnow()
    _audit(session, campaign, caller.label if caller else "system", "reject", reason=reason)
    return campaign


def withdraw(*, session: Session, campaign: Campaign, reason: str, actor: str = "system") -> None:
    """Take an approval back: the campaign waits for a new approval, saying why."""
    campaign.status = "submitted"
    campaign.status_reason = f"approval withdrawn: {reason}"
    campaign.approved_at = campaign.approved_by = campaign.approval_expires_at = None
    campaign.approver_id = campaign.approved_audience_versions = None
    campaign.approved_preview_hash = campaign.approved_preview_for = None
    campaign.approved_audience_count = None
    campaign.next_fire_at = None
    campaign.updated_at = utcnow()
    log.warning("approval_withdrawn", campaign_id=campaign.id, reason=reason)
    _audit(session, campaign, actor, "withdraw", reason=reason)


def approval_problem(*, session: Session, campaign: Campaign, now: datetime) -> str | None:
    """Why the campaign's approval no longer holds, or None. Checked before every run, of
    one-shot and recurring campaigns alike.

    What is frozen is the rule, not the membership: people who come to match it (a birthday,
    a new citizen of the province) are in; a new version of a saved audience it names is a
    changed rule and withdraws the approval.
    """
    if campaign.approved_preview_hash is None:
        return None  # a transactional campaign
    if campaign.approved_preview_for is None or campaign.approved_audience_versions is None:
        return "it was approved before the send time's preview and the audience were frozen"
    first = session.scalar(select(Run.id).where(Run.campaign_id == campaign.id).limit(1)) is None
    if first and campaign.approval_expires_at is not None and now > campaign.approval_expires_at:
        return "it expired before the campaign was sent"
    template = session.get(Template, campaign.template_id)
    assert template is not None
    latest = content.get_version(session=session, template=template)
    if latest.id != campaign.template_version_id:
        return f"template {template.key!r} has a new version (v{latest.version})"
    problem = _audience_problem(session, campaign, campaign.approved_audience_versions)
    if problem is not None:
        return problem
    assert campaign.template_version_id is not None
    seen = preview_hash(
        session=session,
        campaign=campaign,
        version_id=campaign.template_version_id,
        at=campaign.approved_preview_for,
    )
    if seen != campaign.approved_preview_hash:
        return "the rendered preview changed"
    return None


def _audience_problem(session: Session, campaign: Campaign, pinned: audiences.Pinned) -> str | None:
    try:
        current = audiences.resolve_versions(session, campaign.audience)
    except Invalid as exc:
        return f"the audience no longer resolves: {exc.message}"
    for name in sorted(set(pinned) | set(current)):
        if name not in current:
            return f"the audience no longer names saved audience {name!r}"
        if pinned.get(name) != current[name].id:
            return f"saved audience {name!r} has a new version (v{current[name].version})"
    return None


def still_approved(*, session: Session, campaign: Campaign, now: datetime) -> bool:
    problem = approval_problem(session=session, campaign=campaign, now=now)
    if problem is None:
        return True
    withdraw(session=session, campaign=campaign, reason=problem)
    return False


def _withdraw_waiting(session: Session, ids: list[int], reason: str) -> list[int]:
    """Withdraw the approvals of these campaigns that have not started sending."""
    if not ids:
        return []
    waiting = session.scalars(
        select(Campaign)
        .where(Campaign.id.in_(ids))
        .where(Campaign.status.in_(("approved", "scheduled")))
        .where(Campaign.approved_preview_hash.is_not(None))
        .order_by(Campaign.id)
        .with_for_update()
    ).all()
    for campaign in waiting:
        withdraw(session=session, campaign=campaign, reason=reason)
    return [c.id for c in waiting]


def withdraw_for_template(*, session: Session, template_id: int, version: int) -> list[int]:
    """A new template version withdraws approvals that have not started sending."""
    ids = session.scalars(
        select(Campaign.id)
        .where(Campaign.template_id == template_id)
        .where(Campaign.status.in_(("approved", "scheduled")))
    ).all()
    return _withdraw_waiting(session, list(ids), f"the template has a new version (v{version})")


def withdraw_for_audience(*, session: Session, name: str, version: int) -> list[int]:
    """A new version of a saved audience withdraws the approvals that pinned an older one,
    directly or through another saved audience."""
    rows = session.execute(
        select(Campaign.id, Campaign.approved_audience_versions)
        .where(Campaign.status.in_(("approved", "scheduled")))
        .where(Campaign.approved_audience_versions.is_not(None))
    ).all()
    ids = [cid for cid, pinned in rows if name in (pinned or {})]
    return _withdraw_waiting(
        session, ids, f"saved audience {name!r} has a new version (v{version})"
    )


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
        audience_versions=campaign.approved_audience_versions,
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
    enqueue_after_commit(
        session, jobs.plan_run(run_id=run.id, priority=campaign.priority, settings=settings)
    )


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


# Transactional messages ---------------------------------------------------------------------


def _standing_campaign(session: Session, template: Template) -> Campaign:
    """Each template's transactional messages hang under one always-running campaign."""
    name = f"{STREAM_PREFIX}{template.key}"
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
        created_by=run.created_by,
        deliveries=[MessageDelivery(id=i, channel=c, status=s) for i, c, s in deliveries],
    )


def may_read_message(caller: Caller, run: Run) -> bool:
    """The key that sent a message reads it back; operators and admins read every message."""
    return caller.role in READ_EVERY_MESSAGE or run.created_by == caller.key_id


def find_message(*, session: Session, message_id: int, caller: Caller) -> Run:
    """A transactional message the caller may read; anything else does not exist for it."""
    run = session.get(Run, message_id)
    if run is None or run.slot is not None or not may_read_message(caller, run):
        raise NotFound(f"message {message_id} does not exist")
    return run


def idempotency_scope(caller: Caller) -> str:
    """Whose Idempotency-Keys these are: each API key has its own (the same key sent by two
    keys is two messages). The one place to widen the scope to the key's owner."""
    return f"key:{caller.key_id}"


def idempotency_token(scope: str, key: str) -> str:
    """What ``runs.idempotency_key`` stores: unique per scope and key, of a fixed size."""
    return hashlib.sha256(f"{scope}\n{key}".encode()).hexdigest()


def request_hash(data: MessageIn) -> str:
    """SHA-256 of the request's canonical form: every field, defaults filled in, keys sorted
    (so the same request written another way is still the same request)."""
    canonical = json.dumps(
        data.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(run: Run, *, fingerprint: str, key: str, settings: Settings) -> Run:
    """The first message of a live key, if this request is the same as the one that made it.

    A message whose request was not recorded (a schema downgraded and upgraded again) is
    replayed: refusing a real retry would invite a new key and a second message."""
    if run.request_hash is not None and run.request_hash != fingerprint:
        raise Invalid(
            f"Idempotency-Key {key!r} was already used for a different request (message "
            f"{run.id}); a key stands for one request for "
            f"{settings.idempotency_key_hours:g} hours: send a new request with a new key",
            loc=["header", "Idempotency-Key"],
        )
    return run


def _live_key(session: Session, *, token: str, now: datetime, settings: Settings) -> Run | None:
    """The message a key stands for, or None; an expired key is released for a new message."""
    run = session.scalar(select(Run).where(Run.idempotency_key == token))
    if run is None:
        return None
    if now < run.created_at + timedelta(hours=settings.idempotency_key_hours):
        return run
    session.execute(
        update(Run)
        .where(Run.id == run.id, Run.idempotency_key == token)
        .values(idempotency_key=None),
        execution_options={"synchronize_session": False},
    )
    session.expire(run)
    return None


def send_message(
    *,
    session: Session,
    data: MessageIn,
    settings: Settings,
    caller: Caller,
    idempotency_key: str | None,
) -> tuple[Run, bool]:
    """Queue one transactional message; returns the run and whether it was new.

    An ``idempotency_key`` is the caller's own (see ``idempotency_scope``) for
    ``settings.idempotency_key_hours`` after its first use: the same request again returns the
    first message and sends nothing; another request with it is refused (422). A concurrent
    duplicate waits for the first on the unique index and gets the same answer.
    """
    now = utcnow()
    token = fingerprint = None
    if idempotency_key is not None:
        token = idempotency_token(idempotency_scope(caller), idempotency_key)
        fingerprint = request_hash(data)
        existing = _live_key(session, token=token, now=now, settings=settings)
        if existing is not None:
            return _replay(
                existing, fingerprint=fingerprint, key=idempotency_key, settings=settings
            ), False
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
    try:
        with session.begin_nested():
            # All in the savepoint: a duplicate that loses the race leaves nothing behind.
            campaign = _standing_campaign(session, template)
            run = Run(
                campaign_id=campaign.id,
                scheduled_for=now,
                slot=None,
                status="running",
                template_version_id=version.id,
                variables=data.variables,
                created_by=caller.key_id,
                idempotency_key=token,
                request_hash=fingerprint,
                created_at=now,
                started_at=now,
                planned_at=now,
                planned_count=len(usable),
            )
            session.add(run)
            session.flush()
    except IntegrityError:
        # The same key in a request that committed first (on PostgreSQL this insert waited
        # for it): answer as a retry would be answered.
        if token is None or fingerprint is None or idempotency_key is None:
            raise
        existing = session.scalar(select(Run).where(Run.idempotency_key == token))
        if existing is None:
            raise Conflict(
                f"a concurrent request with Idempotency-Key {idempotency_key!r} did not "
                "finish; try again"
            ) from None
        return _replay(
            existing, fingerprint=fingerprint, key=idempotency_key, settings=settings
        ), False
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
    # Transactional messages are urgent work.
    enqueue_after_commit(
        session,
        jobs.send_batch(
            run_id=run.id,
            ids=[d.id for d in deliveries],
            batch_id=batch_id,
            priority="urgent",
            settings=settings,
        ),
    )
    return run, True
