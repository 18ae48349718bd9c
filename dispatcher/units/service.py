"""The tree of organisational units: reading it, and changing it only into another valid tree.

Every change (one unit over the API, a whole file from ``dispatcher units import``) is laid over
the units as they are and the resulting tree is checked as a whole before anything is written:

- exactly one root (no parent), whose territory is the whole country;
- every parent exists and no unit is its own ancestor (no cycle);
- every province is one of the 34 of the 2025 map (a former province is named as such);
- a child's territory lies inside its parent's; siblings' territories do not overlap.

A problem raises :class:`~dispatcher.kit.errors.Invalid` listing every problem found, and
nothing is written. Services never commit: the caller's transaction does, or rolls back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dispatcher.kit.clock import utcnow
from dispatcher.kit.errors import Conflict, Invalid, NotFound
from dispatcher.recipients.provinces import CURRENT, current_named, lookup
from dispatcher.tables.audiences import SavedAudience
from dispatcher.tables.auth import Principal
from dispatcher.tables.campaigns import Campaign
from dispatcher.tables.content import Template
from dispatcher.tables.units import ROOT_CODE, Unit, root_unit_id

COUNTRY: tuple[str, ...] = tuple(sorted(p.code for p in CURRENT))
_CURRENT_BY_CODE = {p.code: p for p in CURRENT}
MAX_CODE = 32
MAX_NAME = 200


@dataclass(frozen=True)
class UnitSpec:
    """What a unit should be: its parent by code (None: the root), its territory by code."""

    code: str
    name: str
    parent: str | None
    territory: tuple[str, ...]


@dataclass
class Node:
    unit: Unit
    depth: int
    children: list[Node] = field(default_factory=list)


# -- Reading ------------------------------------------------------------------------------------


def root(session: Session) -> Unit:
    """The central unit (made on a fresh database)."""
    unit = session.get(Unit, root_unit_id(session.connection()))
    assert unit is not None
    return unit


def get(session: Session, unit_id: int) -> Unit:
    unit = session.get(Unit, unit_id)
    if unit is None:
        raise NotFound(f"unit {unit_id} does not exist")
    return unit


def by_code(session: Session, code: str, *, loc: Sequence[str] = ("body", "unit")) -> Unit:
    unit = session.scalar(select(Unit).where(Unit.code == code.strip()))
    if unit is None:
        raise Invalid(f"there is no unit with code {code.strip()!r}", loc=list(loc))
    return unit


def all_units(session: Session) -> list[Unit]:
    return list(session.scalars(select(Unit).order_by(Unit.code)))


def territory_of(unit: Unit) -> tuple[str, ...]:
    """The provinces a unit serves: the root's is the whole country."""
    return COUNTRY if unit.parent_id is None else tuple(unit.territory)


def tree(session: Session) -> list[Node]:
    """The units depth first from the root, children by code."""
    units = all_units(session)
    if not units:
        root(session)
        units = all_units(session)
    nodes = {u.id: Node(u, 0) for u in units}
    tops: list[Node] = []
    for unit in units:
        parent = nodes.get(unit.parent_id) if unit.parent_id is not None else None
        (parent.children if parent else tops).append(nodes[unit.id])
    ordered: list[Node] = []

    def walk(node: Node, depth: int) -> None:
        node.depth = depth
        ordered.append(node)
        for child in node.children:
            walk(child, depth + 1)

    for top in tops:
        walk(top, 0)
    return ordered


def _parents(session: Session) -> dict[int, int | None]:
    return {i: p for i, p in session.execute(select(Unit.id, Unit.parent_id))}


def ancestors(session: Session, unit_id: int) -> list[int]:
    """The unit and its ancestors, nearest first, ending at the root."""
    parents = _parents(session)
    if unit_id not in parents:
        raise NotFound(f"unit {unit_id} does not exist")
    chain: list[int] = []
    current: int | None = unit_id
    while current is not None and current not in chain:
        chain.append(current)
        current = parents.get(current)
    return chain


def descendants(session: Session, unit_id: int) -> set[int]:
    """The unit and every unit below it."""
    parents = _parents(session)
    if unit_id not in parents:
        raise NotFound(f"unit {unit_id} does not exist")
    children: dict[int, list[int]] = {}
    for child, parent in parents.items():
        if parent is not None:
            children.setdefault(parent, []).append(child)
    found = {unit_id}
    todo = [unit_id]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def is_within(session: Session, unit_id: int, ancestor_id: int) -> bool:
    """Whether ``unit_id`` is ``ancestor_id`` or lies below it."""
    return ancestor_id in ancestors(session, unit_id)


# -- Checking -----------------------------------------------------------------------------------


def parse_territory(values: Iterable[str], *, unit: str) -> tuple[tuple[str, ...], list[str]]:
    """Province codes or names of the 2025 map as sorted codes, and the problems found."""
    codes: set[str] = set()
    problems: list[str] = []
    for raw in values:
        value = str(raw).strip()
        if not value:
            continue
        if value in _CURRENT_BY_CODE:
            codes.add(value)
            continue
        if value.isdigit() and len(value) == 1 and f"0{value}" in _CURRENT_BY_CODE:
            codes.add(f"0{value}")
            continue
        named = current_named(value)
        if named is not None:
            codes.add(named.code)
            continue
        found = lookup(value)
        if found is not None:
            now = found
            problems.append(
                f"unit {unit}: {value!r} is a province of the former map, since 2025 part of "
                f"{now.name} ({now.code}): name that instead"
            )
            continue
        problems.append(f"unit {unit}: {value!r} is not a province of the 2025 map")
    return tuple(sorted(codes)), list(dict.fromkeys(problems))


def _name_of(code: str) -> str:
    return f"{_CURRENT_BY_CODE[code].name} ({code})"


def check(specs: dict[str, UnitSpec]) -> list[str]:
    """Every problem with the tree these specs make, in a stable order (empty: it is valid)."""
    problems: list[str] = []
    roots = sorted(code for code, spec in specs.items() if spec.parent is None)
    if len(roots) != 1:
        problems.append(
            "there must be exactly one root unit (without a parent); "
            + (f"found {len(roots)}: {', '.join(roots)}" if roots else "found none")
        )
    for code in sorted(specs):
        spec = specs[code]
        if not code or len(code) > MAX_CODE or not code.replace("-", "").replace("_", "").isalnum():
            problems.append(
                f"unit code {code!r} must be 1 to {MAX_CODE} letters, digits, '-' or '_'"
            )
        if not spec.name.strip() or len(spec.name) > MAX_NAME:
            problems.append(f"unit {code}: a name of 1 to {MAX_NAME} characters is required")
        if spec.parent is not None and spec.parent not in specs:
            problems.append(f"unit {code}: its parent {spec.parent!r} is not a unit")
        if spec.parent is None and spec.territory and set(spec.territory) != set(COUNTRY):
            problems.append(f"unit {code}: the root unit's territory is the whole country")
        if spec.parent is not None and not spec.territory:
            problems.append(f"unit {code}: its territory names no province")
    # Cycles: follow parents from each unit; coming back to a unit seen on this walk is a loop.
    in_cycle: set[str] = set()
    for code in sorted(specs):
        seen: list[str] = []
        current: str | None = code
        while current is not None and current in specs and current not in seen:
            seen.append(current)
            current = specs[current].parent
        if current is not None and current in seen and current not in in_cycle:
            loop = seen[seen.index(current) :]
            in_cycle.update(loop)
            problems.append(
                "units form a cycle: " + " → ".join([*loop, current]) + " (a unit cannot be "
                "below itself)"
            )
    # Territories: inside the parent's, apart from the siblings'.
    children: dict[str, list[str]] = {}
    for code, spec in specs.items():
        if spec.parent is not None and spec.parent in specs and code not in in_cycle:
            children.setdefault(spec.parent, []).append(code)
    for parent in sorted(children):
        spec = specs[parent]
        allowed = set(COUNTRY if spec.parent is None else spec.territory)
        kids = sorted(children[parent])
        for kid in kids:
            outside = sorted(set(specs[kid].territory) - allowed)
            if outside:
                problems.append(
                    f"unit {kid}: {', '.join(_name_of(c) for c in outside)} lie outside the "
                    f"territory of its parent {parent}"
                )
        for i, first in enumerate(kids):
            for second in kids[i + 1 :]:
                shared = sorted(set(specs[first].territory) & set(specs[second].territory))
                if shared:
                    problems.append(
                        f"units {first} and {second} (both under {parent}) overlap: "
                        f"{', '.join(_name_of(c) for c in shared)} can belong to only one of them"
                    )
    return problems


def _current_specs(session: Session) -> tuple[dict[str, UnitSpec], dict[str, Unit]]:
    units = all_units(session)
    by_id = {u.id: u for u in units}
    specs = {
        u.code: UnitSpec(
            code=u.code,
            name=u.name,
            parent=by_id[u.parent_id].code if u.parent_id in by_id else None,
            territory=territory_of(u),
        )
        for u in units
    }
    return specs, {u.code: u for u in units}


def _raise(problems: list[str], loc: Sequence[str] = ("body",)) -> None:
    if problems:
        raise Invalid("; ".join(problems), loc=list(loc))


# -- Changing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    created: list[str]
    updated: list[str]
    unchanged: list[str]


def apply(session: Session, wanted: Sequence[UnitSpec]) -> Applied:
    """Create or update the units named (by code); others stay as they are. All or nothing:
    the whole resulting tree is checked before anything is written."""
    current, rows = _current_specs(session)
    if not rows:
        root(session)
        current, rows = _current_specs(session)
    seen: set[str] = set()
    problems: list[str] = []
    for spec in wanted:
        if spec.code in seen:
            problems.append(f"unit {spec.code} is given twice")
        seen.add(spec.code)
    merged = dict(current)
    for spec in wanted:
        territory = COUNTRY if spec.parent is None and not spec.territory else spec.territory
        merged[spec.code] = UnitSpec(spec.code, spec.name.strip(), spec.parent, territory)
    problems += check(merged)
    _raise(problems)
    created, updated, unchanged = [], [], []
    now = utcnow()
    # Parents first, so that a new child finds its new parent's id.
    for code in _top_down(merged, [s.code for s in wanted]):
        spec = merged[code]
        row = rows.get(code)
        if row is None:
            row = Unit(code=code, created_at=now)
            session.add(row)
            rows[code] = row
            created.append(code)
        elif current[code] == spec:
            unchanged.append(code)
            continue
        else:
            updated.append(code)
        row.name = spec.name
        row.parent_id = rows[spec.parent].id if spec.parent is not None else None
        row.territory = list(spec.territory)
        row.updated_at = now
        session.flush()
    return Applied(created, updated, unchanged)


def _top_down(specs: dict[str, UnitSpec], codes: Sequence[str]) -> list[str]:
    def depth(code: str) -> int:
        n, current = 0, specs[code].parent
        while current is not None:
            n, current = n + 1, specs[current].parent
        return n

    return sorted(dict.fromkeys(codes), key=lambda c: (depth(c), c))


def create(session: Session, spec: UnitSpec) -> Unit:
    current, _ = _current_specs(session)
    if spec.code in current:
        raise Conflict(f"unit {spec.code} already exists")
    apply(session, [spec])
    return by_code(session, spec.code)


def update(
    session: Session,
    unit_id: int,
    *,
    name: str | None = None,
    parent: str | None = None,
    territory: tuple[str, ...] | None = None,
) -> Unit:
    """Change a unit's name, parent (by code) or territory; what is not given stays."""
    unit = get(session, unit_id)
    current, _ = _current_specs(session)
    old = current[unit.code]
    apply(
        session,
        [
            UnitSpec(
                code=unit.code,
                name=old.name if name is None else name,
                parent=old.parent if parent is None else parent,
                territory=old.territory if territory is None else territory,
            )
        ],
    )
    return unit


def delete(session: Session, unit_id: int) -> Unit:
    """Delete a unit that has nothing left: no child units, staff, campaigns, templates or
    saved audiences (move or delete those first)."""
    unit = get(session, unit_id)
    owned = [
        ("child units", select(func.count()).where(Unit.parent_id == unit.id)),
        ("people or systems", select(func.count()).where(Principal.unit_id == unit.id)),
        ("campaigns", select(func.count()).where(Campaign.unit_id == unit.id)),
        ("templates", select(func.count()).where(Template.unit_id == unit.id)),
        ("saved audiences", select(func.count()).where(SavedAudience.unit_id == unit.id)),
    ]
    held = [f"{n} {what}" for what, q in owned if (n := session.scalar(q) or 0)]
    if held:
        raise Conflict(f"unit {unit.code} still has {', '.join(held)}: it cannot be deleted")
    if unit.parent_id is None:
        raise Conflict(f"unit {unit.code} is the root unit: it cannot be deleted")
    session.delete(unit)
    session.flush()
    return unit


__all__ = [
    "COUNTRY",
    "ROOT_CODE",
    "Applied",
    "Node",
    "UnitSpec",
    "all_units",
    "ancestors",
    "apply",
    "by_code",
    "check",
    "create",
    "delete",
    "descendants",
    "get",
    "is_within",
    "parse_territory",
    "root",
    "territory_of",
    "tree",
    "update",
]
