"""HTTP shapes of people, systems and API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from dispatcher.auth.people import LOGIN, MAX_PASSWORD, MIN_PASSWORD, is_locked, needs_totp
from dispatcher.auth.service import Role
from dispatcher.kit.fields import Instant, Name, Text
from dispatcher.tables.auth import Principal, PrincipalKind
from dispatcher.tables.units import Unit
from dispatcher.units.schemas import UNIT_CODE


class PrincipalOut(BaseModel):
    """A person or a system: whose key it is, who wrote, submitted or approved a campaign."""

    id: int
    kind: PrincipalKind
    name: str

    @classmethod
    def of(cls, row: Principal) -> PrincipalOut:
        return cls(id=row.id, kind=PrincipalKind(row.kind), name=row.name)


class KeyIn(BaseModel):
    """A new key for the calling admin. People and systems, and their first keys, are made
    with ``dispatcher keys create`` on the server: a key minted here can never stand for
    someone else."""

    model_config = ConfigDict(extra="forbid")

    name: Text(200) = Field(description="What the key is for (a device, a job)")  # type: ignore[valid-type]
    role: Role
    expires_at: Instant | None = Field(default=None, description="Default: never")


class KeyOut(BaseModel):
    id: int
    name: str
    role: str
    owner: PrincipalOut = Field(description="The person or system the key belongs to")
    prefix: str
    created_at: datetime
    created_by: int | None = Field(description="The key that made it (none: the command line)")
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class NewKeyOut(KeyOut):
    key: str = Field(description="The key itself. It is shown this once and never stored.")


# -- People ---------------------------------------------------------------------------------------

PersonRoleName = Literal["editor", "approver", "operator", "admin"]
Password = Annotated[
    str,
    StringConstraints(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD),
    Field(description=f"{MIN_PASSWORD} to {MAX_PASSWORD} characters, kept as they are"),
]


class PersonIn(BaseModel):
    """A person of a unit the calling admin manages (theirs or one below it)."""

    model_config = ConfigDict(extra="forbid")

    login: Name(LOGIN) = Field(  # type: ignore[valid-type]
        description="What they sign in with: 2 to 100 of a-z, 0-9, '.', '_', '@', '-'"
    )
    name: Text(200) = Field(description="Their full name, as colleagues read it")  # type: ignore[valid-type]
    unit: Name(UNIT_CODE) = Field(description="Their unit's code")  # type: ignore[valid-type]
    roles: list[PersonRoleName] = Field(min_length=1, max_length=4)
    password: Password | None = Field(
        default=None,
        description="The initial password; without one, a password is generated and returned "
        "once in the answer",
    )


class RolesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: list[PersonRoleName] = Field(min_length=1, max_length=4)


class UnitRef(BaseModel):
    id: int
    code: str
    name: str


class PersonOut(BaseModel):
    """A person: never their password hash or TOTP secret."""

    id: int
    login: str | None = Field(description="None: the person uses keys only")
    name: str
    unit: UnitRef
    roles: list[str]
    has_password: bool = Field(description="Whether they can sign in to the dashboard")
    totp_enrolled: bool
    totp_required: bool = Field(description="Approvers and admins sign in with a TOTP code too")
    locked_until: datetime | None = Field(
        description="Sign-in refused until then, after too many wrong passwords or codes"
    )
    disabled: bool = Field(description="No role and no password: disabled, or never set up")
    created_at: datetime

    @classmethod
    def of(cls, row: Principal, unit: Unit) -> PersonOut:
        roles = sorted(r.role for r in row.roles)
        locked = row.locked_until if is_locked(row) else None
        return cls(
            id=row.id,
            login=row.login,
            name=row.name,
            unit=UnitRef(id=unit.id, code=unit.code, name=unit.name),
            roles=roles,
            has_password=row.password_hash is not None,
            totp_enrolled=row.totp_confirmed_at is not None,
            totp_required=needs_totp(row),
            locked_until=locked,
            disabled=not roles and row.password_hash is None,
            created_at=row.created_at,
        )


class NewPersonOut(PersonOut):
    initial_password: str | None = Field(
        description="The generated password, shown this once and never stored in clear; none "
        "when the request gave one"
    )
