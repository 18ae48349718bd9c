"""Local HTTP emulators of the providers the channel adapters talk to.

Each emulator speaks one provider's real wire contract (see the shared CHANNELS.md contract):
Telegram Bot API (:mod:`.telegram`), Zalo OA OpenAPI v3 (:mod:`.zalo`), Zalo ZNS (:mod:`.zns`),
Facebook Messenger
Send API (:mod:`.messenger`) and Firebase Cloud Messaging HTTP v1 (:mod:`.fcm`). They run on
127.0.0.1 in a background thread (:mod:`.base`), record every request and every accepted
message, enforce the provider's credentials, limits and rate limits, and can be scripted per
address to answer with any of the provider's documented failures.
"""

from .base import (
    ANY,
    OK,
    Delay,
    Delivery,
    Disconnect,
    Emulator,
    EmulatorServer,
    Journal,
    ManualClock,
    RateLimits,
    RecordedRequest,
    Reply,
    RequestLog,
    TokenBucket,
)

__all__ = [
    "ANY",
    "OK",
    "Delay",
    "Delivery",
    "Disconnect",
    "Emulator",
    "EmulatorServer",
    "Journal",
    "ManualClock",
    "RateLimits",
    "RecordedRequest",
    "Reply",
    "RequestLog",
    "TokenBucket",
]
