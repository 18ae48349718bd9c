"""Admins manage API keys. A key is shown once, in the answer that creates it.

A key made here belongs to the admin who makes it: people and systems, and their first keys,
are made on the server with ``dispatcher keys create``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from dispatcher import audit
from dispatcher.auth import service
from dispatcher.auth.schemas import KeyIn, KeyOut, NewKeyOut, PrincipalOut
from dispatcher.kit.errors import Conflict
from dispatcher.tables.auth import ApiKey
from dispatcher.web.http.callers import Admin
from dispatcher.web.http.deps import DbSession, PathId

router = APIRouter(prefix="/v1/keys", tags=["keys"])


def _out(row: ApiKey) -> KeyOut:
    return KeyOut(
        id=row.id,
        name=row.name,
        role=row.role,
        owner=PrincipalOut.of(row.principal),
        prefix=row.prefix,
        created_at=row.created_at,
        created_by=row.created_by,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


@router.post(
    "",
    status_code=201,
    response_model=NewKeyOut,
    summary="Create a key for yourself (shown once)",
)
def create_key(data: KeyIn, session: DbSession, caller: Admin) -> NewKeyOut:
    row, key = service.create_key(
        session,
        role=data.role.value,
        name=data.name,
        owner=service.get_principal(session, caller.principal_id),
        expires_at=data.expires_at,
        created_by=caller.key_id,
    )
    audit.record(
        session,
        actor=caller.label,
        action="key.create",
        subject=f"key:{row.id}",
        data={
            "name": row.name,
            "role": row.role,
            "owner": row.principal_id,
            "expires_at": row.expires_at,
        },
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
