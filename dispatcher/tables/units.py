"""Organisational units: the central agency at the root, regional and provincial offices below.

A unit owns the campaigns, templates and saved audiences its staff make, and its staff belong to
it. Its territory is the set of provinces (current codes of the 2025 map) whose citizens it
serves; the root's is the whole country. Later: channel accounts per unit and inbound
conversations routed to a unit reference ``units.id`` too.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, ForeignKey, String, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import Mapped, mapped_column

from dispatcher.core.db import Base, BigId, JSONType, UTCDateTime
from dispatcher.kit.clock import utcnow

# The unit every existing row is assigned to when units first appear (migration 0017), and the
# one a fresh database gets the first time it needs a unit.
ROOT_CODE = "VN"
ROOT_NAME = "Bảo hiểm xã hội Việt Nam"


class Unit(Base):
    __tablename__ = "units"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # Short and stable ("VN", "HN", "KV1"): how files and commands name a unit.
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # None only for the root, of which there is one (dispatcher.units.service checks it).
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("units.id", ondelete="RESTRICT"), nullable=True, index=True
    )
    # Current province codes ("01", "79"), sorted. The root's is always the whole country.
    territory: Mapped[list[str]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


def root_unit_id(connection: Connection) -> int:
    """The root unit's id, making it (the whole country, ``ROOT_CODE``) when there is none yet:
    a fresh database gets its central unit the first time something needs one."""
    query = select(Unit.id).where(Unit.parent_id.is_(None)).order_by(Unit.id).limit(1)
    found = connection.execute(query).scalar()
    if found is not None:
        return int(found)
    insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
    now = utcnow()
    connection.execute(
        insert(Unit)
        .values(
            code=ROOT_CODE,
            name=ROOT_NAME,
            parent_id=None,
            # The root's territory is the whole country whatever is stored (the units service
            # reads it so); the service and the migration store the full list.
            territory=[],
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["code"])
    )
    made = connection.execute(query).scalar()
    assert made is not None
    return int(made)


def default_unit(context: DefaultExecutionContext) -> int:
    """Column default of ``unit_id`` where a unit is required: a row written without one
    (by the command line, a transactional stream, a bulk insert) belongs to the root unit.
    The services pass the creator's unit explicitly."""
    return root_unit_id(context.connection)
