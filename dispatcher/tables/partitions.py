"""Monthly partitions of the tables that grow: ``deliveries`` and ``attempts``.

Every row of those tables carries ``period``, the month of its run in Vietnam time as the
integer YYYYMM (``runs.period``, set when the run is made). On PostgreSQL both tables are
partitioned by LIST on it, one partition per month (``deliveries_p202612``,
``attempts_p202612``), so that a month leaves the database by detaching and dropping its two
partitions (``dispatcher archive``) rather than by deleting millions of rows.

There is no DEFAULT partition on purpose: a row for a month without one fails loudly instead of
landing somewhere an archive would not look. Partitions are therefore made ahead of need:

- by the scheduler, for the current month and ``DISPATCHER_PARTITION_MONTHS_AHEAD`` months
  after it (:func:`ensure_ahead`);
- by whatever makes a run (a campaign's launch or firing, a one-off message), in its own
  transaction, for that run's month (:func:`ensure_month`), so nothing ever waits for the
  scheduler.

SQLite keeps one table of each; ``period`` is an ordinary column there and these functions do
nothing.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text

from dispatcher.kit.clock import utcnow

# Vietnam has kept UTC+7 without daylight saving since 1975: the month of an instant there is
# the month of that instant plus seven hours.
VIETNAM_OFFSET = timedelta(hours=7)
PARTITIONED = ("deliveries", "attempts")
_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")


def period_of(at: datetime) -> int:
    """The month (YYYYMM) ``at`` falls in, in Vietnam time."""
    if at.tzinfo is None:
        raise ValueError("naive datetime given where an aware one is required")
    local = at.astimezone(UTC) + VIETNAM_OFFSET
    return local.year * 100 + local.month


def current_period() -> int:
    return period_of(utcnow())


def add_months(period: int, months: int) -> int:
    """``period`` moved by ``months`` (negative goes back)."""
    index = (period // 100) * 12 + (period % 100 - 1) + months
    return (index // 12) * 100 + index % 12 + 1


def parse_month(value: str) -> int:
    """``YYYY-MM`` as a period; a ValueError names what is wrong otherwise."""
    match = _PERIOD.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a month: expected YYYY-MM, such as 2026-11")
    year, month = int(match.group(1)), int(match.group(2))
    if not 1 <= month <= 12:
        raise ValueError(f"{value!r} is not a month: the month must be between 01 and 12")
    if year < 2000:
        raise ValueError(f"{value!r} is not a month this service could have sent in")
    return year * 100 + month


def month_text(period: int) -> str:
    """A period as ``YYYY-MM``."""
    return f"{period // 100:04d}-{period % 100:02d}"


def partition_name(table: str, period: int) -> str:
    return f"{table}_p{int(period)}"


def is_partitioned(connection: Connection) -> bool:
    """Whether ``deliveries`` is a partitioned table here (PostgreSQL after revision 0018)."""
    if connection.dialect.name != "postgresql":
        return False
    kind = connection.exec_driver_sql(
        "SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass('deliveries')"
    ).scalar()
    return kind == "p"


def partitions(connection: Connection, table: str = "deliveries") -> list[int]:
    """The months that have a partition of ``table``, ascending (empty on SQLite)."""
    if connection.dialect.name != "postgresql":
        return []
    names = connection.exec_driver_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(%(table)s)",
        {"table": table},
    ).scalars()
    found = []
    for name in names:
        match = re.fullmatch(rf"{table}_p(\d{{6}})", str(name))
        if match:
            found.append(int(match.group(1)))
    return sorted(found)


def ensure_month(connection: Connection, period: int) -> list[str]:
    """Make the partitions of ``period`` that are missing, in the connection's transaction;
    returns the names of those made. Idempotent, and a catalog lookup only when they exist."""
    period = int(period)
    if not 200001 <= period <= 999912 or not 1 <= period % 100 <= 12:
        raise ValueError(f"{period} is not a period (YYYYMM)")
    if not is_partitioned(connection):
        return []
    made: list[str] = []
    for table in PARTITIONED:
        name = partition_name(table, period)
        exists = connection.exec_driver_sql("SELECT to_regclass(%(n)s)", {"n": name}).scalar()
        if exists is None:
            connection.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} "
                    f"FOR VALUES IN ({period})"
                )
            )
            made.append(name)
    return made


def ensure_ahead(connection: Connection, months_ahead: int, *, now: Any = None) -> list[str]:
    """The partitions of the current month and of ``months_ahead`` months after it."""
    first = period_of(now or utcnow())
    made: list[str] = []
    for step in range(max(0, months_ahead) + 1):
        made += ensure_month(connection, add_months(first, step))
    return made
