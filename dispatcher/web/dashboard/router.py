"""The dashboard's pages under ``/ui``.

Page endpoints are plain ``def``: FastAPI runs them in its threadpool, so their database work
never blocks the event loop. Approving and rejecting call the campaign service exactly as the
API does, so the two-person rule and the audit log hold here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from markupsafe import Markup
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.routing import NoMatchFound

from channels import registry
from dispatcher.auth import people
from dispatcher.auth.service import Caller, Role, Unauthenticated, authenticate
from dispatcher.campaigns import approval, lifecycle, previews
from dispatcher.campaigns.schemas import ChannelPreviewOut, ReasonIn
from dispatcher.content.render import TemplateProblem
from dispatcher.core.config import Settings
from dispatcher.core.secrets import NoOutsideKey
from dispatcher.deliveries import report as reports
from dispatcher.deliveries import service as deliveries
from dispatcher.kit.errors import Conflict, Forbidden, Invalid, NotFound, ServiceError
from dispatcher.scheduling.windows import VIETNAM
from dispatcher.tables.auth import ApiKey, Principal
from dispatcher.tables.campaigns import Campaign, CampaignStatus
from dispatcher.tables.content import Template
from dispatcher.tables.deliveries import DeliveryStatus
from dispatcher.tables.units import Unit
from dispatcher.units import overview
from dispatcher.units import scope as scopes
from dispatcher.web.dashboard import pages
from dispatcher.web.dashboard.access import (
    PENDING_COOKIE,
    REASONS,
    ApproverPage,
    FormFields,
    OperatorPage,
    PageRoute,
    StaffPage,
    clear_key_cookie,
    error_page,
    forget_flash,
    login_page,
    safe_next,
    see_other,
    set_key_cookie,
    set_pending_cookie,
    set_session_cookie,
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
def login(
    request: Request, form: FormFields, session: DbSession, settings: AppSettings
) -> Response:
    next_path = safe_next(form.get("next"))
    if not same_host(request):
        return login_page(
            request,
            error="Biểu mẫu đăng nhập không được gửi từ trang của hệ thống.",
            next_path=next_path,
            status_code=403,
        )
    if "login" in form:
        return _password_sign_in(request, form, session, settings, next_path)
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


def _sign_in_refusal(attempt: people.Attempt) -> str:
    """Why a sign-in step was refused, in Vietnamese."""
    if attempt.refusal == people.Refusal.locked and attempt.locked_until is not None:
        until = attempt.locked_until.astimezone(VIETNAM).strftime("%H:%M")
        return (
            "Tài khoản tạm bị khóa vì nhập sai quá nhiều lần. "
            f"Hãy thử lại sau {until} (giờ Việt Nam) hoặc liên hệ quản trị viên."
        )
    return {
        people.Refusal.wrong: "Tên đăng nhập hoặc mật khẩu không đúng.",
        people.Refusal.wrong_code: "Mã xác thực không đúng hoặc đã được dùng. Hãy nhập mã mới.",
        people.Refusal.no_role: "Tài khoản chưa được giao vai trò nào.",
        people.Refusal.no_outside_key: (
            "Hệ thống chưa cấu hình khóa bí mật (DISPATCHER_SECRET_KEY) nên chưa bật được xác "
            "thực hai lớp. Hãy liên hệ quản trị viên."
        ),
    }.get(attempt.refusal or people.Refusal.wrong, "Không đăng nhập được.")


def _signed_in(
    request: Request, session: Session, settings: Settings, person: Principal, next_path: str | None
) -> Response:
    """Signed in: the session cookie replaces a key cookie and the half-done sign-in."""
    token = people.issue(session, settings, person, pending=False)
    caller = people.session_caller(session, settings, token)
    response = RedirectResponse(next_path or _landing(caller), status_code=303)
    clear_key_cookie(request, response)
    set_session_cookie(request, response, token)
    return response


def _password_sign_in(
    request: Request,
    form: dict[str, str],
    session: Session,
    settings: Settings,
    next_path: str | None,
) -> Response:
    login_name = form.get("login", "").strip()
    password = form.get("password", "")
    if not login_name or not password:
        return _login_again(request, session, next_path, "Hãy nhập tên đăng nhập và mật khẩu.")
    attempt = people.sign_in_password(session, login=login_name, password=password)
    if attempt.refusal is not None or attempt.person is None:
        return _login_again(request, session, next_path, _sign_in_refusal(attempt))
    if attempt.step == people.Step.done:
        return _signed_in(request, session, settings, attempt.person, next_path)
    target = f"{PREFIX}/login/code" + (f"?{urlencode({'next': next_path})}" if next_path else "")
    response = see_other(request, session, target)
    set_pending_cookie(
        request, response, people.issue(session, settings, attempt.person, pending=True)
    )
    return response


def _pending(request: Request, session: Session, settings: Settings) -> Principal | None:
    token = request.cookies.get(PENDING_COOKIE, "")
    return people.redeem(session, settings, token, pending=True)


@pages_router.get("/login/code")
def code_form(
    request: Request,
    session: DbSession,
    settings: AppSettings,
    next_path: Annotated[str | None, Query(alias="next", max_length=500)] = None,
) -> Response:
    """The second step: a TOTP code; at the first sign-in, the enrolment's QR code first."""
    person = _pending(request, session, settings)
    if person is None:
        return _login_again(
            request,
            session,
            safe_next(next_path),
            "Phiên đăng nhập đã hết hạn. Hãy nhập lại mật khẩu.",
        )
    qr = secret = None
    if person.totp_confirmed_at is None:
        try:
            uri = people.enrolment_uri(settings, person)
        except NoOutsideKey:
            return _login_again(
                request,
                session,
                safe_next(next_path),
                _sign_in_refusal(people.Attempt(person, refusal=people.Refusal.no_outside_key)),
            )
        qr = Markup(people.qr_svg(uri))  # noqa: S704 - segno's own SVG, no user text in it
        secret = parse_qs(urlsplit(uri).query)["secret"][0]
    error = take_flash(request, session).get("error")
    page = pages.render(
        request,
        "login_code.html",
        caller=None,
        person_name=person.name,
        enrol=qr is not None,
        qr=qr,
        secret=secret,
        error=error if isinstance(error, str) else None,
        next_path=safe_next(next_path) or "",
    )
    return forget_flash(request, page)


@pages_router.post("/login/code")
def code_check(
    request: Request, form: FormFields, session: DbSession, settings: AppSettings
) -> Response:
    next_path = safe_next(form.get("next"))
    if not same_host(request):
        return login_page(
            request,
            error="Biểu mẫu đăng nhập không được gửi từ trang của hệ thống.",
            next_path=next_path,
            status_code=403,
        )
    person = _pending(request, session, settings)
    if person is None:
        return _login_again(
            request, session, next_path, "Phiên đăng nhập đã hết hạn. Hãy nhập lại mật khẩu."
        )
    attempt = people.check_code(session, settings, person, form.get("code", "")[:20])
    if attempt.refusal is None:
        return _signed_in(request, session, settings, person, next_path)
    if attempt.refusal == people.Refusal.locked:
        response = _login_again(request, session, next_path, _sign_in_refusal(attempt))
        set_pending_cookie(request, response, None)
        return response
    target = f"{PREFIX}/login/code" + (f"?{urlencode({'next': next_path})}" if next_path else "")
    return see_other(request, session, target, error=_sign_in_refusal(attempt))


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
    unit: Unit
    progress: Progress


@dataclass(frozen=True, slots=True)
class UnitChoice:
    code: str
    name: str
    depth: int  # below the highest unit the caller sees


def _list_href(unit: str | None, status: str | None, before: int | None = None) -> str:
    query = {k: v for k, v in (("unit", unit), ("status", status), ("before", before)) if v}
    return "/ui/campaigns" + (f"?{urlencode(query)}" if query else "")


@pages_router.get("/campaigns")
def campaign_list(
    request: Request,
    session: ReadSession,
    caller: StaffPage,
    status: Annotated[str | None, Query(max_length=16)] = None,
    unit: Annotated[str | None, Query(max_length=32)] = None,
    before: QueryId = None,
) -> Response:
    visible = scopes.units_of(session)
    nodes = overview.units_in_order(session, visible)
    top = min((n.depth for n in nodes), default=0)
    choices = [UnitChoice(n.unit.code, n.unit.name, n.depth - top) for n in nodes]
    shown: set[int] = visible
    if unit:
        chosen = next((n.unit for n in nodes if n.unit.code == unit), None)
        if chosen is None:
            return error_page(
                request,
                caller=caller,
                title="Không tìm thấy",
                message=f"Đơn vị {unit} không tồn tại hoặc không thuộc phạm vi của bạn.",
                status_code=404,
            )
        shown = {chosen.id}
    found = overview.campaign_page(
        session, shown, status=status, before=before, limit=CAMPAIGNS_PER_PAGE + 1
    )
    more = len(found) > CAMPAIGNS_PER_PAGE
    found = found[:CAMPAIGNS_PER_PAGE]
    progress = progress_of(session=session, campaign_ids=[i.campaign.id for i in found])
    rows = [CampaignRow(i.campaign, i.template, i.unit, progress[i.campaign.id]) for i in found]
    counts = overview.campaigns_by_unit(session, visible)
    columns = [s for s in pages.CAMPAIGN_STATUS if any(c.by_status.get(s) for c in counts)]
    return pages.render(
        request,
        "campaigns.html",
        caller=caller,
        rows=rows,
        status=status or "",
        statuses=pages.CAMPAIGN_STATUS,
        unit=unit or "",
        units=choices if len(choices) > 1 else [],
        unit_counts=counts,
        top_depth=top,
        count_columns=columns,
        older=_list_href(unit, status, rows[-1].campaign.id) if more else None,
        newer=_list_href(unit, status) if before is not None else None,
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
    # People the filter matches outside the campaign's unit's territory (not sent to).
    outside_territory: int = 0


def _key_names(session: Session, ids: list[int | None]) -> dict[int, str]:
    """Key id -> the name of the person or system the key belongs to."""
    wanted = {i for i in ids if i is not None}
    if not wanted:
        return {}
    # The keys that acted on a campaign the caller sees, whoever's unit they belong to (the
    # approver may be of a unit above): named past the scope.
    return dict(
        session.execute(
            select(ApiKey.id, Principal.name)
            .join(Principal, Principal.id == ApiKey.principal_id)
            .where(ApiKey.id.in_(wanted)),
            execution_options=scopes.UNSCOPED,
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
        outside = 0
        problem = None
        try:
            shown = previews.preview_out(session=session, campaign=campaign)
            reach = previews.audience_counts(session=session, campaign=campaign)
            audience, outside = reach.count, reach.outside_territory
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
                outside_territory=outside,
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
    if isinstance(exc, approval.OutsideChain):
        return (
            f"Không thể {action}: chiến dịch thuộc {exc.unit_name}. Chỉ người phê duyệt của đơn "
            "vị này hoặc của đơn vị cấp trên được phê duyệt."
        )
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
