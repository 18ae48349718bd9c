from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from dispatcher.tables.deliveries import DeliveryStatus, ErrorClass, Outcome


class AttemptOut(BaseModel):
    number: int
    started_at: datetime
    duration_ms: int
    outcome: Outcome
    error_class: ErrorClass | None
    provider_code: str | None
    provider_reply: str | None = Field(description="Addresses in it are masked.")
    provider_message_id: str | None
    locale: str | None
    possible_duplicate: bool


class DeliveryOut(BaseModel):
    id: int
    campaign_id: int
    run_id: int
    recipient: str
    channel: str
    address: str | None = Field(
        default=None,
        description="The recipient's current address on the channel, masked "
        "(ng***@gmail.com, +84 9** *** 678); null when there is none.",
    )
    status: DeliveryStatus
    attempts_count: int
    locale: str | None
    provider_message_id: str | None
    error_class: ErrorClass | None
    error_reason: str | None = Field(description="Addresses in it are masked.")
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None = None
    attempts: list[AttemptOut]
    archived: bool = Field(
        default=False,
        description="Read from an archived month's files (include_archived=true), not the "
        "database.",
    )


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class ChannelCounts(BaseModel):
    total: int
    by_status: dict[str, int]


class ErrorReasonCount(BaseModel):
    error_class: ErrorClass | None
    reason: str = Field(description="Addresses in it are masked.")
    count: int


class ThroughputBucket(BaseModel):
    minute: datetime = Field(description="The start of the minute (UTC).")
    finished: int = Field(description="Deliveries that reached sent, failed or skipped.")
    sent: int
    failed: int


class CampaignReport(BaseModel):
    campaign_id: int
    run_id: int | None = Field(description="The run the report is limited to, if any.")
    total: int
    by_status: dict[str, int]
    by_channel: dict[str, ChannelCounts]
    by_error_class: dict[str, int] = Field(
        description="Deliveries carrying an error class now (failed, skipped, retrying...)."
    )
    top_error_reasons: list[ErrorReasonCount]
    throughput: list[ThroughputBucket] = Field(
        description="Deliveries finished per minute, by when they last changed (updated_at)."
    )
    finished: int = Field(description="Deliveries that reached sent, failed or skipped.")
    first_finished_at: datetime | None
    last_finished_at: datetime | None
    deliveries_per_second: float | None = Field(
        description="finished / (last_finished_at - first_finished_at); null under two "
        "distinct instants."
    )
