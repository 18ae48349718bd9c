"""HTTP shapes of templates and previews."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from channels import registry
from dispatcher.content.render import GENERIC_CHANNEL
from dispatcher.kit.fields import StrictInt, one_of
from dispatcher.recipients.schemas import EXTERNAL_ID, LANGUAGE, language_tag

KEY = r"^[a-z0-9][a-z0-9_.-]{0,99}$"


def variant_channels() -> set[str]:
    """What a variant may be for: a channel of the plan or with an adapter, or any channel."""
    return set(registry.PLAN_CHANNELS) | set(registry.available()) | {GENERIC_CHANNEL}


def _variant_channel(value: str) -> str:
    known = variant_channels()
    if value not in known:
        raise ValueError(f"unknown channel {value!r}; known: {', '.join(sorted(known))}")
    return value


VariantChannel = Annotated[
    str,
    AfterValidator(_variant_channel),
    Field(
        description="A channel name, or 'default' for any channel.",
        json_schema_extra=one_of(variant_channels),
    ),
]


class VariantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: VariantChannel
    locale: str = Field(
        default="vi", pattern=LANGUAGE, description="vi, en, or another language code."
    )
    subject: str | None = Field(default=None, max_length=2000)
    body: str = Field(min_length=1, max_length=100_000)
    html: str | None = Field(default=None, max_length=500_000)

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str) -> str:
        return str(language_tag(value))


class TemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=KEY, description="Stable name; posting it again makes a new version.")
    kind: str | None = Field(default=None, max_length=32)
    description: str | None = Field(default=None, max_length=500)
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="Campaign variables the template uses, with defaults."
    )
    variants: list[VariantIn] = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _unique_variants(self) -> TemplateIn:
        seen: set[tuple[str, str]] = set()
        for i, variant in enumerate(self.variants):
            pair = (variant.channel, variant.locale)
            if pair in seen:
                raise ValueError(f"variants[{i}]: a second variant for {pair[0]}/{pair[1]}")
            seen.add(pair)
        return self


class VariantOut(BaseModel):
    channel: str
    locale: str
    subject: str | None
    body: str
    html: str | None


class TemplateOut(BaseModel):
    key: str
    kind: str | None
    description: str | None
    version: int
    versions: int
    source: str
    defaults: dict[str, Any]
    variants: list[VariantOut]
    created_at: datetime


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channel: VariantChannel
    locale: str | None = Field(
        default=None, pattern=LANGUAGE, description="Default: the recipient's language."
    )
    recipient: str | None = Field(
        default=None, pattern=EXTERNAL_ID, description="external_id of a recipient"
    )
    context: dict[str, Any] | None = Field(
        default=None, description="Recipient fields to use instead of a stored recipient."
    )
    variables: dict[str, Any] = Field(default_factory=dict)
    version: Annotated[StrictInt, Field(ge=1, le=2**31 - 1)] | None = None

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str | None) -> str | None:
        return None if value is None else str(language_tag(value))


class PreviewOut(BaseModel):
    key: str
    version: int
    channel: str
    locale: str
    subject: str | None
    body: str
    html: str | None
    problems: list[str] = Field(description="Ways the message breaks its channel's limits.")
