"""Revision 0017 on a database with data: the root unit is made with the whole country, and
everything that exists is assigned to it (API templates too; built-in ones stay shared); people
hold the roles of their keys; and it goes down and up again."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from alembic import command

from dispatcher.core import migrate
from tests.test_migration_people import _rows, _run, fresh_url  # noqa: F401

AT = datetime(2026, 11, 1, 2, 0)


@pytest.mark.timeout(180)
def test_everything_goes_to_the_root_unit(fresh_url: str) -> None:  # noqa: F811
    config = migrate.alembic_config(fresh_url)
    command.upgrade(config, "0015")
    _run(
        fresh_url,
        (
            "INSERT INTO principals (id, kind, name, created_at) VALUES "
            "(1, 'person', 'Trưởng phòng', :at), (2, 'system', 'Cổng DVC', :at)",
            {"at": AT},
        ),
        (
            "INSERT INTO api_keys (id, prefix, secret_hash, name, role, created_at, principal_id) "
            "VALUES (1, 'a1', 'x', 'laptop', 'admin', :at, 1), "
            "(2, 'b2', 'y', 'cổng', 'sender', :at, 2), "
            "(3, 'c3', 'z', 'phê duyệt', 'approver', :at, 1)",
            {"at": AT},
        ),
        (
            "INSERT INTO templates (id, key, created_at) VALUES (1, 'tet', :at), (2, 'mine', :at)",
            {"at": AT},
        ),
        (
            "INSERT INTO template_versions (id, template_id, version, defaults, source, "
            "created_at) VALUES (1, 1, 1, '{}', 'builtin', :at), (2, 2, 1, '{}', 'api', :at)",
            {"at": AT},
        ),
        (
            "INSERT INTO audiences (id, name, created_at, updated_at) VALUES (1, 'hn', :at, :at)",
            {"at": AT},
        ),
        (
            "INSERT INTO campaigns (id, name, kind, template_id, audience, channels, channel_mode, "
            "priority, variables, status, created_at, updated_at, author_id) "
            "VALUES (1, 'c', 'policy_news', 2, :aud, :ch, 'all', 'bulk', '{}', 'draft', "
            ":at, :at, 1)",
            {"aud": json.dumps({"all": True}), "ch": json.dumps(["email"]), "at": AT},
        ),
    )
    command.upgrade(config, "head")
    units = _rows(fresh_url, "SELECT id, code, parent_id, territory FROM units")
    assert len(units) == 1
    root_id, code, parent, territory = units[0]
    assert (code, parent) == ("VN", None)
    territory = json.loads(territory) if isinstance(territory, str) else territory
    assert len(territory) == 34 and "79" in territory
    for table in ("principals", "campaigns", "audiences"):
        assert {r[0] for r in _rows(fresh_url, f"SELECT unit_id FROM {table}")} == {root_id}
    assert _rows(fresh_url, "SELECT key, unit_id FROM templates ORDER BY id") == [
        ("tet", None),
        ("mine", root_id),
    ]
    assert _rows(fresh_url, "SELECT principal_id, role FROM person_roles ORDER BY role") == [
        (1, "admin"),
        (1, "approver"),
    ]
    assert _rows(fresh_url, "SELECT failed_sign_ins, login FROM principals ORDER BY id") == [
        (0, None),
        (0, None),
    ]

    command.downgrade(config, "0015")
    assert _rows(fresh_url, "SELECT id FROM campaigns") == [(1,)]
    command.upgrade(config, "head")
    assert _rows(fresh_url, "SELECT count(*) FROM units") == [(1,)]
