"""Appending to the hash chain, sealing it, and verifying it."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, Table, and_, or_, select, update
from sqlalchemy.orm import Session

from dispatcher.audit.models import AuditEntry, AuditHead, AuditSeal
from dispatcher.clock import utcnow
from dispatcher.deliveries.models import Attempt
from dispatcher.sql import insert_for

log = structlog.get_logger(__name__)

GENESIS = "0" * 64
HEAD_ID = 1
ATTEMPTS = "attempts"
PAGE = 1000

entries_t: Table = AuditEntry.__table__  # type: ignore[assignment]
head_t: Table = AuditHead.__table__  # type: ignore[assignment]
attempts_t: Table = Attempt.__table__  # type: ignore[assignment]


def canonical(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def entry_hash(
    prev_hash: str, at: datetime, actor: str, action: str, subject: str, data: str
) -> str:
    h = hashlib.sha256()
    for part in (prev_hash, at.isoformat(timespec="microseconds"), actor, action, subject, data):
        h.update(part.encode())
        h.update(b"\x1f")
    return h.hexdigest()


def _connection(target: Session | Connection) -> Connection:
    return target.connection() if isinstance(target, Session) else target


def _lock_head(connection: Connection) -> tuple[int, str]:
    query = select(head_t.c.seq, head_t.c.hash).where(head_t.c.id == HEAD_ID).with_for_update()
    row = connection.execute(query).first()
    if row is None:
        bind: Any = Session(bind=connection)
        connection.execute(
            insert_for(bind, head_t)
            .values(id=HEAD_ID, seq=0, hash=GENESIS)
            .on_conflict_do_nothing()
        )
        row = connection.execute(query).one()
    return int(row.seq), str(row.hash)


@dataclass(frozen=True, slots=True)
class Draft:
    """An entry's content, made ready outside the transaction that appends it."""

    actor: str
    action: str
    subject: str
    body: str


def draft(*, actor: str, action: str, subject: str, data: Mapping[str, Any]) -> Draft:
    return Draft(actor, action, subject, canonical(data))


def append(target: Session | Connection, entry: Draft) -> int:
    """Append one entry in the caller's transaction; returns its seq.

    Holding the head's row lock until commit keeps the chain in order; call this last in a
    transaction so the lock is brief.
    """
    connection = _connection(target)
    seq, prev = _lock_head(connection)
    at = utcnow()
    digest = entry_hash(prev, at, entry.actor, entry.action, entry.subject, entry.body)
    connection.execute(
        entries_t.insert().values(
            seq=seq + 1,
            at=at,
            actor=entry.actor,
            action=entry.action,
            subject=entry.subject,
            data=entry.body,
            prev_hash=prev,
            hash=digest,
        )
    )
    connection.execute(
        update(head_t).where(head_t.c.id == HEAD_ID).values(seq=seq + 1, hash=digest)
    )
    return seq + 1


def record(
    target: Session | Connection,
    *,
    actor: str,
    action: str,
    subject: str,
    data: Mapping[str, Any],
) -> int:
    """Append one entry (see :func:`append`)."""
    return append(target, draft(actor=actor, action=action, subject=subject, data=data))


# Delivery attempts -----------------------------------------------------------------------------

_ATTEMPT_FIELDS = (
    "delivery_id",
    "number",
    "started_at",
    "duration_ms",
    "outcome",
    "error_class",
    "provider_code",
    "provider_message_id",
    "possible_duplicate",
)


def _attempt_line(row: Mapping[str, Any]) -> str:
    parts = []
    for name in _ATTEMPT_FIELDS:
        value = row[name]
        if isinstance(value, datetime):
            value = value.isoformat(timespec="microseconds")
        elif isinstance(value, bool):
            value = int(value)
        parts.append("" if value is None else str(value))
    return "|".join(parts)


def attempt_digest(rows: Iterable[Mapping[str, Any]]) -> str:
    lines = sorted(_attempt_line(r) for r in rows)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _runs(pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """(delivery_id, number) pairs as [first id, last id, number] runs of consecutive ids."""
    out: list[list[int]] = []
    for delivery_id, number in sorted(pairs, key=lambda p: (p[1], p[0])):
        if out and out[-1][2] == number and out[-1][1] == delivery_id - 1:
            out[-1][1] = delivery_id
        else:
            out.append([delivery_id, delivery_id, number])
    return out


def attempts_draft(rows: list[dict[str, Any]], *, worker: str, run_id: int) -> Draft | None:
    """The entry for a batch's attempt rows: which they are, and their digest. Made before
    the batch's write transaction, so the digest costs no time under the lock."""
    if not rows:
        return None
    return draft(
        actor=f"worker {worker}",
        action=ATTEMPTS,
        subject=f"run:{run_id}",
        data={
            "worker": worker,
            "count": len(rows),
            "tries": _runs((r["delivery_id"], r["number"]) for r in rows),
            "digest": attempt_digest(rows),
        },
    )


def _stored_attempts(connection: Connection, data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    ranges = [
        and_(
            attempts_t.c.delivery_id.between(first, last),
            attempts_t.c.number == number,
        )
        for first, last, number in data["tries"]
    ]
    query = select(*(attempts_t.c[name] for name in _ATTEMPT_FIELDS)).where(
        attempts_t.c.worker == data["worker"], or_(*ranges)
    )
    return [dict(row._mapping) for row in connection.execute(query)]


# Seals -----------------------------------------------------------------------------------------


def _seal_mac(key: bytes, seq: int, chain_hash: str, at: datetime) -> str:
    message = f"audit-seal|{seq}|{chain_hash}|{at.isoformat(timespec='microseconds')}"
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def seal(session: Session, key: bytes) -> AuditSeal | None:
    """Seal the chain's head if it moved since the last seal; the seal is also logged, so a
    copy lives outside the database."""
    head = session.execute(
        select(head_t.c.seq, head_t.c.hash).where(head_t.c.id == HEAD_ID)
    ).first()
    if head is None or head.seq == 0:
        return None
    last = session.scalar(select(AuditSeal).order_by(AuditSeal.id.desc()).limit(1))
    if last is not None and last.seq >= head.seq:
        return None
    at = utcnow()
    row = AuditSeal(
        seq=head.seq, hash=head.hash, at=at, mac=_seal_mac(key, head.seq, head.hash, at)
    )
    session.add(row)
    session.flush()
    log.info("audit_sealed", seal=row.id, seq=row.seq, hash=row.hash)
    return row


# Verification ----------------------------------------------------------------------------------


@dataclass
class Problem:
    seq: int | None
    kind: str  # altered, missing, reordered, attempts, seal, head
    message: str


@dataclass
class VerifyReport:
    entries: int = 0
    attempt_entries: int = 0
    seals: int = 0
    head_seq: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None


def _entries(connection: Connection) -> Iterator[Any]:
    after = 0
    while True:
        page = connection.execute(
            select(entries_t).where(entries_t.c.seq > after).order_by(entries_t.c.seq).limit(PAGE)
        ).all()
        if not page:
            return
        yield from page
        after = page[-1].seq


def verify(
    session: Session, key: bytes, *, check_attempts: bool = True, stop_at_first: bool = True
) -> VerifyReport:
    """Walk the chain from the start; report the first altered, missing or reordered entry
    (or every problem, with ``stop_at_first=False``)."""
    report = VerifyReport()
    for found in _problems(session, key, report, check_attempts=check_attempts):
        report.problems.append(found)
        if stop_at_first:
            break
    return report


def _problems(
    session: Session, key: bytes, report: VerifyReport, *, check_attempts: bool
) -> Iterator[Problem]:
    connection = session.connection()
    seals = {s.seq: s for s in session.scalars(select(AuditSeal).order_by(AuditSeal.id))}
    report.seals = len(seals)
    sealed_hashes: dict[int, str] = {}
    expected_seq, prev_hash = 1, GENESIS
    for row in _entries(connection):
        report.entries += 1
        if row.seq != expected_seq:
            yield Problem(
                expected_seq,
                "missing",
                f"entry {expected_seq} is missing"
                if row.seq == expected_seq + 1
                else f"entries {expected_seq} to {row.seq - 1} are missing",
            )
        own = entry_hash(row.prev_hash, row.at, row.actor, row.action, row.subject, row.data)
        if own != row.hash:
            yield Problem(
                row.seq,
                "altered",
                f"entry {row.seq} was altered: its content no longer matches its hash",
            )
        elif row.prev_hash != prev_hash and row.seq == expected_seq:
            yield Problem(
                row.seq,
                "reordered",
                f"entry {row.seq} is out of order: it does not follow entry {row.seq - 1} "
                "(the chain was reordered or rewritten)",
            )
        if check_attempts and row.action == ATTEMPTS:
            report.attempt_entries += 1
            data = json.loads(row.data)
            stored = _stored_attempts(connection, data)
            if len(stored) != data["count"] or attempt_digest(stored) != data["digest"]:
                yield Problem(
                    row.seq,
                    "attempts",
                    f"entry {row.seq}: the {data['count']} delivery attempts it covers were "
                    f"changed or removed ({len(stored)} found, their digest differs)",
                )
        if row.seq in seals:
            sealed_hashes[row.seq] = row.hash
        prev_hash, expected_seq = row.hash, row.seq + 1
    head = connection.execute(
        select(head_t.c.seq, head_t.c.hash).where(head_t.c.id == HEAD_ID)
    ).first()
    report.head_seq = head.seq if head is not None else 0
    if head is not None and (head.seq != expected_seq - 1 or head.hash != prev_hash):
        yield Problem(
            head.seq,
            "head",
            f"the chain ends at entry {expected_seq - 1} but its head records entry "
            f"{head.seq}: entries were removed from the end",
        )
    for seal_row in seals.values():
        good_mac = _seal_mac(key, seal_row.seq, seal_row.hash, seal_row.at)
        if not hmac.compare_digest(good_mac, seal_row.mac):
            yield Problem(
                seal_row.seq,
                "seal",
                f"seal {seal_row.id} has a bad MAC (forged, or made with another key)",
            )
        elif sealed_hashes.get(seal_row.seq) != seal_row.hash:
            yield Problem(
                seal_row.seq,
                "seal",
                f"seal {seal_row.id} covers entry {seal_row.seq}, which no longer has the "
                "sealed hash: the chain was rewritten",
            )
