"""The dashboard's pages under ``/ui``.

Page endpoints are plain ``def``: FastAPI runs them in its threadpool, so their database work
never blocks the event loop. Approving and rejecting call the campaign service exactly as the
API does, so the two-person rule and the audit log hold here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.routing import NoMatchFound

from channels import registry
from dispatcher.auth.service import Caller, Role, Unauthenticated, authenticate
from dispatcher.campaigns import approval, lifecycle, previews
from dispatcher.campaigns.schemas import ChannelPreviewOut, ReasonIn
from dispatcher.content.render import TemplateProblem
from dispatcher.deliveries import report as reports
from dispatcher.deliveries import service as deliveries
from dispatcher.kit.errors import Conflict, Forbidden, Invalid, NotFound, ServiceError
from dispatcher.scheduling.windows import VIETNAM
from dispatcher.tables.auth import ApiKey, Principal
from dispatcher.tables.campaigns import Campaign, CampaignStatus
from dispatcher.tables.content import Template
from dispatcher.tables.deliveries import DeliveryStatus
from dispatcher.web.dashboard import pages
from dispatcher.web.dashboard.access import (
    REASONS,
    ApproverPage,
    FormFields,
    OperatorPage,
    PageRoute,
    StaffPage,
    clear_key_cookie,
    forget_flash,
    login_page,
    safe_next,
    see_other,
    set_key_cookie,
    take_flash,
)
from dispatcher.web.dashboard.charts import Bucket, per_minute_chart
from dispatcher.web.dashboard.progress import MAX_IDS, Progress, progress_of
from dispatcher.web.http.callers import same_host
from dispatcher.web.http.deps import AppSettings, DbSession, PathId, QueryId, ReadSession

PREFIX = "/ui"


pages_router = APIRouter(prefix=PREFIX, route_class=PageRoute, include_in_schema=False)

CAMPAIGNS_PER_PAGE = 50
APPROVALS_PER_PAGE = 20
DELIVERIES_PER_PAGE = 50
# A refusal travels in a cookie to the page the form redirects to: keep it well under 4 KB.
MAX_FLASH_CHARS = 500


def _landing(caller: Caller) -> str:
    return "/ui/approvals" if caller.role == Role.approver else "/ui/campaigns"


# -- Logging in and out --------------------------------------------------------------------------


@pages_router.get("")
def home(caller: StaffPage) -> RedirectResponse:
    return RedirectResponse(_landing(caller), status_code=303)


@pages_router.get("/login")
def login_form(
    request: Request,
    session: ReadSession,
    next_path: Annotated[str | None, Query(alias="next", max_length=500)] = None,
) -> Response:
    notice = "Bạn đã đăng xuất." if request.query_params.get("out") else None
    error = take_flash(request, session).get("error")
    page = login_page(
        request,
        next_path=next_path,
        notice=notice,
        error=error if isinstance(error, str) else None,
    )
    return forget_flash(request, page)


def _login_again(request: Request, session: Session, next_path: str | None, error: str) -> Response:
    """Back to the login form (303) with the reason: reloading it posts no key again."""
    target = f"{PREFIX}/login" + (f"?{urlencode({'next': next_path})}" if next_path else "")
    return see_other(request, session, target, error=error)


@pages_router.post("/login")
def login(request: Request, form: FormFields, session: DbSession) -> Response:
    next_path = safe_next(form.get("next"))
    if not same_host(request):
        return login_page(
            request,
            error="Biểu mẫu đăng nhập không được gửi từ trang của hệ thống.",
            next_path=next_path,
            status_code=403,
        )
    key = form.get("key", "").strip()
    if not key:
        return _login_again(request, session, next_path, "Hãy nhập khóa API.")
    try:
        caller = authenticate(session, key)
    except Unauthenticated as exc:
        reason = REASONS.get(str(exc), "Khóa API không dùng được.")
        return _login_again(request, session, next_path, reason)
    if caller.role == Role.sender:
        return _login_again(
            request,
            session,
            next_path,
            "Khóa của hệ thống gửi tin (sender) không dùng để đăng nhập bảng điều khiển.",
        )
    response = RedirectResponse(next_path or _landing(caller), status_code=303)
    set_key_cookie(request, response, key)
    return response


@pages_router.post("/logout")
def logout(request: Request) -> Response:
    if not same_host(request):
        return login_page(request, error="Yêu cầu đăng xuất không hợp lệ.", status_code=403)
    response = RedirectResponse("/ui/login?out=1", status_code=303)
    clear_key_cookie(request, response)
    return response


# -- Campaigns ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CampaignRow:
    campaign: Campaign
    template: str
    progress: Progress


@pages_router.get("/campaigns")
def campaign_list(
    request: Request,
    session: ReadSession,
    caller: StaffPage,
    status: Annotated[str | None, Query(max_length=16)] = None,
    before: QueryId = None,
) -> Response:
    query = (
        select(Campaign, Template.key)
        .join(Template, Template.id == Campaign.template_id)
        .order_by(Campaign.id.desc())
        .limit(CAMPAIGNS_PER_PAGE + 1)
    )
    if status:
        query = query.where(Campaign.status == status)
    if before is not None:
        query = query.where(Campaign.id < before)
    found = session.execute(query).all()
    more = len(found) > CAMPAIGNS_PER_PAGE
    found = found[:CAMPAIGNS_PER_PAGE]
    progress = progress_of(session=session, campaign_ids=[c.id for c, _ in found])
    rows = [CampaignRow(c, key, progress[c.id]) for c, key in found]
    return pages.render(
        request,
        "campaigns.html",
        caller=caller,
        rows=rows,
        status=status or "",
        statuses=pages.CAMPAIGN_STATUS,
        older=rows[-1].campaign.id if more else None,
        newer=before is not None,
    )


@pages_router.get("/progress")
def campaign_progress(
    session: ReadSession,
    caller: StaffPage,
    ids: Annotated[str, Query(pattern=r"^[0-9,]+$", max_length=MAX_IDS * 20)],
) -> JSONResponse:
    """The progress bars' numbers, polled by the campaigns pages."""
    wanted = [int(i) for i in ids.split(",") if i and len(i) < 19][:MAX_IDS]
    found = progress_of(session=session, campaign_ids=wanted)
    return JSONResponse({"campaigns": [p.as_json() for p in found.values()]})


@pages_router.get("/campaigns/{campaign_id}")
def campaign_detail(
    request: Request, campaign_id: PathId, session: ReadSession, caller: StaffPage
) -> Response:
    campaign = lifecycle.get_campaign(session=session, campaign_id=campaign_id)
    out = lifecycle.to_out(session=session, campaign=campaign)
    progress = progress_of(session=session, campaign_ids=[campaign.id])[campaign.id]
    # The report (error reasons, throughput) and the CSV export are operators' views in the
    # API; the page shows them to the same roles.
    operations = caller.holds(Role.operator)
    found = (
        reports.campaign_report(session=session, campaign_id=campaign.id) if operations else None
    )
    chart = None
    if found is not None:
        chart = per_minute_chart(
            [Bucket(start=b.minute, sent=b.sent, failed=b.failed) for b in found.throughput]
        )
    return pages.render(
        request,
        "campaign.html",
        caller=caller,
        campaign=out,
        progress=progress,
        channels=sorted(out.counts.by_channel),
        statuses=[s.value for s in DeliveryStatus],
        people=_key_names(session, [out.created_by, out.submitted_by, out.approved_by]),
        can_search=operations,
        report=found,
        failures=found.top_error_reasons if found is not None else None,
        chart=chart,
        export_url=_export_url(request, campaign.id) if operations else None,
    )


def _export_url(request: Request, campaign_id: int) -> str | None:
    """The campaign's CSV export, if this app serves one."""
    try:
        return str(request.app.url_path_for("export_deliveries", campaign_id=str(campaign_id)))
    except NoMatchFound:
        return None


# -- Approvals ----------------------------------------------------------------------------------


@dataclass(slots=True)
class Pending:
    campaign: Campaign
    template: str
    previews: list[ChannelPreviewOut]
    audience: int | None
    problem: str | None
    own: bool


def _key_names(session: Session, ids: list[int | None]) -> dict[int, str]:
    """Key id -> the name of the person or system the key belongs to."""
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    return dict(
        session.execute(
            select(ApiKey.id, Principal.name)
            .join(Principal, Principal.id == ApiKey.principal_id)
            .where(ApiKey.id.in_(wanted))
        ).all()
    )


def _approval_queue(session: Session, caller: Caller) -> tuple[list[Pending], dict[int, str]]:
    found = session.execute(
        select(Campaign, Template.key)
        .join(Template, Template.id == Campaign.template_id)
        .where(Campaign.status == CampaignStatus.submitted)
        .order_by(Campaign.submitted_at, Campaign.id)
        .limit(APPROVALS_PER_PAGE)
    ).all()
    queue = []
    for campaign, key in found:
        shown: list[ChannelPreviewOut] = []
        audience: int | None = None
        problem = None
        try:
            shown = previews.preview_out(session=session, campaign=campaign)
            audience = previews.audience_count(session=session, campaign=campaign)
        except (ServiceError, TemplateProblem) as exc:
            problem = str(exc)
        queue.append(
            Pending(
                campaign=campaign,
                template=key,
                previews=shown,
                audience=audience,
                problem=problem,
                own=caller.principal_id in (campaign.author_id, campaign.submitter_id),
            )
        )
    people = _key_names(
        session, [p.campaign.submitted_by for p in queue] + [p.campaign.created_by for p in queue]
    )
    return queue, people


def _approvals_page(
    request: Request,
    session: Session,
    caller: Caller,
    *,
    message: str | None = None,
    error: str | None = None,
    focus: int | None = None,
) -> Response:
    queue, people = _approval_queue(session, caller)
    return pages.render(
        request,
        "approvals.html",
        caller=caller,
        queue=queue,
        people=people,
        message=message,
        error=error,
        focus=focus,
    )


@pages_router.get("/approvals")
def approvals(
    request: Request,
    session: ReadSession,
    caller: ApproverPage,
    done: Annotated[str | None, Query(pattern="^(approved|rejected)$")] = None,
    campaign: QueryId = None,
) -> Response:
    message = None
    if done and campaign is not None:
        found = session.get(Campaign, campaign)
        if found is not None:
            if done == "approved":
                state = pages.label(pages.CAMPAIGN_STATUS, found.status).lower()
                message = f"Đã phê duyệt chiến dịch «{found.name}». Trạng thái hiện tại: {state}."
            else:
                message = f"Đã từ chối chiến dịch «{found.name}» và trả lại cho người soạn."
    flash = take_flash(request, session)
    error, focus = flash.get("error"), flash.get("focus")
    page = _approvals_page(
        request,
        session,
        caller,
        message=message,
        error=error if isinstance(error, str) else None,
        focus=focus if isinstance(focus, int) else None,
    )
    return forget_flash(request, page)


def _refusal(exc: ServiceError, session: Session, campaign_id: int, action: str) -> str:
    """What the approver reads when the service says no."""
    if isinstance(exc, Forbidden):
        return (
            f"Không thể {action}: bạn đã soạn hoặc gửi chiến dịch này đi phê duyệt. "
            "Theo quy tắc hai người, một người phê duyệt khác phải phê duyệt."
        )
    if isinstance(exc, NotFound):
        return f"Chiến dịch số {campaign_id} không tồn tại."
    if isinstance(exc, Conflict):
        found = session.get(Campaign, campaign_id)
        state = pages.label(pages.CAMPAIGN_STATUS, found.status) if found else "?"
        return (
            f"Không thể {action}: chiến dịch đang ở trạng thái «{state}», không còn chờ phê "
            "duyệt. Hãy tải lại trang."
        )
    if isinstance(exc, Invalid):
        return f"Không thể {action}: nội dung chiến dịch chưa hợp lệ ({exc.message})."
    return f"Không thể {action}: {exc.message}"


def _refused(request: Request, session: Session, campaign_id: int, error: str) -> Response:
    """Back to the queue (303) with the refusal next to the campaign's card: a reload of the
    page shows it again rather than posting the decision a second time."""
    return see_other(
        request, session, f"{PREFIX}/approvals", error=error[:MAX_FLASH_CHARS], focus=campaign_id
    )


@pages_router.post("/approvals/{campaign_id}/approve")
def approve(
    request: Request,
    campaign_id: PathId,
    caller: ApproverPage,
    session: DbSession,
    settings: AppSettings,
) -> Response:
    try:
        approval.approve(session=session, campaign_id=campaign_id, settings=settings, caller=caller)
    except ServiceError as exc:
        session.rollback()
        error = _refusal(exc, session, campaign_id, "phê duyệt")
        return _refused(request, session, campaign_id, error)
    except TemplateProblem as exc:
        session.rollback()
        error = f"Không thể phê duyệt: mẫu tin không dựng được ({exc})."
        return _refused(request, session, campaign_id, error)
    return RedirectResponse(f"/ui/approvals?done=approved&campaign={campaign_id}", status_code=303)


@pages_router.post("/approvals/{campaign_id}/reject")
def reject(
    request: Request,
    campaign_id: PathId,
    caller: ApproverPage,
    form: FormFields,
    session: DbSession,
) -> Response:
    try:
        reason = ReasonIn(reason=form.get("reason", "")).reason
    except ValidationError:
        error = "Hãy ghi lý do từ chối (tối đa 500 ký tự) để người soạn biết cần sửa gì."
        return _refused(request, session, campaign_id, error)
    try:
        approval.reject(session=session, campaign_id=campaign_id, reason=reason, caller=caller)
    except ServiceError as exc:
        session.rollback()
        return _refused(
            request, session, campaign_id, _refusal(exc, session, campaign_id, "từ chối")
        )
    return RedirectResponse(f"/ui/approvals?done=rejected&campaign={campaign_id}", status_code=303)


# -- Deliveries -----------------------------------------------------------------------------------


def _blank(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def _local_time(value: str | None, field: str, problems: list[str]) -> datetime | None:
    """A ``datetime-local`` field, read as Vietnam time."""
    if not (value := _blank(value)):
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=VIETNAM)
        moment.astimezone(UTC)  # the database stores UTC: year 1 in Vietnam has none
    except (ValueError, OverflowError):
        problems.append(f"«{field}» không phải một thời điểm hợp lệ.")
        return None
    return moment


@pages_router.get("/deliveries")
def delivery_search(
    request: Request,
    session: ReadSession,
    caller: OperatorPage,
    recipient: Annotated[str | None, Query(max_length=64)] = None,
    address: Annotated[str | None, Query(max_length=320)] = None,
    campaign_id: Annotated[str | None, Query(max_length=20)] = None,
    channel: Annotated[str | None, Query(max_length=32)] = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
    error_class: Annotated[str | None, Query(max_length=32)] = None,
    since: Annotated[str | None, Query(max_length=40)] = None,
    until: Annotated[str | None, Query(max_length=40)] = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    # Every field arrives as text (an empty field is an empty string): read them here, so a
    # mistake is a line on the page rather than a 422.
    form = {
        "recipient": _blank(recipient),
        "address": _blank(address),
        "campaign_id": _blank(campaign_id),
        "channel": _blank(channel),
        "status": _blank(status),
        "error_class": _blank(error_class),
        "since": _blank(since),
        "until": _blank(until),
    }
    problems: list[str] = []
    campaign: int | None = None
    if text := form["campaign_id"]:
        if text.isdigit() and 0 < int(text) < 2**63:
            campaign = int(text)
        else:
            problems.append("Mã chiến dịch phải là một số nguyên dương.")
    moments = {
        name: _local_time(form[name], title, problems)
        for name, title in (("since", "Từ"), ("until", "Đến"))
    }
    page = None
    if not problems:
        try:
            filters = deliveries.Filters(
                campaign_id=campaign,
                recipient=form["recipient"],
                address=form["address"],
                status=form["status"],
                channel=form["channel"],
                error_class=form["error_class"],
                since=moments["since"],
                until=moments["until"],
            )
            page = deliveries.search(
                session=session,
                filters=filters,
                cursor=_blank(cursor),
                limit=DELIVERIES_PER_PAGE,
            )
        except Invalid as exc:
            problems.append(_search_problem(exc))
    query = {k: v for k, v in form.items() if v}
    return pages.render(
        request,
        "deliveries.html",
        caller=caller,
        form={k: v or "" for k, v in form.items()},
        query=query,
        page=page,
        problems=problems,
        channels=sorted(registry.available()),
        statuses=[s.value for s in DeliveryStatus],
        error_classes=list(pages.ERROR_CLASSES),
        first_page=cursor is None,
    )


SEARCH_FIELDS = {
    "address": "Địa chỉ",
    "status": "Trạng thái",
    "channel": "Kênh",
    "since": "Từ",
    "cursor": "Trang",
}


def _search_problem(exc: Invalid) -> str:
    field = str(exc.loc[-1]) if exc.loc else ""
    if field == "since":
        return "Thời điểm «Từ» phải trước thời điểm «Đến»."
    if field == "cursor":
        return "Liên kết trang không hợp lệ; hãy tra cứu lại từ đầu."
    return f"{SEARCH_FIELDS.get(field, 'Bộ lọc')} không hợp lệ ({exc.message})."


# What app.py includes: the pages, and their stylesheet and script (a mount takes no prefix
# from its router, so it sits beside the pages with its whole path).
router = APIRouter()
router.include_router(pages_router)
router.mount(
    f"{PREFIX}/static",
    StaticFiles(packages=[("dispatcher.web.dashboard", "static")]),
    name="dashboard-static",
)
