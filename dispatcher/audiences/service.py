"""Saved audiences and audience previews (a count and a sample, computed in SQL).

A saved audience is a name over immutable numbered versions. A filter naming one is resolved
either to each name's latest version (drafts, previews, the check before a run) or to the
versions an approval pinned (``Pinned``: what a run plans from), recursively: a saved audience
may name another.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from dispatcher.kit.clock import utcnow
from dispatcher.kit.errors import Conflict, Invalid, NotFound
from dispatcher.recipients.audience import AudienceError, Resolver, compile_audience
from dispatcher.scheduling.windows import VIETNAM
from dispatcher.tables.audiences import AudienceVersion, SavedAudience
from dispatcher.tables.recipients import Recipient
from dispatcher.units import scope as scopes

# The saved audiences a filter resolved: name -> AudienceVersion.id.
Pinned = Mapping[str, int]


def latest_version(session: Session, name: str) -> AudienceVersion | None:
    return session.scalar(
        select(AudienceVersion)
        .join(SavedAudience, SavedAudience.id == AudienceVersion.audience_id)
        .where(SavedAudience.name == name)
        .order_by(AudienceVersion.version.desc())
        .limit(1)
    )


def resolver(
    session: Session,
    *,
    pinned: Pinned | None = None,
    seen: dict[str, AudienceVersion] | None = None,
) -> Resolver:
    """Looks saved audiences up: the latest versions, or exactly the ``pinned`` ones. Each
    version used is recorded in ``seen``."""

    def resolve(name: str) -> dict[str, Any] | None:
        if pinned is None:
            row = latest_version(session, name)
        else:
            if name not in pinned:
                raise AudienceError(f"saved audience {name!r} is not among the approved ones")
            row = session.get(AudienceVersion, pinned[name])
        if row is None:
            return None
        if seen is not None:
            seen[name] = row
        return row.filter

    return resolve


def today_in_vietnam() -> date:
    return utcnow().astimezone(VIETNAM).date()


def compile_for(
    session: Session,
    spec: Any,
    *,
    today: date | None = None,
    loc: str = "audience",
    pinned: Pinned | None = None,
) -> ColumnElement[bool]:
    """Compile a filter with saved audiences resolved; a bad one is a 422 naming the part."""
    try:
        return compile_audience(
            spec, loc, today=today or today_in_vietnam(), resolve=resolver(session, pinned=pinned)
        )
    except AudienceError as exc:
        raise Invalid(str(exc), loc=["body", loc]) from None


def resolve_versions(session: Session, spec: Any) -> dict[str, AudienceVersion]:
    """The latest version of every saved audience ``spec`` names, however deep."""
    seen: dict[str, AudienceVersion] = {}
    try:
        compile_audience(spec, today=today_in_vietnam(), resolve=resolver(session, seen=seen))
    except AudienceError as exc:
        raise Invalid(str(exc), loc=["body", "audience"]) from None
    return seen


def version_numbers(session: Session, pinned: Pinned) -> dict[str, int]:
    """``{name: version number}`` of pinned versions, for people to read."""
    if not pinned:
        return {}
    numbers = dict(
        session.execute(
            select(AudienceVersion.id, AudienceVersion.version).where(
                AudienceVersion.id.in_(list(pinned.values()))
            )
        ).all()
    )
    return {name: numbers[vid] for name, vid in sorted(pinned.items()) if vid in numbers}


def save(
    *,
    session: Session,
    name: str,
    spec: dict[str, Any],
    description: str | None,
    unit_id: int | None = None,
) -> tuple[SavedAudience, AudienceVersion, bool]:
    """Save ``spec`` under ``name``: a new version when the filter differs from the latest
    (the same filter again keeps its version). Returns the audience, its version and whether
    the version is new. The filter must compile (no unknown names, no loop)."""
    now = utcnow()
    row = session.scalar(select(SavedAudience).where(SavedAudience.name == name).with_for_update())
    if row is None and scopes.unscoped_exists(
        session, select(SavedAudience.id).where(SavedAudience.name == name)
    ):
        raise Conflict(
            f"the name {name!r} is taken by another unit's saved audience: choose another name"
        )
    if row is None:
        row = SavedAudience(name=name, description=description, created_at=now, updated_at=now)
        if unit_id is not None:
            row.unit_id = unit_id  # its author's unit (else the root)
        session.add(row)
        session.flush()
        current = None
    else:
        row.description = description
        row.updated_at = now
        current = latest_version(session, name)
        if current is not None and current.filter == spec:
            return row, current, False
    version = AudienceVersion(
        audience_id=row.id,
        version=(current.version if current else 0) + 1,
        filter=spec,
        created_at=now,
    )
    session.add(version)
    session.flush()
    compile_for(session, {"saved": name}, loc="filter")
    return row, version, True


def get(
    *, session: Session, name: str, version: int | None = None
) -> tuple[SavedAudience, AudienceVersion]:
    row = session.scalar(select(SavedAudience).where(SavedAudience.name == name))
    if row is None:
        raise NotFound(f"no saved audience named {name!r}")
    query = select(AudienceVersion).where(AudienceVersion.audience_id == row.id)
    if version is None:
        query = query.order_by(AudienceVersion.version.desc()).limit(1)
    else:
        query = query.where(AudienceVersion.version == version)
    found = session.scalar(query)
    if found is None:
        raise NotFound(f"saved audience {name!r} has no version {version}")
    return row, found


def version_count(session: Session, audience_id: int) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(AudienceVersion)
            .where(AudienceVersion.audience_id == audience_id)
        )
        or 0
    )


def preview(
    *, session: Session, spec: dict[str, Any], sample: int = 10
) -> tuple[int, list[Recipient]]:
    where = compile_for(session, spec)
    count = session.scalar(select(func.count()).select_from(Recipient).where(where)) or 0
    people = list(
        session.scalars(select(Recipient).where(where).order_by(Recipient.id).limit(sample))
    )
    return count, people
