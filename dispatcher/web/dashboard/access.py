"""Who may open a dashboard page, and how refusals look in a browser.

The pages use the API's own dependencies (``current_caller``, ``require``): the key comes in
the ``dispatcher_key`` cookie. A refusal is an HTML page rather than JSON: 401 shows the login
form (so the browser lands on it), 403 names the role the page needs. Forms must come from
this site: ``current_caller`` refuses a change carried by the cookie unless its Origin (or,
lacking it, its Referer) names the host the request came to, on top of the cookie's
SameSite=Strict; here that refusal is a page.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import parse_qsl

import structlog
from fastapi import Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from itsdangerous import BadData, URLSafeTimedSerializer
from sqlalchemy.orm import Session

from dispatcher.auth import people
from dispatcher.auth.service import STAFF, Caller, Role
from dispatcher.core.config import get_settings
from dispatcher.core.secrets import existing_signing_key, signing_key
from dispatcher.kit.errors import NotFound, ServiceError
from dispatcher.web.dashboard.pages import ROLE_NAMES, SECURITY_HEADERS, render
from dispatcher.web.http.callers import (
    COOKIE,
    SESSION_COOKIE,
    CrossSiteRequest,
    current_caller,
    require,
)

log = structlog.get_logger(__name__)

# A dashboard form is a reason and a few ids; anything larger is not one of ours.
MAX_FORM_BYTES = 16 * 1024
PAGES = "/ui"
# What a form's POST leaves for the page it redirects to; read at once, so it lives briefly.
FLASH_COOKIE = "dispatcher_flash"
FLASH_SECONDS = 300

# current_caller's reasons, as the login page says them.
REASONS = {
    "not an API key of this service": "Đây không phải khóa API của hệ thống (khóa có dạng bhxh_…).",
    "unknown API key": "Khóa API không đúng.",
    "this API key was revoked": "Khóa API này đã bị thu hồi.",
    "this API key has expired": "Khóa API này đã hết hạn.",
    "this API key's role is no longer held by its person": (
        "Vai trò của khóa API này không còn được giao cho người sở hữu khóa."
    ),
    "your dashboard session has ended": "Phiên làm việc đã kết thúc. Vui lòng đăng nhập lại.",
    "this person holds no role": "Tài khoản chưa được giao vai trò nào.",
}
# Between a right password and a right TOTP code (dispatcher.auth.people.PENDING_FOR).
PENDING_COOKIE = "dispatcher_pending"


class PageForbidden(Exception):
    """A usable key of a role the page does not admit."""

    def __init__(self, caller: Caller, roles: tuple[Role, ...]) -> None:
        super().__init__(caller.label)
        self.caller = caller
        self.roles = roles


def page_role(*roles: Role) -> Callable[..., Caller]:
    """``require(*roles)`` for a page: a wrong role becomes the Vietnamese 403 page."""
    check = require(*roles)

    def dependency(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
        try:
            return check(caller)
        except HTTPException:
            raise PageForbidden(caller, roles) from None

    return dependency


StaffPage = Annotated[Caller, Depends(page_role(*STAFF))]
ApproverPage = Annotated[Caller, Depends(page_role(Role.approver))]
OperatorPage = Annotated[Caller, Depends(page_role(Role.operator))]


async def form_fields(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict (the dashboard's forms are
    flat and small, so no multipart parser is needed)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return {}
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, detail="form too large")
    return dict(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))


FormFields = Annotated[dict[str, str], Depends(form_fields)]


def _flash_serializer(key: bytes) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(
        key, salt="dashboard-flash", signer_kwargs={"digest_method": hashlib.sha256}
    )


def see_other(request: Request, session: Session, url: str, **flash: Any) -> RedirectResponse:
    """Redirect after a form's POST (303). What the next page must say (an error, the card
    to focus) travels in a short-lived signed cookie, so that reloading that page shows it
    without posting the form again."""
    response = RedirectResponse(url, status_code=303)
    if flash:
        key = signing_key(session, get_settings())
        response.set_cookie(
            FLASH_COOKIE,
            _flash_serializer(key).dumps(flash),
            max_age=FLASH_SECONDS,
            httponly=True,
            samesite="strict",
            path=PAGES,
            secure=request.url.scheme == "https",
        )
    return response


def take_flash(request: Request, session: Session) -> dict[str, Any]:
    """What the redirecting POST left for this page (empty when nothing or not ours)."""
    token = request.cookies.get(FLASH_COOKIE)
    if not token:
        return {}
    key = existing_signing_key(session, get_settings())
    try:
        found = _flash_serializer(key).loads(token, max_age=FLASH_SECONDS) if key else None
    except BadData:
        found = None
    return found if isinstance(found, dict) else {}


def forget_flash(request: Request, response: Response) -> Response:
    """Shown once: the page that showed the flash forgets it."""
    if request.cookies.get(FLASH_COOKIE):
        response.delete_cookie(
            FLASH_COOKIE,
            path=PAGES,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
    return response


def safe_next(target: str | None) -> str | None:
    """Only a dashboard path of this site: never an open redirect."""
    if not target or not target.startswith("/ui") or target.startswith("//") or "\\" in target:
        return None
    return target


def set_key_cookie(request: Request, response: Response, key: str) -> None:
    response.set_cookie(
        COOKIE,
        key,
        httponly=True,
        samesite="strict",
        path="/",
        secure=request.url.scheme == "https",
    )


def clear_key_cookie(request: Request, response: Response) -> None:
    """Forget the key, the session and a half-done sign-in."""
    secure = request.url.scheme == "https"
    for name in (COOKIE, SESSION_COOKIE):
        if name == COOKIE or request.cookies.get(name):
            response.delete_cookie(name, path="/", httponly=True, samesite="strict", secure=secure)
    if request.cookies.get(PENDING_COOKIE):
        response.delete_cookie(
            PENDING_COOKIE, path=PAGES, httponly=True, samesite="strict", secure=secure
        )


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    """A person signed in with a password: the signed session (never a password or a key)."""
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(people.SESSION_FOR.total_seconds()),
        httponly=True,
        samesite="strict",
        path="/",
        secure=request.url.scheme == "https",
    )


def set_pending_cookie(request: Request, response: Response, token: str | None) -> None:
    """The half-done sign-in between the password and the code (None: forget it)."""
    secure = request.url.scheme == "https"
    if token is None:
        response.delete_cookie(
            PENDING_COOKIE, path=PAGES, httponly=True, samesite="strict", secure=secure
        )
        return
    response.set_cookie(
        PENDING_COOKIE,
        token,
        max_age=int(people.PENDING_FOR.total_seconds()),
        httponly=True,
        samesite="strict",
        path=PAGES,
        secure=secure,
    )


def login_page(
    request: Request,
    *,
    error: str | None = None,
    notice: str | None = None,
    next_path: str | None = None,
    status_code: int = 200,
) -> Response:
    target = next_path
    if target is None and request.method == "GET" and request.url.path != "/ui/login":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
    return render(
        request,
        "login.html",
        caller=None,
        status_code=status_code,
        headers=headers,
        error=error,
        notice=notice,
        next_path=safe_next(target) or "",
    )


def unauthorized_page(request: Request, reason: str) -> Response:
    """The login form, answered with 401 (and the stale cookie forgotten)."""
    known = REASONS.get(reason)
    response = login_page(
        request,
        error=known,
        notice=None if known else "Vui lòng đăng nhập để tiếp tục.",
        status_code=401,
    )
    if request.cookies.get(COOKIE) or request.cookies.get(SESSION_COOKIE):
        clear_key_cookie(request, response)
    return response


def forbidden_page(request: Request, refused: PageForbidden) -> Response:
    needed = " hoặc ".join(f"{ROLE_NAMES[r]} ({r.value})" for r in refused.roles)
    return render(
        request,
        "forbidden.html",
        caller=refused.caller,
        status_code=403,
        needed=needed,
    )


def error_page(
    request: Request,
    *,
    caller: Caller | None,
    title: str,
    message: str,
    status_code: int,
) -> Response:
    return render(
        request,
        "error.html",
        caller=caller,
        status_code=status_code,
        title=title,
        message=message,
    )


class PageRoute(APIRoute):
    """A dashboard route: refusals and errors answer as pages, every answer with the
    dashboard's security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            response = await _answer(handler, request)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return page_handler


async def _answer(handler: Callable[[Request], Awaitable[Response]], request: Request) -> Response:
    try:
        return await handler(request)
    except CrossSiteRequest:
        log.warning("dashboard_cross_site_form", path=request.url.path)
        return error_page(
            request,
            caller=None,
            title="Biểu mẫu bị từ chối",
            message="Biểu mẫu này không được gửi từ trang của hệ thống nên không được thực hiện. "
            "Hãy mở lại trang và thử lại.",
            status_code=403,
        )
    except HTTPException as exc:
        if exc.status_code == 401:
            return unauthorized_page(request, str(exc.detail))
        raise
    except PageForbidden as exc:
        return forbidden_page(request, exc)
    except NotFound as exc:
        return error_page(
            request,
            caller=getattr(request.state, "caller", None),
            title="Không tìm thấy",
            message=_not_found(exc),
            status_code=404,
        )
    except ServiceError as exc:
        return error_page(
            request,
            caller=getattr(request.state, "caller", None),
            title="Không thực hiện được",
            message=f"Yêu cầu không hợp lệ: {exc.message}",
            status_code=exc.status_code,
        )
    except RequestValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) for e in exc.errors())
        return error_page(
            request,
            caller=getattr(request.state, "caller", None),
            title="Địa chỉ không hợp lệ",
            message=f"Giá trị không hợp lệ: {fields or 'yêu cầu'}.",
            status_code=422,
        )


def _not_found(exc: NotFound) -> str:
    words: dict[str, Any] = {"campaign": "Chiến dịch", "run": "Lượt gửi"}
    head = exc.message.split(" ", 2)
    if len(head) >= 2 and head[0] in words:
        return f"{words[head[0]]} số {head[1]} không tồn tại."
    return "Trang hoặc dữ liệu bạn tìm không tồn tại."
