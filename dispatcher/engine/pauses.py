"""Lifting a channel's pause: an operator's word that the account is fixed.

An account-wide fault (an :class:`~channels.base.AuthError`: a refused credential, a permission
the app lost, a broken APNs key) pauses its channel for ``auth_pause_seconds`` and keeps its
deliveries waiting without spending their attempts (:mod:`dispatcher.engine.send`). The pause
ends by itself, and the next send is the probe: if the fault is still there it pauses again.
Once the operator has fixed the account, :func:`resume_channel` ends the pause at once and sends
the waiting deliveries now, in one audited step.

Pauses are kept per channel account: ``zalo`` is the root account's (the environment's
settings), ``zalo@HN`` unit HN's own. Resuming a unit's account wakes the waiting deliveries of
the channel from the campaigns of that unit and the units below it (one of those that has an
account of its own, still paused, only waits again, without spending an attempt).
"""

from __future__ import annotations

from datetime import datetime

import structlog
from sqlalchemy import select, update

from channels.base import ErrorClass
from dispatcher import audit
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine import jobs
from dispatcher.engine.claim import ACTIVE_RUN
from dispatcher.engine.ratelimit import Limiter
from dispatcher.kit.clock import utcnow
from dispatcher.observability.metrics import CHANNEL_RESUMES
from dispatcher.tables.campaigns import Campaign, Run
from dispatcher.tables.deliveries import Delivery, DeliveryStatus
from dispatcher.tables.units import Unit
from dispatcher.units import service as units

log = structlog.get_logger(__name__)

# What a paused channel's deliveries wait with: the fault itself, or the pause it started.
WAITING_CLASSES = (ErrorClass.auth, ErrorClass.deferred)
RESUMED = "channel.resumed"


async def resume_channel(
    *,
    db: Database,
    settings: Settings,
    limiter: Limiter,
    channel: str,
    actor: str,
    now: datetime | None = None,
) -> int:
    """End ``channel``'s pause and queue its waiting deliveries now; returns how many.

    ``channel`` names an account: the channel (its root account) or ``zalo@HN``.

    Audited as one ``channel.resumed`` entry (who, which channel, how many deliveries). The
    rows get new batch ids, so the delayed jobs that held them claim nothing when they run.
    """
    account = channel
    channel, _, unit_code = account.partition("@")
    within: set[int] | None = None
    if unit_code:
        with db.transaction() as session:
            unit_id = session.scalar(select(Unit.id).where(Unit.code == unit_code))
            within = set() if unit_id is None else units.descendants(session, unit_id)
    was_paused = await limiter.resume(account)
    now = now or utcnow()
    woken = 0
    last_id = 0
    while True:
        with db.transaction() as session:
            rows = session.execute(
                select(Delivery.id, Delivery.run_id, Campaign.priority)
                .join(Run, Run.id == Delivery.run_id)
                .join(Campaign, Campaign.id == Run.campaign_id)
                .where(
                    Delivery.channel == channel,
                    Delivery.status == DeliveryStatus.retrying,
                    Delivery.error_class.in_(WAITING_CLASSES),
                    Delivery.id > last_id,
                    Run.status.in_(ACTIVE_RUN),
                    *([] if within is None else [Campaign.unit_id.in_(sorted(within))]),
                )
                .order_by(Delivery.id)
                .limit(settings.batch_size)
            ).all()
            if not rows:
                audit.record(
                    session,
                    actor=actor,
                    action=RESUMED,
                    subject=f"channel:{account}",
                    data={
                        "channel": channel,
                        **({"account": account} if unit_code else {}),
                        "deliveries": woken,
                        "was_paused": was_paused,
                    },
                )
                break
            last_id = rows[-1][0]
            groups: dict[tuple[int, str], list[int]] = {}
            for delivery_id, run_id, priority in rows:
                groups.setdefault((run_id, str(priority)), []).append(delivery_id)
            for (run_id, priority), ids in groups.items():
                batch_id = jobs.new_batch_id()
                session.execute(
                    update(Delivery)
                    .where(Delivery.id.in_(ids))
                    .values(batch_id=batch_id, available_at=now),
                    execution_options={"synchronize_session": False},
                )
                jobs.enqueue_after_commit(
                    session,
                    jobs.send_batch(
                        run_id=run_id,
                        ids=ids,
                        batch_id=batch_id,
                        priority=priority,
                        settings=settings,
                    ),
                )
            woken += len(rows)
    CHANNEL_RESUMES.labels(channel).inc()
    log.warning("channel_resumed", channel=channel, account=account, actor=actor, deliveries=woken)
    return woken
