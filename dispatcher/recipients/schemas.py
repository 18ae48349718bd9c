"""HTTP shapes of recipients."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal, cast

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    TypeAdapter,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema
from typing_extensions import TypedDict

from channels import registry
from dispatcher.kit.fields import NOT_BLANK, Day, Name, Text, case_insensitive, padded
from dispatcher.recipients.audience import AudienceError, compile_audience

EXTERNAL_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# A language tag of at most 16 characters: vi, en, vi-vn, zh-hant-tw (any case, - or _).
LANGUAGE_TAG = r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})?(?:[-_][A-Za-z0-9]{2,3})?$"
LANGUAGE = padded(LANGUAGE_TAG)
MAX_ADDRESS = 320


def known_channels() -> set[str]:
    return set(registry.PLAN_CHANNELS) | set(registry.available())


def language_tag(value: Any) -> Any:
    """A language code as stored: lower case, with - between its parts."""
    if isinstance(value, str):
        if not re.match(LANGUAGE, value):
            raise ValueError("a language code such as vi, en, km or vi-vn")
        value = value.strip().lower().replace("_", "-")
    return value


# email_validator refuses addresses on these domains, which nothing can deliver to.
_SPECIAL_USE = "[@.](?:{})[.]?$".format(
    "|".join(case_insensitive(name) for name in SPECIAL_USE_DOMAIN_NAMES)
)


def _addresses_schema(schema: dict[str, Any]) -> None:
    address = {"type": "string", "maxLength": MAX_ADDRESS, "pattern": NOT_BLANK}
    email = {**address, "format": "email", "not": {"pattern": _SPECIAL_USE}}
    schema["properties"] = {
        channel: email if channel == "email" else address for channel in sorted(known_channels())
    }
    schema["additionalProperties"] = False


class RecipientIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    external_id: Name(EXTERNAL_ID) = Field(description="Social-insurance number (unique).")  # type: ignore[valid-type]
    full_name: Text(200)  # type: ignore[valid-type]
    birth_date: Day | None = None
    province: Text(64, min_length=0) | None = None  # type: ignore[valid-type]
    language: str = Field(default="vi", pattern=LANGUAGE)
    kind: Literal["person", "organization"] = "person"
    addresses: dict[str, str] = Field(
        default_factory=dict,
        description='Per channel: {"email": ..., "telegram": ..., "zalo": ..., '
        '"facebook": ..., "vssid": ...}',
        json_schema_extra=_addresses_schema,
    )
    attributes: dict[str, Any] = Field(default_factory=dict)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        return str(language_tag(value))

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, value: dict[str, str]) -> dict[str, str]:
        known = known_channels()
        cleaned: dict[str, str] = {}
        for channel, address in value.items():
            if channel not in known:
                raise ValueError(f"unknown channel {channel!r}; known: {', '.join(sorted(known))}")
            if not address.strip() or len(address) > MAX_ADDRESS:
                raise ValueError(f"{channel}: an address of 1 to {MAX_ADDRESS} characters")
            address = address.strip()
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


# -- The audience filter language (see dispatcher.recipients.audience), as a JSON Schema --------

_NonBlank = Annotated[str, StringConstraints(pattern=NOT_BLANK)]
_Kind = Annotated[str, StringConstraints(pattern=padded(r"^(?:person|organization)$"))]
# MM-DD of a real day of a leap year (02-29 is a birthday).
_MONTH_DAY = (
    r"^(?:(?:0?[13578]|1[02])-(?:0?[1-9]|[12][0-9]|3[01])"
    r"|(?:0?[469]|11)-(?:0?[1-9]|[12][0-9]|30)"
    r"|0?2-(?:0?[1-9]|1[0-9]|2[0-9]))$"
)
_MonthDay = Annotated[str, StringConstraints(pattern=padded(_MONTH_DAY))]
_Years = Annotated[int, Field(strict=True, ge=0, le=150)]


def _some(item: Any) -> Any:
    return Annotated[list[item], Field(min_length=1)]


def _one_or_some(item: Any) -> Any:
    return item | _some(item)


def _attributes() -> Any:
    return Annotated[
        dict[_AttributeName, _one_or_some(_NonBlank)],  # type: ignore[misc]
        Field(min_length=1, json_schema_extra={"additionalProperties": False}),
    ]


class AgeRange(TypedDict, total=False):
    __pydantic_config__ = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})  # type: ignore[misc]

    min: _Years
    max: _Years


_AttributeName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]

# "and", "or" and "not" are Python keywords: the functional form names them.
# Built at run time (the types are computed), so through cast: a schema, not a type to check.
AudienceFilter = cast(Any, TypedDict)(
    "AudienceFilter",
    {
        "all": Literal[True],
        "external_ids": Annotated[list[_NonBlank], Field(min_length=1, max_length=100_000)],
        "province": _NonBlank | _some(_NonBlank),
        "kind": _Kind | _some(_Kind),
        "language": _NonBlank | _some(_NonBlank),
        "born_on": _MonthDay | _some(_MonthDay),
        "age": AgeRange,
        "attributes": _attributes(),
        "saved": _NonBlank,
        "and": _some("AudienceFilter"),
        "or": _some("AudienceFilter"),
        "not": "AudienceFilter",
    },
    total=False,
)
AudienceFilter.__pydantic_config__ = ConfigDict(
    extra="forbid",
    title="AudienceFilter",
    json_schema_extra={
        "minProperties": 1,
        "description": "One filter; several keys in one object must all hold. "
        "Nested at most 8 deep. age: whole years on the day a run plans, min not above max.",
    },
)
_audience_filter: TypeAdapter[Any] = TypeAdapter(AudienceFilter)


class _AudienceSchema:
    """A filter is validated by ``compile_audience`` and kept as the JSON it came as; its
    schema is ``AudienceFilter``'s."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return handler(_audience_filter.core_schema)


def _audience(value: dict[str, Any]) -> dict[str, Any]:
    try:
        compile_audience(value)
    except AudienceError as exc:
        raise ValueError(str(exc)) from None
    return value


Audience = Annotated[dict[str, Any], AfterValidator(_audience), _AudienceSchema]
