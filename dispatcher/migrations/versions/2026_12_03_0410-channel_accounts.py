"""channel accounts

Channel accounts of organisational units: a unit's own Zalo OA, Facebook Page, Telegram bot,
email sender, FCM project. Non-secret settings in ``values``; secret ones encrypted with a key
from outside the database (``sealed``), or read from the environment (``env_prefix``).

Revision ID: 0019
Revises: 0017
Create Date: 2026-12-03 04:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import dispatcher.core.db

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.INTEGER(), "sqlite")
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "channel_accounts",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("unit_id", BIG_ID, nullable=False),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("values", JSON_TYPE, nullable=False),
        sa.Column("sealed", sa.Text(), nullable=True),
        sa.Column("env_prefix", sa.String(length=100), nullable=True),
        sa.Column("created_at", dispatcher.core.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", dispatcher.core.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["unit_id"],
            ["units.id"],
            name=op.f("fk_channel_accounts_unit_id_units"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_accounts")),
        sa.UniqueConstraint("unit_id", "channel", name=op.f("uq_channel_accounts_unit_id_channel")),
    )
    op.create_table(
        "account_dead_addresses",
        sa.Column("account_key", sa.String(length=200), nullable=False),
        sa.Column("recipient_id", BIG_ID, nullable=False),
        sa.Column("value", sa.String(length=320), nullable=False),
        sa.Column("dead_at", dispatcher.core.db.UTCDateTime(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["recipient_id"],
            ["recipients.id"],
            name=op.f("fk_account_dead_addresses_recipient_id_recipients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "account_key", "recipient_id", name=op.f("pk_account_dead_addresses")
        ),
    )


def downgrade() -> None:
    op.drop_table("account_dead_addresses")
    op.drop_table("channel_accounts")
