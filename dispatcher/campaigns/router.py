from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from sqlalchemy import select

from dispatcher.auth.deps import (
    Approver,
    Editor,
    Operator,
    RateLimitedSender,
    SenderOrOperator,
    Staff,
)
from dispatcher.campaigns import service
from dispatcher.campaigns.models import Campaign, Run
from dispatcher.campaigns.schemas import (
    CampaignIn,
    CampaignOut,
    ChannelPreviewOut,
    MessageIn,
    MessageOut,
    ReasonIn,
    ScheduleIn,
)
from dispatcher.deps import AppSettings, DbSession, PathId
from dispatcher.errors import NotFound

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])
messages = APIRouter(prefix="/v1/messages", tags=["messages"])


@router.post("", status_code=201, response_model=CampaignOut)
def create_campaign(data: CampaignIn, session: DbSession, caller: Editor) -> CampaignOut:
    campaign = service.create(session=session, data=data, caller=caller)
    return service.to_out(session=session, campaign=campaign)


@router.get("", response_model=list[CampaignOut])
def list_campaigns(
    session: DbSession,
    caller: Staff,
    status: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[CampaignOut]:
    query = select(Campaign).order_by(Campaign.id.desc()).limit(limit)
    if status:
        query = query.where(Campaign.status == status)
    return [service.to_out(session=session, campaign=c) for c in session.scalars(query)]


@router.get("/{campaign_id}", response_model=CampaignOut, summary="Status and live counts")
def get_campaign(campaign_id: PathId, session: DbSession, caller: Staff) -> CampaignOut:
    campaign = service.get_campaign(session=session, campaign_id=campaign_id)
    return service.to_out(session=session, campaign=campaign)


@router.post("/{campaign_id}/submit", response_model=CampaignOut)
def submit_campaign(campaign_id: PathId, session: DbSession, caller: Editor) -> CampaignOut:
    campaign = service.submit(session=session, campaign_id=campaign_id, caller=caller)
    return service.to_out(session=session, campaign=campaign)


@router.post(
    "/{campaign_id}/approve",
    response_model=CampaignOut,
    summary="Approve (a person other than its author and submitter); freezes what was approved",
)
def approve_campaign(
    campaign_id: PathId, session: DbSession, settings: AppSettings, caller: Approver
) -> CampaignOut:
    campaign = service.approve(
        session=session, campaign_id=campaign_id, settings=settings, caller=caller
    )
    return service.to_out(session=session, campaign=campaign)


@router.post(
    "/{campaign_id}/reject", response_model=CampaignOut, summary="Back to draft, saying why"
)
def reject_campaign(
    campaign_id: PathId, data: ReasonIn, session: DbSession, caller: Approver
) -> CampaignOut:
    campaign = service.reject(
        session=session, campaign_id=campaign_id, reason=data.reason, caller=caller
    )
    return service.to_out(session=session, campaign=campaign)


@router.get(
    "/{campaign_id}/preview",
    response_model=list[ChannelPreviewOut],
    summary="Every channel's message for a sample person, as the approver sees it",
)
def preview_campaign(
    campaign_id: PathId, session: DbSession, caller: Staff
) -> list[ChannelPreviewOut]:
    campaign = service.get_campaign(session=session, campaign_id=campaign_id)
    return service.preview_out(session=session, campaign=campaign)


@router.put(
    "/{campaign_id}/schedule",
    response_model=CampaignOut,
    summary="Change a recurring rule (an approved campaign needs a new approval)",
)
def reschedule_campaign(
    campaign_id: PathId, data: ScheduleIn, session: DbSession, caller: Editor
) -> CampaignOut:
    campaign = service.reschedule(
        session=session,
        campaign_id=campaign_id,
        schedule=data.schedule.model_dump(mode="json"),
        caller=caller,
    )
    return service.to_out(session=session, campaign=campaign)


@router.post("/{campaign_id}/pause", response_model=CampaignOut)
def pause_campaign(campaign_id: PathId, session: DbSession, caller: Operator) -> CampaignOut:
    campaign = service.pause(session=session, campaign_id=campaign_id, caller=caller)
    return service.to_out(session=session, campaign=campaign)


@router.post("/{campaign_id}/resume", response_model=CampaignOut)
def resume_campaign(
    campaign_id: PathId, session: DbSession, settings: AppSettings, caller: Operator
) -> CampaignOut:
    campaign = service.resume(
        session=session, campaign_id=campaign_id, settings=settings, caller=caller
    )
    return service.to_out(session=session, campaign=campaign)


@router.post("/{campaign_id}/cancel", response_model=CampaignOut)
def cancel_campaign(
    campaign_id: PathId, session: DbSession, caller: Operator, data: ReasonIn | None = None
) -> CampaignOut:
    campaign = service.cancel(
        session=session,
        campaign_id=campaign_id,
        reason=data.reason if data else None,
        caller=caller,
    )
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
    caller: RateLimitedSender,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> MessageOut:
    run, new = service.send_message(
        session=session, data=data, settings=settings, idempotency_key=idempotency_key
    )
    if not new:
        response.headers["Idempotent-Replayed"] = "true"
    return service.message_out(session=session, run=run)


@messages.get("/{message_id}", response_model=MessageOut)
def get_message(message_id: PathId, session: DbSession, caller: SenderOrOperator) -> MessageOut:
    run = session.get(Run, message_id)
    if run is None or run.slot is not None:
        raise NotFound(f"message {message_id} does not exist")
    return service.message_out(session=session, run=run)
