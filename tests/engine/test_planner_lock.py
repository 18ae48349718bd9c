"""The planner's lock on its run does not hold up the workers' writes to that run."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from dispatcher.core.db import Database
from dispatcher.engine import leases
from dispatcher.engine.planner import lock_run
from tests.deliveries.rows import make_campaign


def test_a_claim_of_the_run_goes_on_while_its_planner_holds_the_run(db: Database) -> None:
    """A page of planning runs in a transaction that locks the run. A worker claiming a batch
    of the same run meanwhile writes a lease whose foreign key points at the run: it must not
    wait for the page to commit (on PostgreSQL, FOR UPDATE would make it wait)."""
    if db.is_sqlite:
        pytest.skip("SQLite's writers take turns on the whole file; there are no row locks")
    _, [run_id] = make_campaign(db)
    now = datetime(2026, 3, 10, 3, 0, tzinfo=UTC)
    with db.transaction() as planner:
        assert lock_run(planner, run_id) is not None
        with db.transaction() as worker:
            connection = worker.connection()
            # Fail at once rather than wait: a wait here is the fault.
            connection.execute(text("SET LOCAL lock_timeout = '3s'"))
            leases.take(
                connection,
                token="planner-lock-test",
                run_id=run_id,
                lease_until=now,
                batch_id=None,
                worker="test",
                now=now,
            )
