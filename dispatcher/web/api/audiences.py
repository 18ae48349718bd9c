from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from dispatcher.audiences import service
from dispatcher.auth.service import Role
from dispatcher.campaigns import approval
from dispatcher.kit.fields import Name, Text
from dispatcher.recipients.schemas import Audience, RecipientOut
from dispatcher.recipients.service import to_out
from dispatcher.tables.audiences import AudienceVersion, SavedAudience
from dispatcher.web.http.callers import Editor, require
from dispatcher.web.http.deps import DbSession

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
    version: int = Field(description="This filter's version; saving a new filter makes the next")
    versions: int = Field(description="How many versions the name has")
    created_at: datetime
    updated_at: datetime
    withdrew_approvals: list[int] = Field(
        default_factory=list,
        description="Campaigns whose approval a new version withdrew (they need a new one)",
    )


def _out(
    session: Session,
    row: SavedAudience,
    version: AudienceVersion,
    withdrawn: list[int] | None = None,
) -> AudienceOut:
    return AudienceOut(
        name=row.name,
        description=row.description,
        filter=version.filter,
        version=version.version,
        versions=service.version_count(session, row.id),
        created_at=row.created_at,
        updated_at=row.updated_at,
        withdrew_approvals=withdrawn or [],
    )


@router.post("/preview", response_model=PreviewOut, summary="How many, and who: a sample")
def preview(
    data: PreviewIn, session: DbSession, sample: Annotated[int, Query(ge=0, le=100)] = 10
) -> PreviewOut:
    count, people = service.preview(session=session, spec=data.audience, sample=sample)
    return PreviewOut(count=count, sample=[to_out(p) for p in people])


@router.post(
    "",
    response_model=AudienceOut,
    summary="Save a named audience (a changed filter is a new version)",
)
def save(data: AudienceIn, session: DbSession, caller: Editor) -> AudienceOut:
    row, version, withdrawn = approval.save_audience(
        session=session,
        name=data.name,
        spec=data.filter,
        description=data.description,
        caller=caller,
    )
    return _out(session, row, version, withdrawn)


@router.get("", response_model=list[AudienceOut], summary="Every saved audience, latest version")
def list_audiences(session: DbSession) -> list[AudienceOut]:
    out = []
    for row in session.scalars(select(SavedAudience).order_by(SavedAudience.name)):
        _, version = service.get(session=session, name=row.name)
        out.append(_out(session, row, version))
    return out


@router.get("/{name}", response_model=AudienceOut)
def get_audience(
    name: str,
    session: DbSession,
    version: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="Default: the latest")
    ] = None,
) -> AudienceOut:
    row, found = service.get(session=session, name=name, version=version)
    return _out(session, row, found)
