"""Send windows: greetings and news reach people only at decent hours (Vietnam time).

``DISPATCHER_SEND_WINDOWS`` maps a campaign kind, or ``kind:channel``, to ``"HH:MM-HH:MM"``;
kinds not listed (fraud warnings, disaster notices, transactional messages) ignore windows.
A delivery outside its window waits for it to open; it is never failed for it.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

VIETNAM = ZoneInfo("Asia/Ho_Chi_Minh")
DEFAULT_WINDOWS = {"greeting": "07:00-21:00", "policy_news": "07:00-21:00"}


def parse_window(text: str) -> tuple[time, time]:
    try:
        start, end = (time.fromisoformat(part.strip()) for part in text.split("-"))
    except ValueError:
        raise ValueError(f"a window is 'HH:MM-HH:MM', not {text!r}") from None
    if start == end:
        raise ValueError(f"an empty window: {text!r}")
    return start, end


def window_for(kind: str, channel: str, windows: dict[str, str]) -> tuple[time, time] | None:
    text = windows.get(f"{kind}:{channel}") or windows.get(kind)
    return parse_window(text) if text else None


def next_open(now: datetime, kind: str, channel: str, windows: dict[str, str]) -> datetime | None:
    """When the window opens next, or None when a message may go now."""
    window = window_for(kind, channel, windows)
    if window is None:
        return None
    start, end = window
    local = now.astimezone(VIETNAM)
    clock = local.time()
    inside = start <= clock < end if start < end else (clock >= start or clock < end)
    if inside:
        return None
    day = local.date() if clock < start else local.date() + timedelta(days=1)
    return datetime.combine(day, start, tzinfo=VIETNAM).astimezone(UTC)


def state(
    now: datetime, kind: str, channel: str, windows: dict[str, str]
) -> tuple[datetime | None, datetime | None]:
    """``(opening, until)``: when the window opens next (None while a message may go), and
    until when that answer holds (the window's next close or opening; None: for ever, the kind
    has no window). Lets a batch ask once per kind and channel rather than once per message."""
    window = window_for(kind, channel, windows)
    if window is None:
        return None, None
    opening = next_open(now, kind, channel, windows)
    if opening is not None:
        return opening, opening
    start, end = window
    local = now.astimezone(VIETNAM)
    day = local.date()
    if start > end and local.time() >= start:
        # A window across midnight closes tomorrow morning.
        day += timedelta(days=1)
    return None, datetime.combine(day, end, tzinfo=VIETNAM).astimezone(UTC)
