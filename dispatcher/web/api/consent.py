"""The one-click unsubscribe link (RFC 8058): GET shows a confirmation page, POST unsubscribes.

No login and no cookies: the signed token is the authority. The pages are in Vietnamese. A
token that is not exactly one the service made answers 400; a genuine one older than
``DISPATCHER_UNSUBSCRIBE_LINK_DAYS`` answers 410 with a page saying how to unsubscribe instead.
"""

from __future__ import annotations

from datetime import timedelta
from html import escape
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from dispatcher.consent import service
from dispatcher.core.config import get_settings
from dispatcher.core.secrets import signing_key
from dispatcher.web.http.deps import DbSession

router = APIRouter(tags=["unsubscribe"])

CHANNEL_NAMES_VI = {
    "email": "thư điện tử",
    "vssid": "ứng dụng VssID",
    "telegram": "Telegram",
    "zalo": "Zalo",
    "facebook": "Facebook Messenger",
}

PAGE = """<!doctype html>
<html lang="vi"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} — Bảo hiểm xã hội Việt Nam</title>
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;
color:#1a1a1a;line-height:1.5}}h1{{color:#0b4f9c;font-size:1.4rem}}button{{background:#0b4f9c;
color:#fff;border:0;border-radius:.3rem;padding:.6rem 1.2rem;font-size:1rem;cursor:pointer}}
</style></head><body><h1>{title}</h1>{body}
<p><small>Bảo hiểm xã hội Việt Nam · Tổng đài hỗ trợ 1900 9068</small></p></body></html>"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(title=escape(title), body=body), status_code=status)


def _invalid() -> HTMLResponse:
    return _page(
        "Liên kết không hợp lệ",
        "<p>Liên kết hủy đăng ký này không đúng hoặc đã bị thay đổi. Vui lòng dùng liên kết "
        "trong thư gần nhất, hoặc gọi tổng đài 1900 9068.</p>",
        status=400,
    )


def _expired(request: service.Unsubscribe, days: int) -> HTMLResponse:
    return _page(
        "Liên kết đã hết hạn",
        f"<p>Liên kết hủy đăng ký này đã hết hạn: mỗi liên kết chỉ dùng được trong {days} ngày "
        "kể từ khi thư được gửi, và chưa có thay đổi nào được thực hiện.</p>"
        f"<p>Để ngừng nhận <strong>{escape(_what(request))}</strong>, hãy dùng liên kết hủy "
        "đăng ký trong thư gần nhất bạn nhận được, hoặc gọi tổng đài 1900 9068 và cho biết "
        "mã số BHXH của bạn.</p>",
        status=410,
    )


def _read(session: DbSession, token: str) -> service.Unsubscribe | HTMLResponse:
    """The link's request, or the page that says why it cannot be honoured."""
    settings = get_settings()
    days = settings.unsubscribe_link_days
    try:
        request = service.read_token(
            session=session,
            key=signing_key(session, settings),
            token=token,
            valid_for=timedelta(days=days),
        )
    except service.LinkExpired as exc:
        return _expired(exc.request, days)
    return _invalid() if request is None else request


def _what(request: service.Unsubscribe) -> str:
    channel = CHANNEL_NAMES_VI.get(request.channel, request.channel)
    category = service.CATEGORY_NAMES_VI.get(request.category, request.category)
    return f"{category} qua {channel}"


_REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "Not a link this service made (altered, padded or re-encoded): an HTML page",
        "content": {"text/html": {}},
    },
    410: {
        "description": "A genuine link older than DISPATCHER_UNSUBSCRIBE_LINK_DAYS: an HTML page",
        "content": {"text/html": {}},
    },
}


@router.get(
    "/u/{token}",
    response_class=HTMLResponse,
    summary="Unsubscribe confirmation page",
    responses=_REFUSALS,
)
def confirm_page(token: str, session: DbSession) -> HTMLResponse:
    request = _read(session, token)
    if isinstance(request, HTMLResponse):
        return request
    what = escape(_what(request))
    return _page(
        "Hủy đăng ký nhận thông báo",
        f"<p>Bạn muốn ngừng nhận <strong>{what}</strong> từ Bảo hiểm xã hội Việt Nam?</p>"
        f'<form method="post" action="/u/{escape(token)}">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Xác nhận hủy đăng ký</button></form>'
        "<p><small>Các thông báo về hồ sơ, quyền lợi của chính bạn vẫn được gửi.</small></p>",
    )


@router.post(
    "/u/{token}",
    response_class=HTMLResponse,
    summary="One-click unsubscribe",
    responses=_REFUSALS,
)
def unsubscribe(token: str, session: DbSession) -> HTMLResponse:
    request = _read(session, token)
    if isinstance(request, HTMLResponse):
        return request
    service.opt_out(session=session, request=request)
    return _page(
        "Đã hủy đăng ký",
        f"<p>Bạn sẽ không nhận <strong>{escape(_what(request))}</strong> nữa.</p>",
    )
