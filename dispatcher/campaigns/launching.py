"""Launching: a campaign's run for one instant, and the queueing of its planning."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dispatcher.core.config import Settings
from dispatcher.engine import jobs
from dispatcher.engine.jobs import enqueue_after_commit
from dispatcher.kit.clock import utcnow
from dispatcher.scheduling import rules
from dispatcher.tables import partitions
from dispatcher.tables.campaigns import Campaign, CampaignStatus, Run, RunStatus
from dispatcher.tables.partitions import period_of


def first_firing(campaign: Campaign, now: datetime) -> datetime | None:
    if campaign.schedule is None:
        return None
    return rules.next_after(rules.parse(campaign.schedule), now)


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
        status=RunStatus.planning,
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
    # Its deliveries' partitions (PostgreSQL), in this transaction: never missing when written.
    partitions.ensure_month(session.connection(), period_of(at))
    if campaign.schedule is None:
        # A recurring campaign stays scheduled between its runs.
        campaign.status = CampaignStatus.running
    campaign.updated_at = now
    enqueue_plan(session=session, run=run, campaign=campaign, settings=settings)
    return run


def enqueue_plan(*, session: Session, run: Run, campaign: Campaign, settings: Settings) -> None:
    enqueue_after_commit(
        session, jobs.plan_run(run_id=run.id, priority=campaign.priority, settings=settings)
    )
