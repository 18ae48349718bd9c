from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class InboxItemOut(BaseModel):
    id: int
    kind: str
    title: str
    body: str
    html: str | None
    created_at: datetime
    read_at: datetime | None


class InboxPage(BaseModel):
    items: list[InboxItemOut]
    unread: int
    next_cursor: str | None


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    token: str = Field(min_length=10, max_length=500, description="The FCM registration token.")
    platform: Literal["android", "ios"] = "android"


class DeviceOut(BaseModel):
    id: int
    platform: str
    created_at: datetime
