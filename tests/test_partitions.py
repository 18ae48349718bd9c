"""Monthly partitions (PostgreSQL), their months made ahead, and archiving a past month into
Parquet files that the search can still read ("did X get Y").

Nothing here depends on today's date: the clock is frozen at the months each test names."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select, text, update
from typer.testing import CliRunner

from dispatcher import audit
from dispatcher.auth.service import Role, create_key, new_principal
from dispatcher.cli import app
from dispatcher.core import secrets
from dispatcher.core.config import Settings, get_settings
from dispatcher.core.db import Database
from dispatcher.deliveries import archive, archived, service
from dispatcher.kit.clock import clock
from dispatcher.tables import partitions
from dispatcher.tables.audit import AuditEntry
from dispatcher.tables.auth import PrincipalKind
from dispatcher.tables.deliveries import Delivery
from dispatcher.units import service as units
from tests.support import wait_for
from tests.test_end_to_end import add_people, publish_template

OCTOBER = datetime(2026, 10, 15, 3, 0, tzinfo=UTC)
NOVEMBER = datetime(2026, 11, 16, 3, 0, tzinfo=UTC)
DECEMBER = datetime(2026, 12, 10, 3, 0, tzinfo=UTC)


def _partitions(db: Database) -> list[int]:
    with db.engine.connect() as connection:
        return partitions.partitions(connection)


def test_periods_are_months_in_vietnam_time() -> None:
    # 17:00 UTC on the last day of a month is already the next month in Hà Nội.
    assert partitions.period_of(datetime(2026, 11, 30, 16, 59, tzinfo=UTC)) == 202611
    assert partitions.period_of(datetime(2026, 11, 30, 17, 0, tzinfo=UTC)) == 202612
    assert partitions.add_months(202611, 2) == 202701
    assert partitions.add_months(202601, -1) == 202512
    assert partitions.parse_month("2026-11") == 202611
    for bad in ("2026-13", "11/2026", "2026-1", ""):
        with pytest.raises(ValueError, match="not a month"):
            partitions.parse_month(bad)


def test_the_scheduler_makes_the_coming_months_partitions(db: Database, settings: Settings) -> None:
    from workers.scheduler import ensure_partitions

    clock.freeze(datetime(2031, 5, 20, tzinfo=UTC))
    made = ensure_partitions(db, settings)
    if db.is_sqlite:
        assert made == []
        return
    assert made == [
        f"{table}_p{period}"
        for period in (203105, 203106, 203107)
        for table in partitions.PARTITIONED
    ]
    assert {203105, 203106, 203107} <= set(_partitions(db))
    assert ensure_partitions(db, settings) == []  # idempotent


def test_a_row_for_a_month_without_partition_fails_loudly(db: Database) -> None:
    if db.is_sqlite:
        pytest.skip("SQLite keeps one table")
    from tests.deliveries.rows import make_campaign

    clock.freeze(datetime(2039, 12, 5, tzinfo=UTC))
    campaign_id, [run_id] = make_campaign(db)
    with pytest.raises(Exception, match="no partition"), db.transaction() as session:
        session.execute(
            text(
                "INSERT INTO deliveries (run_id, campaign_id, recipient_id, channel, status, "
                "available_at, attempts, failures, reclaimed, created_at, updated_at, period) "
                "VALUES (:r, :c, 1, 'email', 'pending', now(), 0, 0, false, now(), now(), 203912)"
            ),
            {"r": run_id, "c": campaign_id},
        )


def test_a_message_in_a_month_without_partition_makes_it(
    client: Any, worker: Any, db: Database
) -> None:
    """The launch path makes its month's partitions in its own transaction: a one-off message
    in a month nobody prepared is sent, not refused."""
    add_people(client)
    publish_template(client)
    clock.freeze(datetime(2035, 3, 3, 3, 0, tzinfo=UTC))
    assert 203503 not in _partitions(db)
    message = _send(client, "0100000001")
    with db.reading() as session:
        assert session.scalars(select(Delivery.period)).all() == [203503]
    assert message["deliveries"][0]["status"] == "sent"
    if not db.is_sqlite:
        assert 203503 in _partitions(db)


def _send(client: Any, recipient: str) -> dict[str, Any]:
    body = {"recipient": recipient, "template": "canh_bao_test", "channels": ["email"]}
    sent = client.post("/v1/messages", json=body)
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["id"]
    return wait_for(
        lambda: (
            (m := client.get(f"/v1/messages/{message_id}").json())["status"] == "completed" and m
        )
    )


def _verify(db: Database, settings: Settings) -> audit.VerifyReport:
    with db.transaction() as session:
        key = secrets.audit_key(session, settings)
    with db.reading() as session:
        return audit.verify(session, key, stop_at_first=False)


@pytest.mark.timeout(180)
def test_archive_a_past_month_and_find_it_again(
    client: Any, worker: Any, db: Database, settings: Settings, tmp_path: Path, monkeypatch: Any
) -> None:
    add_people(client)
    publish_template(client)
    clock.freeze(OCTOBER)
    _send(client, "0100000001")
    clock.freeze(NOVEMBER)
    _send(client, "0100000002")
    clock.freeze(DECEMBER)
    root = tmp_path / "archive"

    # The current month and later are refused, and so is a bad month.
    with pytest.raises(archive.ArchiveError, match="current month"):
        archive.archive_before(db, 202701, root)
    with pytest.raises(archive.ArchiveError, match="current month or later"):
        archive.archive_month(db, 202612, root)

    # Open work in November: refused, and nothing is removed.
    with db.transaction() as session:
        session.execute(update(Delivery).where(Delivery.period == 202611).values(status="retrying"))
    with pytest.raises(archive.ArchiveError, match=r"2026-11 still has open work.*retrying"):
        archive.archive_before(db, 202612, root)
    assert not (root / "2026-11").exists() or not (root / "2026-11" / "manifest.json").exists()
    with db.transaction() as session:
        session.execute(update(Delivery).where(Delivery.period == 202611).values(status="sent"))

    # (On PostgreSQL, empty partitions of earlier months other tests made go too, with 0 rows.)
    every = archive.archive_before(db, 202611, root)
    results = [r for r in every if r.rows.get("deliveries.parquet")]
    assert [(r.period, r.status) for r in results] == [(202610, "archived")]
    assert results[0].rows == {"deliveries.parquet": 1, "attempts.parquet": 1}
    assert all(r.status == "archived" and r.period < 202610 for r in every if r not in results)
    month = root / "2026-10"
    manifest = json.loads((month / "manifest.json").read_bytes())
    assert manifest["month"] == "2026-10" and manifest["period"] == 202610
    for name, described in manifest["files"].items():
        body = (month / name).read_bytes()
        assert hashlib.sha256(body).hexdigest() == described["sha256"]
        assert pq.ParquetFile(month / name).metadata.num_rows == described["rows"]
        assert {"name": "period", "type": "int64"} in described["columns"]
    sums = (month / "SHA256SUMS").read_text()
    assert hashlib.sha256((month / "manifest.json").read_bytes()).hexdigest() in sums
    assert archive.verify_files(month)["month"] == "2026-10"

    # Gone from the database (PostgreSQL: the partitions themselves), November untouched.
    with db.reading() as session:
        assert session.scalars(select(Delivery.period).order_by(Delivery.id)).all() == [202611]
    if not db.is_sqlite:
        assert 202610 not in _partitions(db)
        assert 202611 in _partitions(db)

    # The audit chain still verifies, and says what was archived with its checksum.
    report = _verify(db, settings)
    assert report.ok, [p.message for p in report.problems]
    with db.reading() as session:
        entry = session.scalars(
            select(AuditEntry).where(
                AuditEntry.action == "archive.month", AuditEntry.subject == "month:2026-10"
            )
        ).one()
    data = json.loads(entry.data)
    assert data["month"] == "2026-10"
    assert data["manifest_sha256"] == results[0].manifest_sha256
    assert (
        data["files"]["deliveries.parquet"]["sha256"]
        == manifest["files"]["deliveries.parquet"]["sha256"]
    )

    # "Did 0100000001 get it?": not in the database any more, in the archives.
    with db.reading() as session:
        live = service.search(session=session, filters=service.Filters(recipient="0100000001"))
        assert live.items == []
        found = archived.find(session, root, service.Filters(recipient="0100000001"))
    assert [(d.recipient, d.status, d.archived) for d in found] == [("0100000001", "sent", True)]
    assert found[0].address == "an***@example.vn" or "***" in (found[0].address or "")
    assert [a.outcome for a in found[0].attempts] == ["sent"]

    monkeypatch.setattr(get_settings(), "archive_dir", str(root))
    page = client.get("/v1/deliveries", params={"recipient": "0100000001"}).json()
    assert page["items"] == []
    page = client.get(
        "/v1/deliveries", params={"recipient": "0100000001", "include_archived": "true"}
    ).json()
    assert [(d["recipient"], d["status"], d["archived"]) for d in page["items"]] == [
        ("0100000001", "sent", True)
    ]
    both = client.get("/v1/deliveries", params={"include_archived": "true", "limit": 1}).json()
    assert [d["archived"] for d in both["items"]] == [True]
    rest = client.get(
        "/v1/deliveries",
        params={"include_archived": "true", "limit": 1, "cursor": both["next_cursor"]},
    ).json()
    assert [(d["recipient"], d["archived"]) for d in rest["items"]] == [("0100000002", False)]
    refused = client.get(
        "/v1/deliveries", params={"address": "an.nguyen@example.vn", "include_archived": "true"}
    )
    assert refused.status_code == 422 and "by recipient" in refused.text

    # A province's staff see no archived delivery of the central unit's campaigns.
    with db.transaction() as session:
        units.apply(
            session,
            [
                units.UnitSpec("VN", "Bảo hiểm xã hội Việt Nam", None, ()),
                units.UnitSpec("HP", "Bảo hiểm xã hội thành phố Hải Phòng", "VN", ("31",)),
            ],
        )
        province = units.by_code(session, "HP")
        person = new_principal(
            session, kind=PrincipalKind.person, name="Biên tập HP", unit_id=province.id,
            roles=[Role.operator],
        )  # fmt: skip
        _, key = create_key(session, role="operator", name="Biên tập HP", owner=person)
    outside = client.get(
        "/v1/deliveries",
        params={"recipient": "0100000001", "include_archived": "true"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert outside.status_code == 200 and outside.json()["items"] == []

    # Again: a no-op that says so.
    again = archive.archive_before(db, 202611, root)
    assert {r.status for r in again} == {"already"}
    assert 202610 in [r.period for r in again]
    assert _verify(db, settings).ok


def test_the_archive_and_search_commands(
    client: Any, worker: Any, db: Database, tmp_path: Path, monkeypatch: Any
) -> None:
    add_people(client)
    publish_template(client)
    clock.freeze(OCTOBER)
    _send(client, "0100000001")
    clock.freeze(DECEMBER)
    monkeypatch.setenv("DISPATCHER_ARCHIVE_DIR", str(tmp_path / "kho"))
    get_settings.cache_clear()
    runner = CliRunner()

    bad = runner.invoke(app, ["archive", "--before", "2026-13"])
    assert bad.exit_code == 2 and "not a month" in bad.output
    later = runner.invoke(app, ["archive", "--before", "2027-02"])
    assert later.exit_code == 2 and "after the current month" in later.output

    done = runner.invoke(app, ["archive", "--before", "2026-12"])
    assert done.exit_code == 0, done.output
    assert "2026-10: archived 1 deliveries and 1 attempts" in done.output
    assert (tmp_path / "kho" / "2026-10" / "manifest.json").is_file()
    again = runner.invoke(app, ["archive", "--before", "2026-12"])
    assert again.exit_code == 0 and "2026-10: already archived" in again.output

    live = runner.invoke(app, ["search", "--recipient", "0100000001"])
    assert "no delivery to 0100000001 (try --archives)" in live.output
    found = runner.invoke(app, ["search", "--recipient", "0100000001", "--archives"])
    assert found.exit_code == 0, found.output
    lines = [json.loads(line) for line in found.stdout.splitlines() if line.startswith("{")]
    assert [(d["recipient"], d["status"], d["archived"]) for d in lines] == [
        ("0100000001", "sent", True)
    ]


def test_a_launch_makes_its_runs_month_partitions(
    db: Database, settings: Settings, job_queue: Any
) -> None:
    """A campaign's run for a month nobody prepared: its launch makes the partitions in its own
    transaction, before the planner writes any row there."""
    from dispatcher.campaigns import launching
    from dispatcher.tables.campaigns import Campaign, Run
    from tests.deliveries.rows import make_campaign

    clock.freeze(datetime(2036, 7, 1, tzinfo=UTC))
    campaign_id, _ = make_campaign(db)
    at = datetime(2036, 7, 31, 17, 30, tzinfo=UTC)  # 1 August in Hà Nội
    assert 203608 not in _partitions(db)
    with db.transaction() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        run = launching.launch(session=session, campaign=campaign, settings=settings, at=at)
        assert run is not None
        run_id = run.id
    with db.reading() as session:
        assert session.get(Run, run_id).period == 203608  # type: ignore[union-attr]
    if not db.is_sqlite:
        assert 203608 in _partitions(db)


def test_the_row_path_update_reads_only_its_runs_month(db: Database, settings: Settings) -> None:
    """A batch's row-path UPDATE names its run's month: PostgreSQL plans it against that
    month's partition only, not every month's primary key."""
    if db.is_sqlite:
        pytest.skip("SQLite keeps one table")
    import re

    from dispatcher.engine import bulk
    from workers.scheduler import ensure_partitions

    clock.freeze(datetime(2032, 1, 20, tzinfo=UTC))
    ensure_partitions(db, settings)
    assert {203201, 203202, 203203} <= set(_partitions(db))
    writes = bulk.BulkWrites(db.engine.dialect)
    params: dict[str, Any] = {name: [] for name, _ in bulk.DELIVERY_COLUMNS}
    now = writes.stamp(datetime(2032, 2, 2, tzinfo=UTC))
    params.update(updated_at=now, period=203202, lease=now)
    with db.engine.connect() as connection:
        plan = "\n".join(
            row[0] for row in connection.exec_driver_sql("EXPLAIN " + bulk._PG_UPDATE, params)
        )
    assert set(re.findall(r"deliveries_p(\d{6})", plan)) == {"203202"}, plan
