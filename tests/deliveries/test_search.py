"""GET /v1/deliveries: operations staff find deliveries by person, address, campaign, outcome
and time, page by page, and never see an address in full."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import text

from dispatcher.core.db import Database
from dispatcher.deliveries.service import Filters, search_query
from tests.conftest import make_key
from tests.deliveries.rows import (
    BASE,
    add_attempts,
    add_deliveries,
    add_recipients,
    make_campaign,
)

PEOPLE = {
    "0100000001": {"email": "nguyen.an@gmail.com", "zalo": "0912345678", "telegram": "123456789"},
    "0100000002": {"email": "ngoc.tran@gmail.com", "zalo": "+84987654321"},
    "0100000003": {"email": "le.duc@example.vn", "telegram": "-1001234567890"},
}
RAW_ADDRESSES = [value for by_channel in PEOPLE.values() for value in by_channel.values()]


def minutes(n: int) -> Any:
    return BASE + timedelta(minutes=n)


@dataclass
class Scene:
    campaign: int
    other_campaign: int
    runs: list[int]
    other_run: int
    ids: dict[str, int]


@pytest.fixture()
def scene(db: Database) -> Scene:
    campaign, runs = make_campaign(db, name="Chính sách mới", runs=2)
    other_campaign, (other_run,) = make_campaign(db, name="Cảnh báo")
    people = add_recipients(db, PEOPLE.items())
    p1, p2, p3 = (people[k] for k in PEOPLE)
    first, second = runs

    def row(run: int, person: int, channel: str, at: int, **extra: Any) -> dict[str, Any]:
        campaign_id = other_campaign if run == other_run else campaign
        return {
            "run_id": run,
            "campaign_id": campaign_id,
            "recipient_id": person,
            "channel": channel,
            "created_at": BASE,
            "updated_at": minutes(at),
            **extra,
        }

    names = [
        "p1-email",
        "p1-zalo",
        "p2-email",
        "p2-zalo",
        "p3-email",
        "p3-telegram",
        "p1-email-run2",
        "p1-email-other",
    ]
    ids = add_deliveries(
        db,
        [
            row(first, p1, "email", 1),
            row(
                first,
                p1,
                "zalo",
                2,
                status="failed",
                error_class="permanent",
                error_reason="zalo -213: user 0912345678 does not follow the OA",
            ),
            row(
                first,
                p2,
                "email",
                3,
                status="failed",
                error_class="address_dead",
                error_reason="smtp 550: 5.1.1 <ngoc.tran@gmail.com>: User unknown",
            ),
            row(first, p2, "zalo", 4),
            row(
                first,
                p3,
                "email",
                5,
                status="retrying",
                error_class="transient",
                error_reason="smtp 451: greylisted",
            ),
            row(first, p3, "telegram", 6, provider_message_id="-1001234567890:42"),
            row(second, p1, "email", 60 * 24),
            row(other_run, p1, "email", 10, status="pending", attempts=0),
        ],
    )
    by_name = dict(zip(names, ids, strict=True))
    add_attempts(
        db,
        [
            {
                "delivery_id": by_name["p2-email"],
                "outcome": "permanent",
                "error_class": "address_dead",
                "provider_code": "550",
                "provider_reply": "550 5.1.1 <ngoc.tran@gmail.com>: User unknown",
            },
            {
                "delivery_id": by_name["p3-telegram"],
                "provider_message_id": "-1001234567890:42",
                "provider_reply": "ok",
            },
        ],
    )
    return Scene(campaign, other_campaign, runs, other_run, by_name)


def find(client: Any, **query: Any) -> list[dict[str, Any]]:
    """Every page of a search, two at a time, checking that the pages follow each other."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {**query, "limit": 2, **({"cursor": cursor} if cursor else {})}
        answer = client.get("/v1/deliveries", params=params)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert len(page["items"]) <= 2
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            ids = [item["id"] for item in items]
            assert ids == sorted(set(ids)), "each delivery once, in id order"
            return items


def names(scene: Scene, items: list[dict[str, Any]]) -> set[str]:
    by_id = {v: k for k, v in scene.ids.items()}
    return {by_id[item["id"]] for item in items}


def test_by_recipient_campaign_run_channel_status_and_error_class(client, scene: Scene) -> None:
    assert names(scene, find(client, recipient="0100000001")) == {
        "p1-email",
        "p1-zalo",
        "p1-email-run2",
        "p1-email-other",
    }
    assert names(scene, find(client, campaign_id=scene.other_campaign)) == {"p1-email-other"}
    assert len(find(client, campaign_id=scene.campaign)) == 7
    assert names(scene, find(client, run_id=scene.runs[1])) == {"p1-email-run2"}
    assert names(scene, find(client, channel="zalo")) == {"p1-zalo", "p2-zalo"}
    assert names(scene, find(client, status="failed")) == {"p1-zalo", "p2-email"}
    assert names(scene, find(client, error_class="address_dead")) == {"p2-email"}
    assert names(
        scene, find(client, campaign_id=scene.campaign, channel="email", status="sent")
    ) == {"p1-email", "p1-email-run2"}
    assert find(client, recipient="0199999999") == []


def test_by_full_address_normalised_like_the_importer(client, scene: Scene) -> None:
    p1_email = {"p1-email", "p1-email-run2", "p1-email-other"}
    assert names(scene, find(client, address="nguyen.an@gmail.com")) == p1_email
    # email_validator's normal form: the domain in lower case.
    assert names(scene, find(client, address="  nguyen.an@GMAIL.com ")) == p1_email
    # Stored as 0912345678; found from any way of writing the number.
    for written in ("0912345678", "+84912345678", "84912345678", "091 234 5678", "0912.345.678"):
        assert names(scene, find(client, address=written)) == {"p1-zalo"}, written
    # Stored as +84987654321.
    assert names(scene, find(client, address="0987654321")) == {"p2-zalo"}
    assert names(scene, find(client, address="-1001234567890")) == {"p3-telegram"}
    # Only the delivery on the channel where the address is: not the person's other channels.
    assert names(scene, find(client, address="123456789")) == set()
    assert find(client, address="someone.else@gmail.com") == []
    # Combined with other filters.
    assert names(
        scene, find(client, address="nguyen.an@gmail.com", campaign_id=scene.campaign)
    ) == {"p1-email", "p1-email-run2"}


def test_by_masked_address_as_answers_show_it(client, scene: Scene) -> None:
    everything = find(client)
    masked = {names(scene, [item]).pop(): item["address"] for item in everything}
    assert masked["p1-email"] == "ng***@gmail.com"
    assert masked["p2-email"] == "ng***@gmail.com"
    assert masked["p3-email"] == "le***@example.vn"
    assert masked["p1-zalo"] == "+84 9** *** 678"
    assert masked["p2-zalo"] == "+84 9** *** 321"
    assert masked["p3-telegram"] == "-1***890"

    # A masked form finds every address it could stand for.
    assert names(scene, find(client, address="ng***@gmail.com")) == {
        "p1-email",
        "p1-email-run2",
        "p1-email-other",
        "p2-email",
    }
    assert names(scene, find(client, address="ng***@GMAIL.COM", status="failed")) == {"p2-email"}
    assert names(scene, find(client, address="+84 9** *** 678")) == {"p1-zalo"}
    # A "+" in a URL that nobody encoded arrives as a space.
    assert names(scene, find(client, address=" 84 9** *** 321")) == {"p2-zalo"}
    assert names(scene, find(client, address="09*****678")) == {"p1-zalo"}
    assert names(scene, find(client, address="-1***890")) == {"p3-telegram"}
    assert names(scene, find(client, address="le***@example.vn")) == {"p3-email"}
    # LIKE and GLOB wildcards typed by the user are literal characters.
    assert find(client, address="n%***@gmail.com") == []
    assert find(client, address="n_***@gmail.com") == []
    assert find(client, address="n?***@gmail.com") == []


def test_time_range_on_updated_at(client, scene: Scene) -> None:
    def window(since: Any, until: Any = None) -> set[str]:
        query = {"since": since.isoformat()}
        if until is not None:
            query["until"] = until.isoformat()
        return names(scene, find(client, **query))

    # since is inclusive, until exclusive.
    assert window(minutes(2), minutes(4)) == {"p1-zalo", "p2-email"}
    assert window(minutes(6)) == {"p3-telegram", "p1-email-other", "p1-email-run2"}
    # The same instant written in Vietnam's time.
    vietnam = minutes(2).astimezone(timezone(timedelta(hours=7)))
    assert window(vietnam, minutes(3)) == {"p1-zalo"}
    assert names(scene, find(client, until=minutes(2).isoformat().replace("+00:00", "Z"))) == {
        "p1-email"
    }
    assert window(minutes(3), minutes(3)) == set()


def test_every_address_is_masked_in_every_answer(client, scene: Scene) -> None:
    answer = client.get("/v1/deliveries", params={"limit": 1000})
    assert answer.status_code == 200
    body = answer.text
    assert len(answer.json()["items"]) == 8
    for raw in RAW_ADDRESSES:
        assert raw not in body, raw
    items = {names(scene, [i]).pop(): i for i in answer.json()["items"]}
    assert items["p2-email"]["error_reason"] == "smtp 550: 5.1.1 <ng***@gmail.com>: User unknown"
    assert items["p2-email"]["attempts"][0]["provider_reply"] == (
        "550 5.1.1 <ng***@gmail.com>: User unknown"
    )
    assert items["p1-zalo"]["error_reason"] == (
        "zalo -213: user +84 9** *** 678 does not follow the OA"
    )
    # A Telegram message id embeds the chat id: masked, the message number kept.
    assert items["p3-telegram"]["attempts"][0]["provider_message_id"] == "-1***890:42"
    assert items["p3-telegram"]["provider_message_id"] == "-1***890:42"
    # Searching by a raw address does not echo it either.
    found = client.get("/v1/deliveries", params={"address": "0912345678"})
    assert "0912345678" not in found.text and found.json()["items"]


def test_an_operator_may_search(client, db: Database, scene: Scene) -> None:
    operator = {"Authorization": f"Bearer {make_key(db, 'operator', 'Trực ca')}"}
    answer = client.get("/v1/deliveries", params={"recipient": "0100000002"}, headers=operator)
    assert answer.status_code == 200
    assert len(answer.json()["items"]) == 2
    editor = {"Authorization": f"Bearer {make_key(db, 'editor', 'Biên tập')}"}
    assert client.get("/v1/deliveries", headers=editor).status_code == 403


@pytest.mark.parametrize(
    ("params", "name", "says"),
    [
        ({"since": "yesterday"}, "since", "datetime"),
        ({"until": "2026-13-40T00:00:00Z"}, "until", "datetime"),
        ({"since": "2026-03-10T10:00:00"}, "since", "offset"),
        ({"until": "2026-03-10T10:00:00"}, "until", "offset"),
        (
            {"since": "2026-03-10T10:00:00+07:00", "until": "2026-03-10T02:00:00Z"},
            "since",
            "is after until",
        ),
        ({"address": "ng***an***@gmail.com"}, "address", "one part"),
        ({"address": "***@gmail.com"}, "address", "before and after"),
        ({"address": "ng***"}, "address", "before and after"),
        ({"address": "ng***@gmail"}, "address", "masked email"),
        ({"address": "ng@***@gmail.com"}, "address", "masked email"),
        ({"address": "not an@email"}, "address", "not an email"),
        ({"address": "   "}, "address", "an address"),
        ({"status": "lost"}, "status", "unknown status 'lost'"),
        ({"channel": "sms"}, "channel", "unknown channel 'sms'"),
        ({"cursor": "nonsense"}, "cursor", "should match pattern"),
        ({"limit": "0"}, "limit", ""),
        ({"campaign_id": "x"}, "campaign_id", ""),
    ],
)
def test_bad_input_is_a_422_naming_the_parameter(
    client, params: dict[str, str], name: str, says: str
) -> None:
    answer = client.get("/v1/deliveries", params=params)
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["query", name]
    assert says in error["msg"]


def _plan(db: Database, **filters: Any) -> str:
    """The database's plan for a search, with sequential scans made as dear as possible so
    that a usable index is always chosen on tables this small."""
    dialect = db.engine.dialect
    after_id = filters.pop("after_id", None)
    statement = search_query(
        dialect=dialect.name, filters=Filters(**filters), after_id=after_id
    ).limit(101)
    sql = str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    with db.engine.connect() as connection:
        if dialect.name == "sqlite":
            rows = connection.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all()
            return "\n".join(str(row[-1]) for row in rows)
        connection.execute(text("SET enable_seqscan = off"))
        rows = connection.exec_driver_sql("EXPLAIN " + sql.replace("%", "%%")).all()
        return "\n".join(str(row[0]) for row in rows)


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({"address": "nguyen.an@gmail.com"}, "ix_addresses_value"),
        ({"address": "ng***@gmail.com"}, "ix_addresses_value"),
        ({"address": "+84 9** *** 678"}, "ix_addresses_value"),
        ({"campaign_id": 1, "after_id": 3}, "ix_deliveries_campaign_id_id"),
        ({"run_id": 1, "after_id": 3}, "ix_deliveries_run_id_id"),
    ],
)
def test_searches_use_an_index(
    db: Database, scene: Scene, filters: dict[str, Any], index: str
) -> None:
    plan = _plan(db, **filters)
    # On PostgreSQL the month's partition answers, with its own part of the index
    # (deliveries_p202603_campaign_id_id_idx for ix_deliveries_campaign_id_id).
    partition_part = "_" + index.removeprefix("ix_deliveries_") + "_idx"
    assert index in plan or (index.startswith("ix_deliveries_") and partition_part in plan), plan
    assert "TEMP B-TREE FOR ORDER BY" not in plan or "address" in filters, plan
