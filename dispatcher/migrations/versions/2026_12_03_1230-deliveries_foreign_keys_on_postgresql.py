"""deliveries' foreign keys replaced by delete triggers on PostgreSQL

On PostgreSQL each foreign key of ``deliveries`` is checked by a trigger per inserted row, even in
``COPY``, and the check locks the referenced row (``FOR KEY SHARE``): for a batch of 1,000
deliveries, 1,000 checks of its run, 1,000 of its campaign, and 1,000 recipients' rows locked
(and their pages written). Copying 50,000 deliveries in batches of 1,000 cost the database
20 µs per row without the keys, 41 µs with the run's and the campaign's, and 48 µs with the
three: as much as the rest of the row.

A delivery's run, campaign and recipient come from the batch the engine records (whose run and
campaign have keys) or from a run it holds locked; the service deletes none of them. What the
keys still did, ``ON DELETE CASCADE`` when a run (or its campaign) or a recipient is deleted by
hand, is done by statement triggers: deleting runs or recipients deletes their deliveries, and
deleting deliveries deletes their attempts (which had lost their own cascade with their key in
revision 0020). SQLite keeps the keys: there a check is a lookup in the same file.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-03 12:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The keys dropped: name -> (column, referred table).
KEYS = {
    "fk_deliveries_run_id_runs": ("run_id", "runs"),
    "fk_deliveries_campaign_id_campaigns": ("campaign_id", "campaigns"),
    "fk_deliveries_recipient_id_recipients": ("recipient_id", "recipients"),
}

FUNCTION = """
CREATE FUNCTION deliveries_cascade() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'runs' THEN
        DELETE FROM deliveries WHERE run_id IN (SELECT id FROM gone);
    ELSIF TG_TABLE_NAME = 'recipients' THEN
        DELETE FROM deliveries WHERE recipient_id IN (SELECT id FROM gone);
    ELSE
        DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM gone);
    END IF;
    RETURN NULL;
END
$$
"""

# A campaign's deletion reaches its deliveries through its runs (runs' own key cascades).
TRIGGERS = {
    "runs_delete_deliveries": "runs",
    "recipients_delete_deliveries": "recipients",
    "deliveries_delete_attempts": "deliveries",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    for name, table in TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER {name} AFTER DELETE ON {table} REFERENCING OLD TABLE AS gone "
            "FOR EACH STATEMENT EXECUTE FUNCTION deliveries_cascade()"
        )
    # Dropped on the parent, each goes from every partition too.
    for name in KEYS:
        op.execute(f"ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS {name}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name, table in TRIGGERS.items():
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
    op.execute("DROP FUNCTION IF EXISTS deliveries_cascade()")
    for name, (column, referred) in KEYS.items():
        op.execute(
            f"ALTER TABLE deliveries ADD CONSTRAINT {name} FOREIGN KEY ({column}) "
            f"REFERENCES {referred}(id) ON DELETE CASCADE"
        )
