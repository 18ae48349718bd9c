"""What the chain vouches for among the deliveries and their attempts.

Every writer that creates a delivery or changes its outcome appends, in the same transaction,
an entry naming the deliveries it touched and a digest of each one's state as that
transaction leaves it: the planner (skipped rows; the batch rows it plans are named by their
job id, size, reserved delivery ids and a digest of their members, since their deliveries have
no rows yet), a transactional message, a worker's batch (the deliveries it inserted or changed,
with a digest of the batch's attempt rows too) and a cancellation. The *latest*
entry that names a delivery therefore states its current outcome, and ``verify`` compares every
row of ``deliveries`` with it; a row no entry names was inserted by someone else.

A delivery's audited state is its identity (id, run, campaign, recipient, channel), whether it
is still open or how it ended (``sent``, ``failed``, ``skipped``, ``cancelled``), its attempt
and failure counters, locale, provider message id, error class and reason, and when it was sent.
Left out, as bookkeeping that changes without changing an outcome: which open status it is in
(``pending``, ``claimed`` and ``retrying`` are one "open" state, since claims, lease expiry and
crash recovery move rows among them), its lease, batch id, reclaimed flag, when it falls due and
when its row last changed. Editing those can delay a send, or make one happen again, and a send
is itself audited as an attempt. An attempt is covered in every column but its row id, which the
database assigns and nothing refers to.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, select, update
from sqlalchemy.orm import Session

from dispatcher.audit.chain import Draft, draft
from dispatcher.tables.deliveries import OPEN_STATUSES, Attempt, Delivery

attempts_t: Table = Attempt.__table__  # type: ignore[assignment]
deliveries_t: Table = Delivery.__table__  # type: ignore[assignment]

# The version of an entry's coverage; entries written before it (no "v") digest fewer columns
# of the attempts and name no deliveries.
VERSION = 2
ATTEMPTS = "attempts"
PLANNED = "deliveries.plan"
CANCELLED = "deliveries.cancel"
# Coverage starts here for a database upgraded from a version that did not audit deliveries.
COVERAGE_START = "audit.coverage"
# A month's deliveries and attempts moved out of the database into archive files (dispatcher
# archive): the entry names its runs and delivery ids, and the files' checksums.
ARCHIVED = "archive.month"
# Deliveries named by one entry at most (a cancellation of a million rows is many entries).
DELIVERIES_PER_ENTRY = 5000

ATTEMPT_FIELDS = (
    "delivery_id",
    "number",
    "started_at",
    "duration_ms",
    "outcome",
    "error_class",
    "provider_code",
    "provider_reply",
    "provider_message_id",
    "locale",
    "possible_duplicate",
    "worker",
)
# What entries made before version 2 digest: the attempts without their reply, locale, worker.
LEGACY_ATTEMPT_FIELDS = tuple(
    name for name in ATTEMPT_FIELDS if name not in ("provider_reply", "locale", "worker")
)
DELIVERY_FIELDS = (
    "id",
    "run_id",
    "campaign_id",
    "recipient_id",
    "channel",
    "status",
    "attempts",
    "failures",
    "locale",
    "provider_message_id",
    "error_class",
    "error_reason",
    "sent_at",
)
OPEN = "open"
_OPEN = frozenset(s.value for s in OPEN_STATUSES)
# Bytes of a delivery's state digest kept in an entry (120 bits; base64, 20 characters).
STATE_BYTES = 15


# The last timestamp written out, by identity: a batch stamps all its rows with one instant.
_last_stamp: tuple[datetime | None, str | None] = (None, None)


def stamp_text(value: datetime) -> str:
    """How an entry writes a timestamp out: naive UTC, ISO with a ``T``, to the microsecond."""
    if value.tzinfo is UTC:
        return value.isoformat(timespec="microseconds")[:-6]
    plain = value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value
    return plain.isoformat(timespec="microseconds")


def _stamp(value: datetime | str | None) -> str | None:
    # A string is a timestamp already written out by stamp_text's rule (BulkWrites.stamps).
    global _last_stamp
    if value is None or isinstance(value, str):
        return value
    last = _last_stamp
    if last[0] is value:
        return last[1]
    text = stamp_text(value)
    _last_stamp = (value, text)
    return text


def _text(value: Any) -> str | None:
    # A status or an error class may come as an enum member, a code as a number.
    return None if value is None else str(value)


# A row's values as text: repr of a list of ints, strings and None is unambiguous (no value
# can move a boundary between two fields) and three times as fast as JSON.
_dumps = repr


def _attempt_line(row: Mapping[Any, Any]) -> str:
    # Every one of ATTEMPT_FIELDS, in that order (spelt out: this runs for every attempt).
    return _dumps(
        [
            row["delivery_id"],
            row["number"],
            _stamp(row["started_at"]),
            row["duration_ms"],
            _text(row["outcome"]),
            _text(row["error_class"]),
            _text(row["provider_code"]),
            row["provider_reply"],
            row["provider_message_id"],
            row["locale"],
            int(row["possible_duplicate"]),
            row["worker"],
        ]
    )


def _attempt_values_line(v: Sequence[Any]) -> str:
    # The same line as _attempt_line, from the values in the order of ATTEMPT_FIELDS.
    return _dumps(
        [
            v[0],
            v[1],
            _stamp(v[2]),
            v[3],
            _text(v[4]),
            _text(v[5]),
            _text(v[6]),
            v[7],
            v[8],
            v[9],
            int(v[10]),
            v[11],
        ]
    )


def attempt_digest(rows: Iterable[Mapping[Any, Any]]) -> str:
    """The digest of a set of attempt rows, whatever their order."""
    lines = sorted(_attempt_line(r) for r in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def legacy_attempt_digest(rows: Iterable[Mapping[Any, Any]]) -> str:
    """The digest entries made before coverage version 2 hold."""
    lines = []
    for row in rows:
        parts = []
        for name in LEGACY_ATTEMPT_FIELDS:
            value = row[name]
            if isinstance(value, datetime):
                value = value.isoformat(timespec="microseconds")
            elif isinstance(value, bool):
                value = int(value)
            parts.append("" if value is None else str(value))
        lines.append("|".join(parts))
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def delivery_state(row: Mapping[Any, Any]) -> str:
    """The digest of one delivery's audited state: every one of DELIVERY_FIELDS, in order."""
    return delivery_state_of([row[name] for name in DELIVERY_FIELDS])


def delivery_state_of(v: Sequence[Any]) -> str:
    """:func:`delivery_state` of the values of DELIVERY_FIELDS, in that order."""
    status = v[5]
    values = [
        v[0],
        v[1],
        v[2],
        v[3],
        v[4],
        OPEN if status in _OPEN else str(status),
        v[6],
        v[7],
        v[8],
        v[9],
        _text(v[10]),
        v[11],
        _stamp(v[12]),
    ]
    raw = hashlib.sha256(_dumps(values).encode()).digest()
    return base64.urlsafe_b64encode(raw[:STATE_BYTES]).decode()


def runs(ids: Iterable[int]) -> list[list[int]]:
    """Sorted ids as [first, last] runs of consecutive ids."""
    out: list[list[int]] = []
    for delivery_id in sorted(ids):
        if out and out[-1][1] == delivery_id - 1:
            out[-1][1] = delivery_id
        else:
            out.append([delivery_id, delivery_id])
    return out


def expand(id_runs: Iterable[Sequence[int]]) -> Iterator[int]:
    for first, last in id_runs:
        yield from range(first, last + 1)


def _try_runs(pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """(delivery_id, number) pairs as [first id, last id, number] runs of consecutive ids."""
    out: list[list[int]] = []
    for delivery_id, number in sorted(pairs, key=lambda p: (p[1], p[0])):
        if out and out[-1][2] == number and out[-1][1] == delivery_id - 1:
            out[-1][1] = delivery_id
        else:
            out.append([delivery_id, delivery_id, number])
    return out


def _named(rows: Iterable[Mapping[Any, Any]]) -> dict[str, Any]:
    """The "deliveries" part of an entry: the ids as runs, each one's state in id order."""
    ordered = sorted(rows, key=lambda r: int(r["id"]))
    return {
        "ids": runs(int(r["id"]) for r in ordered),
        "states": [delivery_state(r) for r in ordered],
    }


def batch_draft(
    *,
    attempts: list[dict[str, Any]],
    deliveries: list[dict[str, Any]],
    worker: str,
    run_id: int,
) -> Draft | None:
    """A worker's batch: its attempt rows (which, and their digest) and the new state of each
    delivery it records. Made before the batch's write transaction, so it costs no time under
    the lock."""
    return batch_draft_of(
        attempts=[tuple(r[name] for name in ATTEMPT_FIELDS) for r in attempts],
        deliveries=[tuple(r[name] for name in DELIVERY_FIELDS) for r in deliveries],
        worker=worker,
        run_id=run_id,
    )


def batch_draft_of(
    *,
    attempts: Sequence[Sequence[Any]],
    deliveries: Sequence[Sequence[Any]],
    worker: str,
    run_id: int,
) -> Draft | None:
    """:func:`batch_draft` of values rather than mappings (what the pipeline's record makes
    for every delivery): each attempt's in the order of ATTEMPT_FIELDS, each delivery's in
    the order of DELIVERY_FIELDS. The same entry, made without a dictionary per row."""
    if not attempts and not deliveries:
        return None
    lines = sorted(map(_attempt_values_line, attempts))
    ordered = sorted(deliveries, key=_first)
    return draft(
        actor=f"worker {worker}",
        action=ATTEMPTS,
        subject=f"run:{run_id}",
        data={
            "v": VERSION,
            "worker": worker,
            "count": len(attempts),
            "tries": _try_runs((v[0], v[1]) for v in attempts),
            "digest": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
            "deliveries": {
                "ids": runs(int(v[0]) for v in ordered),
                "states": [delivery_state_of(v) for v in ordered],
            },
        },
    )


def _first(values: Sequence[Any]) -> int:
    return int(values[0])


def deliveries_drafts(
    rows: Sequence[Mapping[Any, Any]],
    *,
    actor: str,
    action: str,
    subject: str,
    first: Mapping[str, Any] | None = None,
    **data: Any,
) -> list[Draft]:
    """Entries naming ``rows`` (mappings of at least DELIVERY_FIELDS) in their current state,
    ``DELIVERIES_PER_ENTRY`` at a time; each entry holds ``data``, the first also ``first``."""
    ordered = sorted(rows, key=lambda r: int(r["id"]))
    return [
        draft(
            actor=actor,
            action=action,
            subject=subject,
            data={
                **data,
                **((first or {}) if start == 0 else {}),
                "v": VERSION,
                "deliveries": _named(ordered[start : start + DELIVERIES_PER_ENTRY]),
            },
        )
        for start in range(0, len(ordered), DELIVERIES_PER_ENTRY)
    ]


def state_columns() -> list[Any]:
    """The columns of ``deliveries`` an audited state is made of (for RETURNING or SELECT)."""
    return [deliveries_t.c[name] for name in DELIVERY_FIELDS]


def restate(connection: Connection, entry: Draft) -> Draft:
    """The same batch entry, naming its deliveries in the state the database holds now.

    A worker whose lease ran out records its attempts but not the rows someone else holds;
    its entry must then state what those rows hold, not what it meant to write."""
    data = json.loads(entry.body)
    ids = list(expand(data["deliveries"]["ids"]))
    rows: list[Mapping[Any, Any]] = []
    for start in range(0, len(ids), 1000):
        part = ids[start : start + 1000]
        query = select(*state_columns()).where(deliveries_t.c.id.in_(part))
        rows += [row._mapping for row in connection.execute(query)]
    data["deliveries"] = _named(rows)
    return draft(actor=entry.actor, action=entry.action, subject=entry.subject, data=data)


def change_deliveries(
    session: Session,
    where: Sequence[ColumnElement[bool]],
    values: Mapping[Any, Any],
    *,
    actor: str,
    action: str,
    subject: str,
    **data: Any,
) -> int:
    """Update the deliveries ``where`` selects to ``values``, ``DELIVERIES_PER_ENTRY`` rows at
    a time, each part named in an audit entry in its new state; returns the rows changed.

    For writers other than the pipeline that change outcomes (a cancellation): the entries go
    into the caller's transaction, and memory stays flat however many rows change. ``where``
    must no longer select a row once ``values`` are applied to it."""
    from dispatcher.audit.chain import append

    connection = session.connection()
    d = deliveries_t.c
    changed = 0
    while True:
        part = select(d.id).where(*where).order_by(d.id).limit(DELIVERIES_PER_ENTRY)
        rows = [
            row._mapping
            for row in connection.execute(
                update(deliveries_t)
                .where(d.id.in_(part.scalar_subquery()))
                .values(**values)
                .returning(*state_columns())
            )
        ]
        if not rows:
            return changed
        changed += len(rows)
        for entry in deliveries_drafts(rows, actor=actor, action=action, subject=subject, **data):
            append(connection, entry)


def name_deliveries(
    session: Session, ids: Sequence[int], *, actor: str, action: str, subject: str
) -> None:
    """Name the deliveries ``ids`` in their current state in audit entries of the caller's
    transaction (for a writer that made a few rows through the ORM)."""
    from dispatcher.audit.chain import append

    connection = session.connection()
    rows = [
        row._mapping
        for row in connection.execute(
            select(*state_columns()).where(deliveries_t.c.id.in_(list(ids)))
        )
    ]
    for entry in deliveries_drafts(rows, actor=actor, action=action, subject=subject):
        append(connection, entry)
