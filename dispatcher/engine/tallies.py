"""Campaigns' delivery counts: on PostgreSQL read from the tallies the database keeps
(``delivery_tallies``, see :class:`dispatcher.tables.deliveries.DeliveryTally` and revision
0021), on SQLite by grouping the rows; plus the open batches on both.

On PostgreSQL a campaign of ten million deliveries is counted from a few dozen rows: its runs'
tallies on each channel and status, plus its open batches' sizes (deliveries planned but not
written yet, pending or claimed). Grouping the deliveries themselves gives the same numbers
(:func:`mismatches` checks that), at a cost that grows with the campaign. SQLite keeps no
tallies (a per-row trigger cost more than the row, inside the write turn; see revision 0021):
there the API groups the rows, reading the WAL without holding up any writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, delete, func, insert, literal, select, text, union_all
from sqlalchemy.orm import Session

from dispatcher.engine import batches
from dispatcher.tables.deliveries import Batch, Delivery, DeliveryTally

# The columns a count may be grouped by (on tallies, batches and deliveries alike).
KEYS = ("campaign_id", "run_id", "channel", "status")


def kept(session: Session) -> bool:
    """Whether this database keeps tallies (PostgreSQL)."""
    return session.get_bind().dialect.name == "postgresql"


def counts(
    session: Session,
    *,
    campaign_ids: Sequence[int],
    run_id: int | None = None,
    by: Sequence[str] = ("channel", "status"),
) -> list[tuple[Any, ...]]:
    """The campaigns' deliveries (of one run, if given) counted by the ``by`` columns:
    ``(values..., n)`` for each group with any, each group once."""
    unknown = set(by) - set(KEYS)
    if unknown:
        raise ValueError(f"cannot count deliveries by {sorted(unknown)}; by one of {KEYS}")
    t = DeliveryTally.__table__.c if kept(session) else Delivery.__table__.c
    n = func.sum(t.n) if kept(session) else func.count()
    tallied = select(*(t[name] for name in by), n).where(t.campaign_id.in_(campaign_ids))
    where_batch: list[ColumnElement[bool]] = [Batch.campaign_id.in_(campaign_ids)]
    if run_id is not None:
        tallied = tallied.where(t.run_id == run_id)
        where_batch.append(Batch.run_id == run_id)
    merged: dict[tuple[Any, ...], int] = {}
    rows: list[Any] = list(session.execute(tallied.group_by(*(t[name] for name in by))))
    rows += batches.open_counts(session, *where_batch, by=by)
    for *key, n in rows:
        merged[tuple(key)] = merged.get(tuple(key), 0) + int(n or 0)
    return [(*key, n) for key, n in merged.items() if n]


def mismatches(session: Session, *, campaign_id: int | None = None) -> list[tuple[Any, ...]]:
    """Every (run, channel, status) whose tally is not its number of delivery rows:
    ``(run_id, channel, status, tallied, rows)``; empty when the tallies are right. Of one
    campaign's runs when ``campaign_id`` is given (its deliveries read through their campaign
    index), else of all.

    One statement, so that both sides are read from one snapshot while writers go on. Always
    empty on SQLite, which keeps no tallies."""
    if not kept(session):
        return []
    t = DeliveryTally.__table__.c
    d = Delivery.__table__.c
    tallied_rows = select(
        t.run_id, t.channel, t.status, t.n.label("tallied"), literal(0).label("rows")
    )
    delivery_rows = select(d.run_id, d.channel, d.status, literal(0), literal(1))
    if campaign_id is not None:
        tallied_rows = tallied_rows.where(t.campaign_id == campaign_id)
        delivery_rows = delivery_rows.where(d.campaign_id == campaign_id)
    both = union_all(tallied_rows, delivery_rows).subquery()
    tallied, rows = func.sum(both.c.tallied), func.sum(both.c.rows)
    return [
        tuple(row)
        for row in session.execute(
            select(both.c.run_id, both.c.channel, both.c.status, tallied, rows)
            .group_by(both.c.run_id, both.c.channel, both.c.status)
            .having(tallied != rows)
            .order_by(both.c.run_id, both.c.channel, both.c.status)
        )
    ]


# The rows of sessions that have ended, each (run, channel, status) summed into slot 0, in one
# statement. A backend's pid may come back for a new session, which then writes that slot
# again (or, should it start while this runs, waits for this row's delete and inserts anew).
# A statement in WITH that writes runs once, whether or not the query reads it.
_FOLD = """
WITH ended AS (
    DELETE FROM delivery_tallies AS t
    WHERE t.slot <> 0 AND NOT EXISTS (SELECT 1 FROM pg_stat_activity AS a WHERE a.pid = t.slot)
    RETURNING t.run_id, t.campaign_id, t.channel, t.status, t.n
), summed AS (
    INSERT INTO delivery_tallies (run_id, campaign_id, channel, status, slot, n)
    SELECT run_id, campaign_id, channel, status, 0, sum(n)
    FROM ended GROUP BY run_id, campaign_id, channel, status
    ON CONFLICT (run_id, channel, status, slot)
    DO UPDATE SET n = delivery_tallies.n + excluded.n
)
SELECT count(*) FROM ended
"""


def fold(session: Session) -> int:
    """Fold the tally rows of sessions that have ended into one row per (run, channel,
    status); returns how many rows were folded. Each session writes its own slot, so a run's rows
    grow with the connections that wrote it; the sweeper folds them on every pass. Rows of
    live sessions are left alone: their writers never wait for this. Nothing on SQLite."""
    if not kept(session):
        return 0
    return int(session.execute(text(_FOLD)).scalar_one())


def rebuild(session: Session, *, campaign_id: int | None = None) -> int:
    """Count every run's deliveries again into fresh tallies (after rows were written with
    the triggers off, e.g. a restore with ``--disable-triggers``); returns the tally rows.
    Only one campaign's when ``campaign_id`` is given.

    Writers to ``deliveries`` wait until the caller's transaction ends (a SHARE lock). Nothing
    to do on SQLite, which keeps no tallies."""
    if not kept(session):
        return 0
    session.execute(text("LOCK TABLE deliveries IN SHARE MODE"))
    d = Delivery.__table__.c
    t = DeliveryTally.__table__.c
    keys = (d.run_id, d.campaign_id, d.channel, d.status)
    grouped = select(*keys, literal(0), func.count()).group_by(*keys)
    dropped = delete(DeliveryTally)
    counted = select(func.count()).select_from(DeliveryTally)
    if campaign_id is not None:
        grouped = grouped.where(d.campaign_id == campaign_id)
        dropped = dropped.where(t.campaign_id == campaign_id)
        counted = counted.where(t.campaign_id == campaign_id)
    session.execute(dropped)
    session.execute(
        insert(DeliveryTally).from_select(
            ["run_id", "campaign_id", "channel", "status", "slot", "n"], grouped
        )
    )
    return int(session.scalar(counted) or 0)
