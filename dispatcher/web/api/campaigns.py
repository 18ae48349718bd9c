from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from pydantic import AfterValidator
from sqlalchemy import select

from dispatcher.campaigns import approval, firing, lifecycle, previews
from dispatcher.campaigns import messages as transactional
from dispatcher.campaigns.schemas import (
    IDEMPOTENCY_KEY_PATTERN,
    AudienceCountOut,
    CampaignIn,
    CampaignOut,
    ChannelPreviewOut,
    MessageIn,
    MessageOut,
    ReasonIn,
    ScheduleIn,
    idempotency_key,
)
from dispatcher.tables.campaigns import Campaign
from dispatcher.units import scope as scopes
from dispatcher.web.http.callers import (
    Approver,
    Editor,
    Operator,
    RateLimitedSender,
    SenderOrOperator,
    Staff,
)
from dispatcher.web.http.deps import AppSettings, DbSession, PathId, ReadSession

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])
messages = APIRouter(prefix="/v1/messages", tags=["messages"])


@router.post("", status_code=201, response_model=CampaignOut)
def create_campaign(data: CampaignIn, session: DbSession, caller: Editor) -> CampaignOut:
    campaign = lifecycle.create(session=session, data=data, caller=caller)
    return lifecycle.to_out(session=session, campaign=campaign)


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
    return [lifecycle.to_out(session=session, campaign=c) for c in session.scalars(query)]


@router.get("/{campaign_id}", response_model=CampaignOut, summary="Status and live counts")
def get_campaign(campaign_id: PathId, session: DbSession, caller: Staff) -> CampaignOut:
    campaign = lifecycle.get_campaign(session=session, campaign_id=campaign_id)
    return lifecycle.to_out(session=session, campaign=campaign)


@router.post("/{campaign_id}/submit", response_model=CampaignOut)
def submit_campaign(campaign_id: PathId, session: DbSession, caller: Editor) -> CampaignOut:
    campaign = lifecycle.submit(session=session, campaign_id=campaign_id, caller=caller)
    return lifecycle.to_out(session=session, campaign=campaign)


@router.post(
    "/{campaign_id}/approve",
    response_model=CampaignOut,
    summary="Approve (a person other than its author and submitter); freezes what was approved",
)
def approve_campaign(
    campaign_id: PathId, session: DbSession, settings: AppSettings, caller: Approver
) -> CampaignOut:
    campaign = approval.approve(
        session=session, campaign_id=campaign_id, settings=settings, caller=caller
    )
    return lifecycle.to_out(session=session, campaign=campaign)


@router.post(
    "/{campaign_id}/reject", response_model=CampaignOut, summary="Back to draft, saying why"
)
def reject_campaign(
    campaign_id: PathId, data: ReasonIn, session: DbSession, caller: Approver
) -> CampaignOut:
    campaign = approval.reject(
        session=session, campaign_id=campaign_id, reason=data.reason, caller=caller
    )
    return lifecycle.to_out(session=session, campaign=campaign)


@router.get(
    "/{campaign_id}/preview",
    response_model=list[ChannelPreviewOut],
    summary="Every channel's message for a sample person, as the approver sees it",
)
def preview_campaign(
    campaign_id: PathId, session: DbSession, caller: Staff
) -> list[ChannelPreviewOut]:
    campaign = lifecycle.get_campaign(session=session, campaign_id=campaign_id)
    return previews.preview_out(session=session, campaign=campaign)


@router.get(
    "/{campaign_id}/audience",
    response_model=AudienceCountOut,
    summary="How many people it reaches now, and how many its unit's territory removed",
)
def campaign_audience(campaign_id: PathId, session: DbSession, caller: Staff) -> AudienceCountOut:
    campaign = lifecycle.get_campaign(session=session, campaign_id=campaign_id)
    reach = previews.audience_counts(session=session, campaign=campaign)
    territory = scopes.territory_of_unit(session, campaign.unit_id)
    return AudienceCountOut(
        count=reach.count,
        outside_territory=reach.outside_territory,
        territory=list(territory) if territory is not None else None,
    )


@router.put(
    "/{campaign_id}/schedule",
    response_model=CampaignOut,
    summary="Change a recurring rule (an approved campaign needs a new approval)",
)
def reschedule_campaign(
    campaign_id: PathId, data: ScheduleIn, session: DbSession, caller: Editor
) -> CampaignOut:
    campaign = firing.reschedule(
        session=session,
        campaign_id=campaign_id,
        schedule=data.schedule.model_dump(mode="json"),
        caller=caller,
    )
    return lifecycle.to_out(session=session, campaign=campaign)


@router.post("/{campaign_id}/pause", response_model=CampaignOut)
def pause_campaign(campaign_id: PathId, session: DbSession, caller: Operator) -> CampaignOut:
    campaign = lifecycle.pause(session=session, campaign_id=campaign_id, caller=caller)
    return lifecycle.to_out(session=session, campaign=campaign)


@router.post("/{campaign_id}/resume", response_model=CampaignOut)
def resume_campaign(
    campaign_id: PathId, session: DbSession, settings: AppSettings, caller: Operator
) -> CampaignOut:
    campaign = lifecycle.resume(
        session=session, campaign_id=campaign_id, settings=settings, caller=caller
    )
    return lifecycle.to_out(session=session, campaign=campaign)


@router.post("/{campaign_id}/cancel", response_model=CampaignOut)
def cancel_campaign(
    campaign_id: PathId, session: DbSession, caller: Operator, data: ReasonIn | None = None
) -> CampaignOut:
    campaign = lifecycle.cancel(
        session=session,
        campaign_id=campaign_id,
        reason=data.reason if data else None,
        caller=caller,
    )
    return lifecycle.to_out(session=session, campaign=campaign)


IdempotencyKey = Annotated[
    Annotated[str, AfterValidator(idempotency_key)] | None,
    Header(
        alias="Idempotency-Key",
        description="Up to 255 letters, digits and - _ . : ~ + / =, optionally in double "
        "quotes. The same key from the same API key sends once while the key lives.",
        json_schema_extra={"pattern": IDEMPOTENCY_KEY_PATTERN},
    ),
]


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
    idempotency_key: IdempotencyKey = None,
) -> MessageOut:
    """Queue one message to one recipient on the urgent queue.

    With an `Idempotency-Key`, a retry of the same request (same recipient, template, channels
    and variables) from the same API key returns the first message with the header
    `Idempotent-Replayed: true` and sends nothing again; the same key with another request
    answers 422. A key is remembered for `DISPATCHER_IDEMPOTENCY_KEY_HOURS` (24) after its first
    use; after that it sends a new message. Another API key's keys never meet this one's.
    """
    run, new = transactional.send_message(
        session=session,
        data=data,
        settings=settings,
        caller=caller,
        idempotency_key=idempotency_key,
    )
    if not new:
        response.headers["Idempotent-Replayed"] = "true"
    return transactional.message_out(session=session, run=run)


@messages.get(
    "/{message_id}",
    response_model=MessageOut,
    summary="A message and its deliveries (a sender key sees only its own: others are 404)",
    responses={404: {"description": "No such message, or another sender key's"}},
)
def get_message(message_id: PathId, session: ReadSession, caller: SenderOrOperator) -> MessageOut:
    run = transactional.find_message(session=session, message_id=message_id, caller=caller)
    return transactional.message_out(session=session, run=run)
