from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from dispatcher.auth.deps import require
from dispatcher.auth.service import Role
from dispatcher.deliveries import service
from dispatcher.deliveries.schemas import DeliveryPage
from dispatcher.deps import DbSession, QueryId

router = APIRouter(
    prefix="/v1/deliveries", tags=["deliveries"], dependencies=[Depends(require(Role.operator))]
)


@router.get("", response_model=DeliveryPage, summary="Deliveries with their attempts, by cursor")
def list_deliveries(
    session: DbSession,
    campaign_id: QueryId = None,
    run_id: QueryId = None,
    recipient: Annotated[str | None, Query(description="external_id")] = None,
    status: str | None = None,
    channel: str | None = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeliveryPage:
    return service.search(
        session=session,
        campaign_id=campaign_id,
        run_id=run_id,
        recipient=recipient,
        status=status,
        channel=channel,
        cursor=cursor,
        limit=limit,
    )
