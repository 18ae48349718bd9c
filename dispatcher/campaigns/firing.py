"""What the scheduler starts: one-shot campaigns whose ``send_at`` came, and the firings of
recurring campaigns; and changing a recurring rule. Each firing is a run whose slot is unique
in the database.

The scheduler keeps ``next_fire_at`` on each recurring campaign. When it comes, the firing
becomes a run; firings the scheduler missed (it was down) run late if they are within
``DISPATCHER_SCHEDULE_GRACE_SECONDS``, and older ones are recorded as skipped runs. A slot can
never fire twice: two schedulers, a restart or a clock step all hit the same unique
(campaign, slot).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dispatcher.auth.service import Caller
from dispatcher.campaigns.approval import still_approved, withdraw
from dispatcher.campaigns.launching import launch
from dispatcher.campaigns.lifecycle import audit_event, get_campaign
from dispatcher.core.config import Settings
from dispatcher.kit.clock import utcnow
from dispatcher.kit.errors import Conflict
from dispatcher.scheduling import rules
from dispatcher.tables.campaigns import WAITING_STATUSES, Campaign, CampaignStatus, Run, RunStatus

log = structlog.get_logger(__name__)

MAX_SLOTS_PER_TICK = 500
# A firing this close to its slot is on time, not "late".
ON_TIME = timedelta(minutes=2)
# Where a campaign's rule may still change.
RESCHEDULABLE = (
    CampaignStatus.draft,
    CampaignStatus.submitted,
    CampaignStatus.approved,
    CampaignStatus.scheduled,
    CampaignStatus.paused,
)


@dataclass(slots=True)
class FireReport:
    fired: int = 0
    late: int = 0
    skipped: int = 0


def _skip(session: Session, campaign: Campaign, slot: datetime, now: datetime) -> bool:
    run = Run(
        campaign_id=campaign.id,
        scheduled_for=slot,
        slot=slot.isoformat(),
        status=RunStatus.skipped,
        template_version_id=campaign.template_version_id,
        created_at=now,
        finished_at=now,
    )
    try:
        with session.begin_nested():
            session.add(run)
            session.flush()
    except IntegrityError:
        return False
    log.warning("firing_skipped", campaign_id=campaign.id, slot=slot.isoformat())
    return True


def fire_due(*, session: Session, settings: Settings, now: datetime | None = None) -> FireReport:
    """Fire every recurring campaign whose next firing has come (run by the scheduler)."""
    now = now or utcnow()
    grace = timedelta(seconds=settings.schedule_grace_seconds)
    report = FireReport()
    due = session.scalars(
        select(Campaign)
        .where(Campaign.status == CampaignStatus.scheduled, Campaign.next_fire_at <= now)
        .where(Campaign.schedule.is_not(None))
        .order_by(Campaign.next_fire_at)
        .limit(100)
        .with_for_update(skip_locked=True)
    ).all()
    for campaign in due:
        assert campaign.schedule is not None and campaign.next_fire_at is not None
        if not still_approved(session=session, campaign=campaign, now=now):
            continue
        rule = rules.parse(campaign.schedule)
        slot = campaign.next_fire_at
        for _ in range(MAX_SLOTS_PER_TICK):
            if slot > now:
                break
            if now - slot > grace:
                report.skipped += _skip(session, campaign, slot, now)
            else:
                late = now - slot > ON_TIME
                audience: dict[str, Any] | None = None
                if isinstance(rule, rules.BirthdayRule):
                    audience = rules.birthday_audience(rule, slot)
                run = launch(
                    session=session,
                    campaign=campaign,
                    settings=settings,
                    at=slot,
                    late=late,
                    audience=audience,
                    variables=rules.firing_variables(rule, slot),
                )
                if run is not None:
                    report.fired += 1
                    report.late += late
                    log.info(
                        "campaign_fired",
                        campaign_id=campaign.id,
                        run_id=run.id,
                        slot=slot.isoformat(),
                        late=late,
                    )
            slot = rules.next_after(rule, slot)
        campaign.next_fire_at = slot
    return report


def launch_due(*, session: Session, settings: Settings, now: datetime | None = None) -> list[Run]:
    """Start every scheduled campaign whose ``send_at`` has come (run by the scheduler)."""
    now = now or utcnow()
    due = session.scalars(
        select(Campaign)
        .where(Campaign.status == CampaignStatus.scheduled, Campaign.send_at <= now)
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
    if campaign.status not in RESCHEDULABLE:
        raise Conflict(f"cannot change the schedule of a campaign that is {campaign.status}")
    if campaign.schedule is None:
        raise Conflict("this campaign has no schedule; it sends once (send_at)")
    campaign.schedule = schedule
    campaign.next_fire_at = None
    actor = caller.label if caller else "system"
    if campaign.status != CampaignStatus.draft:
        withdraw(session=session, campaign=campaign, reason="the schedule changed", actor=actor)
    campaign.updated_at = utcnow()
    audit_event(session, campaign, actor, "reschedule", schedule=schedule)
    return campaign


@dataclass(frozen=True, slots=True)
class Upcoming:
    campaign_id: int
    name: str
    kind: str
    status: str
    at: datetime
    schedule: dict[str, Any] | None


def upcoming(*, session: Session, days: int, now: datetime | None = None) -> list[Upcoming]:
    """Every firing of every active rule (and one-shot send) in the next ``days`` days."""
    now = now or utcnow()
    end = now + timedelta(days=days)
    out: list[Upcoming] = []
    campaigns = session.scalars(
        select(Campaign).where(Campaign.status.in_((*WAITING_STATUSES, CampaignStatus.running)))
    )
    for campaign in campaigns:
        if campaign.schedule is not None:
            start = min(now, campaign.next_fire_at) if campaign.next_fire_at else now
            # A firing due now but not yet taken by the scheduler is still upcoming.
            instants = rules.firings(
                rules.parse(campaign.schedule), start - timedelta(microseconds=1), end
            )
        elif (
            campaign.status == CampaignStatus.scheduled
            and campaign.send_at
            and campaign.send_at <= end
        ):
            instants = [campaign.send_at]
        else:
            continue
        out += [
            Upcoming(
                campaign.id, campaign.name, campaign.kind, campaign.status, at, campaign.schedule
            )
            for at in instants
        ]
    return sorted(out, key=lambda u: (u.at, u.campaign_id))
