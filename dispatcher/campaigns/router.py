from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from sqlalchemy import select

from dispatcher.campaigns import service
from dispatcher.campaigns.models import Campaign, Run
from dispatcher.campaigns.schemas import (
    CampaignIn,
    CampaignOut,
    MessageIn,
    MessageOut,
    ScheduleIn,
)
from dispatcher.deps import AppSettings, DbSession, PathId
from dispatcher.errors import NotFound

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])
messages = APIRouter(prefix="/v1/messages", tags=["messages"])


@router.post("", status_code=201, response_model=CampaignOut)
def create_campaign(data: CampaignIn, session: DbSession) -> CampaignOut:
    campaign = service.create(session=session, data=data)
    return service.to_out(session=session, campaign=campaign)


@router.get("", response_model=list[CampaignOut])
def list_campaigns(
    session: DbSession,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[CampaignOut]:
    query = select(Campaign).order_by(Campaign.id.desc()).limit(limit)
    if status:
        query = query.where(Campaign.status == status)
    return [service.to_out(session=session, campaign=c) for c in session.scalars(query)]


@router.get("/{campaign_id}", response_model=CampaignOut, summary="Status and live counts")
def get_campaign(campaign_id: PathId, session: DbSession) -> CampaignOut:
    campaign = service.get_campaign(session=session, campaign_id=campaign_id)
    return service.to_out(session=session, campaign=campaign)


@router.post("/{campaign_id}/submit", response_model=CampaignOut)
def submit_campaign(campaign_id: PathId, session: DbSession) -> CampaignOut:
    campaign = service.submit(session=session, campaign_id=campaign_id)
    return service.to_out(session=session, campaign=campaign)


@router.post("/{campaign_id}/approve", response_model=CampaignOut)
def approve_campaign(campaign_id: PathId, session: DbSession, settings: AppSettings) -> CampaignOut:
    campaign = service.approve(session=session, campaign_id=campaign_id, settings=settings)
    return service.to_out(session=session, campaign=campaign)


@router.put(
    "/{campaign_id}/schedule",
    response_model=CampaignOut,
    summary="Change a recurring rule (an approved campaign needs a new approval)",
)
def reschedule_campaign(campaign_id: PathId, data: ScheduleIn, session: DbSession) -> CampaignOut:
    campaign = service.reschedule(
        session=session, campaign_id=campaign_id, schedule=data.schedule.model_dump(mode="json")
    )
    return service.to_out(session=session, campaign=campaign)


@router.post("/{campaign_id}/pause", response_model=CampaignOut)
def pause_campaign(campaign_id: PathId, session: DbSession) -> CampaignOut:
    campaign = service.pause(session=session, campaign_id=campaign_id)
    return service.to_out(session=session, campaign=campaign)


@router.post("/{campaign_id}/resume", response_model=CampaignOut)
def resume_campaign(campaign_id: PathId, session: DbSession, settings: AppSettings) -> CampaignOut:
    campaign = service.resume(session=session, campaign_id=campaign_id, settings=settings)
    return service.to_out(session=session, campaign=campaign)


@router.post("/{campaign_id}/cancel", response_model=CampaignOut)
def cancel_campaign(campaign_id: PathId, session: DbSession) -> CampaignOut:
    campaign = service.cancel(session=session, campaign_id=campaign_id)
    return service.to_out(session=session, campaign=campaign)


@messages.post(
    "",
    status_code=202,
    response_model=MessageOut,
    summary="Send one transactional message (Idempotency-Key: the same key sends once)",
)
def send_message(
    data: MessageIn,
    session: DbSession,
    settings: AppSettings,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> MessageOut:
    run, new = service.send_message(
        session=session, data=data, settings=settings, idempotency_key=idempotency_key
    )
    if not new:
        response.headers["Idempotent-Replayed"] = "true"
    return service.message_out(session=session, run=run)


@messages.get("/{message_id}", response_model=MessageOut)
def get_message(message_id: PathId, session: DbSession) -> MessageOut:
    run = session.get(Run, message_id)
    if run is None or run.slot is not None:
        raise NotFound(f"message {message_id} does not exist")
    return service.message_out(session=session, run=run)
