"""The audience language compiled to SQL: a table of filters against expected recipient sets."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from sqlalchemy import select

from dispatcher.core.db import Database
from dispatcher.recipients.audience import AudienceError, compile_audience
from dispatcher.tables.recipients import Recipient

PEOPLE = [
    # external_id, province, kind, language, birth_date, participation
    ("A", "Hà Nội", "person", "vi", "1960-03-08", "compulsory"),
    ("B", "Hà Nội", "person", "km", "1992-02-29", "voluntary"),
    ("C", "Huế", "person", "vi", "2000-12-31", "household"),
    ("D", "Huế", "organization", "vi", None, None),
    ("E", "Cần Thơ", "person", "en", "1966-03-08", "compulsory"),
    ("F", "Cần Thơ", "person", "hmn", "2010-06-01", None),
]
TODAY = date(2026, 3, 8)  # A turns 66 today, E turns 60 today

CASES: list[tuple[dict[str, Any], set[str]]] = [
    ({"all": True}, set("ABCDEF")),
    ({"external_ids": ["A", "D", "Z"]}, {"A", "D"}),
    ({"province": ["Hà Nội", "Huế"]}, set("ABCD")),
    ({"province": "Cần Thơ"}, {"E", "F"}),
    ({"kind": "organization"}, {"D"}),
    ({"language": ["km", "hmn"]}, {"B", "F"}),
    ({"born_on": ["03-08"]}, {"A", "E"}),
    ({"born_on": ["02-29"]}, {"B"}),
    ({"age": {"min": 60}}, {"A", "E"}),
    ({"age": {"min": 61}}, {"A"}),
    ({"age": {"max": 16}}, {"F"}),
    ({"age": {"min": 20, "max": 59}}, {"B", "C"}),
    ({"attributes": {"participation": ["compulsory"]}}, {"A", "E"}),
    ({"attributes": {"participation": ["voluntary", "household"]}}, {"B", "C"}),
    ({"province": ["Hà Nội"], "kind": "person"}, {"A", "B"}),
    ({"or": [{"province": ["Huế"]}, {"language": ["en"]}]}, {"C", "D", "E"}),
    ({"not": {"province": ["Hà Nội"]}}, {"C", "D", "E", "F"}),
    (
        {"and": [{"age": {"min": 18}}, {"not": {"attributes": {"participation": ["compulsory"]}}}]},
        {"B", "C"},
    ),
]


@pytest.fixture()
def people(db: Database) -> Database:
    with db.transaction() as session:
        for external_id, province, kind, language, born, participation in PEOPLE:
            session.add(
                Recipient(
                    external_id=external_id,
                    full_name=f"Người {external_id}",
                    province=province,
                    kind=kind,
                    language=language,
                    birth_date=date.fromisoformat(born) if born else None,
                    attributes={"participation": participation} if participation else {},
                )
            )
    return db


@pytest.mark.parametrize(("spec", "expected"), CASES, ids=[str(c[0]) for c in CASES])
def test_filters_select_the_expected_recipients(
    people: Database, spec: dict[str, Any], expected: set[str]
) -> None:
    where = compile_audience(spec, today=TODAY)
    with people.transaction() as session:
        found = set(session.scalars(select(Recipient.external_id).where(where)))
    assert found == expected


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({}, "non-empty object"),
        ({"all": False}, "audience.all: must be true"),
        ({"age": {"min": 70, "max": 60}}, "min is above max"),
        ({"age": {"min": -1}}, "audience.age.min"),
        ({"age": {"old": 1}}, "audience.age"),
        ({"born_on": ["13-01"]}, "not a day"),
        ({"attributes": {"bad name!": ["x"]}}, "not an attribute name"),
        ({"or": [{"kind": "robot"}]}, "audience.or[0].kind"),
        ({"saved": ""}, "audience.saved"),
        ({"nonsense": 1}, "unknown filter"),
    ],
)
def test_bad_filters_name_the_part(spec: dict[str, Any], needle: str) -> None:
    with pytest.raises(AudienceError) as caught:
        compile_audience(spec)
    assert needle in str(caught.value)


def test_preview_counts_and_samples(client) -> None:
    body = [
        {
            "external_id": f"14{i:08d}",
            "full_name": f"Trịnh {i}",
            "province": "Huế" if i % 2 else "Hà Nội",
        }
        for i in range(25)
    ]
    client.post("/v1/recipients", json=body)
    shown = client.post(
        "/v1/audiences/preview", json={"audience": {"province": ["Huế"]}}, params={"sample": 5}
    )
    assert shown.status_code == 200
    assert shown.json()["count"] == 12
    assert len(shown.json()["sample"]) == 5
    assert all(p["province"] == "Huế" for p in shown.json()["sample"])
    bad = client.post("/v1/audiences/preview", json={"audience": {"provinc": ["Huế"]}})
    assert bad.status_code == 422 and "audience.provinc" in bad.text


def test_saved_audiences_are_named_by_campaigns(client) -> None:
    client.post(
        "/v1/recipients",
        json=[
            {
                "external_id": "1500000001",
                "full_name": "Hà",
                "province": "Huế",
                "addresses": {"null": "1"},
            },
            {
                "external_id": "1500000002",
                "full_name": "Nam",
                "province": "Hà Nội",
                "addresses": {"null": "2"},
            },
        ],
    )
    saved = client.post("/v1/audiences", json={"name": "hue", "filter": {"province": ["Huế"]}})
    assert saved.status_code == 200
    assert (
        client.post("/v1/audiences/preview", json={"audience": {"saved": "hue"}}).json()["count"]
        == 1
    )
    assert client.get("/v1/audiences/hue").json()["filter"] == {"province": ["Huế"]}
    template = {"key": "t_saved", "variants": [{"channel": "default", "body": "x"}]}
    client.post("/v1/templates", json=template)
    body = {"name": "x", "kind": "policy_news", "template": "t_saved", "channels": ["null"]}
    assert (
        client.post("/v1/campaigns", json={**body, "audience": {"saved": "hue"}}).status_code == 201
    )
    missing = client.post("/v1/campaigns", json={**body, "audience": {"saved": "khong_co"}})
    assert missing.status_code == 422 and "khong_co" in missing.text
    # A loop between saved audiences is refused when saved.
    client.post("/v1/audiences", json={"name": "a", "filter": {"all": True}})
    client.post("/v1/audiences", json={"name": "b", "filter": {"saved": "a"}})
    loop = client.post("/v1/audiences", json={"name": "a", "filter": {"saved": "b"}})
    assert loop.status_code == 422 and "deeper" in loop.text
    kept = client.get("/v1/audiences/a").json()
    assert (kept["filter"], kept["versions"]) == ({"all": True}, 1), "nothing changed"


def test_saving_a_name_again_makes_a_new_version(client) -> None:
    hue = {"province": ["Huế"]}
    wider = {"province": ["Huế", "Đà Nẵng"]}
    first = client.post("/v1/audiences", json={"name": "mien_trung", "filter": hue})
    assert first.status_code == 200, first.text
    assert (first.json()["version"], first.json()["versions"]) == (1, 1)
    # The same filter again changes nothing a campaign relies on: no new version.
    same = client.post(
        "/v1/audiences", json={"name": "mien_trung", "filter": hue, "description": "Miền Trung"}
    ).json()
    assert (same["version"], same["versions"], same["description"]) == (1, 1, "Miền Trung")
    second = client.post("/v1/audiences", json={"name": "mien_trung", "filter": wider}).json()
    assert (second["version"], second["versions"]) == (2, 2)

    assert client.get("/v1/audiences/mien_trung").json()["filter"] == wider
    old = client.get("/v1/audiences/mien_trung", params={"version": 1})
    assert old.status_code == 200 and old.json()["filter"] == hue and old.json()["version"] == 1
    missing = client.get("/v1/audiences/mien_trung", params={"version": 3})
    assert missing.status_code == 404 and "no version 3" in missing.text
    assert client.get("/v1/audiences/mien_trung", params={"version": 0}).status_code == 422
    listed = {a["name"]: a for a in client.get("/v1/audiences").json()}
    assert listed["mien_trung"]["version"] == 2 and listed["mien_trung"]["filter"] == wider
