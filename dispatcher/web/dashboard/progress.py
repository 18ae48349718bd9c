"""How far campaigns have got: what the progress bars draw and the page polls for.

A transactional stream (``transactional:<template>``) never finishes: it is shown as an open
stream with its counts, never as a campaign at some percent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from dispatcher.engine import tallies
from dispatcher.tables.campaigns import Campaign, CampaignStatus, Run, RunStatus, is_stream
from dispatcher.tables.deliveries import OPEN_STATUSES, DeliveryStatus
from dispatcher.web.dashboard.pages import SETTLED, campaign_status_label

# One poll asks for at most this many campaigns (a page of the list).
MAX_IDS = 200


@dataclass(slots=True)
class Progress:
    campaign_id: int
    status: str
    planned: int = 0
    sent: int = 0
    failed: int = 0
    other: int = 0  # skipped or cancelled: finished without a send
    pending: int = 0  # still open: waiting, being sent, or due for a retry
    planning: bool = False  # a run is still listing its audience: more rows are coming
    stream: bool = False  # a transactional stream: open-ended, so no percent

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.other

    @property
    def percent(self) -> int | None:
        """Finished deliveries out of those planned; 100 only once every one has finished.
        None for a stream, which has no end to measure against."""
        if self.stream:
            return None
        if self.planned <= 0:
            return 100 if self.status == CampaignStatus.completed else 0
        return min(99 if self.planning else 100, self.done * 100 // self.planned)

    def share(self, part: int) -> float:
        """One bar segment's width, in percent of the bar."""
        return round(part * 100 / self.planned, 2) if self.planned > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.campaign_id,
            "status": self.status,
            "status_label": campaign_status_label(self.status, stream=self.stream),
            "stream": self.stream,
            "settled": self.status in SETTLED,
            "planned": self.planned,
            "sent": self.sent,
            "failed": self.failed,
            "other": self.other,
            "pending": self.pending,
            "percent": self.percent,
            "shares": {
                "sent": self.share(self.sent),
                "failed": self.share(self.failed),
                "other": self.share(self.other),
            },
        }


def progress_of(*, session: Session, campaign_ids: Sequence[int]) -> dict[int, Progress]:
    """Each campaign's progress: three grouped queries whatever the number of campaigns."""
    ids = list(dict.fromkeys(campaign_ids))[:MAX_IDS]
    if not ids:
        return {}
    found = {
        cid: Progress(campaign_id=cid, status=status, stream=is_stream(kind, name, channels))
        for cid, status, kind, name, channels in session.execute(
            select(
                Campaign.id, Campaign.status, Campaign.kind, Campaign.name, Campaign.channels
            ).where(Campaign.id.in_(ids))
        )
    }
    for cid, planned, planning in session.execute(
        select(
            Run.campaign_id,
            func.coalesce(func.sum(Run.planned_count), 0),
            func.coalesce(func.sum(case((Run.status == RunStatus.planning, 1), else_=0)), 0),
        )
        .where(Run.campaign_id.in_(ids))
        .group_by(Run.campaign_id)
    ):
        found[cid].planned = int(planned)
        found[cid].planning = int(planning) > 0
    total: dict[int, int] = {}
    counted = tallies.counts(session, campaign_ids=ids, by=("campaign_id", "status"))
    for cid, status, n in counted:
        item = found[cid]
        total[cid] = total.get(cid, 0) + n
        if status == DeliveryStatus.sent:
            item.sent += n
        elif status == DeliveryStatus.failed:
            item.failed += n
        elif status in OPEN_STATUSES:
            item.pending += n
        else:
            item.other += n
    for cid, item in found.items():
        # The bar's whole is never less than the rows it draws.
        item.planned = max(item.planned, total.get(cid, 0))
    return found
