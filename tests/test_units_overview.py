"""What the dashboard's campaign list reads, given the units a caller sees: a page of their
campaigns with each one's unit, and campaigns per unit and status in tree order; on SQLite and
PostgreSQL."""

from __future__ import annotations

from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.tables.campaigns import Campaign
from dispatcher.tables.content import Template
from dispatcher.units import overview
from dispatcher.units import scope as scopes
from dispatcher.units import service as units

TREE = [
    units.UnitSpec("VN", "Bảo hiểm xã hội Việt Nam", None, ()),
    units.UnitSpec("KV1", "Bảo hiểm xã hội khu vực I", "VN", ("01", "24")),
    units.UnitSpec("HN", "Bảo hiểm xã hội thành phố Hà Nội", "KV1", ("01",)),
    units.UnitSpec("BN", "Bảo hiểm xã hội tỉnh Bắc Ninh", "KV1", ("24",)),
    units.UnitSpec("KV2", "Bảo hiểm xã hội khu vực II", "VN", ("79",)),
]
OWNED = [
    ("HN", "draft"),
    ("BN", "submitted"),
    ("KV2", "draft"),
    ("HN", "running"),
    ("KV1", "draft"),
    ("HN", "draft"),
]


def test_a_regions_campaigns_and_counts(settings: Settings, db: Database) -> None:
    with db.transaction() as session:
        units.apply(session, TREE)
        ids = {u.code: u.id for u in units.all_units(session)}
        template = Template(key="mau", unit_id=ids["VN"])
        session.add(template)
        session.flush()
        for n, (code, status) in enumerate(OWNED, start=1):
            session.add(
                Campaign(
                    name=f"chiến dịch {n} của {code}",
                    kind="policy_news",
                    template_id=template.id,
                    audience={"all": True},
                    channels=["email"],
                    priority="bulk",
                    variables={},
                    status=status,
                    unit_id=ids[code],
                )
            )
    region = _units_seen_by(db, ids["KV1"])
    with db.transaction() as session:
        assert region == {ids["KV1"], ids["HN"], ids["BN"]}
        assert [n.unit.code for n in overview.units_in_order(session, region)] == [
            "KV1",
            "BN",
            "HN",
        ]

        page = overview.campaign_page(session, region)
        assert [(i.unit.code, i.campaign.status) for i in page] == [
            ("HN", "draft"),
            ("KV1", "draft"),
            ("HN", "running"),
            ("BN", "submitted"),
            ("HN", "draft"),
        ]
        assert {i.template for i in page} == {"mau"}
        newest_two = overview.campaign_page(session, region, limit=2)
        older = overview.campaign_page(session, region, before=newest_two[-1].campaign.id)
        assert [i.campaign.id for i in newest_two + older] == [i.campaign.id for i in page]
        drafts = overview.campaign_page(session, {ids["HN"]}, status="draft")
        assert [i.campaign.name for i in drafts] == ["chiến dịch 6 của HN", "chiến dịch 1 của HN"]

        counts = overview.campaigns_by_unit(session, region)
        assert [(c.unit.code, c.by_status, c.total) for c in counts] == [
            ("KV1", {"draft": 1}, 1),
            ("BN", {"submitted": 1}, 1),
            ("HN", {"draft": 2, "running": 1}, 3),
        ]
        # The whole country, from the root: the sibling region too, and no empty unit.
        everything = overview.campaigns_by_unit(session, _units_seen_by(db, None))
        assert [c.unit.code for c in everything] == ["KV1", "BN", "HN", "KV2"]
        assert overview.campaigns_by_unit(session, set()) == []


def _units_seen_by(db: Database, unit_id: int | None) -> set[int]:
    """The units a caller of ``unit_id`` sees, as a request's session works them out."""
    with db.reading() as session:
        scopes.attach(session, scopes.for_unit(session, unit_id))
        return scopes.units_of(session)
