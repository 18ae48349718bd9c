"""Revision 0021 on a database with deliveries: on PostgreSQL the tallies are filled from the
rows already there, their triggers go with them on the way down, and both come back on the way
up; on SQLite the table is made and stays empty."""

from __future__ import annotations

import pytest
from alembic import command

from dispatcher.core import migrate
from dispatcher.core.db import Database
from dispatcher.engine import tallies
from tests.test_migration_partitions import _fill
from tests.test_migration_people import _rows, _run, fresh_url  # noqa: F401
from tests.test_migrations import _differences

TALLIES = "SELECT run_id, channel, status, sum(n) FROM delivery_tallies GROUP BY 1, 2, 3 ORDER BY 1"
TRIGGERS = "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'delivery_tallies_%'"


@pytest.mark.timeout(180)
def test_the_tallies_are_filled_from_the_rows_already_there(fresh_url: str) -> None:  # noqa: F811
    config = migrate.alembic_config(fresh_url)
    command.upgrade(config, "0020")
    (march, april), _ = _fill(fresh_url)
    if fresh_url.startswith("sqlite"):
        command.upgrade(config, "head")
        assert _rows(fresh_url, TALLIES) == []
        command.downgrade(config, "0020")
        command.upgrade(config, "head")
        assert _differences(fresh_url) == []
        return
    triggers = TRIGGERS
    assert _rows(fresh_url, triggers) == [(0,)]

    command.upgrade(config, "head")
    assert _rows(fresh_url, TALLIES) == [(march, "email", "sent", 2), (april, "email", "sent", 2)]
    assert _rows(fresh_url, triggers) == [(3,)]
    # And kept from then on: a row changed after the upgrade moves its count.
    _run(fresh_url, ("UPDATE deliveries SET status = 'failed' WHERE run_id = :run", {"run": april}))
    db = Database(fresh_url)
    try:
        with db.reading() as session:
            assert tallies.mismatches(session) == []
    finally:
        db.dispose()

    command.downgrade(config, "0020")
    assert _rows(fresh_url, triggers) == [(0,)]
    command.upgrade(config, "head")
    assert _rows(fresh_url, TALLIES) == [(march, "email", "sent", 2), (april, "email", "failed", 2)]
    assert _differences(fresh_url) == []
