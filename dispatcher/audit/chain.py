"""Appending to the hash chain and sealing it."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, Table, select, update
from sqlalchemy.orm import Session

from dispatcher.audit import witness
from dispatcher.kit.clock import utcnow
from dispatcher.kit.sql import insert_for
from dispatcher.tables.audit import AuditEntry, AuditHead, AuditSeal

log = structlog.get_logger(__name__)

GENESIS = "0" * 64
HEAD_ID = 1

entries_t: Table = AuditEntry.__table__  # type: ignore[assignment]
head_t: Table = AuditHead.__table__  # type: ignore[assignment]


def canonical(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _entry_message(
    prev_hash: str, at: datetime, actor: str, action: str, subject: str, data: str
) -> bytes:
    parts = (prev_hash, at.isoformat(timespec="microseconds"), actor, action, subject, data)
    return b"".join(part.encode() + b"\x1f" for part in parts)


def entry_hash(
    prev_hash: str, at: datetime, actor: str, action: str, subject: str, data: str
) -> str:
    """An entry's hash as entries made before keyed entries have it (anyone can compute it)."""
    return hashlib.sha256(_entry_message(prev_hash, at, actor, action, subject, data)).hexdigest()


def keyed_hash(
    key: bytes, prev_hash: str, at: datetime, actor: str, action: str, subject: str, data: str
) -> str:
    """An entry's hash as the service makes it: keyed with the audit key, so that whoever
    lacks the key can neither append an entry nor rewrite one, only cut the chain short."""
    message = _entry_message(prev_hash, at, actor, action, subject, data)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def audit_key(connection: Connection) -> bytes:
    """The key of this process's settings (see dispatcher.core.secrets.audit_key)."""
    from dispatcher.core import secrets
    from dispatcher.core.config import get_settings

    bind: Any = Session(bind=connection)
    return secrets.audit_key(bind, get_settings())


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


def append(
    target: Session | Connection,
    entry: Draft,
    *,
    amend: Callable[[Connection, Draft], Draft] | None = None,
    key: bytes | None = None,
) -> int:
    """Append one entry in the caller's transaction; returns its seq.

    Holding the head's row lock until commit keeps the chain in order; call this last in a
    transaction so the lock is brief. ``amend`` rewrites the entry once the head is locked
    (so that no later entry about the same rows can commit first): :func:`coverage.restate`
    makes a batch that could not write all of its rows name them as the database holds them.
    The entry's hash is keyed with ``key`` (by default the audit key of this process's
    settings).
    """
    connection = _connection(target)
    if key is None:
        key = audit_key(connection)
    seq, prev = _lock_head(connection)
    if amend is not None:
        entry = amend(connection, entry)
    at = utcnow()
    digest = keyed_hash(key, prev, at, entry.actor, entry.action, entry.subject, entry.body)
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


# Seals -----------------------------------------------------------------------------------------


def seal_mac(key: bytes, seq: int, chain_hash: str, at: datetime) -> str:
    message = f"audit-seal|{seq}|{chain_hash}|{at.isoformat(timespec='microseconds')}"
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def seal(session: Session, key: bytes, *, witness_path: str | None = None) -> AuditSeal | None:
    """Seal the chain's head if it moved since the last seal.

    The seal is written to the witness file (when one is configured) before the caller's
    transaction commits, so a seal that could not be witnessed is not kept either; it is also
    logged with the same fields, for a log sink to keep off-host."""
    head = session.execute(
        select(head_t.c.seq, head_t.c.hash).where(head_t.c.id == HEAD_ID)
    ).first()
    if head is None or head.seq == 0:
        return None
    last = session.scalar(select(AuditSeal).order_by(AuditSeal.id.desc()).limit(1))
    if last is not None and last.seq >= head.seq:
        return None
    at = utcnow()
    row = AuditSeal(seq=head.seq, hash=head.hash, at=at, mac=seal_mac(key, head.seq, head.hash, at))
    session.add(row)
    session.flush()
    fields = witness.record(seal=row.id, seq=row.seq, chain_hash=row.hash, at=at, mac=row.mac)
    if witness_path:
        witness.write(witness_path, fields)
    log.info(witness.EVENT, **fields)
    return row
