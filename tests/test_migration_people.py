"""Revision 0010 on a database with data: every key gets a person (a sender key a system), a
saved audience's filter becomes its version 1, campaigns learn who wrote and submitted them;
and it goes down and up again keeping the audiences."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text

from dispatcher.core import migrate
from dispatcher.core.db import create_db_engine
from tests.conftest import _drop_postgres, _postgres_database

AT = datetime(2026, 11, 1, 2, 0)


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    created = _postgres_database()
    if created is None:
        pytest.skip("PostgreSQL is not reachable")
    name, url = created
    yield url
    _drop_postgres(name)


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(text(sql))]
    finally:
        engine.dispose()


def _run(url: str, *statements: tuple[str, dict[str, Any]]) -> None:
    engine = create_db_engine(url)
    try:
        with engine.begin() as connection:
            for sql, params in statements:
                connection.execute(text(sql), params)
    finally:
        engine.dispose()


@pytest.mark.timeout(180)
def test_keys_become_people_and_audiences_versions(fresh_url: str) -> None:
    config = migrate.alembic_config(fresh_url)
    command.upgrade(config, "0009")
    key = (
        "INSERT INTO api_keys (id, prefix, secret_hash, name, role, created_at) "
        "VALUES (:id, :prefix, :hash, :name, :role, :at)"
    )
    _run(
        fresh_url,
        (
            key,
            {
                "id": 1,
                "prefix": "a1",
                "hash": "x",
                "name": "Trưởng phòng",
                "role": "admin",
                "at": AT,
            },
        ),
        (
            key,
            {"id": 2, "prefix": "b2", "hash": "y", "name": "Cổng DVC", "role": "sender", "at": AT},
        ),
        (
            key,
            {
                "id": 3,
                "prefix": "c3",
                "hash": "z",
                "name": "Trưởng phòng",
                "role": "approver",
                "at": AT,
            },
        ),
        (
            "INSERT INTO audiences (id, name, filter, created_at, updated_at) "
            "VALUES (1, 'hn', :filter, :at, :at)",
            {"filter": json.dumps({"province": ["Hà Nội"]}), "at": AT},
        ),
        ("INSERT INTO templates (id, key, created_at) VALUES (1, 't', :at)", {"at": AT}),
        (
            "INSERT INTO campaigns (id, name, kind, template_id, audience, channels, channel_mode, "
            "priority, variables, status, created_at, updated_at, created_by, submitted_by) "
            "VALUES (1, 'c', 'policy_news', 1, :aud, :ch, 'all', 'bulk', '{}', 'submitted', "
            ":at, :at, 1, 3)",
            {"aud": json.dumps({"saved": "hn"}), "ch": json.dumps(["email"]), "at": AT},
        ),
        (
            "INSERT INTO runs (id, campaign_id, scheduled_for, status, late, planned_through, "
            "planned_count, variables, created_at) "
            "VALUES (1, 1, :at, 'completed', false, 0, 0, '{}', :at)",
            {"at": AT},
        ),
    )

    command.upgrade(config, "head")
    # On SQLite a column with a foreign key means rebuilding the table: that must not take
    # the rows that point at it (runs of a campaign, versions of an audience) with it.
    assert _rows(fresh_url, "SELECT id, campaign_id FROM runs") == [(1, 1)]
    people = _rows(
        fresh_url,
        "SELECT k.id, p.kind, p.name FROM api_keys k JOIN principals p ON p.id = k.principal_id "
        "ORDER BY k.id",
    )
    assert people == [
        (1, "person", "Trưởng phòng"),
        (2, "system", "Cổng DVC"),
        (3, "person", "Trưởng phòng"),
    ]
    distinct = _rows(fresh_url, "SELECT COUNT(DISTINCT principal_id) FROM api_keys")
    assert distinct == [(3,)], "each existing key is its own person"
    versions = _rows(fresh_url, "SELECT audience_id, version, filter FROM audience_versions")
    assert [(a, v) for a, v, _ in versions] == [(1, 1)]
    stored = versions[0][2]
    assert (json.loads(stored) if isinstance(stored, str) else stored) == {"province": ["Hà Nội"]}
    by = _rows(
        fresh_url,
        "SELECT a.name, s.name, c.approver_id FROM campaigns c "
        "JOIN principals a ON a.id = c.author_id JOIN principals s ON s.id = c.submitter_id",
    )
    assert by == [("Trưởng phòng", "Trưởng phòng", None)]
    authors = _rows(fresh_url, "SELECT author_id <> submitter_id FROM campaigns")
    assert authors[0][0], "two keys of the same name are still two people"

    command.downgrade(config, "0009")
    back = _rows(fresh_url, "SELECT name, filter FROM audiences")
    assert back[0][0] == "hn"
    restored = back[0][1]
    assert (json.loads(restored) if isinstance(restored, str) else restored) == {
        "province": ["Hà Nội"]
    }
    command.upgrade(config, "head")
    assert len(_rows(fresh_url, "SELECT id FROM principals")) == 3
