"""leases: a claim's hold on its rows, renewed while its worker lives

Revision ID: 0012
Revises: 0009
Create Date: 2026-12-02 11:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dispatcher.core.db

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A new table: nothing else is rewritten. Rows claimed by a worker of the previous version
    # have no lease; the sweeper gives them back once their lease_until has passed, as before.
    op.create_table(
        "leases",
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=False),
        sa.Column("lease_until", dispatcher.core.db.UTCDateTime(), nullable=False),
        sa.Column("batch_id", sa.String(length=32), nullable=True),
        sa.Column("worker", sa.String(length=100), nullable=False),
        sa.Column("claimed_at", dispatcher.core.db.UTCDateTime(), nullable=False),
        sa.Column("renewed_at", dispatcher.core.db.UTCDateTime(), nullable=False),
        sa.Column("beats", sa.Integer(), nullable=False),
        sa.Column("lost_at", dispatcher.core.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_leases_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("token", name=op.f("pk_leases")),
        sa.UniqueConstraint("run_id", "lease_until", name=op.f("uq_leases_run_id_lease_until")),
    )


def downgrade() -> None:
    op.drop_table("leases")
