"""A campaign's outcomes in numbers: by status, channel and error, and how fast they came.

Everything is counted in SQL with GROUP BY (the campaign's rows are never loaded), on the
``(campaign_id, status, channel)`` index for the counts; the deliveries of open batches, which
have no row yet, are counted from their batch rows' sizes (pending, or claimed). A delivery
is *finished* when it is sent, failed or skipped; cancelled ones are an operator's decision,
not throughput, and are left out of the rates. When it finished is its ``updated_at`` (for a
sent delivery that is its ``sent_at``): final rows are not written again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    case,
    cast,
    extract,
    func,
    literal_column,
    select,
)
from sqlalchemy.orm import Session

from dispatcher.deliveries.schemas import (
    CampaignReport,
    ChannelCounts,
    ErrorReasonCount,
    ThroughputBucket,
)
from dispatcher.deliveries.service import get_campaign
from dispatcher.engine import tallies
from dispatcher.kit.errors import NotFound
from dispatcher.recipients.masking import mask_text
from dispatcher.tables.campaigns import Run
from dispatcher.tables.deliveries import Delivery, DeliveryStatus

FINISHED = (DeliveryStatus.sent, DeliveryStatus.failed, DeliveryStatus.skipped)
DEFAULT_TOP_REASONS = 10
# Reasons are compared whole; a long one is shown cut.
MAX_REASON_CHARS = 500


def minute_of(column: Any, dialect: str) -> ColumnElement[int]:
    """Whole minutes since 1970-01-01 UTC of a UTC timestamp column.

    The columns hold UTC without a zone: a ``timestamp without time zone`` on PostgreSQL, whose
    epoch is taken as UTC; an ISO text on SQLite, which ``strftime('%s')`` reads as UTC.
    """
    # Constants, not bound parameters: PostgreSQL matches the GROUP BY expression against the
    # selected one, and two parameters are two different expressions to it.
    sixty = literal_column("60", Integer)
    if dialect == "sqlite":
        return cast(func.strftime(literal_column("'%s'"), column), Integer) // sixty
    return cast(func.floor(extract("epoch", column) / sixty), BigInteger)


def campaign_report(
    *,
    session: Session,
    campaign_id: int,
    run_id: int | None = None,
    top_reasons: int = DEFAULT_TOP_REASONS,
) -> CampaignReport:
    """The report of one campaign, or of one of its runs; ``NotFound`` for either unknown."""
    campaign = get_campaign(session=session, campaign_id=campaign_id)
    where: list[ColumnElement[bool]] = [Delivery.campaign_id == campaign.id]
    if run_id is not None:
        run = session.get(Run, run_id)
        if run is None or run.campaign_id != campaign.id:
            raise NotFound(f"campaign {campaign_id} has no run {run_id}")
        where.append(Delivery.run_id == run_id)
    dialect = session.get_bind().dialect.name

    by_status: dict[str, int] = {}
    by_channel: dict[str, ChannelCounts] = {}
    merged: dict[tuple[str, str], int] = {
        (channel, status): count
        for channel, status, count in tallies.counts(
            session, campaign_ids=[campaign.id], run_id=run_id
        )
    }
    for (channel, status), count in sorted(merged.items()):
        by_status[status] = by_status.get(status, 0) + count
        counts = by_channel.setdefault(channel, ChannelCounts(total=0, by_status={}))
        counts.total += count
        counts.by_status[status] = count

    by_error_class = {
        error_class: count
        for error_class, count in session.execute(
            select(Delivery.error_class, func.count())
            .where(*where, Delivery.error_class.is_not(None))
            .group_by(Delivery.error_class)
            .order_by(func.count().desc(), Delivery.error_class)
        )
    }

    reasons = [
        ErrorReasonCount(
            error_class=error_class,
            reason=mask_text((reason or "")[:MAX_REASON_CHARS]) or "",
            count=count,
        )
        for error_class, reason, count in session.execute(
            select(Delivery.error_class, Delivery.error_reason, func.count())
            .where(*where, Delivery.error_reason.is_not(None))
            .group_by(Delivery.error_class, Delivery.error_reason)
            .order_by(func.count().desc(), Delivery.error_class, Delivery.error_reason)
            .limit(top_reasons)
        )
    ]

    finished_where = [*where, Delivery.status.in_(FINISHED)]
    minute = minute_of(Delivery.updated_at, dialect).label("minute")
    is_sent = case((Delivery.status == DeliveryStatus.sent, 1), else_=0)
    is_failed = case((Delivery.status == DeliveryStatus.failed, 1), else_=0)
    throughput = [
        ThroughputBucket(
            minute=datetime.fromtimestamp(int(bucket) * 60, UTC),
            finished=finished,
            sent=int(sent or 0),
            failed=int(failed or 0),
        )
        for bucket, finished, sent, failed in session.execute(
            select(minute, func.count(), func.sum(is_sent), func.sum(is_failed))
            .where(*finished_where)
            .group_by(minute)
            .order_by(minute)
        )
    ]

    finished, first, last = session.execute(
        select(func.count(), func.min(Delivery.updated_at), func.max(Delivery.updated_at)).where(
            *finished_where
        )
    ).one()
    span = (last - first).total_seconds() if first is not None and last is not None else 0.0
    return CampaignReport(
        campaign_id=campaign.id,
        run_id=run_id,
        total=sum(by_status.values()),
        by_status=by_status,
        by_channel=by_channel,
        by_error_class=by_error_class,
        top_error_reasons=reasons,
        throughput=throughput,
        finished=finished,
        first_finished_at=first,
        last_finished_at=last,
        deliveries_per_second=round(finished / span, 3) if span > 0 else None,
    )
