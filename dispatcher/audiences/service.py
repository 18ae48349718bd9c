"""Saved audiences and audience previews (a count and a sample, computed in SQL)."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from dispatcher.audiences.models import SavedAudience
from dispatcher.clock import utcnow
from dispatcher.errors import Invalid
from dispatcher.recipients.audience import AudienceError, Resolver, compile_audience
from dispatcher.recipients.models import Recipient
from dispatcher.scheduling.windows import VIETNAM


def resolver(session: Session) -> Resolver:
    def resolve(name: str) -> dict[str, Any] | None:
        return session.scalar(select(SavedAudience.filter).where(SavedAudience.name == name))

    return resolve


def today_in_vietnam() -> date:
    return utcnow().astimezone(VIETNAM).date()


def compile_for(
    session: Session, spec: Any, *, today: date | None = None, loc: str = "audience"
) -> ColumnElement[bool]:
    """Compile a filter with saved audiences resolved; a bad one is a 422 naming the part."""
    try:
        return compile_audience(
            spec, loc, today=today or today_in_vietnam(), resolve=resolver(session)
        )
    except AudienceError as exc:
        raise Invalid(str(exc), loc=["body", loc]) from None


def save(
    *, session: Session, name: str, spec: dict[str, Any], description: str | None
) -> SavedAudience:
    """Create or replace a saved audience; its filter must compile (no unknown names, no loop)."""
    now = utcnow()
    row = session.scalar(select(SavedAudience).where(SavedAudience.name == name))
    if row is None:
        row = SavedAudience(name=name, filter=spec, description=description, created_at=now)
        session.add(row)
    else:
        row.filter = spec
        row.description = description
    row.updated_at = now
    session.flush()
    compile_for(session, {"saved": name}, loc="filter")
    return row


def preview(
    *, session: Session, spec: dict[str, Any], sample: int = 10
) -> tuple[int, list[Recipient]]:
    where = compile_for(session, spec)
    count = session.scalar(select(func.count()).select_from(Recipient).where(where)) or 0
    people = list(
        session.scalars(select(Recipient).where(where).order_by(Recipient.id).limit(sample))
    )
    return count, people
