"""HTTP shapes of recipients."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, field_validator

from channels import registry
from channels.limits import PLAN_CHANNELS

EXTERNAL_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
LANGUAGE = r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$"


def known_channels() -> set[str]:
    return set(PLAN_CHANNELS) | set(registry.available())


class RecipientIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    external_id: str = Field(pattern=EXTERNAL_ID, description="Social-insurance number (unique).")
    full_name: str = Field(min_length=1, max_length=200)
    birth_date: date | None = None
    province: str | None = Field(default=None, max_length=64)
    language: str = Field(default="vi", max_length=16)
    kind: Literal["person", "organization"] = "person"
    addresses: dict[str, str] = Field(
        default_factory=dict,
        description='Per channel: {"email": ..., "telegram": ..., "zalo": ..., '
        '"facebook": ..., "vssid": ...}',
    )
    attributes: dict[str, Any] = Field(default_factory=dict)

    @field_validator("language", mode="before")
    @classmethod
    def _language(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower().replace("_", "-")
            if not re.match(LANGUAGE, value):
                raise ValueError("a language code such as vi, en, km or vi-vn")
        return value

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, value: dict[str, str]) -> dict[str, str]:
        known = known_channels()
        cleaned: dict[str, str] = {}
        for channel, address in value.items():
            if channel not in known:
                raise ValueError(f"unknown channel {channel!r}; known: {', '.join(sorted(known))}")
            address = address.strip()
            if not address or len(address) > 320:
                raise ValueError(f"{channel}: an address of 1 to 320 characters")
            if channel == "email":
                try:
                    address = validate_email(address, check_deliverability=False).normalized
                except EmailNotValidError as exc:
                    raise ValueError(f"email: {exc}") from None
            cleaned[channel] = address
        return cleaned


class AddressOut(BaseModel):
    channel: str
    value: str
    dead: bool
    dead_reason: str | None = None


class RecipientOut(BaseModel):
    id: int
    external_id: str
    full_name: str
    birth_date: date | None
    province: str | None
    language: str
    kind: str
    addresses: dict[str, str]
    dead_addresses: dict[str, str] = Field(
        default_factory=dict, description="Channels whose address a provider declared dead."
    )
    attributes: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class UpsertSummary(BaseModel):
    count: int
    created: int
    updated: int
