"""Organisational units: importing a file (all or nothing, re-importable), the checks that keep
the tree valid, the admin API, and deleting only a unit that owns nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from dispatcher.cli import app
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.recipients.provinces import CURRENT
from dispatcher.tables.units import ROOT_CODE, Unit
from dispatcher.units import service

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "units.example.yaml"

REGION = """
units:
  - code: VN
    name: Bảo hiểm xã hội Việt Nam
  - code: KV1
    name: Bảo hiểm xã hội khu vực I
    parent: VN
    territory: ["01", "Bắc Ninh"]
  - code: HN
    name: Bảo hiểm xã hội thành phố Hà Nội
    parent: KV1
    territory: ["01"]
  - code: BN
    name: Bảo hiểm xã hội tỉnh Bắc Ninh
    parent: KV1
    territory: ["24"]
"""


def _snapshot(db: Database) -> list[tuple[Any, ...]]:
    with db.transaction() as session:
        return [
            (u.code, u.name, u.parent_id, tuple(u.territory))
            for u in session.scalars(select(Unit).order_by(Unit.code))
        ]


def _import(tmp_path: Path, text: str, suffix: str = ".yaml") -> Any:
    path = tmp_path / f"units{suffix}"
    path.write_text(text, encoding="utf-8")
    return CliRunner().invoke(app, ["units", "import", str(path)])


def test_the_example_imports_one_unit_per_province_and_again_changes_nothing(
    settings: Settings, db: Database
) -> None:
    first = CliRunner().invoke(app, ["units", "import", str(EXAMPLE)])
    assert first.exit_code == 0, first.output
    assert "34 units created" in first.output
    with db.transaction() as session:
        nodes = service.tree(session)
        assert nodes[0].unit.code == ROOT_CODE and nodes[0].depth == 0
        children = [n.unit for n in nodes[1:]]
        assert {n.depth for n in nodes[1:]} == {1}
        assert sorted(c for u in children for c in u.territory) == sorted(p.code for p in CURRENT)
    before = _snapshot(db)
    again = CliRunner().invoke(app, ["units", "import", str(EXAMPLE)])
    assert again.exit_code == 0, again.output
    assert "0 units created, 0 updated, 35 unchanged" in again.output
    assert _snapshot(db) == before
    listed = CliRunner().invoke(app, ["units", "list"])
    assert listed.exit_code == 0
    assert "  VN-79  Bảo hiểm xã hội thành phố Hồ Chí Minh  [79]" in listed.output


def test_three_levels_from_csv_and_the_chain(settings: Settings, db: Database, tmp_path: Path):
    csv_text = (
        "code,name,parent,territory\n"
        "VN,Bảo hiểm xã hội Việt Nam,,\n"
        "KV1,Bảo hiểm xã hội khu vực I,VN,01;24\n"
        "HN,Bảo hiểm xã hội thành phố Hà Nội,KV1,Hà Nội\n"
        "BN,Bảo hiểm xã hội tỉnh Bắc Ninh,KV1,24\n"
    )
    result = _import(tmp_path, csv_text, ".csv")
    assert result.exit_code == 0, result.output
    with db.transaction() as session:
        ids = {u.code: u.id for u in service.all_units(session)}
        assert service.ancestors(session, ids["HN"]) == [ids["HN"], ids["KV1"], ids["VN"]]
        assert service.descendants(session, ids["KV1"]) == {ids["KV1"], ids["HN"], ids["BN"]}
        assert service.is_within(session, ids["BN"], ids["VN"])
        assert not service.is_within(session, ids["BN"], ids["HN"])


@pytest.mark.parametrize(
    ("text", "said"),
    [
        pytest.param(
            REGION.replace('territory: ["24"]', 'territory: ["01"]'),
            "units BN and HN (both under KV1) overlap: Hà Nội (01)",
            id="siblings-overlap",
        ),
        pytest.param(
            REGION.replace('territory: ["24"]', 'territory: ["Atlantis"]'),
            "'Atlantis' is not a province of the 2025 map",
            id="unknown-province",
        ),
        pytest.param(
            REGION.replace('territory: ["24"]', 'territory: ["Bắc Giang"]'),
            "'Bắc Giang' is a province of the former map, since 2025 part of Bắc Ninh (24)",
            id="former-province",
        ),
        pytest.param(
            REGION.replace('territory: ["24"]', 'territory: ["79"]'),
            "unit BN: Hồ Chí Minh (79) lie outside the territory of its parent KV1",
            id="outside-parent",
        ),
        pytest.param(
            REGION.replace("    parent: VN\n", "    parent: HN\n"),
            "units form a cycle",
            id="cycle",
        ),
        pytest.param(
            REGION.replace(
                '    parent: KV1\n    territory: ["24"]', '    parent: KV9\n    territory: ["24"]'
            ),
            "unit BN: its parent 'KV9' is not a unit",
            id="unknown-parent",
        ),
        pytest.param(
            REGION + "  - code: VN2\n    name: Một gốc nữa\n",
            "there must be exactly one root unit",
            id="two-roots",
        ),
        pytest.param("units: [\n", "not valid YAML", id="not-yaml"),
    ],
)
def test_bad_files_change_nothing(
    settings: Settings, db: Database, tmp_path: Path, text: str, said: str
) -> None:
    good = _import(tmp_path, REGION.replace('    territory: ["24"]\n', '    territory: ["24"]\n'))
    assert good.exit_code == 0, good.output
    # A change that is good on its own rides along in each bad file: it must not go in either.
    before = _snapshot(db)
    result = _import(tmp_path, text.replace("khu vực I\n", "khu vực Một\n"))
    assert result.exit_code == 2, result.output
    assert "nothing was imported" in result.output
    assert said in " ".join(result.output.split()), result.output
    assert _snapshot(db) == before


def test_the_api_refuses_a_bad_tree_and_deletes_only_an_empty_unit(
    client: Any, db: Database, tmp_path: Path
) -> None:
    made = client.post(
        "/v1/units",
        json={
            "code": "HN",
            "name": "Bảo hiểm xã hội thành phố Hà Nội",
            "parent": "VN",
            "territory": ["01"],
        },
    )
    assert made.status_code == 201, made.text
    unit = made.json()
    assert unit["territory"] == ["01"] and unit["parent_id"] is not None
    overlapping = client.post(
        "/v1/units",
        json={"code": "HN2", "name": "Trùng", "parent": "VN", "territory": ["Hà Nội", "24"]},
    )
    assert overlapping.status_code == 422
    assert "overlap" in overlapping.json()["detail"][0]["msg"]
    # Moving the root under its own child would make a cycle.
    root_id = client.get("/v1/units").json()[0]["id"]
    cycle = client.patch(f"/v1/units/{root_id}", json={"parent": "HN"})
    assert cycle.status_code == 422, cycle.text
    assert "cycle" in cycle.json()["detail"][0]["msg"]
    unknown = client.patch(f"/v1/units/{unit['id']}", json={"territory": ["99"]})
    assert unknown.status_code == 422
    assert [u["code"] for u in client.get("/v1/units").json()] == ["VN", "HN"]
    assert client.get(f"/v1/units/{unit['id']}").json()["territory"] == ["01"]

    # A unit that owns a campaign stays.
    from dispatcher.tables.campaigns import Campaign
    from dispatcher.tables.content import Template

    with db.transaction() as session:
        template = Template(key="t", unit_id=unit["id"])
        session.add(template)
        session.flush()
        session.add(
            Campaign(
                name="c",
                kind="policy_news",
                template_id=template.id,
                audience={},
                channels=["email"],
                priority="bulk",
                variables={},
                unit_id=unit["id"],
            )
        )
    refused = client.delete(f"/v1/units/{unit['id']}")
    assert refused.status_code == 409
    assert "1 campaigns" in refused.json()["detail"] and "1 templates" in refused.json()["detail"]
    assert client.delete(f"/v1/units/{root_id}").status_code == 409

    child = client.post(
        "/v1/units", json={"code": "BN", "name": "Bắc Ninh", "parent": "VN", "territory": ["24"]}
    ).json()
    assert client.delete(f"/v1/units/{child['id']}").status_code == 200
    assert client.get(f"/v1/units/{child['id']}").status_code == 404
