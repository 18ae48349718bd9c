"""timed unsubscribe links

Revision ID: 0014
Revises: 0009
Create Date: 2026-12-02 12:00:00.000000

Unsubscribe links now carry the time they were signed and expire. Links sent before this
upgrade carry none: the moment of the upgrade is recorded, and they are honoured until
``DISPATCHER_UNSUBSCRIBE_LINK_DAYS`` after it. No schema change.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import dispatcher.core.db

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "timed_unsubscribe_links"

service_secrets = sa.table(
    "service_secrets",
    sa.column("name", sa.String(64)),
    sa.column("value", sa.String(200)),
    sa.column("created_at", dispatcher.core.db.UTCDateTime()),
)


def upgrade() -> None:
    now = datetime.now(UTC)
    op.execute(service_secrets.delete().where(service_secrets.c.name == NAME))
    op.execute(service_secrets.insert().values(name=NAME, value=now.isoformat(), created_at=now))


def downgrade() -> None:
    op.execute(service_secrets.delete().where(service_secrets.c.name == NAME))
