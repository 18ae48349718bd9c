"""GET /v1/campaigns/{id}/deliveries.csv: a whole campaign as CSV, streamed page by page."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from dispatcher.core.db import Database
from dispatcher.deliveries import export
from tests.conftest import make_key
from tests.deliveries.rows import (
    BASE,
    add_attempts,
    add_deliveries,
    add_recipients,
    make_campaign,
)

BOM = "\ufeff".encode()


def read_csv(body: bytes) -> list[dict[str, str]]:
    assert body.startswith(BOM)
    return list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"), newline="")))


@pytest.fixture()
def page_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many rows each page read returned, in order."""
    reads: list[int] = []
    original: Callable[..., Any] = export.read_page

    def counted(*args: Any, **kwargs: Any) -> Any:
        rows = original(*args, **kwargs)
        reads.append(len(rows))
        return rows

    monkeypatch.setattr(export, "read_page", counted)
    return reads


@pytest.mark.timeout(240)
def test_ten_thousand_deliveries_stream_out_once_each(
    client, db: Database, page_reads: list[int]
) -> None:
    campaign, (run,) = make_campaign(db)
    other, (other_run,) = make_campaign(db, name="Một chiến dịch khác")
    people = add_recipients(
        db,
        ((f"03{i:08d}", {"email": f"nguoi.nhan{i}@example.vn"}) for i in range(10_000)),
    )
    rows = [
        {
            "run_id": run,
            "campaign_id": campaign,
            "recipient_id": recipient_id,
            "channel": "email",
            "updated_at": BASE + timedelta(seconds=i % 600),
        }
        for i, recipient_id in enumerate(people.values())
    ]
    ids = add_deliveries(db, rows)
    # Another campaign's rows, interleaved by id, must not leak in.
    add_deliveries(
        db,
        [
            {"run_id": other_run, "campaign_id": other, "recipient_id": r, "channel": "email"}
            for r in list(people.values())[:50]
        ],
    )

    url = f"/v1/campaigns/{campaign}/deliveries.csv"
    with client.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert response.headers["content-disposition"] == (
            f'attachment; filename="campaign-{campaign}-deliveries.csv"'
        )
        chunks = response.iter_raw()
        first = next(chunks)
        # The first bytes are out while most pages are still unread: it is really streamed.
        reads_when_first_arrived = len(page_reads)
        body = [first, *chunks]

    assert len(body) > 10, "one chunk per page, at least"
    assert reads_when_first_arrived <= 2
    assert page_reads == [1000] * 10 + [0]
    exported = read_csv(b"".join(body))
    assert len(exported) == 10_000
    assert sorted(int(row["delivery_id"]) for row in exported) == sorted(ids)
    assert len({row["delivery_id"] for row in exported}) == 10_000
    assert {row["run_id"] for row in exported} == {str(run)}
    assert all(row["address"].endswith("***@example.vn") for row in exported)
    assert "nguoi.nhan" not in b"".join(body).decode()


def test_columns_masking_and_formulas(client, db: Database) -> None:
    campaign, (run,) = make_campaign(db)
    people = add_recipients(
        db,
        [
            ("0100000001", {"email": "nguyen.an@gmail.com", "zalo": "0912345678"}),
            ("0100000002", {"telegram": "-1001234567890"}),
        ],
    )
    p1, p2 = people["0100000001"], people["0100000002"]
    sent_at = BASE + timedelta(minutes=3, seconds=7)
    first, second, third, fourth = add_deliveries(
        db,
        [
            {
                "run_id": run,
                "campaign_id": campaign,
                "recipient_id": p1,
                "channel": "email",
                "updated_at": sent_at,
                "attempts": 2,
            },
            {
                "run_id": run,
                "campaign_id": campaign,
                "recipient_id": p1,
                "channel": "zalo",
                "status": "failed",
                "updated_at": sent_at,
                "error_class": "permanent",
                "error_reason": '=HYPERLINK("http://x") người dùng 0912345678 đã chặn OA',
            },
            {
                "run_id": run,
                "campaign_id": campaign,
                "recipient_id": p2,
                "channel": "telegram",
                "status": "skipped",
                "error_class": "no_address",
                "error_reason": "no live vssid address",
            },
            {
                "run_id": run,
                "campaign_id": campaign,
                "recipient_id": p2,
                "channel": "vssid",
                "status": "pending",
                "attempts": 0,
            },
        ],
    )
    add_attempts(
        db,
        [
            {"delivery_id": first, "number": 1, "outcome": "transient"},
            {"delivery_id": first, "number": 2, "possible_duplicate": True},
            {"delivery_id": second, "outcome": "permanent"},
        ],
    )
    operator = {"Authorization": f"Bearer {make_key(db, 'operator', 'Trực ca')}"}
    response = client.get(f"/v1/campaigns/{campaign}/deliveries.csv", headers=operator)
    assert response.status_code == 200
    body = response.content
    for raw in ("nguyen.an@gmail.com", "0912345678", "-1001234567890"):
        assert raw.encode() not in body
    lines = read_csv(body)
    assert list(lines[0]) == list(export.COLUMNS)
    by_id = {int(line["delivery_id"]): line for line in lines}
    assert by_id[first] == {
        "delivery_id": str(first),
        "run_id": str(run),
        "recipient": "0100000001",
        "channel": "email",
        "address": "ng***@gmail.com",
        "status": "sent",
        "error_class": "",
        "error_reason": "",
        "attempts": "2",
        "possible_duplicate": "true",
        "created_at_utc": "2026-03-10 03:00:00",
        "sent_at_utc": "2026-03-10 03:03:07",
        "updated_at_utc": "2026-03-10 03:03:07",
    }
    # A spreadsheet must not run what a provider wrote, nor read a phone number as a sum;
    # Vietnamese survives the round trip.
    assert by_id[second]["address"] == "'+84 9** *** 678"
    assert by_id[second]["error_reason"] == (
        '\'=HYPERLINK("http://x") người dùng +84 9** *** 678 đã chặn OA'
    )
    assert by_id[second]["possible_duplicate"] == "false"
    assert by_id[second]["sent_at_utc"] == ""
    assert by_id[third]["address"] == "'-1***890"
    assert by_id[third]["status"] == "skipped"
    assert by_id[fourth]["address"] == "", "no address on that channel"


def test_an_empty_campaign_is_a_header_and_an_unknown_one_a_404(client, db: Database) -> None:
    campaign, _ = make_campaign(db)
    empty = client.get(f"/v1/campaigns/{campaign}/deliveries.csv")
    assert empty.status_code == 200
    assert empty.content == BOM + (",".join(export.COLUMNS) + "\r\n").encode()
    missing = client.get(f"/v1/campaigns/{campaign + 1}/deliveries.csv")
    assert missing.status_code == 404
    assert missing.json()["detail"] == f"campaign {campaign + 1} does not exist"
