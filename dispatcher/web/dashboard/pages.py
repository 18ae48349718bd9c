"""Rendering the dashboard's pages: one Jinja environment, Vietnamese labels, page headers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from dispatcher.auth.service import Caller, Role
from dispatcher.scheduling.windows import VIETNAM
from dispatcher.tables.campaigns import CampaignStatus, RunStatus
from dispatcher.tables.deliveries import DeliveryStatus, ErrorClass

ROLE_NAMES = {
    Role.editor: "Biên tập viên",
    Role.approver: "Người phê duyệt",
    Role.operator: "Vận hành viên",
    Role.sender: "Hệ thống gửi tin",
    Role.admin: "Quản trị viên",
}

CAMPAIGN_STATUS: dict[str, str] = {
    CampaignStatus.draft: "Bản nháp",
    CampaignStatus.submitted: "Chờ phê duyệt",
    CampaignStatus.approved: "Đã phê duyệt",
    CampaignStatus.scheduled: "Đã lên lịch",
    CampaignStatus.running: "Đang gửi",
    CampaignStatus.paused: "Tạm dừng",
    CampaignStatus.completed: "Hoàn thành",
    CampaignStatus.cancelled: "Đã hủy",
}

# A transactional stream is always open unless paused or closed: no "sending", no "done".
STREAM_STATUS: dict[str, str] = {
    CampaignStatus.running: "Luồng tin giao dịch — đang mở",
    CampaignStatus.paused: "Luồng tin giao dịch — tạm dừng",
    CampaignStatus.cancelled: "Luồng tin giao dịch — đã đóng",
}

RUN_STATUS: dict[str, str] = {
    RunStatus.planning: "Đang lập danh sách",
    RunStatus.running: "Đang gửi",
    RunStatus.paused: "Tạm dừng",
    RunStatus.completed: "Hoàn thành",
    RunStatus.cancelled: "Đã hủy",
    RunStatus.skipped: "Bị bỏ lỡ",
}

DELIVERY_STATUS: dict[str, str] = {
    DeliveryStatus.pending: "Đang chờ",
    DeliveryStatus.claimed: "Đang gửi",
    DeliveryStatus.retrying: "Chờ thử lại",
    DeliveryStatus.sent: "Đã gửi",
    DeliveryStatus.failed: "Thất bại",
    DeliveryStatus.skipped: "Bỏ qua",
    DeliveryStatus.cancelled: "Đã hủy",
}

ERROR_CLASSES: dict[str, str] = {
    ErrorClass.transient: "Lỗi tạm thời",
    ErrorClass.rate_limited: "Vượt giới hạn tốc độ",
    ErrorClass.auth: "Lỗi xác thực với nhà cung cấp",
    ErrorClass.permanent: "Lỗi vĩnh viễn",
}

KINDS = {
    "greeting": "Lời chúc",
    "disaster_support": "Hỗ trợ thiên tai, dịch bệnh",
    "fraud_warning": "Cảnh báo lừa đảo",
    "policy_news": "Tin chính sách",
    "transactional": "Tin giao dịch",
}

PRIORITIES = {"urgent": "Khẩn", "bulk": "Thường"}

CHANNELS = {
    "vssid": "VssID",
    "email": "Thư điện tử",
    "telegram": "Telegram",
    "zalo": "Zalo OA",
    "facebook": "Facebook Messenger",
    "null": "Kênh thử (không gửi)",
}

# Statuses after which a campaign's numbers no longer move: the page stops polling them.
SETTLED = (CampaignStatus.completed, CampaignStatus.cancelled)


def label(names: dict[str, str], value: str | None) -> str:
    if value is None:
        return "—"
    return names.get(value, value)


def campaign_status_label(status: str, *, stream: bool = False) -> str:
    """A campaign's status as staff read it; a transactional stream reads as an open stream."""
    if stream and status in STREAM_STATUS:
        return STREAM_STATUS[status]
    return label(CAMPAIGN_STATUS, status)


def vn_time(value: datetime | None, seconds: bool = False) -> str:
    """A moment as staff read it: Vietnam time, day first."""
    if value is None:
        return "—"
    return value.astimezone(VIETNAM).strftime("%d/%m/%Y %H:%M:%S" if seconds else "%d/%m/%Y %H:%M")


def iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def number(value: int | None) -> str:
    """Thousands separated by dots, as Vietnamese writes them."""
    if value is None:
        return "—"
    return f"{value:,}".replace(",", ".")


environment = Environment(
    loader=PackageLoader("dispatcher.web.dashboard", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
environment.filters.update(
    vn_time=vn_time,
    iso=iso,
    number=number,
    role_name=lambda role: label({r.value: n for r, n in ROLE_NAMES.items()}, str(role)),
    campaign_status=lambda s, stream=False: campaign_status_label(s, stream=stream),
    run_status=lambda s: label(RUN_STATUS, s),
    delivery_status=lambda s: label(DELIVERY_STATUS, s),
    error_class=lambda s: label(ERROR_CLASSES, s),
    kind=lambda s: label(KINDS, s),
    priority=lambda s: label(PRIORITIES, s),
    channel=lambda s: label(CHANNELS, s),
)

# The dashboard serves its own files only; previews of e-mail HTML sit in sandboxed frames.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; frame-src 'self'; frame-ancestors 'none'; form-action 'self'; "
        "base-uri 'none'; object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def navigation(caller: Caller | None) -> list[tuple[str, str]]:
    """The header's links that the caller's role may open."""
    if caller is None:
        return []
    links = []
    if caller.holds(Role.editor, Role.approver, Role.operator):
        links.append(("/ui/campaigns", "Chiến dịch"))
    if caller.holds(Role.approver):
        links.append(("/ui/approvals", "Phê duyệt"))
    if caller.holds(Role.operator):
        links.append(("/ui/deliveries", "Tra cứu gửi tin"))
    return links


def render(
    request: Request,
    name: str,
    *,
    caller: Caller | None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    html = environment.get_template(name).render(
        caller=caller,
        nav=navigation(caller),
        path=request.url.path,
        **context,
    )
    return HTMLResponse(html, status_code=status_code, headers=headers)
