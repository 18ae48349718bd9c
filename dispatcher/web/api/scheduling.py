"""What the scheduler will do: upcoming firings, and the calendar of national occasions."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from dispatcher.auth.service import STAFF
from dispatcher.campaigns import firing
from dispatcher.kit.clock import utcnow
from dispatcher.scheduling import rules
from dispatcher.scheduling.windows import VIETNAM
from dispatcher.web.http.callers import require
from dispatcher.web.http.deps import DbSession

router = APIRouter(prefix="/v1", tags=["schedules"], dependencies=[Depends(require(*STAFF))])


class FiringOut(BaseModel):
    campaign_id: int
    name: str
    kind: str
    status: str
    at: datetime
    local_time: str
    schedule: dict[str, Any] | None


class OccasionOut(BaseModel):
    key: str
    name: str
    calendar: str
    month: int
    day: int
    template: str | None
    next: datetime


@router.get(
    "/schedules/upcoming",
    response_model=list[FiringOut],
    summary="The next firings of every active rule, so staff can check where Tết lands",
)
def upcoming(session: DbSession, days: Annotated[int, Query(ge=1, le=800)] = 30) -> list[FiringOut]:
    return [
        FiringOut(
            campaign_id=u.campaign_id,
            name=u.name,
            kind=u.kind,
            status=u.status,
            at=u.at,
            local_time=u.at.astimezone(VIETNAM).strftime("%Y-%m-%d %H:%M (giờ Việt Nam)"),
            schedule=u.schedule,
        )
        for u in firing.upcoming(session=session, days=days)
    ]


@router.get("/occasions", response_model=list[OccasionOut], summary="National occasions")
def occasions() -> list[OccasionOut]:
    now = utcnow()
    out = []
    for occasion in rules.OCCASIONS.values():
        rule = rules.parse({"type": "occasion", "occasion": occasion.key})
        out.append(
            OccasionOut(
                key=occasion.key,
                name=occasion.name,
                calendar="lunar" if occasion.lunar else "solar",
                month=occasion.month,
                day=occasion.day,
                template=occasion.template,
                next=rules.next_after(rule, now),
            )
        )
    return sorted(out, key=lambda o: o.next)
