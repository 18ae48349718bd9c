"""Revision 0018 on a database with deliveries in two months: down to whole tables without
``period``, and up again into monthly partitions (PostgreSQL), every row kept, the keys holding
the partition key, the id sequences still reserving ids."""

from __future__ import annotations

from datetime import timedelta

import pytest
from alembic import command
from sqlalchemy import insert

from dispatcher.core import migrate
from dispatcher.core.db import Database
from dispatcher.engine import batches
from dispatcher.tables import partitions
from dispatcher.tables.campaigns import Run
from tests.deliveries.rows import (
    BASE,
    add_attempts,
    add_deliveries,
    add_recipients,
    make_campaign,
)
from tests.test_migration_people import _rows, fresh_url  # noqa: F401
from tests.test_migrations import _differences

APRIL = BASE + timedelta(days=31)


def _fill(url: str) -> tuple[list[int], list[int]]:
    """Two runs, in March and April 2026, with two deliveries and an attempt each."""
    db = Database(url)
    try:
        campaign_id, [march] = make_campaign(db)
        with db.transaction() as session:
            april = session.execute(
                insert(Run)
                .values(
                    campaign_id=campaign_id, scheduled_for=APRIL, slot="april", status="running"
                )
                .returning(Run.id)
            ).scalar_one()
            partitions.ensure_month(session.connection(), 202604)
        people = add_recipients(db, [("a", {"email": "a@x.vn"}), ("b", {"email": "b@x.vn"})])
        ids = add_deliveries(
            db,
            [
                {"run_id": run, "campaign_id": campaign_id, "recipient_id": rid, "channel": "email"}
                for run in (march, april)
                for rid in people.values()
            ],
        )
        add_attempts(db, [{"delivery_id": i} for i in ids])
        return [march, april], ids
    finally:
        db.dispose()


@pytest.mark.timeout(180)
def test_monthly_partitions_go_down_and_up_keeping_every_row(fresh_url: str) -> None:  # noqa: F811
    config = migrate.alembic_config(fresh_url)
    command.upgrade(config, "head")
    (march, april), ids = _fill(fresh_url)
    postgresql = fresh_url.startswith("postgresql")
    counts = "SELECT (SELECT count(*) FROM deliveries), (SELECT count(*) FROM attempts)"

    command.downgrade(config, "0017")
    assert _rows(fresh_url, counts) == [(4, 4)]
    for table in ("runs", "deliveries", "attempts"):
        assert "period" not in _column_names(fresh_url, table)
    if postgresql:
        assert _rows(fresh_url, "SELECT relkind FROM pg_class WHERE relname = 'deliveries'") == [
            ("r",)
        ]
        assert _rows(fresh_url, "SELECT count(*) FROM pg_class WHERE relname LIKE '%_p2026%'") == [
            (0,)
        ]

    command.upgrade(config, "head")
    assert _rows(fresh_url, counts) == [(4, 4)]
    assert _rows(fresh_url, "SELECT id, period FROM runs ORDER BY id") == [
        (march, 202603),
        (april, 202604),
    ]
    assert _rows(fresh_url, "SELECT run_id, period FROM deliveries ORDER BY id") == [
        (march, 202603),
        (march, 202603),
        (april, 202604),
        (april, 202604),
    ]
    assert _rows(
        fresh_url,
        "SELECT count(*) FROM attempts a JOIN deliveries d "
        "ON d.id = a.delivery_id AND d.period = a.period",
    ) == [(4,)]
    db = Database(fresh_url)
    try:
        with db.transaction() as session:
            connection = session.connection()
            # The deliveries' sequence still reserves ids, past every row's.
            assert min(batches.reserve_ids(connection, 3)) > max(ids)
            if postgresql:
                assert {202603, 202604} <= set(partitions.partitions(connection))
                assert partitions.is_partitioned(connection)
    finally:
        db.dispose()
    if postgresql:
        keys = dict(
            _rows(
                fresh_url,
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid IN ('deliveries'::regclass, 'attempts'::regclass) "
                "AND conparentid = 0",
            )
        )
        assert keys["pk_deliveries"] == "PRIMARY KEY (id, period)"
        assert keys["pk_attempts"] == "PRIMARY KEY (id, period)"
        assert keys["uq_deliveries_run_id_recipient_id_channel"] == (
            "UNIQUE (run_id, recipient_id, channel, period)"
        )
        # Revisions 0020 and 0022 drop the attempts' and the deliveries' foreign keys on
        # PostgreSQL (a trigger per row); delete triggers do their cascades.
        assert "fk_attempts_delivery_id_deliveries" not in keys
        delivery_keys = {
            "fk_deliveries_run_id_runs": (
                "FOREIGN KEY (run_id) REFERENCES runs(id) ON DELETE CASCADE"
            ),
            "fk_deliveries_campaign_id_campaigns": (
                "FOREIGN KEY (campaign_id) REFERENCES campaigns(id) ON DELETE CASCADE"
            ),
            "fk_deliveries_recipient_id_recipients": (
                "FOREIGN KEY (recipient_id) REFERENCES recipients(id) ON DELETE CASCADE"
            ),
        }
        assert not set(delivery_keys) & set(keys)
        triggers = "SELECT count(*) FROM pg_trigger WHERE tgname LIKE '%_delete_%'"
        assert _rows(fresh_url, triggers) == [(3,)]
        command.downgrade(config, "0021")
        assert _rows(fresh_url, triggers) == [(0,)]
        assert (
            dict(
                _rows(
                    fresh_url,
                    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conrelid = 'deliveries'::regclass AND contype = 'f'",
                )
            )
            == delivery_keys
        )
        command.downgrade(config, "0019")
        assert _rows(
            fresh_url,
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conname = 'fk_attempts_delivery_id_deliveries' AND conparentid = 0",
        ) == [
            (
                "FOREIGN KEY (delivery_id, period) REFERENCES deliveries(id, period) "
                "ON DELETE CASCADE",
            )
        ]
        command.upgrade(config, "head")
        assert _rows(fresh_url, "SELECT pg_get_serial_sequence('deliveries', 'id')") == [
            ("public.deliveries_id_seq",)
        ]
    assert _differences(fresh_url) == []


def _column_names(url: str, table: str) -> set[str]:
    from sqlalchemy import inspect

    from dispatcher.core.db import create_db_engine

    engine = create_db_engine(url)
    try:
        return {str(c["name"]) for c in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_bad_months_are_named() -> None:
    with (
        pytest.raises(ValueError, match="not a period"),
        Database("sqlite://").engine.connect() as connection,
    ):
        partitions.ensure_month(connection, 202613)
