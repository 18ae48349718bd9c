"""Admins manage the tree of organisational units; every member of staff may read it.

A change that would leave a bad tree (a cycle, an unknown province, overlapping siblings, a
child outside its parent) is a 422 listing every problem, and nothing is changed.
"""

from __future__ import annotations

from fastapi import APIRouter

from dispatcher import audit
from dispatcher.kit.errors import Invalid
from dispatcher.units import service
from dispatcher.units.schemas import UnitIn, UnitOut, UnitPatch
from dispatcher.web.http.callers import Admin, Staff
from dispatcher.web.http.deps import DbSession, PathId

router = APIRouter(prefix="/v1/units", tags=["units"])


def _territory(values: list[str] | None, code: str) -> tuple[str, ...] | None:
    if values is None:
        return None
    territory, problems = service.parse_territory(values, unit=code)
    if problems:
        raise Invalid("; ".join(problems), loc=["body", "territory"])
    return territory


@router.get("", response_model=list[UnitOut], summary="The units, depth first from the root")
def list_units(session: DbSession, caller: Staff) -> list[UnitOut]:
    return [UnitOut.of(node.unit, node.depth) for node in service.tree(session)]


@router.get("/{unit_id}", response_model=UnitOut)
def get_unit(unit_id: PathId, session: DbSession, caller: Staff) -> UnitOut:
    return UnitOut.of(service.get(session, unit_id))


@router.post("", status_code=201, response_model=UnitOut, summary="Create a unit")
def create_unit(data: UnitIn, session: DbSession, caller: Admin) -> UnitOut:
    territory = _territory(data.territory, data.code) or ()
    unit = service.create(session, service.UnitSpec(data.code, data.name, data.parent, territory))
    audit.record(
        session,
        actor=caller.label,
        action="unit.create",
        subject=f"unit:{unit.code}",
        data={"name": unit.name, "parent_id": unit.parent_id, "territory": unit.territory},
    )
    return UnitOut.of(unit)


@router.patch("/{unit_id}", response_model=UnitOut, summary="Rename, move or change a territory")
def update_unit(unit_id: PathId, data: UnitPatch, session: DbSession, caller: Admin) -> UnitOut:
    unit = service.get(session, unit_id)
    unit = service.update(
        session,
        unit_id,
        name=data.name,
        parent=data.parent,
        territory=_territory(data.territory, unit.code),
    )
    audit.record(
        session,
        actor=caller.label,
        action="unit.update",
        subject=f"unit:{unit.code}",
        data={"name": unit.name, "parent_id": unit.parent_id, "territory": unit.territory},
    )
    return UnitOut.of(unit)


@router.delete(
    "/{unit_id}", response_model=UnitOut, summary="Delete a unit that owns nothing any more"
)
def delete_unit(unit_id: PathId, session: DbSession, caller: Admin) -> UnitOut:
    unit = service.delete(session, unit_id)
    audit.record(
        session, actor=caller.label, action="unit.delete", subject=f"unit:{unit.code}", data={}
    )
    return UnitOut.of(unit)
