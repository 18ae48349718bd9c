"""Verifying the audit: the chain, its seals against the witness, and the rows it covers.

Everything is read a page at a time, so memory stays flat however long the chain and however
many deliveries there are: the entries in seq order, the seals and the witness beside them, and
then the deliveries in id order. Which entry last named each delivery is kept in a temporary
table of the verifying connection, not in memory.
"""

from __future__ import annotations

import bisect
import hmac
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    case,
    exists,
    func,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dispatcher.audit import coverage, witness
from dispatcher.audit.chain import (
    GENESIS,
    HEAD_ID,
    entries_t,
    entry_hash,
    head_t,
    keyed_hash,
    seal_mac,
)
from dispatcher.tables.audit import AuditSeal

PAGE = 1000
# Deliveries gathered in memory before they go to the temporary table.
FLUSH_EVERY = 5000

seals_t: Table = AuditSeal.__table__  # type: ignore[assignment]
attempts_t = coverage.attempts_t
deliveries_t = coverage.deliveries_t

_temporary = MetaData()
# Per delivery: the last entry that stated it, that state, and how many attempts entries cover.
latest_t = Table(
    "audit_verify_latest",
    _temporary,
    Column("delivery_id", BigInteger, primary_key=True),
    Column("seq", BigInteger, nullable=True),
    Column("state", String(32), nullable=True),
    Column("covered", Integer, nullable=False),
    prefixes=["TEMPORARY"],
)


@dataclass
class Problem:
    seq: int | None
    kind: str  # altered, forged, missing, reordered, head, seal, witness, attempts, delivery
    message: str


@dataclass
class VerifyReport:
    entries: int = 0
    attempt_entries: int = 0
    seals: int = 0
    # Seals read from the witness; None when there is no witness to compare with.
    witnessed: int | None = None
    deliveries: int = 0
    head_seq: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None


def verify(
    session: Session,
    key: bytes,
    *,
    witness_path: str | None = None,
    check_attempts: bool = True,
    stop_at_first: bool = True,
) -> VerifyReport:
    """Walk the chain from the start and report the first problem (or every problem, with
    ``stop_at_first=False``): an altered, missing or reordered entry, a cut-off tail, a seal
    that is forged, deleted or no longer matches, a witnessed seal the database lost, and
    (``check_attempts``) an attempt or delivery that differs from what the chain states."""
    report = VerifyReport(witnessed=None if witness_path is None else 0)
    connection = session.connection()
    walk = _Walk(connection, key, report, witness_path, check_attempts)
    try:
        for found in walk.problems():
            report.problems.append(found)
            if stop_at_first:
                break
    finally:
        walk.close()
    return report


T = TypeVar("T")


class _Archived:
    """The runs and delivery ids archive entries took away."""

    def __init__(self) -> None:
        self.runs: set[str] = set()
        self._ranges: list[tuple[int, int]] = []
        self._starts: list[int] = []

    def add(self, runs: list[int], ids: list[list[int]]) -> None:
        self.runs.update(f"run:{int(run)}" for run in runs)
        self._ranges.extend((int(first), int(last)) for first, last in ids)

    def close(self) -> None:
        self._ranges.sort()
        self._starts = [first for first, _ in self._ranges]

    def has_run(self, subject: str | None) -> bool:
        return subject in self.runs

    def has_id(self, delivery_id: int) -> bool:
        at = bisect.bisect_right(self._starts, delivery_id) - 1
        return at >= 0 and self._ranges[at][1] >= delivery_id


class _Cursor(Generic[T]):
    """Items of a stream sorted by seq, handed out as the walk passes their seq."""

    def __init__(self, items: Iterator[T], seq: Callable[[T], int]) -> None:
        self._items = items
        self._seq = seq
        self._next: T | None = None
        self._advance()

    def _advance(self) -> None:
        self._next = next(self._items, None)

    def peek(self) -> int | None:
        return None if self._next is None else self._seq(self._next)

    def upto(self, seq: int) -> list[T]:
        out: list[T] = []
        while self._next is not None and self._seq(self._next) <= seq:
            out.append(self._next)
            self._advance()
        return out


class _Walk:
    def __init__(
        self,
        connection: Connection,
        key: bytes,
        report: VerifyReport,
        witness_path: str | None,
        check_attempts: bool,
    ) -> None:
        self.connection = connection
        self.key = key
        self.report = report
        self.witness_path = witness_path
        self.check_attempts = check_attempts
        self.postgresql = connection.dialect.name == "postgresql"
        self.pending: dict[int, list[Any]] = {}
        self.baseline = 0
        self.temporary = False
        # Witness lines that are damaged or out of order, reported as the walk meets them.
        self.witness_notes: list[Problem] = []
        self.archived = _Archived()

    def _load_archived(self) -> None:
        """What ``archive.month`` entries took out of the database (``dispatcher archive``):
        their runs' attempts and their deliveries are in the archive files whose checksums the
        entries hold, and no longer compared with rows. Read before the walk, as the entries
        that name those rows come before the archive's."""
        for (data,) in self.connection.execute(
            select(entries_t.c.data).where(entries_t.c.action == coverage.ARCHIVED)
        ):
            try:
                parsed = json.loads(data)
                self.archived.add(parsed.get("runs") or [], parsed.get("ids") or [])
            except (ValueError, TypeError, AttributeError):
                continue  # an altered entry, reported as such by the walk
        self.archived.close()

    # -- streams ------------------------------------------------------------------------------

    def _entries(self) -> Iterator[Any]:
        after = 0
        while True:
            page = self.connection.execute(
                select(entries_t)
                .where(entries_t.c.seq > after)
                .order_by(entries_t.c.seq)
                .limit(PAGE)
            ).all()
            if not page:
                return
            yield from page
            after = page[-1].seq

    def _seals(self) -> Iterator[Any]:
        last_seq, last_id = -1, 0
        c = seals_t.c
        while True:
            page = self.connection.execute(
                select(seals_t)
                .where(or_(c.seq > last_seq, and_(c.seq == last_seq, c.id > last_id)))
                .order_by(c.seq, c.id)
                .limit(PAGE)
            ).all()
            if not page:
                return
            self.report.seals += len(page)
            yield from page
            last_seq, last_id = page[-1].seq, page[-1].id

    def _witnessed(self) -> Iterator[witness.Witnessed]:
        if self.witness_path is None:
            return
        last = -1
        for item in witness.read(self.witness_path):
            if isinstance(item, witness.Unreadable):
                self.witness_notes.append(Problem(None, "witness", item.message))
                continue
            if item.seq < last:
                self.witness_notes.append(
                    Problem(
                        item.seq,
                        "witness",
                        f"witness line {item.line} (entry {item.seq}) comes after a seal of a "
                        f"later entry: lines were moved",
                    )
                )
                continue
            last = item.seq
            assert self.report.witnessed is not None
            self.report.witnessed += 1
            yield item

    # -- the walk -----------------------------------------------------------------------------

    def problems(self) -> Iterator[Problem]:
        if self.check_attempts:
            self._open_temporary()
            self._load_archived()
        seals = _Cursor(self._seals(), lambda s: int(s.seq))
        witnessed = _Cursor(self._witnessed(), lambda w: w.seq)
        expected_seq, prev_hash = 1, GENESIS
        keyed = False
        for row in self._entries():
            self.report.entries += 1
            if row.seq != expected_seq:
                yield Problem(
                    expected_seq,
                    "missing",
                    f"entry {expected_seq} is missing"
                    if row.seq == expected_seq + 1
                    else f"entries {expected_seq} to {row.seq - 1} are missing",
                )
            content = (row.prev_hash, row.at, row.actor, row.action, row.subject, row.data)
            own_key = hmac.compare_digest(keyed_hash(self.key, *content), row.hash)
            keyed = keyed or own_key
            if not own_key and entry_hash(*content) != row.hash:
                yield Problem(
                    row.seq,
                    "altered",
                    f"entry {row.seq} was altered: its content no longer matches its hash "
                    "(or it was written with another key)",
                )
            elif not own_key and keyed:
                # Entries made before keyed hashes existed come first, if at all.
                yield Problem(
                    row.seq,
                    "forged",
                    f"entry {row.seq} was not written by the service: its hash is not keyed "
                    "with the service's key, unlike the entries before it",
                )
            elif row.prev_hash != prev_hash and row.seq == expected_seq:
                yield Problem(
                    row.seq,
                    "reordered",
                    f"entry {row.seq} is out of order: it does not follow entry {row.seq - 1} "
                    "(the chain was rewritten or reordered)",
                )
            yield from self._drain_notes()
            yield from self._sealed(row.seq, row.hash, seals.upto(row.seq), witnessed.upto(row.seq))
            if self.check_attempts:
                yield from self._covered(row)
            prev_hash, expected_seq = row.hash, row.seq + 1
        end = expected_seq - 1
        head = self.connection.execute(
            select(head_t.c.seq, head_t.c.hash).where(head_t.c.id == HEAD_ID)
        ).first()
        self.report.head_seq = head.seq if head is not None else 0
        if head is not None and (head.seq != end or head.hash != prev_hash):
            yield Problem(
                head.seq,
                "head",
                f"the chain ends at entry {end} but its head records entry {head.seq}: "
                "entries were removed from the end",
            )
        # Seals and witnessed seals of entries past the chain's end.
        while True:
            nexts = [s for s in (seals.peek(), witnessed.peek()) if s is not None]
            if not nexts:
                break
            seq = min(nexts)
            yield from self._sealed(end, None, seals.upto(seq), witnessed.upto(seq))
        yield from self._drain_notes()
        if self.check_attempts:
            yield from self._rows()

    def _drain_notes(self) -> Iterator[Problem]:
        while self.witness_notes:
            yield self.witness_notes.pop(0)

    # -- seals and the witness ----------------------------------------------------------------

    def _sealed(
        self,
        seq: int,
        chain_hash: str | None,
        seals: list[Any],
        witnessed: list[witness.Witnessed],
    ) -> Iterator[Problem]:
        """The seals and witnessed seals up to entry ``seq`` (whose hash is ``chain_hash``;
        None past the chain's end)."""
        by_id = {int(s.id): s for s in seals}
        for s in seals:
            wrong = self._wrong(s.seq, s.hash, s.at, s.mac, seq, chain_hash)
            if wrong == "mac":
                yield Problem(
                    s.seq, "seal", f"seal {s.id} has a bad MAC (forged, or made with another key)"
                )
            elif wrong == "beyond":
                yield Problem(
                    s.seq,
                    "seal",
                    f"seal {s.id} covers entry {s.seq}, but the chain ends at entry {seq}: "
                    "entries were removed from the end",
                )
            elif wrong == "rewritten":
                yield Problem(
                    s.seq,
                    "seal",
                    f"seal {s.id} covers entry {s.seq}, which no longer has the sealed hash: "
                    "the chain was rewritten",
                )
        for w in witnessed:
            wrong = self._wrong(w.seq, w.hash, w.at, w.mac, seq, chain_hash)
            when = w.at.isoformat(timespec="seconds")
            if wrong == "mac":
                yield Problem(
                    w.seq,
                    "witness",
                    f"witness line {w.line} has a bad MAC (forged, or made with another key)",
                )
                continue
            if wrong == "beyond":
                yield Problem(
                    w.seq,
                    "witness",
                    f"the chain ends at entry {seq}, but the witness saw entry {w.seq} sealed "
                    f"at {when} (line {w.line}): the chain's tail was cut off or its head "
                    "rewound",
                )
            elif wrong == "rewritten":
                yield Problem(
                    w.seq,
                    "witness",
                    f"entry {w.seq} no longer has the hash the witness saw sealed at {when} "
                    f"(line {w.line}): the chain was rewritten",
                )
            stored = by_id.pop(w.seal, None)
            if stored is None:
                yield Problem(
                    w.seq,
                    "witness",
                    f"seal {w.seal} of entry {w.seq}, made at {when} (witness line {w.line}), "
                    "is missing from the database: it was deleted",
                )
            elif (stored.seq, stored.hash, stored.mac) != (w.seq, w.hash, w.mac):
                yield Problem(
                    w.seq,
                    "witness",
                    f"seal {w.seal} in the database differs from its witness (line {w.line})",
                )
        if self.witness_path is not None:
            for s in by_id.values():
                yield Problem(
                    s.seq,
                    "witness",
                    f"seal {s.id} of entry {s.seq} is not in the witness: it was added to the "
                    "database afterwards, or the witness lost lines",
                )

    def _wrong(
        self, sealed: int, sealed_hash: str, at: Any, mac: str, seq: int, chain_hash: str | None
    ) -> str | None:
        """What is wrong with a seal of entry ``sealed`` (from the database or the witness),
        met at entry ``seq`` of hash ``chain_hash`` (None past the chain's end): a bad
        ``mac``, an entry ``beyond`` the end, or one ``rewritten`` since."""
        if not hmac.compare_digest(seal_mac(self.key, sealed, sealed_hash, at), mac):
            return "mac"
        if chain_hash is None:
            return "beyond"
        if sealed != seq or sealed_hash != chain_hash:
            return "rewritten"
        return None

    # -- the rows the chain covers ------------------------------------------------------------

    def _open_temporary(self) -> None:
        self._drop_temporary()
        latest_t.create(self.connection)
        self.temporary = True

    def _drop_temporary(self) -> None:
        name = "temp.audit_verify_latest" if not self.postgresql else "pg_temp.audit_verify_latest"
        self.connection.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")

    def close(self) -> None:
        if self.temporary:
            self.temporary = False
            self._drop_temporary()

    def _covered(self, row: Any) -> Iterator[Problem]:
        """An entry's attempts checked against their rows; the deliveries it names noted."""
        if row.action == coverage.COVERAGE_START:
            data = json.loads(row.data)
            self.baseline = max(self.baseline, int(data.get("deliveries_through") or 0))
            return
        if row.action != coverage.ATTEMPTS and not row.action.startswith("deliveries."):
            return
        try:
            data = json.loads(row.data)
        except ValueError:
            return  # an altered entry, reported as such
        if row.action == coverage.ATTEMPTS:
            self.report.attempt_entries += 1
            if self.archived.has_run(row.subject):
                return  # its attempts and deliveries are in an archive
            yield from self._attempts(row.seq, data)
        named = data.get("deliveries")
        if named:
            for delivery_id, state in zip(
                coverage.expand(named["ids"]), named["states"], strict=False
            ):
                if self.archived.has_id(delivery_id):
                    continue
                slot = self.pending.setdefault(delivery_id, [None, None, 0])
                slot[0], slot[1] = row.seq, state
        if len(self.pending) >= FLUSH_EVERY:
            self._flush()

    def _attempts(self, seq: int, data: dict[str, Any]) -> Iterator[Problem]:
        legacy = data.get("v") is None
        fields = coverage.LEGACY_ATTEMPT_FIELDS if legacy else coverage.ATTEMPT_FIELDS
        ranges = [
            and_(attempts_t.c.delivery_id.between(first, last), attempts_t.c.number == number)
            for first, last, number in data["tries"]
        ]
        for first, last, _number in data["tries"]:
            for delivery_id in range(first, last + 1):
                slot = self.pending.setdefault(delivery_id, [None, None, 0])
                slot[2] += 1
        if not ranges:
            return
        query = select(*(attempts_t.c[name] for name in fields)).where(
            attempts_t.c.worker == data["worker"], or_(*ranges)
        )
        stored = [r._mapping for r in self.connection.execute(query)]
        digest = coverage.legacy_attempt_digest if legacy else coverage.attempt_digest
        if len(stored) != data["count"] or digest(stored) != data["digest"]:
            yield Problem(
                seq,
                "attempts",
                f"entry {seq}: the {data['count']} delivery attempts it covers were changed, "
                f"added to or removed ({len(stored)} found, their digest differs)",
            )

    def _flush(self) -> None:
        if not self.pending:
            return
        dialect = postgresql if self.postgresql else sqlite
        insert = dialect.insert(latest_t)
        excluded = insert.excluded
        statement = insert.on_conflict_do_update(
            index_elements=[latest_t.c.delivery_id],
            set_={
                "seq": case((excluded.state.is_(None), latest_t.c.seq), else_=excluded.seq),
                "state": func.coalesce(excluded.state, latest_t.c.state),
                "covered": latest_t.c.covered + excluded.covered,
            },
        )
        rows = [
            {"delivery_id": k, "seq": v[0], "state": v[1], "covered": v[2]}
            for k, v in self.pending.items()
        ]
        self.pending.clear()
        for start in range(0, len(rows), PAGE):
            self.connection.execute(statement, rows[start : start + PAGE])

    def _rows(self) -> Iterator[Problem]:
        """Every delivery against the last entry that stated it; then the ones stated but gone."""
        self._flush()
        d, t, a = deliveries_t.c, latest_t.c, attempts_t.c
        # On the period too: PostgreSQL then looks in the delivery's own month only.
        stored = (
            select(func.count())
            .where(a.delivery_id == d.id, a.period == d.period)
            .scalar_subquery()
        )
        after = 0
        while True:
            page = self.connection.execute(
                select(*coverage.state_columns(), t.seq, t.state, t.covered, stored.label("n"))
                .select_from(deliveries_t.outerjoin(latest_t, t.delivery_id == d.id))
                .where(d.id > after)
                .order_by(d.id)
                .limit(PAGE)
            ).all()
            if not page:
                break
            for row in page:
                self.report.deliveries += 1
                yield from self._delivery(row)
            after = page[-1].id
        after = 0
        while True:
            gone = self.connection.execute(
                select(t.delivery_id, t.seq)
                .where(t.delivery_id > after, ~exists().where(d.id == t.delivery_id))
                .order_by(t.delivery_id)
                .limit(PAGE)
            ).all()
            if not gone:
                break
            for delivery_id, seq in gone:
                where = f"entry {seq}" if seq is not None else "an attempts entry"
                yield Problem(
                    seq,
                    "delivery",
                    f"delivery {delivery_id}, last recorded in {where}, was deleted",
                )
            after = gone[-1].delivery_id

    def _delivery(self, row: Any) -> Iterator[Problem]:
        covered = row.covered or 0
        if row.state is None:
            if row.id > self.baseline:
                yield Problem(
                    None,
                    "delivery",
                    f"delivery {row.id} ({row.status}) is in no audit entry: it was inserted "
                    "outside the service",
                )
        elif coverage.delivery_state(row._mapping) != row.state:
            yield Problem(
                row.seq,
                "delivery",
                f"delivery {row.id} ({row.status} now) was changed after entry {row.seq}, the "
                "last to record it: its status, error, counters or provider id differ",
            )
        if row.n != covered:
            yield Problem(
                row.seq,
                "attempts",
                f"delivery {row.id} has {row.n} attempt rows but the audit covers {covered}: "
                "attempts were inserted or deleted outside the service",
            )
