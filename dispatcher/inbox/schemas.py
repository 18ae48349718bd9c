from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from dispatcher.kit.fields import SPACE, Name


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
    model_config = ConfigDict(extra="forbid")

    token: Name(rf"^[^{SPACE}]{{10,500}}$") = Field(description="The FCM registration token.")  # type: ignore[valid-type]
    platform: Literal["android", "ios"] = "android"


class DeviceOut(BaseModel):
    id: int
    platform: str
    created_at: datetime
