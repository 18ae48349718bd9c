"""The migrations build exactly the schema the models describe, on both databases, and the
last one goes down and up again (on PostgreSQL its indexes are built CONCURRENTLY, outside a
transaction)."""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from dispatcher import migrate
from dispatcher.db import create_db_engine
from dispatcher.models import Base


def _differences(url: str) -> list[Any]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))
    finally:
        engine.dispose()


def _indexes(url: str, table: str) -> set[str]:
    engine = create_db_engine(url)
    try:
        return {str(index["name"]) for index in inspect(engine).get_indexes(table)}
    finally:
        engine.dispose()


def test_the_migrated_schema_is_the_models(database_url: str) -> None:
    assert _differences(database_url) == []


@pytest.mark.timeout(120)  # CONCURRENTLY waits for older transactions: fail, never hang
def test_the_search_indexes_go_down_and_up_again(database_url: str) -> None:
    search = {"ix_deliveries_campaign_id_id", "ix_deliveries_run_id_id", "ix_deliveries_updated_at"}
    config = migrate.alembic_config(database_url)
    assert search <= _indexes(database_url, "deliveries")
    command.downgrade(config, "0008")
    try:
        assert not search & _indexes(database_url, "deliveries")
        assert "ix_addresses_value" not in _indexes(database_url, "addresses")
    finally:
        command.upgrade(config, "head")
    assert search <= _indexes(database_url, "deliveries")
    assert "ix_addresses_value" in _indexes(database_url, "addresses")
    assert _differences(database_url) == []
