"""The sweeper's pass: recovery of lost work (:mod:`dispatcher.engine.recovery`), then the
launches whose time has come (scheduled campaigns, schedule firings).

Last, the campaign counts' tallies of sessions that have ended are folded together
(:func:`dispatcher.engine.tallies.fold`, PostgreSQL).

The scheduler process runs :func:`sweep` every ``sweep_interval_seconds`` while it leads
(``workers.scheduler``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dispatcher.campaigns import firing
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine import tallies
from dispatcher.engine.backends import Markers
from dispatcher.engine.leases import LeaseWatch
from dispatcher.engine.recovery import (
    complete_finished_runs,
    expire_leases,
    requeue_orphans,
    restart_stalled_planners,
)
from dispatcher.kit.clock import utcnow
from dispatcher.observability.metrics import SCHEDULE_FIRINGS, SWEEPER_ACTIONS


@dataclass(slots=True)
class SweepReport:
    planners_restarted: int = 0
    leases_expired: int = 0
    requeued: int = 0
    runs_completed: int = 0
    tallies_folded: int = 0
    campaigns_launched: int = 0
    firings: int = 0
    firings_skipped: int = 0


def sweep(
    *,
    db: Database,
    settings: Settings,
    markers: Markers,
    now: datetime | None = None,
    leases: LeaseWatch | None = None,
) -> SweepReport:
    """One pass of every recovery step; safe to run from several processes.

    ``leases`` is what this sweeper has seen of the workers' leases at its earlier passes (the
    scheduler keeps one): a dead worker's claims are taken back only through it.
    """
    now = now or utcnow()
    report = SweepReport()
    # Recovery first, launches after: what this pass launches is already being worked on
    # (workers are fast), and must not meet this pass's recovery of older work.
    report.planners_restarted = restart_stalled_planners(db=db, settings=settings, now=now)
    report.leases_expired = expire_leases(db=db, settings=settings, watch=leases, now=now)
    report.requeued = requeue_orphans(db=db, settings=settings, markers=markers, now=now)
    with db.transaction() as session:
        report.campaigns_launched = len(
            firing.launch_due(session=session, settings=settings, now=now)
        )
    with db.transaction() as session:
        fired = firing.fire_due(session=session, settings=settings, now=now)
        report.firings, report.firings_skipped = fired.fired, fired.skipped
    # Counted once committed: a firing rolled back never happened.
    for outcome, n in (
        ("on_time", fired.fired - fired.late),
        ("late", fired.late),
        ("skipped", fired.skipped),
    ):
        if n:
            SCHEDULE_FIRINGS.labels(outcome).inc(n)
    report.runs_completed = complete_finished_runs(db=db)
    with db.transaction() as session:
        report.tallies_folded = tallies.fold(session)
    for action in (
        "campaigns_launched",
        "planners_restarted",
        "leases_expired",
        "requeued",
        "runs_completed",
    ):
        n = getattr(report, action)
        if n:
            SWEEPER_ACTIONS.labels(action).inc(n)
    return report
