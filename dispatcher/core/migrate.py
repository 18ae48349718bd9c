"""Schema migrations (Alembic), run by ``dispatcher migrate`` and at ``dispatcher dev`` start-up."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.set_main_option(
        "file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d-%%(slug)s"
    )
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from dispatcher.core.db import create_db_engine

    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


# On PostgreSQL ``deliveries`` and ``attempts`` are partitioned by month (revision 0018): a key
# of a partitioned table must hold its partition key, so there these two constraints also hold
# ``period`` (tests/test_migration_partitions.py checks them), and each month's partitions are
# tables of their own that the models do not list. The attempts' foreign key is not there at
# all since revision 0020, nor the deliveries' since 0022 (a trigger per inserted row; see
# those revisions).
PARTITION_KEYS = frozenset(
    {
        "uq_deliveries_run_id_recipient_id_channel",
        "fk_attempts_delivery_id_deliveries",
        "fk_deliveries_run_id_runs",
        "fk_deliveries_campaign_id_campaigns",
        "fk_deliveries_recipient_id_recipients",
    }
)
_PARTITION = re.compile(r"^(deliveries|attempts)_p\d{6}$")


def compare_options(dialect: str) -> dict[str, Any]:
    """Alembic's comparison of the models with a database, knowing the partitions."""

    def include_name(name: str | None, type_: str, _parents: Any) -> bool:
        return not (type_ == "table" and name is not None and _PARTITION.match(name))

    def include_object(
        item: Any, name: str | None, type_: str, _reflected: bool, _compare_to: Any
    ) -> bool:
        partitioned = dialect == "postgresql"
        if partitioned and type_ == "foreign_key_constraint":
            # PostgreSQL lists a foreign key to a partitioned table once more per partition.
            referred = getattr(item, "referred_table", None)
            if referred is not None and _PARTITION.match(referred.name):
                return False
        return not (
            partitioned
            and type_ in ("unique_constraint", "foreign_key_constraint")
            and name in PARTITION_KEYS
        )

    return {"include_name": include_name, "include_object": include_object}
