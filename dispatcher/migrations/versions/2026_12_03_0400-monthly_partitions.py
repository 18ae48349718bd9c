"""monthly partitions

``period`` (YYYYMM, the month of the run in Vietnam time) on ``runs``, ``deliveries`` and
``attempts``, filled from each run's ``scheduled_for``.

On PostgreSQL ``deliveries`` and ``attempts`` become tables partitioned by LIST on ``period``,
one partition per month (``deliveries_p202612``...): a new partitioned table is made like the old
one (its columns, defaults and comments), a partition for every month that has a run and for the
current month and the two after it, the rows copied, the old table dropped and the new one given
its name. Its indexes are the old ones, rebuilt as partitioned indexes from their own definitions;
its primary key, its unique constraint and the attempts' foreign key gain ``period`` (a key of a
partitioned table must hold the partition key); its other constraints are copied as they were. The
``id`` sequences are kept: they move to the new tables' columns (``pg_get_serial_sequence`` still
finds them) before the old tables go. Downgrade copies the rows back into plain tables the same
way.

On SQLite the tables stay whole: the column is added and filled.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 04:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Partitions made ahead of the current month by this revision (the scheduler keeps it up).
AHEAD = 2
# The keys that gain the partition key, by table: constraint name -> its columns.
KEYS = {
    "deliveries": {
        "pk_deliveries": ("PRIMARY KEY", ["id"]),
        "uq_deliveries_run_id_recipient_id_channel": (
            "UNIQUE",
            ["run_id", "recipient_id", "channel"],
        ),
    },
    "attempts": {"pk_attempts": ("PRIMARY KEY", ["id"])},
}
ATTEMPTS_FK = "fk_attempts_delivery_id_deliveries"


def _months_ahead() -> list[int]:
    now = datetime.now(UTC) + timedelta(hours=7)
    index = now.year * 12 + now.month - 1
    return [((index + step) // 12) * 100 + (index + step) % 12 + 1 for step in range(AHEAD + 1)]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.add_column("runs", sa.Column("period", sa.Integer(), nullable=True))
        op.execute(
            "UPDATE runs SET period = to_char((scheduled_for AT TIME ZONE 'UTC') "
            "AT TIME ZONE 'Asia/Ho_Chi_Minh', 'YYYYMM')::integer"
        )
        op.alter_column("runs", "period", nullable=False)
        _partition(bind)
        return
    op.add_column(
        "runs", sa.Column("period", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )
    op.execute("UPDATE runs SET period = CAST(strftime('%Y%m', scheduled_for, '+7 hours') AS INT)")
    op.add_column(
        "deliveries",
        sa.Column("period", sa.Integer(), nullable=False, server_default=sa.text("0")),
    )
    op.execute("UPDATE deliveries SET period = (SELECT period FROM runs WHERE id = run_id)")
    op.add_column(
        "attempts", sa.Column("period", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )
    op.execute(
        "UPDATE attempts SET period = (SELECT period FROM deliveries WHERE id = delivery_id)"
    )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        _unpartition(bind)
        op.drop_column("runs", "period")
        return
    # SQLite 3.35+ drops a plain column in place.
    op.drop_column("attempts", "period")
    op.drop_column("deliveries", "period")
    op.drop_column("runs", "period")


# -- PostgreSQL ---------------------------------------------------------------------------------


def _indexes(bind: sa.Connection, table: str) -> list[str]:
    """The definitions of ``table``'s indexes that no constraint owns."""
    return list(
        bind.exec_driver_sql(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "WHERE i.indrelid = to_regclass(%(t)s) AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) "
            "ORDER BY i.indexrelid",
            {"t": table},
        ).scalars()
    )


def _constraints(bind: sa.Connection, table: str, kinds: str) -> list[tuple[str, str]]:
    """(name, definition) of ``table``'s constraints of the given kinds (p, u, f, c)."""
    return [
        (str(name), str(definition))
        for name, definition in bind.exec_driver_sql(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = to_regclass(%(t)s) AND contype = ANY(%(k)s) AND conparentid = 0 "
            "ORDER BY oid",
            {"t": table, "k": list(kinds)},
        )
    ]


def _comments(bind: sa.Connection, table: str) -> list[str]:
    """COMMENT statements for ``table``'s indexes (the columns' go along with LIKE)."""
    return [
        f"COMMENT ON INDEX {name} IS '" + str(text).replace("'", "''") + "'"
        for name, text in bind.exec_driver_sql(
            "SELECT c.relname, d.description FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_description d ON d.objoid = i.indexrelid "
            "WHERE i.indrelid = to_regclass(%(t)s)",
            {"t": table},
        )
    ]


def _columns(bind: sa.Connection, table: str) -> list[str]:
    return list(
        bind.exec_driver_sql(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%(t)s) "
            "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            {"t": table},
        ).scalars()
    )


def _sequence(bind: sa.Connection, table: str) -> str | None:
    found = bind.exec_driver_sql(
        "SELECT pg_get_serial_sequence(%(t)s, 'id')", {"t": table}
    ).scalar()
    return None if found is None else str(found)


def _keyed(table: str, name: str, definition: str, *, partitioned: bool) -> str:
    """A constraint's definition on the rebuilt table."""
    key = KEYS[table].get(name)
    if key is not None:
        kind, columns = key
        if partitioned:
            columns = [*columns, "period"]
        return f"{kind} ({', '.join(columns)})"
    if name == ATTEMPTS_FK:
        if partitioned:
            return (
                "FOREIGN KEY (delivery_id, period) REFERENCES deliveries(id, period) "
                "ON DELETE CASCADE"
            )
        return "FOREIGN KEY (delivery_id) REFERENCES deliveries(id) ON DELETE CASCADE"
    return definition


def _convert(bind: sa.Connection, *, partitioned: bool, periods: Sequence[int]) -> None:
    """Rebuild ``deliveries`` and ``attempts``, partitioned by month or whole again."""
    tables = ("deliveries", "attempts")
    # What the rebuilt tables must have again, read while the old ones still hold their names.
    indexes = {t: _indexes(bind, t) for t in tables}
    constraints = {t: _constraints(bind, t, "pufc") for t in tables}
    comments = {t: _comments(bind, t) for t in tables}
    sequences = {t: _sequence(bind, t) for t in tables}
    columns = {t: [c for c in _columns(bind, t) if c != "period"] for t in tables}
    for table in tables:
        bind.exec_driver_sql(f"ALTER TABLE {table} RENAME TO {table}_old")
    for table in tables:
        new = f"{table}_new"
        like = (
            f"LIKE {table}_old INCLUDING DEFAULTS INCLUDING COMMENTS INCLUDING STORAGE "
            "INCLUDING GENERATED"
        )
        names = ", ".join(columns[table])
        picked = ", ".join(f"o.{c}" for c in columns[table])
        if partitioned:
            bind.exec_driver_sql(
                f"CREATE TABLE {new} ({like}, period integer NOT NULL) PARTITION BY LIST (period)"
            )
            for period in periods:
                bind.exec_driver_sql(
                    f"CREATE TABLE {table}_p{int(period)} PARTITION OF {new} "
                    f"FOR VALUES IN ({int(period)})"
                )
            source = (
                "deliveries_old o JOIN runs r ON r.id = o.run_id"
                if table == "deliveries"
                else "attempts_old o JOIN deliveries_new r ON r.id = o.delivery_id"
            )
            bind.exec_driver_sql(
                f"INSERT INTO {new} ({names}, period) SELECT {picked}, r.period FROM {source}"
            )
        else:
            bind.exec_driver_sql(f"CREATE TABLE {new} ({like})")
            bind.exec_driver_sql(f"ALTER TABLE {new} DROP COLUMN period")
            bind.exec_driver_sql(f"INSERT INTO {new} ({names}) SELECT {picked} FROM {table}_old o")
        if sequences[table] is not None:
            bind.exec_driver_sql(f"ALTER SEQUENCE {sequences[table]} OWNED BY {new}.id")
    for table in reversed(tables):
        bind.exec_driver_sql(f"DROP TABLE {table}_old")
    for table in tables:
        bind.exec_driver_sql(f"ALTER TABLE {table}_new RENAME TO {table}")
    # Keys first (the attempts' foreign key needs the deliveries' primary key), then the rest.
    order = {"PRIMARY KEY": 0, "UNIQUE": 1, "CHECK": 1, "FOREIGN KEY": 2}
    rebuilt = [
        (order.get(keyed.split(" (")[0], 1), table, name, keyed)
        for table in tables
        for name, definition in constraints[table]
        for keyed in [_keyed(table, name, definition, partitioned=partitioned)]
    ]
    for _, table, name, keyed in sorted(rebuilt, key=lambda item: item[0]):
        bind.exec_driver_sql(f"ALTER TABLE {table} ADD CONSTRAINT {name} {keyed}")
    for table in tables:
        for definition in indexes[table]:
            # A partitioned index's definition reads "ON ONLY table": build it on them all.
            bind.exec_driver_sql(definition.replace(" ON ONLY ", " ON "))
        for comment in comments[table]:
            bind.exec_driver_sql(comment)


def _partition(bind: sa.Connection) -> None:
    periods = set(bind.exec_driver_sql("SELECT DISTINCT period FROM runs").scalars())
    periods.update(_months_ahead())
    _convert(bind, partitioned=True, periods=sorted(int(p) for p in periods))


def _unpartition(bind: sa.Connection) -> None:
    _convert(bind, partitioned=False, periods=())
