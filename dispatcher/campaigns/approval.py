"""Approval: two people inside the unit's chain, and what the approver saw frozen until the
campaign runs.

A unit's campaign is approved by an approver of the same unit or of a unit above it, never by
one of a sibling or a unit below.

Approving freezes the template version, the saved audience versions and the preview of the
first run; any later difference withdraws the approval before the next run.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from dispatcher import audit
from dispatcher.audiences import service as audiences
from dispatcher.auth.service import Caller
from dispatcher.campaigns.launching import first_firing, launch
from dispatcher.campaigns.lifecycle import (
    audit_event,
    check_template_covers,
    get_campaign,
    transition,
)
from dispatcher.campaigns.previews import audience_counts, preview_hash
from dispatcher.content import service as content
from dispatcher.content.schemas import TemplateIn
from dispatcher.core.config import Settings
from dispatcher.kit.clock import utcnow
from dispatcher.kit.errors import Forbidden, Invalid
from dispatcher.tables.audiences import AudienceVersion, SavedAudience
from dispatcher.tables.auth import Principal
from dispatcher.tables.campaigns import WAITING_STATUSES, Campaign, CampaignStatus, Run
from dispatcher.tables.content import Template, TemplateVersion
from dispatcher.units import scope as scopes
from dispatcher.units import service as units

log = structlog.get_logger(__name__)


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


class OutsideChain(Forbidden):
    """The approver's unit is neither the campaign's unit nor above it."""

    def __init__(self, message: str, *, unit_name: str) -> None:
        super().__init__(message)
        self.unit_name = unit_name


def _check_chain(session: Session, campaign: Campaign, caller: Caller | None) -> None:
    """The approver's unit is the campaign's unit or one of its ancestors."""
    if caller is None:
        return
    unit_id = caller.unit_id
    if unit_id is None:
        person = session.get(Principal, caller.principal_id)
        assert person is not None
        unit_id = person.unit_id
    if unit_id in units.ancestors(session, campaign.unit_id):
        return
    theirs = units.get(session, unit_id)
    owner = units.get(session, campaign.unit_id)
    raise OutsideChain(
        f"{caller.who} belongs to unit {theirs.code} ({theirs.name}); a campaign of unit "
        f"{owner.code} is approved by an approver of {owner.code} or of a unit above it",
        unit_name=owner.name,
    )


def approve(
    *, session: Session, campaign_id: int, settings: Settings, caller: Caller | None = None
) -> Campaign:
    """Approve, freezing the template version, the saved audience versions and the preview of
    the first run; launch now unless ``send_at`` is ahead. Neither the author nor the submitter
    may approve."""
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    transition(campaign, "approve")
    _check_two_people(campaign, caller)
    _check_chain(session, campaign, caller)
    template = session.get(Template, campaign.template_id)
    assert template is not None
    version = content.get_version(session=session, template=template)
    check_template_covers(session, template, version, campaign.channels)
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
    reach = audience_counts(session=session, campaign=campaign)
    campaign.approved_audience_count = reach.count
    campaign.status_reason = None
    if campaign.schedule is not None:
        campaign.status = CampaignStatus.scheduled
        campaign.next_fire_at = first
    elif campaign.send_at is not None and campaign.send_at > now:
        campaign.status = CampaignStatus.scheduled
    else:
        campaign.status = CampaignStatus.approved
    start = campaign.next_fire_at or campaign.send_at or now
    campaign.approval_expires_at = max(start, now) + timedelta(
        seconds=settings.approval_ttl_seconds
    )
    audit_event(
        session,
        campaign,
        caller.label if caller else "system",
        "approve",
        template_version=version.version,
        saved_audiences={name: v.version for name, v in sorted(pinned.items())},
        preview_for=at,
        preview_hash=campaign.approved_preview_hash,
        audience_count=campaign.approved_audience_count,
        outside_territory=reach.outside_territory,
        expires_at=campaign.approval_expires_at,
    )
    if campaign.status == CampaignStatus.approved:
        launch(session=session, campaign=campaign, settings=settings, at=campaign.send_at or now)
    return campaign


def reject(
    *, session: Session, campaign_id: int, reason: str, caller: Caller | None = None
) -> Campaign:
    """Send a submitted campaign back to its editors, saying why."""
    campaign = get_campaign(session=session, campaign_id=campaign_id, lock=True)
    campaign.status = transition(campaign, "reject")
    campaign.status_reason = f"rejected: {reason}"
    campaign.submitted_at = campaign.submitted_by = campaign.submitter_id = None
    campaign.updated_at = utcnow()
    audit_event(session, campaign, caller.label if caller else "system", "reject", reason=reason)
    return campaign


def withdraw(*, session: Session, campaign: Campaign, reason: str, actor: str = "system") -> None:
    """Take an approval back: the campaign waits for a new approval, saying why."""
    campaign.status = CampaignStatus.submitted
    campaign.status_reason = f"approval withdrawn: {reason}"
    campaign.approved_at = campaign.approved_by = campaign.approval_expires_at = None
    campaign.approver_id = campaign.approved_audience_versions = None
    campaign.approved_preview_hash = campaign.approved_preview_for = None
    campaign.approved_audience_count = None
    campaign.next_fire_at = None
    campaign.updated_at = utcnow()
    log.warning("approval_withdrawn", campaign_id=campaign.id, reason=reason)
    audit_event(session, campaign, actor, "withdraw", reason=reason)


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
    """Withdraw the approvals of these campaigns that have not started sending. Every such
    campaign, also those of units above the caller's (which may use a template or saved
    audience of a unit below them); returns those the caller's scope sees."""
    if not ids:
        return []
    waiting = session.scalars(
        select(Campaign)
        .where(Campaign.id.in_(ids))
        .where(Campaign.status.in_(WAITING_STATUSES))
        .where(Campaign.approved_preview_hash.is_not(None))
        .order_by(Campaign.id)
        .with_for_update(),
        execution_options=scopes.UNSCOPED,
    ).all()
    for campaign in waiting:
        withdraw(session=session, campaign=campaign, reason=reason)
    scope = scopes.current(session)
    return [c.id for c in waiting if scope.sees_unit(c.unit_id)]


def withdraw_for_template(*, session: Session, template_id: int, version: int) -> list[int]:
    """A new template version withdraws approvals that have not started sending."""
    ids = session.scalars(
        select(Campaign.id)
        .where(Campaign.template_id == template_id)
        .where(Campaign.status.in_(WAITING_STATUSES)),
        execution_options=scopes.UNSCOPED,
    ).all()
    return _withdraw_waiting(session, list(ids), f"the template has a new version (v{version})")


def withdraw_for_audience(*, session: Session, name: str, version: int) -> list[int]:
    """A new version of a saved audience withdraws the approvals that pinned an older one,
    directly or through another saved audience."""
    rows = session.execute(
        select(Campaign.id, Campaign.approved_audience_versions)
        .where(Campaign.status.in_(WAITING_STATUSES))
        .where(Campaign.approved_audience_versions.is_not(None)),
        execution_options=scopes.UNSCOPED,
    ).all()
    ids = [cid for cid, pinned in rows if name in (pinned or {})]
    return _withdraw_waiting(
        session, ids, f"saved audience {name!r} has a new version (v{version})"
    )


# Changes elsewhere that withdraw approvals -------------------------------------------------


def publish_template(
    *, session: Session, data: TemplateIn, caller: Caller
) -> tuple[TemplateVersion, list[int]]:
    """Publish a template's new version: campaigns approved with an older one that have not
    started sending must be approved again. Returns the version and the withdrawn campaigns."""
    version = content.publish(session=session, template=data, unit_id=caller.unit_id)
    template = version.template
    withdrawn = withdraw_for_template(
        session=session, template_id=template.id, version=version.version
    )
    audit.record(
        session,
        actor=caller.label,
        action="template.publish",
        subject=f"template:{template.key}",
        data={"version": version.version, "withdrew_approvals": withdrawn},
    )
    return version, withdrawn


def save_audience(
    *, session: Session, name: str, spec: dict[str, Any], description: str | None, caller: Caller
) -> tuple[SavedAudience, AudienceVersion, list[int]]:
    """Save a named audience: a changed filter is a new version, which withdraws the approvals
    that pinned an older one. Returns the audience, its version and the withdrawn campaigns."""
    row, version, new = audiences.save(
        session=session, name=name, spec=spec, description=description, unit_id=caller.unit_id
    )
    withdrawn = (
        withdraw_for_audience(session=session, name=row.name, version=version.version)
        if new
        else []
    )
    audit.record(
        session,
        actor=caller.label,
        action="audience.save",
        subject=f"audience:{row.name}",
        data={
            "version": version.version,
            "filter": version.filter,
            "withdrew_approvals": withdrawn,
        },
    )
    return row, version, withdrawn
