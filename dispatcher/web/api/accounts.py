"""Admins manage the channel accounts of organisational units (a province's own Zalo OA,
Facebook Page, Telegram bot, email sender...): those of their own unit and the units below it
(another unit answers 404, as if it did not exist). A secret's value is never returned: an
account shows which of its fields are set and the values of those that are not secret."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from dispatcher import audit
from dispatcher.auth.service import Caller
from dispatcher.kit.errors import Invalid, NotFound
from dispatcher.kit.fields import Text
from dispatcher.tables.units import Unit
from dispatcher.units import accounts
from dispatcher.units import service as units
from dispatcher.units.schemas import UNIT_CODE
from dispatcher.web.http.callers import Admin
from dispatcher.web.http.deps import AppSettings, DbSession

MAX_VALUES = 50
router = APIRouter(prefix="/v1/units/{code}/accounts", tags=["units"])

UnitCode = Annotated[str, Path(pattern=UNIT_CODE, description="The unit's code, e.g. HN")]
ChannelName = Annotated[
    str, Path(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="The channel, e.g. zalo")
]


class AccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Text(200) | None = Field(  # type: ignore[valid-type]
        default=None, description="A label for people; by default the channel and the unit"
    )
    # Any JSON here: the channel's settings model checks each value, and its errors never
    # repeat one (a schema error of this model would echo the secrets sent in its answer).
    values: dict[str, Any] = Field(
        default_factory=dict,
        description="Settings by field name of the channel's own settings (app_id, "
        "secret_key...), at most 50; secret ones are stored encrypted with "
        "DISPATCHER_SECRET_KEY",
    )
    env_prefix: Annotated[str, Field(max_length=100)] | None = Field(
        default=None,
        description="Read the other settings from every process's environment as this prefix "
        "followed by the field's name in capitals (HN_ZALO_ + ACCESS_TOKEN)",
    )


class AccountOut(BaseModel):
    unit: str
    channel: str
    name: str
    key: str = Field(description="How pauses and limits name it: channel@UNIT")
    source: str = Field(description="database or environment")
    env_prefix: str | None
    set_fields: list[str] = Field(description="The fields set, secret or not")
    values: dict[str, Any] = Field(description="The values of the fields that are not secret")
    problem: str | None = None

    @classmethod
    def of(cls, view: accounts.AccountView) -> AccountOut:
        return cls(**vars(view))


def _within_reach(session: Session, caller: Caller, code: str) -> None:
    """An admin reaches the accounts of their unit and of the units below it."""
    if caller.unit_id is None:
        return
    unit_id = session.scalar(select(Unit.id).where(Unit.code == code.strip()))
    if unit_id is None or not units.is_within(session, unit_id, caller.unit_id):
        raise NotFound(f"there is no unit with code {code.strip()!r}")


@router.get("", response_model=list[AccountOut], summary="A unit's own channel accounts")
def list_accounts(
    code: UnitCode, session: DbSession, settings: AppSettings, caller: Admin
) -> list[AccountOut]:
    _within_reach(session, caller, code)
    return [AccountOut.of(v) for v in accounts.list_accounts(session, settings, code)]


@router.put("/{channel}", response_model=AccountOut, summary="Set a unit's account of a channel")
def put_account(
    code: UnitCode,
    channel: ChannelName,
    data: AccountIn,
    session: DbSession,
    settings: AppSettings,
    caller: Admin,
) -> AccountOut:
    _within_reach(session, caller, code)
    if len(data.values) > MAX_VALUES:
        raise Invalid(f"at most {MAX_VALUES} settings", loc=["body", "values"])
    row = accounts.set_account(
        session,
        settings,
        unit_code=code,
        channel=channel,
        name=data.name,
        values=data.values,
        env_prefix=data.env_prefix,
    )
    view = accounts.describe(session, settings, row)
    _audit(session, caller.label, "channel_account.set", view)
    return AccountOut.of(view)


@router.delete("/{channel}", response_model=AccountOut, summary="Remove a unit's own account")
def delete_account(
    code: UnitCode,
    channel: ChannelName,
    session: DbSession,
    settings: AppSettings,
    caller: Admin,
) -> AccountOut:
    _within_reach(session, caller, code)
    view = next(
        (v for v in accounts.list_accounts(session, settings, code) if v.channel == channel),
        None,
    )
    accounts.delete_account(session, settings, unit_code=code, channel=channel)
    assert view is not None
    _audit(session, caller.label, "channel_account.delete", view)
    return AccountOut.of(view)


def _audit(session: Any, actor: str, action: str, view: accounts.AccountView) -> None:
    audit.record(
        session,
        actor=actor,
        action=action,
        subject=f"account:{view.key}",
        data={"name": view.name, "source": view.source, "fields": view.set_fields},
    )
