from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from dispatcher import audit
from dispatcher.audiences import service
from dispatcher.audiences.models import SavedAudience
from dispatcher.auth.deps import Editor, require
from dispatcher.auth.service import Role
from dispatcher.deps import DbSession
from dispatcher.errors import NotFound
from dispatcher.fields import Name, Text
from dispatcher.recipients.schemas import Audience, RecipientOut
from dispatcher.recipients.service import to_out

router = APIRouter(
    prefix="/v1/audiences", tags=["audiences"], dependencies=[Depends(require(Role.editor))]
)


AUDIENCE_NAME = r"^[a-z0-9][a-z0-9_.-]{0,99}$"


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    audience: Audience = Field(description="A filter, as in a campaign.")


class PreviewOut(BaseModel):
    count: int
    sample: list[RecipientOut]


class AudienceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name(AUDIENCE_NAME)  # type: ignore[valid-type]
    description: Text(500, min_length=0) | None = None  # type: ignore[valid-type]
    filter: Audience


class AudienceOut(BaseModel):
    name: str
    description: str | None
    filter: dict[str, Any]
    created_at: datetime
    updated_at: datetime


def _out(row: SavedAudience) -> AudienceOut:
    return AudienceOut(
        name=row.name,
        description=row.description,
        filter=row.filter,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


@router.post("/preview", response_model=PreviewOut, summary="How many, and who: a sample")
def preview(
    data: PreviewIn, session: DbSession, sample: Annotated[int, Query(ge=0, le=100)] = 10
) -> PreviewOut:
    count, people = service.preview(session=session, spec=data.audience, sample=sample)
    return PreviewOut(count=count, sample=[to_out(p) for p in people])


@router.post("", response_model=AudienceOut, summary="Save a named audience (replaces one)")
def save(data: AudienceIn, session: DbSession, caller: Editor) -> AudienceOut:
    row = service.save(
        session=session, name=data.name, spec=data.filter, description=data.description
    )
    audit.record(
        session,
        actor=caller.label,
        action="audience.save",
        subject=f"audience:{row.name}",
        data={"filter": row.filter},
    )
    return _out(row)


@router.get("", response_model=list[AudienceOut])
def list_audiences(session: DbSession) -> list[AudienceOut]:
    return [_out(r) for r in session.scalars(select(SavedAudience).order_by(SavedAudience.name))]


@router.get("/{name}", response_model=AudienceOut)
def get_audience(name: str, session: DbSession) -> AudienceOut:
    row = session.scalar(select(SavedAudience).where(SavedAudience.name == name))
    if row is None:
        raise NotFound(f"no saved audience named {name!r}")
    return _out(row)
