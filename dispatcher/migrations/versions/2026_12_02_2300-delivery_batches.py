"""delivery batches

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02 23:00:00.000000

Each delivery's row is written once, with its outcome: the planner writes a page of a run's
audience on one channel as one ``batches`` row (its deliveries' ids reserved), and the worker
that sends it inserts the deliveries. The delivery indexes only open work needs become partial
(``WHERE status IN (...)``): ``ix_deliveries_run_id_status`` becomes ``ix_deliveries_open_run_id``,
``ix_deliveries_status_available_at`` becomes ``ix_deliveries_due`` and ``ix_deliveries_batch_id``
becomes ``ix_deliveries_open_batch_id``. On SQLite ``deliveries`` is rebuilt with AUTOINCREMENT,
so that an id reserved by a batch is never given to another row. Pending rows of existing runs
stay as they are: the row path claims them as before. ``inbox_items.delivery_id`` loses its
foreign key: a VssID inbox item is filed while its delivery is sent, before the row exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

import dispatcher.core.db

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = "status IN ('pending', 'claimed', 'retrying')"
CLAIMABLE = "status IN ('pending', 'retrying')"
OPEN_BATCH = "status IN ('open', 'claimed')"

# (index, columns, predicate)
PARTIAL = (
    ("ix_deliveries_due", ["available_at"], CLAIMABLE),
    ("ix_deliveries_open_batch_id", ["batch_id"], OPEN),
    ("ix_deliveries_open_run_id", ["run_id"], OPEN),
)
# (index, columns) they replace
FULL = (
    ("ix_deliveries_status_available_at", ["status", "available_at"]),
    ("ix_deliveries_batch_id", ["batch_id"]),
    ("ix_deliveries_run_id_status", ["run_id", "status"]),
)


def _where(predicate: str) -> dict[str, Any]:
    return {"sqlite_where": sa.text(predicate), "postgresql_where": sa.text(predicate)}


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", dispatcher.core.db.BigId, autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.Column("run_id", dispatcher.core.db.BigId, nullable=False),
        sa.Column("campaign_id", dispatcher.core.db.BigId, nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("recipients", sa.Text(), nullable=False),
        sa.Column("delivery_ids", sa.Text(), nullable=False),
        sa.Column("first_id", sa.BigInteger(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("min_recipient_id", sa.BigInteger(), nullable=False),
        sa.Column("max_recipient_id", sa.BigInteger(), nullable=False),
        sa.Column("available_at", dispatcher.core.db.UTCDateTime(), nullable=False),
        sa.Column("lease_until", dispatcher.core.db.UTCDateTime(), nullable=True),
        sa.Column("reclaimed", sa.Boolean(), nullable=False),
        sa.Column("created_at", dispatcher.core.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", dispatcher.core.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_batches_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_batches_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
    )
    op.create_index("ix_batches_job_id", "batches", ["job_id"])
    op.create_index("ix_batches_open_run_id", "batches", ["run_id"], **_where(OPEN_BATCH))
    op.create_index(
        "ix_batches_open_campaign_id", "batches", ["campaign_id", "first_id"], **_where(OPEN_BATCH)
    )
    op.create_index(
        "ix_batches_open_recipients",
        "batches",
        ["min_recipient_id", "max_recipient_id"],
        **_where(OPEN_BATCH),
    )
    with op.batch_alter_table("inbox_items", schema=None) as batch_op:
        batch_op.drop_constraint("fk_inbox_items_delivery_id_deliveries", type_="foreignkey")
    if op.get_bind().dialect.name == "postgresql":
        # Built CONCURRENTLY (no lock that blocks the service's writes), before the indexes
        # they replace are dropped.
        with op.get_context().autocommit_block():
            for name, columns, predicate in PARTIAL:
                op.create_index(
                    name,
                    "deliveries",
                    columns,
                    postgresql_where=sa.text(predicate),
                    postgresql_concurrently=True,
                )
            for name, _ in FULL:
                op.drop_index(name, table_name="deliveries", postgresql_concurrently=True)
        return
    # SQLite: the table copied into one with AUTOINCREMENT (its rows, ids and the other
    # indexes kept; sqlite_sequence starts at the largest id), then the partial indexes.
    with op.batch_alter_table(
        "deliveries", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ) as batch_op:
        for name, _ in FULL:
            batch_op.drop_index(name)
    for name, columns, predicate in PARTIAL:
        op.create_index(name, "deliveries", columns, sqlite_where=sa.text(predicate))


def _expand(runs: str) -> list[int]:
    ids: list[int] = []
    for part in runs.split(","):
        first, _, last = part.partition("-")
        ids.extend(range(int(first), int(last or first) + 1))
    return ids


def _recipients(text: str) -> list[int]:
    out: list[int] = []
    current = 0
    for part in text.split(","):
        current += int(part, 36)
        out.append(current)
    return out


def downgrade() -> None:
    bind = op.get_bind()
    # Open batches go back to what the older version knows: one pending row per delivery.
    open_batches = bind.execute(
        sa.text(
            "SELECT run_id, campaign_id, channel, recipients, delivery_ids, job_id, available_at, "
            "reclaimed, created_at, updated_at FROM batches WHERE status IN ('open', 'claimed')"
        )
    ).all()
    insert = sa.text(
        "INSERT INTO deliveries (id, run_id, campaign_id, recipient_id, channel, status, batch_id, "
        "available_at, attempts, failures, reclaimed, created_at, updated_at) VALUES (:id, :run, "
        ":campaign, :recipient, :channel, 'pending', NULL, :available, 0, 0, :reclaimed, "
        ":created, :updated)"
    )
    for row in open_batches:
        values = [
            {
                "id": delivery_id,
                "run": row.run_id,
                "campaign": row.campaign_id,
                "recipient": recipient_id,
                "channel": row.channel,
                "available": row.available_at,
                "reclaimed": row.reclaimed,
                "created": row.created_at,
                "updated": row.updated_at,
            }
            for delivery_id, recipient_id in zip(
                _expand(row.delivery_ids), _recipients(row.recipients), strict=True
            )
        ]
        if values:
            bind.execute(insert, values)
    op.drop_table("batches")
    # Items whose delivery never got a row (a batch cancelled or downgraded mid-way) let go.
    bind.execute(
        sa.text(
            "UPDATE inbox_items SET delivery_id = NULL WHERE delivery_id IS NOT NULL AND NOT "
            "EXISTS (SELECT 1 FROM deliveries WHERE deliveries.id = inbox_items.delivery_id)"
        )
    )
    with op.batch_alter_table("inbox_items", schema=None) as batch_op:
        batch_op.create_foreign_key(
            "fk_inbox_items_delivery_id_deliveries",
            "deliveries",
            ["delivery_id"],
            ["id"],
            ondelete="SET NULL",
        )
    if bind.dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            for name, columns in FULL:
                op.create_index(name, "deliveries", columns, postgresql_concurrently=True)
            for name, _, _ in PARTIAL:
                op.drop_index(name, table_name="deliveries", postgresql_concurrently=True)
        return
    for name, _, _ in PARTIAL:
        op.drop_index(name, table_name="deliveries")
    with op.batch_alter_table("deliveries", recreate="always") as batch_op:
        for name, columns in FULL:
            batch_op.create_index(name, columns, unique=False)
