"""people and systems, saved audience versions, what an approval freezes

Every API key belongs to a principal (a person, or a system); each existing key becomes its own
person named after it (a sender key its own system). A saved audience's filter becomes its
version 1. Campaigns record the people who wrote, submitted and approved them (filled from the
keys that did), the saved audience versions an approval pinned and the send time its preview was
rendered for; runs record the versions they plan from.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 11:27:58.535165
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import dispatcher.core.db

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.INTEGER(), "sqlite")
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
NULLABLE_JSON = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), "postgresql"
)

principals = sa.table(
    "principals",
    sa.column("id", BIG_ID),
    sa.column("kind", sa.String()),
    sa.column("name", sa.String()),
    sa.column("created_at", dispatcher.core.db.UTCDateTime()),
)
api_keys = sa.table(
    "api_keys",
    sa.column("id", BIG_ID),
    sa.column("name", sa.String()),
    sa.column("role", sa.String()),
    sa.column("created_at", dispatcher.core.db.UTCDateTime()),
    sa.column("principal_id", BIG_ID),
)


def upgrade() -> None:
    op.create_table(
        "principals",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", dispatcher.core.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_principals")),
    )
    op.create_table(
        "audience_versions",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("audience_id", BIG_ID, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("filter", JSON_TYPE, nullable=False),
        sa.Column("created_at", dispatcher.core.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["audience_id"],
            ["audiences.id"],
            name=op.f("fk_audience_versions_audience_id_audiences"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audience_versions")),
        sa.UniqueConstraint(
            "audience_id", "version", name=op.f("uq_audience_versions_audience_id_version")
        ),
    )

    # Each existing key becomes its own person (a sender key: its own system), named after it.
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("principal_id", BIG_ID, nullable=True))
    bind = op.get_bind()
    keys = bind.execute(
        sa.select(api_keys.c.id, api_keys.c.name, api_keys.c.role, api_keys.c.created_at).order_by(
            api_keys.c.id
        )
    ).all()
    for key_id, name, role, created_at in keys:
        principal_id = bind.execute(
            principals.insert()
            .values(
                kind="system" if role == "sender" else "person", name=name, created_at=created_at
            )
            .returning(principals.c.id)
        ).scalar_one()
        bind.execute(
            api_keys.update().where(api_keys.c.id == key_id).values(principal_id=principal_id)
        )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.alter_column("principal_id", existing_type=BIG_ID, nullable=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_api_keys_principal_id_principals"),
            "principals",
            ["principal_id"],
            ["id"],
        )

    # A saved audience's filter becomes its version 1.
    op.execute(
        "INSERT INTO audience_versions (audience_id, version, filter, created_at) "
        "SELECT id, 1, filter, updated_at FROM audiences"
    )
    with op.batch_alter_table("audiences", schema=None) as batch_op:
        batch_op.drop_column("filter")

    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.add_column(sa.Column("author_id", BIG_ID, nullable=True))
        batch_op.add_column(sa.Column("submitter_id", BIG_ID, nullable=True))
        batch_op.add_column(sa.Column("approver_id", BIG_ID, nullable=True))
        batch_op.add_column(
            sa.Column("approved_preview_for", dispatcher.core.db.UTCDateTime(), nullable=True)
        )
        batch_op.add_column(sa.Column("approved_audience_versions", NULLABLE_JSON, nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_campaigns_author_id_principals"), "principals", ["author_id"], ["id"]
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_campaigns_submitter_id_principals"),
            "principals",
            ["submitter_id"],
            ["id"],
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_campaigns_approver_id_principals"), "principals", ["approver_id"], ["id"]
        )
    # The people behind the keys that wrote, submitted and approved each campaign. Approvals
    # given before this revision froze neither the send time's preview nor the saved audience
    # versions: they are withdrawn at their next launch check, and asked for again.
    for person, key in (
        ("author_id", "created_by"),
        ("submitter_id", "submitted_by"),
        ("approver_id", "approved_by"),
    ):
        op.execute(
            f"UPDATE campaigns SET {person} = "
            f"(SELECT principal_id FROM api_keys WHERE api_keys.id = campaigns.{key}) "
            f"WHERE {key} IS NOT NULL"
        )

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("audience_versions", NULLABLE_JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("audience_versions")

    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_campaigns_approver_id_principals"), type_="foreignkey"
        )
        batch_op.drop_constraint(
            batch_op.f("fk_campaigns_submitter_id_principals"), type_="foreignkey"
        )
        batch_op.drop_constraint(
            batch_op.f("fk_campaigns_author_id_principals"), type_="foreignkey"
        )
        batch_op.drop_column("approved_audience_versions")
        batch_op.drop_column("approved_preview_for")
        batch_op.drop_column("approver_id")
        batch_op.drop_column("submitter_id")
        batch_op.drop_column("author_id")

    # A saved audience keeps its latest filter.
    with op.batch_alter_table("audiences", schema=None) as batch_op:
        batch_op.add_column(sa.Column("filter", JSON_TYPE, nullable=True))
    op.execute(
        "UPDATE audiences SET filter = (SELECT v.filter FROM audience_versions v "
        "WHERE v.audience_id = audiences.id ORDER BY v.version DESC LIMIT 1)"
    )
    with op.batch_alter_table("audiences", schema=None) as batch_op:
        batch_op.alter_column("filter", existing_type=JSON_TYPE, nullable=False)

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_api_keys_principal_id_principals"), type_="foreignkey"
        )
        batch_op.drop_column("principal_id")

    op.drop_table("audience_versions")
    op.drop_table("principals")
