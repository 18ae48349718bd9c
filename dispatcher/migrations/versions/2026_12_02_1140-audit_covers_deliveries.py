"""audit covers deliveries

The audit chain names every delivery from now on (dispatcher.audit.coverage). On a database
that already holds deliveries, one entry records where that coverage starts: deliveries up to
it were made before, and ``dispatcher audit verify`` checks them only as far as the entries of
their time reach (their attempts), not their current state. No schema change.

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-02 11:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTOR = "migration 0011"
ACTION = "audit.coverage"

audit_log = sa.table(
    "audit_log",
    sa.column("seq", sa.BigInteger()),
    sa.column("at", sa.DateTime()),
    sa.column("actor", sa.String()),
    sa.column("action", sa.String()),
    sa.column("subject", sa.String()),
    sa.column("data", sa.Text()),
    sa.column("prev_hash", sa.String()),
    sa.column("hash", sa.String()),
)
audit_head = sa.table(
    "audit_head",
    sa.column("id", sa.Integer()),
    sa.column("seq", sa.BigInteger()),
    sa.column("hash", sa.String()),
)


def upgrade() -> None:
    from dispatcher.audit.chain import GENESIS, HEAD_ID, canonical, entry_hash, keyed_hash

    bind = op.get_bind()
    deliveries = bind.execute(sa.text("SELECT max(id) FROM deliveries")).scalar()
    if not deliveries:
        return  # a new database: every delivery will be covered
    attempts = bind.execute(sa.text("SELECT max(id) FROM attempts")).scalar() or 0
    head = bind.execute(
        sa.select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == HEAD_ID)
    ).first()
    seq, prev = (int(head.seq), str(head.hash)) if head is not None else (0, GENESIS)
    at = datetime.now(UTC)
    data = canonical({"deliveries_through": int(deliveries), "attempts_through": int(attempts)})
    key = _audit_key(bind)
    if key is None:
        digest = entry_hash(prev, at, ACTOR, ACTION, "audit", data)
    else:
        digest = keyed_hash(key, prev, at, ACTOR, ACTION, "audit", data)
    bind.execute(
        audit_log.insert().values(
            seq=seq + 1,
            at=at.replace(tzinfo=None),
            actor=ACTOR,
            action=ACTION,
            subject="audit",
            data=data,
            prev_hash=prev,
            hash=digest,
        )
    )
    if head is None:
        bind.execute(audit_head.insert().values(id=HEAD_ID, seq=seq + 1, hash=digest))
    else:
        bind.execute(
            audit_head.update().where(audit_head.c.id == HEAD_ID).values(seq=seq + 1, hash=digest)
        )


def _audit_key(bind: sa.Connection) -> bytes | None:
    """The service's audit key, so that this entry is keyed like the service's own (it must
    be when keyed entries precede it: after a downgrade and upgrade again). None when the
    settings cannot be read here: the entry then has the plain hash of older entries."""
    from sqlalchemy.orm import Session

    from dispatcher.core import secrets
    from dispatcher.core.config import ConfigError, get_settings

    try:
        settings = get_settings()
    except ConfigError:
        return None
    return secrets.audit_key(Session(bind=bind), settings)


def downgrade() -> None:
    # The entry is history: the chain only grows.
    pass
