"""HTTP shapes of campaigns, runs and transactional messages."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from channels import registry
from channels.base import Category
from dispatcher.auth.schemas import PrincipalOut
from dispatcher.content.schemas import KEY
from dispatcher.kit.fields import Instant, Name, Text, one_of
from dispatcher.recipients.schemas import EXTERNAL_ID, Audience
from dispatcher.scheduling.rules import Schedule
from dispatcher.tables.campaigns import CampaignStatus, RunStatus
from dispatcher.tables.deliveries import DeliveryStatus

URGENT_KINDS = {Category.fraud_warning, Category.disaster_support, Category.transactional}
Priority = Literal["urgent", "bulk"]


def default_priority(kind: Category) -> Priority:
    return "urgent" if kind in URGENT_KINDS else "bulk"


def _channels(value: list[str]) -> list[str]:
    known = registry.available()
    seen: list[str] = []
    for channel in value:
        if channel not in known:
            raise ValueError(
                f"no adapter for channel {channel!r}; installed: {', '.join(sorted(known))}"
            )
        if channel in seen:
            raise ValueError(f"channel {channel!r} listed twice")
        seen.append(channel)
    return seen


# The channels with an adapter installed, each listed once.
ChannelName = Annotated[str, Field(json_schema_extra=one_of(registry.available))]
Channels = Annotated[
    list[ChannelName], Field(min_length=1, max_length=10, json_schema_extra={"uniqueItems": True})
]
TemplateKey = Name(KEY)


class CampaignIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        # send_at (once) or schedule (recurring), not both.
        json_schema_extra={
            "not": {
                "required": ["send_at", "schedule"],
                "properties": {"send_at": {"type": "string"}, "schedule": {"type": "object"}},
            }
        },
    )

    name: Text(200)  # type: ignore[valid-type]
    kind: Category
    template: TemplateKey = Field(description="Template key.")  # type: ignore[valid-type]
    audience: Audience = Field(
        description='A filter: {"all": true}, {"external_ids": [...]}, {"province": [...]}, '
        '{"kind": ...}, {"language": [...]}, and/or/not.'
    )
    channels: Channels
    channel_mode: Literal["all", "fallback"] = Field(
        default="all",
        description="all: send on every listed channel the recipient has. fallback: the "
        "channels are an order of preference; send on the first usable one, and on a failure "
        "move to the next.",
    )
    priority: Priority | None = Field(default=None, description="Default: from the kind.")
    send_at: Instant | None = Field(default=None, description="Default: at approval.")
    schedule: Schedule | None = Field(
        default=None,
        description="A recurring rule instead of send_at: cron, lunar, birthday or occasion.",
    )
    variables: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _once_or_recurring(self) -> CampaignIn:
        if self.schedule is not None and self.send_at is not None:
            raise ValueError("give send_at (once) or schedule (recurring), not both")
        return self

    @field_validator("channels")
    @classmethod
    def _channel_names(cls, value: list[str]) -> list[str]:
        return _channels(value)

    @field_validator("send_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2026-01-01T07:00:00+07:00")
        return value


class ScheduleIn(BaseModel):
    schedule: Schedule


class RunOut(BaseModel):
    id: int
    status: RunStatus
    scheduled_for: datetime
    late: bool = False
    planned_count: int
    planned_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class Counts(BaseModel):
    total: int = 0
    by_status: dict[str, int] = Field(default_factory=dict)
    by_channel: dict[str, dict[str, int]] = Field(default_factory=dict)


class CampaignOut(BaseModel):
    id: int
    name: str
    kind: str
    stream: bool = Field(
        default=False,
        description="True for a template's transactional stream (named transactional:<template>): "
        "the standing campaign that holds the messages of POST /v1/messages, one run each. "
        "It stays running (an open stream, not a stuck campaign): it has counts, no end.",
    )
    template: str
    template_version: int | None
    audience: dict[str, Any]
    channels: list[str]
    channel_mode: str
    priority: str
    send_at: datetime | None
    schedule: dict[str, Any] | None = None
    next_fire_at: datetime | None = None
    variables: dict[str, Any]
    status: CampaignStatus
    status_reason: str | None
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None
    approved_at: datetime | None
    completed_at: datetime | None
    created_by: int | None = Field(default=None, description="The API key ids that acted")
    submitted_by: int | None = None
    approved_by: int | None = None
    author: PrincipalOut | None = Field(
        default=None, description="Who wrote it: the author cannot approve it"
    )
    submitter: PrincipalOut | None = Field(
        default=None, description="Who submitted it: the submitter cannot approve it"
    )
    approver: PrincipalOut | None = None
    approved_audiences: dict[str, int] | None = Field(
        default=None,
        description="The version of every saved audience the approval froze (runs plan from "
        "these; a new version withdraws the approval)",
    )
    approved_preview_for: datetime | None = Field(
        default=None, description="The send time the approved preview was rendered for"
    )
    approved_audience_count: int | None = Field(
        default=None,
        description="How many people the audience matched when approved (for information: "
        "what is frozen is the rule, not its membership)",
    )
    approval_expires_at: datetime | None = None
    counts: Counts
    runs: list[RunOut]


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Text(500)  # type: ignore[valid-type]


class ChannelPreviewOut(BaseModel):
    channel: str
    rendered_for: datetime = Field(
        description="The send time whose calendar (year, date, lunar year) the preview uses"
    )
    locale: str | None
    subject: str | None
    body: str | None
    html: str | None
    problem: str | None = Field(default=None, description="Why this channel has no preview")


class AudienceCountOut(BaseModel):
    """Whom a campaign reaches now, as its approver is shown it."""

    count: int = Field(description="People its filter reaches inside its unit's territory")
    outside_territory: int = Field(
        description="People its filter matches outside its unit's territory, whom the "
        "territory removed (always 0 for the central unit, whose territory is the country)"
    )
    territory: list[str] | None = Field(
        description="The unit's provinces (codes of the 2025 map); null: the whole country"
    )


class MessageIn(BaseModel):
    """One transactional message to one recipient."""

    model_config = ConfigDict(extra="forbid")

    recipient: Name(EXTERNAL_ID) = Field(description="external_id")  # type: ignore[valid-type]
    template: TemplateKey  # type: ignore[valid-type]
    channels: Channels = Field(default_factory=lambda: ["email"])
    variables: dict[str, Any] = Field(default_factory=dict)

    @field_validator("channels")
    @classmethod
    def _channel_names(cls, value: list[str]) -> list[str]:
        return _channels(value)


# An Idempotency-Key: up to 255 letters, digits and - _ . : ~ + / = (a UUID, a ULID, base64,
# "contribution-2026-11-0100000001"). The quoted form of the IETF draft ("...") is the same key.
IDEMPOTENCY_KEY_MAX = 255
_KEY_CHARS = r"[A-Za-z0-9._:~+/=-]"
IDEMPOTENCY_KEY_PATTERN = (
    rf'^(?:{_KEY_CHARS}{{1,{IDEMPOTENCY_KEY_MAX}}}|"{_KEY_CHARS}{{1,{IDEMPOTENCY_KEY_MAX}}}")$'
)
_KEY = re.compile(rf"{_KEY_CHARS}+")


def idempotency_key(value: str) -> str:
    """The key of an ``Idempotency-Key`` header, quotes removed; a ValueError says what is wrong."""
    key = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    if not key:
        raise ValueError("Idempotency-Key is empty; send a unique string such as a UUID")
    if len(key) > IDEMPOTENCY_KEY_MAX:
        raise ValueError(
            f"Idempotency-Key is {len(key)} characters long; at most {IDEMPOTENCY_KEY_MAX}"
        )
    if not _KEY.fullmatch(key):
        bad = next(c for c in key if not _KEY.fullmatch(c))
        raise ValueError(
            f"Idempotency-Key has the character {bad!r}; use letters, digits and - _ . : ~ + / ="
        )
    return key


class MessageDelivery(BaseModel):
    id: int
    channel: str
    status: DeliveryStatus


class MessageOut(BaseModel):
    id: int
    campaign_id: int
    status: RunStatus
    created_at: datetime
    created_by: int | None = Field(
        default=None, description="The API key that sent it (the only sender key that reads it)"
    )
    deliveries: list[MessageDelivery]
