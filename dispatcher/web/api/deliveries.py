from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from dispatcher.auth.service import Role
from dispatcher.core.config import get_settings
from dispatcher.core.db import get_database
from dispatcher.deliveries import archived, export, report, service
from dispatcher.deliveries.schemas import CampaignReport, DeliveryPage
from dispatcher.kit.fields import Instant, one_of
from dispatcher.recipients.schemas import known_channels
from dispatcher.tables.deliveries import DeliveryStatus
from dispatcher.units import scope as scopes
from dispatcher.web.http.callers import require
from dispatcher.web.http.deps import Cursor, PathId, QueryId, ReadSession, request_scope

router = APIRouter(
    prefix="/v1/deliveries", tags=["deliveries"], dependencies=[Depends(require(Role.operator))]
)
# Per-campaign views of the deliveries: the CSV export and the report.
reports = APIRouter(
    prefix="/v1/campaigns", tags=["deliveries"], dependencies=[Depends(require(Role.operator))]
)


def search_filters(
    campaign_id: QueryId = None,
    run_id: QueryId = None,
    recipient: Annotated[
        str | None, Query(max_length=64, description="The recipient's external_id.")
    ] = None,
    address: Annotated[
        str | None,
        Query(
            max_length=320,
            description="An address on the delivery's channel: in full (an email, a phone "
            "number as 0912345678 or +84912345678, a chat id...) or masked as answers show "
            "it (ng***@gmail.com, +84 9** *** 678), matched by the visible start and end.",
        ),
    ] = None,
    status: Annotated[
        str | None, Query(json_schema_extra=one_of(lambda: DeliveryStatus.__members__))
    ] = None,
    channel: Annotated[str | None, Query(json_schema_extra=one_of(known_channels))] = None,
    error_class: Annotated[str | None, Query(max_length=32)] = None,
    since: Annotated[
        Instant | None,
        Query(description="Last changed (updated_at) at or after; ISO 8601 with an offset."),
    ] = None,
    until: Annotated[
        Instant | None,
        Query(description="Last changed (updated_at) before; ISO 8601 with an offset."),
    ] = None,
) -> service.Filters:
    """The search's query parameters."""
    return service.Filters(
        campaign_id=campaign_id,
        run_id=run_id,
        recipient=recipient,
        address=address,
        status=status,
        channel=channel,
        error_class=error_class,
        since=since,
        until=until,
    )


@router.get("", response_model=DeliveryPage, summary="Deliveries with their attempts, by cursor")
def list_deliveries(
    session: ReadSession,
    filters: Annotated[service.Filters, Depends(search_filters)],
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    include_archived: Annotated[
        bool,
        Query(
            description="Also search the archived months' files (DISPATCHER_ARCHIVE_DIR; "
            "slower, and not by address); their deliveries are marked archived."
        ),
    ] = False,
) -> DeliveryPage:
    page = service.search(session=session, filters=filters, cursor=cursor, limit=limit)
    if include_archived:
        page = archived.include(
            session,
            page,
            root=Path(get_settings().archive_dir),
            filters=filters,
            cursor=cursor,
            limit=limit,
        )
    return page


@reports.get(
    "/{campaign_id}/deliveries.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "UTF-8 with a BOM"}},
    summary="Every delivery of the campaign as CSV, streamed (addresses masked)",
)
def export_deliveries(campaign_id: PathId, request: Request) -> StreamingResponse:
    # The existence check is one short read, in the caller's scope; the body then reads that
    # campaign's pages on its own sessions, in a worker thread (StreamingResponse iterates a
    # plain generator there).
    database = get_database()
    with database.reading() as session:
        scopes.attach(session, request_scope(request))
        service.get_campaign(session=session, campaign_id=campaign_id)
    return StreamingResponse(
        export.campaign_csv(db=database, campaign_id=campaign_id),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{export.filename(campaign_id)}"'},
    )


@reports.get(
    "/{campaign_id}/report",
    response_model=CampaignReport,
    summary="Counts by status, channel and error; deliveries finished per minute",
)
def campaign_report(
    campaign_id: PathId,
    session: ReadSession,
    run_id: QueryId = None,
    top_reasons: Annotated[int, Query(ge=1, le=100)] = report.DEFAULT_TOP_REASONS,
) -> CampaignReport:
    return report.campaign_report(
        session=session, campaign_id=campaign_id, run_id=run_id, top_reasons=top_reasons
    )
