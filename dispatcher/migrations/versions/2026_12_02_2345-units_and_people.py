"""units and people

Organisational units: a tree with the central agency (code ``VN``) at its root, made here with
the whole country as its territory. Everything that exists is assigned to it: people and systems,
campaigns, saved audiences, and the templates written over the API (built-in templates, whose
every version came from the shipped files, stay shared: ``unit_id`` NULL).

People: the roles each person holds in their unit (``person_roles``, filled from the roles of
their keys), and what dashboard sign-in needs (a login name, an argon2id password hash, an
encrypted TOTP secret, the count of wrong attempts and a lock-out time).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02 23:45:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import dispatcher.core.db

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.INTEGER(), "sqlite")
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
# The 34 provincial-level units of the 2025 map (dispatcher.recipients.provinces.CURRENT),
# frozen here as this revision wrote them.
COUNTRY = [
    "01", "04", "08", "11", "12", "14", "15", "19", "20", "22", "24", "25", "31", "33", "37",
    "38", "40", "42", "44", "46", "48", "51", "52", "56", "66", "68", "75", "79", "80", "82",
    "86", "91", "92", "96",
]  # fmt: skip
PERSON_ROLES = ("editor", "approver", "operator", "admin")

units = sa.table(
    "units",
    sa.column("id", BIG_ID),
    sa.column("code", sa.String()),
    sa.column("name", sa.String()),
    sa.column("parent_id", BIG_ID),
    sa.column("territory", JSON_TYPE),
    sa.column("created_at", dispatcher.core.db.UTCDateTime()),
    sa.column("updated_at", dispatcher.core.db.UTCDateTime()),
)


def _unit_column(table: str, *, required: bool, where: str = "") -> None:
    """Add ``unit_id`` to ``table``, assign the root unit (to the rows ``where`` selects), then
    make it required where it must be."""
    with op.batch_alter_table(table, schema=None) as batch_op:
        batch_op.add_column(sa.Column("unit_id", BIG_ID, nullable=True))
    op.execute(
        f"UPDATE {table} SET unit_id = (SELECT id FROM units WHERE parent_id IS NULL)"
        + (f" WHERE {where}" if where else "")
    )
    with op.batch_alter_table(table, schema=None) as batch_op:
        if required:
            batch_op.alter_column("unit_id", existing_type=BIG_ID, nullable=False)
        batch_op.create_index(batch_op.f(f"ix_{table}_unit_id"), ["unit_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f(f"fk_{table}_unit_id_units"), "units", ["unit_id"], ["id"]
        )


def upgrade() -> None:
    op.create_table(
        "units",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("parent_id", BIG_ID, nullable=True),
        sa.Column("territory", JSON_TYPE, nullable=False),
        sa.Column("created_at", dispatcher.core.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", dispatcher.core.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["units.id"], name=op.f("fk_units_parent_id_units"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_units")),
        sa.UniqueConstraint("code", name=op.f("uq_units_code")),
    )
    with op.batch_alter_table("units", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_units_parent_id"), ["parent_id"], unique=False)
    now = datetime.now(UTC)
    op.get_bind().execute(
        units.insert().values(
            code="VN",
            name="Bảo hiểm xã hội Việt Nam",
            parent_id=None,
            territory=COUNTRY,
            created_at=now,
            updated_at=now,
        )
    )

    _unit_column("principals", required=True)
    _unit_column("campaigns", required=True)
    _unit_column("audiences", required=True)
    # Built-in templates (every version from the shipped files) stay shared.
    _unit_column(
        "templates",
        required=False,
        where="EXISTS (SELECT 1 FROM template_versions v WHERE v.template_id = templates.id "
        "AND v.source <> 'builtin')",
    )

    op.create_table(
        "person_roles",
        sa.Column("principal_id", BIG_ID, nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
            name=op.f("fk_person_roles_principal_id_principals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("principal_id", "role", name=op.f("pk_person_roles")),
    )
    # A person holds the roles of their keys.
    roles = ", ".join(f"'{r}'" for r in PERSON_ROLES)
    op.execute(
        "INSERT INTO person_roles (principal_id, role) "
        "SELECT DISTINCT k.principal_id, k.role FROM api_keys k "
        "JOIN principals p ON p.id = k.principal_id "
        f"WHERE p.kind = 'person' AND k.role IN ({roles})"
    )

    with op.batch_alter_table("principals", schema=None) as batch_op:
        batch_op.add_column(sa.Column("login", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("password_hash", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("totp_secret", sa.String(length=300), nullable=True))
        batch_op.add_column(
            sa.Column("totp_confirmed_at", dispatcher.core.db.UTCDateTime(), nullable=True)
        )
        batch_op.add_column(sa.Column("totp_last_step", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("failed_sign_ins", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("locked_until", dispatcher.core.db.UTCDateTime(), nullable=True)
        )
        batch_op.add_column(
            sa.Column("sessions_since", dispatcher.core.db.UTCDateTime(), nullable=True)
        )
        batch_op.create_unique_constraint(batch_op.f("uq_principals_login"), ["login"])


def downgrade() -> None:
    with op.batch_alter_table("principals", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_principals_login"), type_="unique")
        batch_op.drop_column("sessions_since")
        batch_op.drop_column("locked_until")
        batch_op.drop_column("failed_sign_ins")
        batch_op.drop_column("totp_last_step")
        batch_op.drop_column("totp_confirmed_at")
        batch_op.drop_column("totp_secret")
        batch_op.drop_column("password_hash")
        batch_op.drop_column("login")
    op.drop_table("person_roles")
    for table in ("templates", "audiences", "campaigns", "principals"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(batch_op.f(f"fk_{table}_unit_id_units"), type_="foreignkey")
            batch_op.drop_index(batch_op.f(f"ix_{table}_unit_id"))
            batch_op.drop_column("unit_id")
    with op.batch_alter_table("units", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_units_parent_id"))
    op.drop_table("units")
