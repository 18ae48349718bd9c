"""What units own, as the dashboard's campaign list shows it: the units in tree order, a page of
their campaigns, and how many campaigns each has in each status.

Every function takes the ids of the units the caller may see (their unit and the units below
it), so whoever decides that scope feeds them; none decides it here.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dispatcher.tables.campaigns import Campaign
from dispatcher.tables.content import Template
from dispatcher.tables.units import Unit
from dispatcher.units.service import Node, tree


@dataclass(frozen=True, slots=True)
class CampaignItem:
    campaign: Campaign
    template: str
    unit: Unit


@dataclass(slots=True)
class UnitCounts:
    unit: Unit
    depth: int
    by_status: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


def units_in_order(session: Session, unit_ids: Collection[int]) -> list[Node]:
    """The units of ``unit_ids``, depth first from the highest, children by code."""
    wanted = set(unit_ids)
    return [node for node in tree(session) if node.unit.id in wanted]


def campaign_page(
    session: Session,
    unit_ids: Collection[int],
    *,
    status: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[CampaignItem]:
    """The newest campaigns owned by ``unit_ids`` (below id ``before``), with their template's
    key and their unit; at most ``limit``."""
    query = (
        select(Campaign, Template.key, Unit)
        .join(Template, Template.id == Campaign.template_id)
        .join(Unit, Unit.id == Campaign.unit_id)
        .where(Campaign.unit_id.in_(list(unit_ids)))
        .order_by(Campaign.id.desc())
        .limit(limit)
    )
    if status:
        query = query.where(Campaign.status == status)
    if before is not None:
        query = query.where(Campaign.id < before)
    return [CampaignItem(c, key, unit) for c, key, unit in session.execute(query)]


def campaigns_by_unit(session: Session, unit_ids: Collection[int]) -> list[UnitCounts]:
    """Campaigns per unit and status, for the units of ``unit_ids`` that own any, in tree
    order: one grouped query."""
    counted: dict[int, dict[str, int]] = {}
    for unit_id, status, n in session.execute(
        select(Campaign.unit_id, Campaign.status, func.count())
        .where(Campaign.unit_id.in_(list(unit_ids)))
        .group_by(Campaign.unit_id, Campaign.status)
    ):
        counted.setdefault(unit_id, {})[status] = int(n)
    return [
        UnitCounts(node.unit, node.depth, counted[node.unit.id])
        for node in units_in_order(session, counted)
    ]
