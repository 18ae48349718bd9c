"""The delivery tallies PostgreSQL keeps: right after every kind of write, read instead of the
deliveries, and never a point where two writers wait for each other. SQLite keeps none, and
counts the same."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import delete, event, func, insert, select, text, update
from typer.testing import CliRunner

from dispatcher.campaigns import lifecycle
from dispatcher.cli import app
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine import batches, tallies
from dispatcher.kit.clock import utcnow
from dispatcher.tables.campaigns import Campaign
from dispatcher.tables.deliveries import Attempt, Batch, Delivery, DeliveryTally
from dispatcher.tables.recipients import Recipient
from tests.deliveries.rows import add_attempts, add_deliveries, add_recipients, make_campaign
from tests.support import run_batches
from tests.test_end_to_end import plan_campaign


def _grouped(db: Database, campaign_id: int) -> dict[tuple[str, str], int]:
    with db.reading() as session:
        return {
            (status, channel): n
            for status, channel, n in session.execute(
                select(Delivery.status, Delivery.channel, func.count())
                .where(Delivery.campaign_id == campaign_id)
                .group_by(Delivery.status, Delivery.channel)
            )
        }


def _counted(db: Database, campaign_id: int) -> dict[tuple[str, str], int]:
    with db.reading() as session:
        counts = lifecycle.counts(session=session, campaign_id=campaign_id)
    return {
        (status, channel): n
        for channel, by_status in counts.by_channel.items()
        for status, n in by_status.items()
    }


def _check(db: Database, campaign_id: int) -> None:
    with db.reading() as session:
        assert tallies.mismatches(session) == []
    assert _counted(db, campaign_id) == _grouped(db, campaign_id)


def test_the_tallies_follow_inserts_changes_and_deletes(db: Database) -> None:
    campaign_id, [first, second] = make_campaign(db, runs=2)
    people = add_recipients(db, [(f"p{i}", {"email": f"p{i}@bhxh.test"}) for i in range(6)])
    ids = list(people.values())
    rows = [
        {"run_id": run_id, "campaign_id": campaign_id, "recipient_id": rid, "channel": channel}
        for run_id in (first, second)
        for rid in ids
        for channel in ("email", "zalo")
    ]
    for index, row in enumerate(rows):
        row["status"] = ("sent", "failed", "pending", "retrying")[index % 4]
    add_deliveries(db, rows)
    _check(db, campaign_id)
    assert sum(_counted(db, campaign_id).values()) == 24

    # A status change of many rows in one statement, and of one row.
    with db.transaction() as session:
        session.execute(
            update(Delivery)
            .where(Delivery.status == "pending", Delivery.run_id == first)
            .values(status="sent")
        )
        session.execute(update(Delivery).values(error_reason="no status change"))
    _check(db, campaign_id)
    with db.transaction() as session:
        one = session.scalars(select(Delivery).where(Delivery.status == "retrying").limit(1)).one()
        one.status = "cancelled"
    _check(db, campaign_id)

    # A recipient erased: their deliveries and attempts go (ON DELETE CASCADE, or on
    # PostgreSQL the delete triggers of revision 0022), and are counted out.
    with db.reading() as session:
        delivery_ids = list(session.scalars(select(Delivery.id).order_by(Delivery.id)))
    add_attempts(db, [{"delivery_id": i} for i in delivery_ids])
    with db.transaction() as session:
        session.execute(delete(Recipient).where(Recipient.id == ids[0]))
    _check(db, campaign_id)
    assert sum(_counted(db, campaign_id).values()) == 20
    assert _left(db) == (20, 20)

    # A campaign deleted: its runs, deliveries, attempts and tallies go together.
    with db.transaction() as session:
        session.execute(delete(Campaign).where(Campaign.id == campaign_id))
    _check(db, campaign_id)
    assert _counted(db, campaign_id) == {}
    assert _left(db) == (0, 0)


def _left(db: Database) -> tuple[int, int]:
    with db.reading() as session:
        return (
            session.scalar(select(func.count()).select_from(Delivery)) or 0,
            session.scalar(select(func.count()).select_from(Attempt)) or 0,
        )


@contextmanager
def _statements(db: Database) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(*args: Any) -> None:
        statement = args[2]
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", record)


def test_a_campaigns_counts_do_not_read_its_deliveries(db: Database) -> None:
    """GET /v1/campaigns/{id} and the dashboard count a campaign on every look: grouping its
    deliveries cost seconds of the database at ten million rows."""
    if db.is_sqlite:
        pytest.skip("SQLite keeps no tallies: its counts group the rows")
    campaign_id, [run_id] = make_campaign(db)
    people = add_recipients(db, [("a", {"email": "a@bhxh.test"})])
    add_deliveries(
        db,
        [
            {
                "run_id": run_id,
                "campaign_id": campaign_id,
                "recipient_id": people["a"],
                "channel": "email",
            }
        ],
    )
    with _statements(db) as seen, db.reading() as session:
        counts = lifecycle.counts(session=session, campaign_id=campaign_id)
    assert counts.by_status == {"sent": 1}
    assert seen and not [s for s in seen if "deliveries" in s.replace("delivery_tallies", "")]


def test_two_writers_of_one_run_do_not_wait_for_each_others_tally(db: Database) -> None:
    """Each PostgreSQL session adds to its own slot: a worker recording a batch does not wait
    for another's transaction on the same run, channel and status."""
    if db.is_sqlite:
        pytest.skip("SQLite's writers take turns on the whole file; there are no row locks")
    campaign_id, [run_id] = make_campaign(db)
    people = add_recipients(db, [(f"w{i}", {"email": f"w{i}@bhxh.test"}) for i in range(2)])
    first, second = people.values()

    def row(recipient_id: int) -> dict[str, object]:
        return {
            "run_id": run_id,
            "campaign_id": campaign_id,
            "recipient_id": recipient_id,
            "channel": "email",
            "status": "sent",
            "created_at": func.now(),
            "updated_at": func.now(),
            "available_at": func.now(),
        }

    with db.transaction() as one:
        one.execute(insert(Delivery).values(**row(first)))
        with db.transaction() as other:
            # Fail at once rather than wait: a wait here is the fault.
            other.execute(text("SET LOCAL lock_timeout = '3s'"))
            other.execute(insert(Delivery).values(**row(second)))
    _check(db, campaign_id)
    assert _counted(db, campaign_id) == {("sent", "email"): 2}


def test_the_tallies_command_finds_wrong_tallies_and_rebuilds_them(
    settings: Settings, db: Database
) -> None:
    runner = CliRunner()
    if db.is_sqlite:
        none = runner.invoke(app, ["tallies", "--rebuild"])
        assert none.exit_code == 0 and "SQLite keeps no tallies" in none.output
        return
    campaign_id, [run_id] = make_campaign(db)
    people = add_recipients(db, [(f"c{i}", {"email": f"c{i}@bhxh.test"}) for i in range(3)])
    add_deliveries(
        db,
        [
            {"run_id": run_id, "campaign_id": campaign_id, "recipient_id": rid, "channel": "email"}
            for rid in people.values()
        ],
    )
    fine = runner.invoke(app, ["tallies"])
    assert fine.exit_code == 0 and "tallies match the deliveries" in fine.output
    # As a restore with the triggers off would leave them.
    with db.transaction() as session:
        session.execute(delete(DeliveryTally))

    wrong = runner.invoke(app, ["tallies"])
    assert wrong.exit_code == 1
    assert f"run {run_id}, email, sent: tallied 0, rows 3" in wrong.output
    assert "dispatcher tallies --rebuild" in wrong.output
    assert _counted(db, campaign_id) == {}

    rebuilt = runner.invoke(app, ["tallies", "--rebuild"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "tallies rebuilt: 1 rows" in rebuilt.output
    assert "tallies match the deliveries" in rebuilt.output
    _check(db, campaign_id)


def test_cancelling_open_batches_fires_the_tally_trigger_once_per_statement(
    client: Any, db: Database, settings: Settings
) -> None:
    """Cancelling a campaign writes its open batches' deliveries as rows: in multi-row
    statements, not one per row (the trigger runs once per statement; a 1,000,000-delivery
    cancellation written row by row took minutes of the database)."""
    if db.is_sqlite:
        pytest.skip("SQLite keeps no tallies")
    campaign_id, run_id = plan_campaign(client, db, settings)
    [(_, ids)] = run_batches(db, run_id)
    assert len(ids) > 1
    with db.transaction() as session:
        session.execute(text("SET LOCAL track_functions = 'pl'"))
        written = batches.cancel_open(
            session,
            Batch.campaign_id == campaign_id,
            now=utcnow(),
            reason="campaign cancelled",
            actor="test",
            subject=f"campaign:{campaign_id}",
        )
        calls = session.scalar(
            text(
                "SELECT calls FROM pg_stat_xact_user_functions "
                "WHERE funcname = 'delivery_tallies_count'"
            )
        )
    assert written == len(ids)
    assert calls == 1
    assert _counted(db, campaign_id) == {("cancelled", "email"): len(ids)}


def test_the_sweeper_folds_the_tallies_of_sessions_that_ended(
    db: Database, settings: Settings, job_queue: Any
) -> None:
    """Each session counts into its own slot, so a run's tally rows grow with the connections
    that wrote it: the sweeper folds those of ended sessions into one row per (run, channel,
    status), the counts unchanged, and leaves a live session's rows where they are."""
    if db.is_sqlite:
        pytest.skip("SQLite keeps no tallies")
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from tests.support import wait_for
    from workers.sweeper import sweep

    campaign_id, [run_id] = make_campaign(db)
    people = add_recipients(db, [(f"f{i}", {"email": f"f{i}@bhxh.test"}) for i in range(3)])
    ids = list(people.values())
    add_deliveries(
        db,
        [
            {
                "run_id": run_id,
                "campaign_id": campaign_id,
                "recipient_id": rid,
                "channel": "email",
                "status": "pending",
            }
            for rid in ids[:3]
        ],
    )
    # Two sessions that end: one marks a row failed, one sends another; then a live one.
    ended: list[int] = []
    for status, recipient_id in (("failed", ids[0]), ("sent", ids[1])):
        engine = create_engine(db.engine.url, poolclass=NullPool)
        with engine.begin() as connection:
            ended.append(int(connection.scalar(text("SELECT pg_backend_pid()"))))
            connection.execute(
                update(Delivery).where(Delivery.recipient_id == recipient_id).values(status=status)
            )
        engine.dispose()
    with db.transaction() as session:
        live = int(session.scalar(text("SELECT pg_backend_pid()")))
        session.execute(
            update(Delivery).where(Delivery.recipient_id == ids[2]).values(status="failed")
        )

    def slots() -> dict[int, int]:
        with db.reading() as session:
            return dict(
                session.execute(
                    select(DeliveryTally.slot, func.count())
                    .where(DeliveryTally.run_id == run_id)
                    .group_by(DeliveryTally.slot)
                ).all()
            )

    def gone() -> bool:
        with db.reading() as session:
            alive = session.scalars(text("SELECT pid FROM pg_stat_activity")).all()
        return not set(ended) & set(alive)

    before = _counted(db, campaign_id)
    assert set(ended) <= set(slots()) and live in slots()
    wait_for(gone, what="the ended sessions' backends to exit")
    folded_rows = sum(n for slot, n in slots().items() if slot in ended)

    report = sweep(db=db, settings=settings, markers=job_queue.markers)
    assert report.tallies_folded == folded_rows > 0
    after = slots()
    assert not set(ended) & set(after)
    assert live in after and 0 in after
    assert _counted(db, campaign_id) == before == {("sent", "email"): 1, ("failed", "email"): 2}
    _check(db, campaign_id)
    # Nothing more to fold.
    assert sweep(db=db, settings=settings, markers=job_queue.markers).tallies_folded == 0


def test_the_tallies_command_checks_and_rebuilds_one_campaign(
    settings: Settings, db: Database
) -> None:
    if db.is_sqlite:
        pytest.skip("SQLite keeps no tallies")
    runner = CliRunner()
    wrong_one, [wrong_run] = make_campaign(db)
    other, [other_run] = make_campaign(db)
    people = add_recipients(db, [(f"s{i}", {"email": f"s{i}@bhxh.test"}) for i in range(2)])
    add_deliveries(
        db,
        [
            {"run_id": run_id, "campaign_id": campaign_id, "recipient_id": rid, "channel": "email"}
            for campaign_id, run_id in ((wrong_one, wrong_run), (other, other_run))
            for rid in people.values()
        ],
    )
    with db.transaction() as session:
        session.execute(delete(DeliveryTally))

    # Scoped to the other campaign: only its difference is reported, and only it is rebuilt.
    scoped = runner.invoke(app, ["tallies", "--campaign", str(other)])
    assert scoped.exit_code == 1
    assert f"run {other_run}, email, sent: tallied 0, rows 2" in scoped.output
    assert f"run {wrong_run}," not in scoped.output
    assert f"dispatcher tallies --rebuild --campaign {other}" in scoped.output
    rebuilt = runner.invoke(app, ["tallies", "--rebuild", "--campaign", str(other)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "tallies rebuilt: 1 rows" in rebuilt.output
    assert _counted(db, other) == {("sent", "email"): 2}
    assert _counted(db, wrong_one) == {}

    missing = runner.invoke(app, ["tallies", "--campaign", "999999"])
    assert missing.exit_code == 2 and "campaign 999999 does not exist" in missing.output
    # The whole database is still wrong, until it is rebuilt whole.
    assert runner.invoke(app, ["tallies"]).exit_code == 1
    assert runner.invoke(app, ["tallies", "--rebuild"]).exit_code == 0
    _check(db, wrong_one)
