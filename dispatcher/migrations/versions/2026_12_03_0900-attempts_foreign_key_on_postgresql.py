"""attempts' foreign key dropped on PostgreSQL

On PostgreSQL a foreign key is checked by a trigger per inserted row, even in ``COPY``: on the
monthly partitions it cost about 65 µs of the database's CPU per attempt (75 µs per row with
it, 10 without, 200,000 rows copied in batches of 1,000), more than the rest of a delivery's
row. An attempt is written only by the engine's record, in the transaction that writes or
holds its delivery, and nothing deletes a delivery alone (a month goes whole, its partitions of
both tables together), so the key guarded nothing the code does not. ``dispatcher audit
verify`` still joins every attempt to its delivery. SQLite keeps the key: there the check is a
lookup in the same file, in C, and costs little.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ATTEMPTS_FK = "fk_attempts_delivery_id_deliveries"


def _partitioned() -> bool:
    kind = (
        op.get_bind()
        .exec_driver_sql("SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass('attempts')")
        .scalar()
    )
    return kind == "p"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Dropped on the parent, it goes from every partition too.
    op.execute(f"ALTER TABLE attempts DROP CONSTRAINT IF EXISTS {ATTEMPTS_FK}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    columns = "(delivery_id, period)" if _partitioned() else "(delivery_id)"
    references = "deliveries(id, period)" if _partitioned() else "deliveries(id)"
    op.execute(
        f"ALTER TABLE attempts ADD CONSTRAINT {ATTEMPTS_FK} FOREIGN KEY {columns} "
        f"REFERENCES {references} ON DELETE CASCADE"
    )
