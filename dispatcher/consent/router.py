"""The one-click unsubscribe link (RFC 8058): GET shows a confirmation page, POST unsubscribes.

No login and no cookies: the signed token is the authority. The pages are in Vietnamese.
"""

from __future__ import annotations

from html import escape
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from dispatcher.config import get_settings
from dispatcher.consent import service
from dispatcher.deps import DbSession
from dispatcher.secrets import signing_key

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


_INVALID_LINK: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "The link is not one we signed (an HTML page)",
        "content": {"text/html": {}},
    }
}


def _what(request: service.Unsubscribe) -> str:
    channel = CHANNEL_NAMES_VI.get(request.channel, request.channel)
    category = service.CATEGORY_NAMES_VI.get(request.category, request.category)
    return f"{category} qua {channel}"


@router.get(
    "/u/{token}",
    response_class=HTMLResponse,
    summary="Unsubscribe confirmation page",
    responses=_INVALID_LINK,
)
def confirm_page(token: str, session: DbSession) -> HTMLResponse:
    request = service.read_token(signing_key(session, get_settings()), token)
    if request is None:
        return _invalid()
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
    responses=_INVALID_LINK,
)
def unsubscribe(token: str, session: DbSession) -> HTMLResponse:
    request = service.read_token(signing_key(session, get_settings()), token)
    if request is None:
        return _invalid()
    service.opt_out(session=session, request=request)
    return _page(
        "Đã hủy đăng ký",
        f"<p>Bạn sẽ không nhận <strong>{escape(_what(request))}</strong> nữa.</p>",
    )
