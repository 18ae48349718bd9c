"""Admins manage API keys. A key is shown once, in the answer that creates it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from dispatcher import audit
from dispatcher.auth import service
from dispatcher.auth.deps import Admin
from dispatcher.auth.models import ApiKey
from dispatcher.auth.service import Role
from dispatcher.deps import DbSession, PathId
from dispatcher.errors import Conflict
from dispatcher.fields import Instant

router = APIRouter(prefix="/v1/keys", tags=["keys"])


class KeyIn(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="Who or what uses the key")
    role: Role
    expires_at: Instant | None = Field(default=None, description="Default: never")


class KeyOut(BaseModel):
    id: int
    name: str
    role: str
    prefix: str
    created_at: datetime
    created_by: int | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class NewKeyOut(KeyOut):
    key: str = Field(description="The key itself. It is shown this once and never stored.")


def _out(row: ApiKey) -> KeyOut:
    return KeyOut(
        id=row.id,
        name=row.name,
        role=row.role,
        prefix=row.prefix,
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


@router.post("", status_code=201, response_model=NewKeyOut, summary="Create a key (shown once)")
def create_key(data: KeyIn, session: DbSession, caller: Admin) -> NewKeyOut:
    row, key = service.create_key(
        session,
        role=data.role.value,
        name=data.name,
        expires_at=data.expires_at,
        created_by=caller.key_id,
    )
    audit.record(
        session,
        actor=caller.label,
        action="key.create",
        subject=f"key:{row.id}",
        data={"name": row.name, "role": row.role, "expires_at": row.expires_at},
    )
    return NewKeyOut(**_out(row).model_dump(), key=key)


@router.get("", response_model=list[KeyOut])
def list_keys(
    session: DbSession,
    caller: Admin,
    include_revoked: Annotated[bool, Query()] = False,
) -> list[KeyOut]:
    return [_out(r) for r in service.list_keys(session, include_revoked=include_revoked)]


@router.delete("/{key_id}", response_model=KeyOut, summary="Revoke a key (at once)")
def revoke_key(key_id: PathId, session: DbSession, caller: Admin) -> KeyOut:
    if key_id == caller.key_id:
        raise Conflict("a key cannot revoke itself; revoke it with another admin key")
    row = service.revoke(session, key_id)
    audit.record(session, actor=caller.label, action="key.revoke", subject=f"key:{row.id}", data={})
    return _out(row)
