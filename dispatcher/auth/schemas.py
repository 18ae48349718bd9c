"""HTTP shapes of people, systems and API keys."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from dispatcher.auth.service import Role
from dispatcher.kit.fields import Instant, Text
from dispatcher.tables.auth import Principal, PrincipalKind


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
