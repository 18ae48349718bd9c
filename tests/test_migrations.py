"""The migrations build exactly the schema the models describe, on both databases, and the
last one goes down and up again (on PostgreSQL its indexes are built CONCURRENTLY, outside a
transaction)."""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from dispatcher.core import migrate
from dispatcher.core.db import Database, create_db_engine
from dispatcher.tables import Base
from tests.test_end_to_end import add_people, publish_template


def _differences(url: str) -> list[Any]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts=migrate.compare_options(connection.dialect.name)
            )
            return list(compare_metadata(context, Base.metadata))
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


@pytest.mark.timeout(120)
def test_the_scoped_idempotency_keys_go_down_and_up_again_keeping_messages(
    database_url: str, client: Any, db: Database
) -> None:
    """0013 adds its columns in place: going down and up again loses no message and none of
    their deliveries (a copied-and-dropped ``runs`` on SQLite would take them along)."""
    add_people(client)
    publish_template(client)
    body = {"recipient": "0100000001", "template": "canh_bao_test", "channels": ["email"]}
    sent = client.post("/v1/messages", json=body, headers={"Idempotency-Key": "k-1"})
    assert sent.status_code == 202, sent.text

    def rows() -> tuple[int, int]:
        with db.engine.connect() as connection:
            runs = connection.execute(text("SELECT count(*) FROM runs")).scalar_one()
            deliveries = connection.execute(text("SELECT count(*) FROM deliveries")).scalar_one()
        return int(runs), int(deliveries)

    before = rows()
    assert before == (1, 1)
    db.engine.dispose()  # no pooled connection stands in the way of ALTER TABLE
    config = migrate.alembic_config(database_url)
    command.downgrade(config, "0013-1")
    try:
        assert {"created_by", "request_hash"}.isdisjoint(_columns(database_url, "runs"))
        assert rows() == before
    finally:
        command.upgrade(config, "head")
    assert rows() == before
    assert _differences(database_url) == []
    replay = client.post("/v1/messages", json=body, headers={"Idempotency-Key": "k-1"})
    assert replay.status_code == 202, replay.text
    assert replay.json()["id"] == sent.json()["id"]


def _columns(url: str, table: str) -> set[str]:
    engine = create_db_engine(url)
    try:
        return {str(column["name"]) for column in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()
