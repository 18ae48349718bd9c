"""The bulk writes put values into the driver's form themselves: exactly SQLAlchemy's form."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from dispatcher.engine.bulk import BulkWrites, deliveries_t

# Aware timestamps: UTC, the last microsecond of a year, and two other offsets.
SAMPLES = (
    datetime(2026, 1, 1, tzinfo=UTC),
    datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2026, 6, 1, 6, 30, 0, 1, tzinfo=timezone(timedelta(hours=7))),
    datetime(1999, 2, 28, 19, 0, tzinfo=timezone(timedelta(hours=-5))),
)


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()], ids=["sqlite", "pg"])
def test_a_stamp_is_what_sqlalchemy_would_have_bound(dialect) -> None:
    # The column's own processing, its TypeDecorator (UTC, aware only) included.
    process = deliveries_t.c.updated_at.type.dialect_impl(dialect).bind_processor(dialect) or (
        lambda value: value
    )
    bulk = BulkWrites(dialect)
    for value in SAMPLES:
        assert bulk.stamp(value) == process(value)
    assert bulk.stamp(None) is None
    with pytest.raises(ValueError, match="naive datetime"):
        bulk.stamp(datetime(2026, 1, 1))


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()], ids=["sqlite", "pg"])
def test_an_attempts_two_stamps_are_its_row_and_its_audit_line(dialect) -> None:
    """``stamps`` formats an attempt's start once: its row's value, and the text the audit
    chain digests, which must be what verification makes of the row read back."""
    from dispatcher.audit import coverage

    bulk = BulkWrites(dialect)
    for value in SAMPLES:
        bound, audited = bulk.stamps(value)
        assert bound == bulk.stamp(value)
        assert coverage._stamp(audited) == coverage.stamp_text(value)
        assert coverage.stamp_text(value) == value.astimezone(UTC).replace(tzinfo=None).isoformat(
            timespec="microseconds"
        )
