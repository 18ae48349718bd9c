"""GET /v1/campaigns/{id}/report: counts by status, channel and error, and throughput."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from dispatcher.core.db import Database
from dispatcher.deliveries.report import campaign_report
from dispatcher.kit.errors import NotFound
from tests.deliveries.rows import BASE, add_deliveries, add_recipients, make_campaign


def at(minute: int, second: int = 0) -> Any:
    return BASE + timedelta(minutes=minute, seconds=second)


@pytest.fixture()
def campaign(db: Database) -> tuple[int, list[int]]:
    """Two runs: the first finished over three minutes, the second still going."""
    campaign_id, runs = make_campaign(db, runs=2)
    other, (other_run,) = make_campaign(db, name="Khác")
    people = list(add_recipients(db, ((f"04{i:08d}", {}) for i in range(12))).values())
    first, second = runs

    def row(run: int, person: int, channel: str, status: str, when: Any, **extra: Any) -> Any:
        return {
            "run_id": run,
            "campaign_id": other if run == other_run else campaign_id,
            "recipient_id": people[person],
            "channel": channel,
            "status": status,
            "updated_at": when,
            **extra,
        }

    dead = {"error_class": "address_dead", "error_reason": "smtp 550: <an@example.vn> unknown"}
    blocked = {"error_class": "permanent", "error_reason": "zalo -227: user blocked the OA"}
    add_deliveries(
        db,
        [
            # Minute 0: three sent, one failed.
            row(first, 0, "email", "sent", at(0, 5)),
            row(first, 1, "email", "sent", at(0, 30)),
            row(first, 2, "zalo", "sent", at(0, 59)),
            row(first, 3, "email", "failed", at(0, 40), **dead),
            # Minute 1: nothing. Minute 2: two sent, two failed, one skipped.
            row(first, 4, "email", "sent", at(2, 0)),
            row(first, 5, "zalo", "sent", at(2, 10)),
            row(first, 6, "zalo", "failed", at(2, 20), **blocked),
            row(first, 7, "zalo", "failed", at(2, 30), **blocked),
            row(
                first,
                8,
                "email",
                "skipped",
                at(2, 45),
                error_class="no_address",
                error_reason="no live email address",
            ),
            # Cancelled: counted, but not throughput.
            row(first, 9, "email", "cancelled", at(30)),
            # Second run: still open.
            row(
                second,
                0,
                "email",
                "retrying",
                at(60),
                error_class="transient",
                error_reason="smtp 451: greylisted",
            ),
            row(second, 1, "email", "pending", at(60)),
            # Another campaign: never counted.
            row(other_run, 0, "email", "failed", at(1), **dead),
        ],
    )
    return campaign_id, runs


def test_report_counts_and_throughput(client, campaign: tuple[int, list[int]]) -> None:
    campaign_id, _ = campaign
    answer = client.get(f"/v1/campaigns/{campaign_id}/report")
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert report["campaign_id"] == campaign_id and report["run_id"] is None
    assert report["total"] == 12
    assert report["by_status"] == {
        "sent": 5,
        "failed": 3,
        "skipped": 1,
        "cancelled": 1,
        "retrying": 1,
        "pending": 1,
    }
    assert report["by_channel"] == {
        "email": {
            "total": 8,
            "by_status": {
                "sent": 3,
                "failed": 1,
                "skipped": 1,
                "cancelled": 1,
                "retrying": 1,
                "pending": 1,
            },
        },
        "zalo": {"total": 4, "by_status": {"sent": 2, "failed": 2}},
    }
    assert report["by_error_class"] == {
        "permanent": 2,
        "address_dead": 1,
        "no_address": 1,
        "transient": 1,
    }
    reasons = report["top_error_reasons"]
    assert reasons[0] == {
        "error_class": "permanent",
        "reason": "zalo -227: user blocked the OA",
        "count": 2,
    }
    assert {r["reason"]: r["count"] for r in reasons[1:]} == {
        # Addresses quoted in a reason are masked.
        "smtp 550: <a***@example.vn> unknown": 1,
        "no live email address": 1,
        "smtp 451: greylisted": 1,
    }
    # Per minute, computed by the database; the empty minute 1 has no bucket.
    assert report["throughput"] == [
        {"minute": "2026-03-10T03:00:00Z", "finished": 4, "sent": 3, "failed": 1},
        {"minute": "2026-03-10T03:02:00Z", "finished": 5, "sent": 2, "failed": 2},
    ]
    assert report["finished"] == 9
    assert report["first_finished_at"] == "2026-03-10T03:00:05Z"
    assert report["last_finished_at"] == "2026-03-10T03:02:45Z"
    assert report["deliveries_per_second"] == round(9 / 160, 3)


def test_report_of_one_run_and_top_n(client, campaign: tuple[int, list[int]]) -> None:
    campaign_id, (_, second) = campaign
    report = client.get(
        f"/v1/campaigns/{campaign_id}/report", params={"run_id": second, "top_reasons": 1}
    ).json()
    assert report["run_id"] == second
    assert report["total"] == 2
    assert report["by_status"] == {"retrying": 1, "pending": 1}
    assert report["top_error_reasons"] == [
        {"error_class": "transient", "reason": "smtp 451: greylisted", "count": 1}
    ]
    assert report["throughput"] == [] and report["finished"] == 0
    assert report["first_finished_at"] is None and report["deliveries_per_second"] is None

    top = client.get(f"/v1/campaigns/{campaign_id}/report", params={"top_reasons": 1}).json()
    assert [r["count"] for r in top["top_error_reasons"]] == [2]


def test_unknown_campaign_or_run_is_a_404(
    client, db: Database, campaign: tuple[int, list[int]]
) -> None:
    campaign_id, (first, _) = campaign
    missing = client.get(f"/v1/campaigns/{campaign_id + 5}/report")
    assert missing.status_code == 404
    other_campaign = campaign_id + 1
    foreign = client.get(f"/v1/campaigns/{other_campaign}/report", params={"run_id": first})
    assert foreign.status_code == 404
    assert foreign.json()["detail"] == f"campaign {other_campaign} has no run {first}"
    assert (
        client.get(f"/v1/campaigns/{campaign_id}/report", params={"top_reasons": 0}).status_code
        == 422
    )


def test_the_service_function_for_the_dashboard(db: Database, campaign: Any) -> None:
    campaign_id, _ = campaign
    with db.reading() as session:
        report = campaign_report(session=session, campaign_id=campaign_id, top_reasons=2)
        assert report.total == 12 and len(report.top_error_reasons) == 2
        assert [b.finished for b in report.throughput] == [4, 5]
        with pytest.raises(NotFound):
            campaign_report(session=session, campaign_id=campaign_id + 99)
