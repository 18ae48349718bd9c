"""address soft bounces

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 16:00:00.000000

How many soft bounces (RFC 3464 DSNs with a 4.x.x status: a full mailbox, a server down) each
address has had, and when the last one came, as ``dispatcher bounces`` records them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import dispatcher.core.db

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("addresses", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("soft_bounces", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("bounced_at", dispatcher.core.db.UTCDateTime(), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("addresses", schema=None) as batch_op:
        batch_op.drop_column("bounced_at")
        batch_op.drop_column("soft_bounces")
