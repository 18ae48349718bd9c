"""Each provider's message limits, in one place: adapters declare them, previews check them."""

from __future__ import annotations

from channels.base import ChannelLimits

LIMITS: dict[str, ChannelLimits] = {
    "email": ChannelLimits(max_subject=200, needs_subject=True),
    # VssID: an FCM push (payload <= 4 KB) whose title and body also fill the in-app inbox.
    "vssid": ChannelLimits(max_subject=100, max_payload_bytes=4096, needs_subject=True),
    "telegram": ChannelLimits(max_body=4096, html_body=True),
    "zalo": ChannelLimits(max_body=2000),
    "facebook": ChannelLimits(max_body=2000),
    "null": ChannelLimits(),
}

# The channels of the agency's plan; templates may carry variants for any of them.
PLAN_CHANNELS = ("vssid", "email", "telegram", "zalo", "facebook")


def limits_for(channel: str) -> ChannelLimits:
    return LIMITS.get(channel, ChannelLimits())


def utf16_length(text: str) -> int:
    """Length as providers count it (JavaScript / UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2
