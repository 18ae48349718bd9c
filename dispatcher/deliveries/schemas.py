from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class AttemptOut(BaseModel):
    number: int
    started_at: datetime
    duration_ms: int
    outcome: str
    error_class: str | None
    provider_code: str | None
    provider_reply: str | None
    provider_message_id: str | None
    locale: str | None
    possible_duplicate: bool


class DeliveryOut(BaseModel):
    id: int
    campaign_id: int
    run_id: int
    recipient: str
    channel: str
    status: str
    attempts_count: int
    locale: str | None
    provider_message_id: str | None
    error_class: str | None
    error_reason: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None = None
    attempts: list[AttemptOut]


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None
