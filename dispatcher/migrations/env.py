"""Alembic environment: the URL comes from the caller (``dispatcher migrate``) or the settings."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import event

from dispatcher.core.db import create_db_engine
from dispatcher.core.migrate import compare_options
from dispatcher.tables import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from dispatcher.core.config import get_settings

        url = get_settings().database_url
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_db_engine(url)
    sqlite = engine.dialect.name == "sqlite"
    if sqlite:
        # SQLite changes a table's constraints by copying it into a new table and dropping the
        # old one; with foreign keys on, that drop deletes (ON DELETE CASCADE) or empties
        # (SET NULL) every row pointing at it. Off while migrating, checked after.
        event.listen(engine, "connect", _foreign_keys_off)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            **compare_options(connection.dialect.name),
        )
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migration broke foreign keys: {broken[:10]}")
    engine.dispose()


def _foreign_keys_off(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA foreign_keys=OFF")


run_migrations()
