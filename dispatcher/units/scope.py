"""Who sees what: a caller's scope, applied to every query of their request.

A person or key of unit U sees and acts on what belongs to U and the units below it, and on
nothing else:

- campaigns, saved audiences and unit-owned templates whose ``unit_id`` is U or below it
  (built-in templates belong to no unit and are shared by all);
- runs, deliveries and open batches of those campaigns (a transactional message is a run of
  its unit's standing campaign);
- recipients whose province lies in U's territory (the root unit's territory is the whole
  country, and it also sees recipients without a known province);
- API keys of people and systems of U and below.

A :class:`Scope` is built once per request from the caller (``dispatcher.web.http``) and
attached to the request's database session (:func:`attach`). From then on every ORM statement
the session runs (``select()`` of entities or of their columns, counts, joins, subqueries,
``session.get``, relationship loads, ORM ``UPDATE`` and ``DELETE``) carries the scope's
criteria, added by one ``do_orm_execute`` listener (``with_loader_criteria``). Something
outside the scope is therefore not found, and answers 404 as if it did not exist. Sessions
without a scope (the command line, the scheduler, workers) see everything. A statement that
must see past the scope on purpose (the approval's count of the people a territory removes)
says so with ``execution_options(**UNSCOPED)``.

A campaign's audience is always intersected with its unit's territory
(:func:`territory_clause`), read when each page of a run is planned: a campaign follows its
unit's territory as it is then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import ColumnElement, event, or_, select, true
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria

from dispatcher.kit.errors import Conflict, Invalid, NotFound
from dispatcher.recipients.provinces import CURRENT, FORMER
from dispatcher.tables.audiences import SavedAudience
from dispatcher.tables.auth import ApiKey, Principal
from dispatcher.tables.campaigns import Campaign, Run
from dispatcher.tables.content import Template
from dispatcher.tables.deliveries import Batch, Delivery
from dispatcher.tables.recipients import Recipient
from dispatcher.tables.units import Unit
from dispatcher.units.service import COUNTRY, descendants, root

# session.info key of the scope (a Scope, or a callable giving one lazily, or None).
INFO_KEY = "dispatcher_scope"
# session.info key: recipients are being read through deliveries (see through_deliveries).
VIA_DELIVERIES = "dispatcher_scope_via_deliveries"
# Execution options of a statement that must see past the session's scope.
UNSCOPED = {"dispatcher_unscoped": True}


@dataclass(frozen=True, slots=True)
class Scope:
    """What a caller sees: ``unit_ids`` (their unit and those below it) and ``territory``
    (province codes). None for either means everything: the root unit's staff, and work
    done without a caller."""

    unit_id: int | None = None
    unit_ids: frozenset[int] | None = None
    territory: tuple[str, ...] | None = None

    @property
    def everything(self) -> bool:
        return self.unit_ids is None and self.territory is None

    def sees_unit(self, unit_id: int | None) -> bool:
        return self.unit_ids is None or unit_id in self.unit_ids

    def sees_province(self, province: str | None) -> bool:
        """Whether a recipient stored with this province is in the territory."""
        return self.territory is None or province in province_names(self.territory)


EVERYTHING = Scope()


def for_unit(session: Session, unit_id: int | None) -> Scope:
    """The scope of a caller of ``unit_id``: everything for the root unit (or no unit)."""
    if unit_id is None:
        return EVERYTHING
    unit = session.get(Unit, unit_id)
    if unit is None:
        raise NotFound(f"unit {unit_id} does not exist")
    if unit.parent_id is None:
        return Scope(unit_id=unit.id)
    return Scope(
        unit_id=unit.id,
        unit_ids=frozenset(descendants(session, unit.id)),
        territory=tuple(sorted(unit.territory)),
    )


# -- the territory as recipients store it -------------------------------------------------------


@lru_cache(maxsize=256)
def province_names(codes: tuple[str, ...]) -> frozenset[str]:
    """Every name a recipient of these provinces may be stored under: the current name (what
    the importer and the audience filters use), its official form, and the names of the
    former provinces merged into it."""
    wanted = set(codes)
    names = {p.name for p in CURRENT if p.code in wanted}
    names |= {p.official_name for p in CURRENT if p.code in wanted}
    names |= {f.name for f in FORMER if f.now in wanted}
    return frozenset(names)


def in_territory(codes: Iterable[str] | None) -> ColumnElement[bool]:
    """Recipients living in these provinces (None: everyone)."""
    if codes is None:
        return true()
    codes = tuple(sorted(set(codes)))
    if set(codes) >= set(COUNTRY):
        return true()
    return Recipient.province.in_(sorted(province_names(codes)))


def territory_of_unit(session: Session, unit_id: int) -> tuple[str, ...] | None:
    """A unit's provinces, None for the root's (the whole country)."""
    unit = session.get(Unit, unit_id, execution_options=UNSCOPED)
    if unit is None:
        raise NotFound(f"unit {unit_id} does not exist")
    return None if unit.parent_id is None else tuple(sorted(unit.territory))


def territory_clause(session: Session, unit_id: int) -> ColumnElement[bool]:
    """The recipients a campaign of ``unit_id`` may reach: its territory, as it is now."""
    return in_territory(territory_of_unit(session, unit_id))


# -- attaching a scope to a session -------------------------------------------------------------


def attach(session: Session, scope: Scope | Callable[[], Scope | None] | None) -> None:
    """Scope every statement ``session`` runs from now on. A callable is asked when the first
    statement runs (a request's session exists before its caller is known)."""
    session.info[INFO_KEY] = scope


def current(session: Session) -> Scope:
    """The session's scope (everything when none was attached)."""
    found = session.info.get(INFO_KEY)
    if callable(found):
        found = found()
        if found is not None:
            session.info[INFO_KEY] = found
    return found if isinstance(found, Scope) else EVERYTHING


def units_of(session: Session) -> set[int]:
    """The units the session's caller sees and manages: their unit and every unit below it
    (every unit for the root's staff and for work without a caller). People and the units'
    lists are narrowed by this set: a principal row is not narrowed by the statements' scope,
    because a campaign names approvers from the units above its own."""
    scope = current(session)
    if scope.unit_ids is not None:
        return set(scope.unit_ids)
    return descendants(session, root(session).id)


@contextmanager
def through_deliveries(session: Session) -> Iterator[None]:
    """Within: recipients are reached through deliveries, which the scope already narrows to
    its campaigns, so they are not narrowed again by territory. A citizen who moved away since
    still shows in the deliveries the unit sent them."""
    before = session.info.get(VIA_DELIVERIES)
    session.info[VIA_DELIVERIES] = True
    try:
        yield
    finally:
        session.info[VIA_DELIVERIES] = before


def _campaign_ids(ids: tuple[int, ...]) -> Any:
    return select(Campaign.id).where(Campaign.unit_id.in_(ids)).scalar_subquery()


def criteria(scope: Scope, *, recipients: bool = True) -> list[Any]:
    """The loader criteria that narrow every statement to ``scope`` (``recipients``: by its
    territory too)."""
    options: list[Any] = []
    if scope.unit_ids is not None:
        ids = tuple(sorted(scope.unit_ids))
        options += [
            with_loader_criteria(Campaign, lambda cls: cls.unit_id.in_(ids), include_aliases=True),
            with_loader_criteria(
                Template,
                lambda cls: or_(cls.unit_id.is_(None), cls.unit_id.in_(ids)),
                include_aliases=True,
            ),
            with_loader_criteria(
                SavedAudience, lambda cls: cls.unit_id.in_(ids), include_aliases=True
            ),
            with_loader_criteria(
                Run, lambda cls: cls.campaign_id.in_(_campaign_ids(ids)), include_aliases=True
            ),
            with_loader_criteria(
                Delivery,
                lambda cls: cls.campaign_id.in_(_campaign_ids(ids)),
                include_aliases=True,
            ),
            with_loader_criteria(
                Batch, lambda cls: cls.campaign_id.in_(_campaign_ids(ids)), include_aliases=True
            ),
            with_loader_criteria(
                ApiKey,
                lambda cls: cls.principal_id.in_(
                    select(Principal.id).where(Principal.unit_id.in_(ids)).scalar_subquery()
                ),
                include_aliases=True,
            ),
        ]
    if scope.territory is not None and recipients:
        names = tuple(sorted(province_names(scope.territory)))
        options.append(
            with_loader_criteria(
                Recipient, lambda cls: cls.province.in_(names), include_aliases=True
            )
        )
    return options


@event.listens_for(Session, "do_orm_execute")
def _scope_statement(state: ORMExecuteState) -> None:
    if not (state.is_select or state.is_update or state.is_delete):
        return
    if state.execution_options.get("dispatcher_unscoped"):
        return
    if INFO_KEY not in state.session.info:
        return
    scope = current(state.session)
    if scope.everything:
        return
    recipients = not state.session.info.get(VIA_DELIVERIES)
    state.statement = state.statement.options(*criteria(scope, recipients=recipients))


def check_recipients(
    session: Session, people: Iterable[tuple[str, str | None]], *, many: bool = False
) -> None:
    """Refuse writing recipients (external id, province) outside the session's territory:
    a province outside it is a 422 naming the row; a citizen who exists in another unit's
    territory is a 409 (their record is not this unit's to change)."""
    scope = current(session)
    if scope.territory is None:
        return
    people = list(people)
    allowed = province_names(scope.territory)
    for index, (external_id, province) in enumerate(people):
        if province not in allowed:
            loc: list[str | int] = ["body", index, "province"] if many else ["body", "province"]
            served = ", ".join(sorted(p.name for p in CURRENT if p.code in scope.territory))
            raise Invalid(
                f"recipient {external_id!r}: province {province!r} lies outside your unit's "
                f"territory ({served})",
                loc=loc,
            )
    ids = [external_id for external_id, _ in people]
    for start in range(0, len(ids), 1000):
        taken = session.scalars(
            select(Recipient.external_id)
            .where(Recipient.external_id.in_(ids[start : start + 1000]))
            .where(Recipient.province.not_in(sorted(allowed)) | Recipient.province.is_(None)),
            execution_options=UNSCOPED,
        ).first()
        if taken is not None:
            raise Conflict(
                f"recipient {taken!r} is recorded in a province outside your unit's territory: "
                "their record is changed by the unit that serves them"
            )


def unscoped_exists(session: Session, statement: Any) -> bool:
    """Whether ``statement`` finds a row past the scope (to refuse reusing a name another
    unit holds, without saying more)."""
    return session.execute(statement.limit(1), execution_options=UNSCOPED).first() is not None


__all__ = [
    "EVERYTHING",
    "INFO_KEY",
    "UNSCOPED",
    "Scope",
    "attach",
    "check_recipients",
    "criteria",
    "current",
    "for_unit",
    "in_territory",
    "province_names",
    "territory_clause",
    "territory_of_unit",
    "through_deliveries",
    "unscoped_exists",
]
