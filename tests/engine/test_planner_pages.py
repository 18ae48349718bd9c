"""The planner's pages: whole batches, several to a transaction, each page read through the
addresses' own index."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event, func, select

from dispatcher import audit
from dispatcher.core.config import Settings
from dispatcher.core.db import Database
from dispatcher.engine import planner
from dispatcher.tables.audit import AuditEntry
from tests.support import run_batches
from tests.test_end_to_end import plan_campaign


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    seen: list[str] = []

    def note(*args: Any) -> None:
        seen.append(" ".join(str(args[2]).split()))

    event.listen(db.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", note)


def test_a_page_plans_several_whole_batches_in_one_transaction(
    client: Any, db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five people, batches of two, four deliveries to a page: two pages (one audit entry
    each), the first with two batches, and every batch whole but the last."""
    monkeypatch.setattr(settings, "batch_size", 2)
    monkeypatch.setattr(planner, "PAGE_DELIVERIES", 4)
    _, run_id = plan_campaign(client, db, settings)
    assert [len(ids) for _, ids in run_batches(db, run_id)] == [2, 2, 1]
    with db.reading() as session:
        pages = [
            [b["size"] for b in json.loads(data)["batches"]]
            for data in session.scalars(
                select(AuditEntry.data)
                .where(AuditEntry.action == audit.PLANNED, AuditEntry.subject == f"run:{run_id}")
                .order_by(AuditEntry.seq)
            )
        ]
    assert pages == [[2, 2], [1]]


def test_a_pages_reads_bound_the_addresses_by_the_pages_ids(
    client: Any, db: Database, settings: Settings
) -> None:
    """PostgreSQL carries an equality across a join, not a range: bounded on the recipients
    alone, each page's read of the addresses was a sequential scan of the whole table."""
    with statements(db) as seen:
        plan_campaign(client, db, settings)
    joins = [s for s in seen if "JOIN addresses" in s and "recipients.id >" in s]
    assert joins, seen
    for statement in joins:
        assert "addresses.recipient_id >" in statement, statement
        assert "addresses.recipient_id <=" in statement, statement


def test_a_pages_batches_are_named_once_however_many_entries_its_skipped_rows_take(
    client: Any, db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page's skipped rows are named DELIVERIES_PER_ENTRY to an audit entry; the page's
    batches are named in the first of them only."""
    from sqlalchemy import update

    from dispatcher.audit import coverage
    from dispatcher.tables.recipients import Address
    from tests.test_end_to_end import add_people, plan_launched, publish_template

    monkeypatch.setattr(coverage, "DELIVERIES_PER_ENTRY", 1)
    add_people(client)
    publish_template(client)
    with db.transaction() as session:
        dead = session.scalars(select(Address.id).order_by(Address.id).limit(3)).all()
        session.execute(update(Address).where(Address.id.in_(dead)).values(dead_at=func.now()))
    _, run_id = plan_launched(client, db, settings)
    with db.reading() as session:
        entries = [
            json.loads(data)
            for data in session.scalars(
                select(AuditEntry.data)
                .where(AuditEntry.action == audit.PLANNED, AuditEntry.subject == f"run:{run_id}")
                .order_by(AuditEntry.seq)
            )
        ]
    assert [e["skipped"] for e in entries] == [3, 3, 3]
    assert ["batches" in e for e in entries] == [True, False, False]
    assert [b["size"] for b in entries[0]["batches"]] == [2]
