"""Admins manage the tree of organisational units; every member of staff may read it.

A change that would leave a bad tree (a cycle, an unknown province, overlapping siblings, a
child outside its parent) is a 422 listing every problem, and nothing is changed.

An admin of the central unit manages every unit; an admin of any other unit manages the units
below their own (not their own unit, whose territory their parent gave it): another unit is
404 to them, as if it did not exist.
"""

from __future__ import annotations

from fastapi import APIRouter

from dispatcher import audit
from dispatcher.auth.service import Caller
from dispatcher.kit.errors import Invalid, NotFound
from dispatcher.units import scope as scopes
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


def _managed(session: DbSession, caller: Caller, unit_id: int) -> None:
    """404 unless the caller's admin may change ``unit_id``."""
    scope = scopes.for_unit(session, caller.unit_id)
    if scope.everything:
        return
    if unit_id == caller.unit_id or not scope.sees_unit(unit_id):
        raise NotFound(f"unit {unit_id} does not exist")


def _managed_parent(session: DbSession, caller: Caller, parent: str | None) -> None:
    scope = scopes.for_unit(session, caller.unit_id)
    if scope.everything:
        return
    found = service.by_code(session, parent, loc=("body", "parent")) if parent else None
    if found is None or not scope.sees_unit(found.id):
        raise Invalid(
            f"there is no unit with code {(parent or '').strip()!r} among yours: a unit you "
            "make goes below your own unit",
            loc=["body", "parent"],
        )


@router.get("", response_model=list[UnitOut], summary="The units, depth first from the root")
def list_units(session: DbSession, caller: Staff) -> list[UnitOut]:
    return [UnitOut.of(node.unit, node.depth) for node in service.tree(session)]


@router.get("/{unit_id}", response_model=UnitOut)
def get_unit(unit_id: PathId, session: DbSession, caller: Staff) -> UnitOut:
    return UnitOut.of(service.get(session, unit_id))


@router.post("", status_code=201, response_model=UnitOut, summary="Create a unit")
def create_unit(data: UnitIn, session: DbSession, caller: Admin) -> UnitOut:
    _managed_parent(session, caller, data.parent)
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
    _managed(session, caller, unit_id)
    if data.parent is not None:
        _managed_parent(session, caller, data.parent)
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
    _managed(session, caller, unit_id)
    unit = service.delete(session, unit_id)
    audit.record(
        session, actor=caller.label, action="unit.delete", subject=f"unit:{unit.code}", data={}
    )
    return UnitOut.of(unit)
