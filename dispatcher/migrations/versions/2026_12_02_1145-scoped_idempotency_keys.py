"""scoped idempotency keys

A transactional message records the API key that sent it (only that key, operators and admins
may read it back) and the hash of its request (the same Idempotency-Key with another request is
refused). ``runs.idempotency_key`` now holds a digest of the sender's scope and its key, so two
senders' keys never meet. Keys stored before this revision were global and name no sender: they
are left as they are and no longer match, so such a key used again after the upgrade sends a new
message. Messages sent before it have no sender and are readable by operators and admins only.

Revision ID: 0013
Revises: 0009
Create Date: 2026-12-02 11:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE on both databases, never batch mode: on SQLite a batch copies the table
    # and drops the old one, and the deliveries would follow it through ON DELETE CASCADE.
    op.add_column(
        "runs",
        sa.Column(
            "created_by", sa.BigInteger().with_variant(sa.INTEGER(), "sqlite"), nullable=True
        ),
    )
    op.add_column("runs", sa.Column("request_hash", sa.String(length=64), nullable=True))


def downgrade() -> None:
    # SQLite 3.35+ drops a plain column in place.
    op.drop_column("runs", "request_hash")
    op.drop_column("runs", "created_by")
