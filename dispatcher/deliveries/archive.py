"""Archiving a month: its deliveries and attempts out of the database, into Parquet files.

``dispatcher archive --before YYYY-MM`` takes every month before the one given, oldest first.
For each month (the ``period`` of its runs, see :mod:`dispatcher.tables.partitions`):

1. it refuses a month with open work (a pending, claimed or retrying row, an open batch), and
   the current month or a later one (``--before`` may name the current month at most);
2. it exports the month's deliveries (with their recipient's external id, so that "did X get
   Y" can be answered from the files alone) and their attempts, in id order, from a server-side
   cursor a chunk at a time into Parquet row groups (zstd): memory stays flat whatever the
   month's size. The files are written under temporary names and renamed once complete;
3. it verifies them: each file is read back, its rows counted and its ids summed against the
   database's count and sum, and its SHA-256 computed again;
4. it writes ``manifest.json`` (the month, per file its rows, columns and SHA-256) and
   ``SHA256SUMS`` beside the files;
5. in one transaction: the month's rows are counted again (nothing may have changed since the
   export), the rows leave the database (PostgreSQL: the month's partitions are detached and
   dropped; SQLite: the rows are deleted), and an ``archive.month`` audit entry records the
   month, the runs and delivery ids it took, the files' checksums and the manifest's.

A month already archived (its manifest is there and the database holds nothing of it) is left
alone with a message. The files of a month live in ``DISPATCHER_ARCHIVE_DIR/YYYY-MM/``; what
reads them back is :mod:`dispatcher.deliveries.archived`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import (
    BigInteger,
    Boolean,
    Connection,
    Integer,
    Select,
    Table,
    delete,
    exists,
    func,
    select,
)
from sqlalchemy.orm import Session

from dispatcher import audit
from dispatcher.audit.coverage import ARCHIVED
from dispatcher.core.db import Database, UTCDateTime
from dispatcher.kit.clock import utcnow
from dispatcher.kit.errors import Conflict, Invalid
from dispatcher.tables import partitions
from dispatcher.tables.campaigns import Run
from dispatcher.tables.deliveries import (
    Attempt,
    Batch,
    Delivery,
    DeliveryTally,
    open_batch,
    open_delivery,
)
from dispatcher.tables.recipients import Recipient

deliveries_t: Table = Delivery.__table__  # type: ignore[assignment]
attempts_t: Table = Attempt.__table__  # type: ignore[assignment]
runs_t: Table = Run.__table__  # type: ignore[assignment]
batches_t: Table = Batch.__table__  # type: ignore[assignment]
recipients_t: Table = Recipient.__table__  # type: ignore[assignment]

# Rows per Parquet row group, and per fetch from the server-side cursor.
CHUNK = 20_000
MANIFEST = "manifest.json"
# How long the removal waits for the locks it needs (PostgreSQL) before giving up.
LOCK_TIMEOUT = "30s"
SUMS = "SHA256SUMS"
FILES = ("deliveries.parquet", "attempts.parquet")
FORMAT = 1


class ArchiveError(Invalid):
    """A month that cannot be archived, and why."""


@dataclass
class MonthResult:
    period: int
    status: str  # archived, already, empty
    directory: Path
    rows: dict[str, int] = field(default_factory=dict)
    manifest_sha256: str | None = None
    message: str = ""


def month_directory(root: Path, period: int) -> Path:
    return root / partitions.month_text(period)


def _arrow_type(column: Any) -> pa.DataType:
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return pa.timestamp("us", tz="UTC")
    if isinstance(kind, Boolean):
        return pa.bool_()
    if isinstance(kind, BigInteger | Integer) or column.name == "id":
        return pa.int64()
    return pa.string()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- what a month holds ---------------------------------------------------------------------------


def _month_runs(period: int) -> Any:
    return select(runs_t.c.id).where(runs_t.c.period == period).scalar_subquery()


def _deliveries_where(connection: Connection, period: int) -> list[Any]:
    d = deliveries_t.c
    # On SQLite the run's index finds the month's rows (there is no index on period there).
    where = [d.period == period]
    if connection.dialect.name == "sqlite":
        where.append(d.run_id.in_(select(runs_t.c.id).where(runs_t.c.period == period)))
    return where


def _attempts_where(connection: Connection, period: int) -> list[Any]:
    a = attempts_t.c
    where = [a.period == period]
    if connection.dialect.name == "sqlite":
        d = deliveries_t.c
        month = select(d.id).where(*_deliveries_where(connection, period))
        where.append(a.delivery_id.in_(month))
    return where


def _deliveries_query(connection: Connection, period: int) -> Select[Any]:
    r = recipients_t.c
    return (
        select(*deliveries_t.c, r.external_id.label("recipient"))
        .select_from(deliveries_t.outerjoin(recipients_t, r.id == deliveries_t.c.recipient_id))
        .where(*_deliveries_where(connection, period))
        .order_by(deliveries_t.c.id)
    )


def _attempts_query(connection: Connection, period: int) -> Select[Any]:
    return (
        select(*attempts_t.c).where(*_attempts_where(connection, period)).order_by(attempts_t.c.id)
    )


def _schema(table: Table, extra: dict[str, pa.DataType]) -> pa.Schema:
    fields = [pa.field(c.name, _arrow_type(c), nullable=True) for c in table.columns]
    fields += [pa.field(name, kind, nullable=True) for name, kind in extra.items()]
    return pa.schema(fields)


def _counts(connection: Connection, period: int) -> dict[str, tuple[int, int]]:
    """(rows, sum of ids) of the month's deliveries and attempts."""
    d, a = deliveries_t.c, attempts_t.c
    found = connection.execute(
        select(func.count(), func.coalesce(func.sum(d.id), 0)).where(
            *_deliveries_where(connection, period)
        )
    ).one()
    tried = connection.execute(
        select(func.count(), func.coalesce(func.sum(a.id), 0)).where(
            *_attempts_where(connection, period)
        )
    ).one()
    return {
        FILES[0]: (int(found[0]), int(found[1])),
        FILES[1]: (int(tried[0]), int(tried[1])),
    }


def open_work(session: Session, period: int) -> str | None:
    """Why the month cannot be archived yet, or None."""
    d, b = deliveries_t.c, batches_t.c
    connection = session.connection()
    row = session.execute(
        select(d.id, d.status)
        .where(*_deliveries_where(connection, period), open_delivery(d.status))
        .limit(1)
    ).first()
    if row is not None:
        return f"delivery {row.id} is still {row.status}"
    batch = session.execute(
        select(b.id, b.run_id)
        .where(b.run_id.in_(select(runs_t.c.id).where(runs_t.c.period == period)))
        .where(open_batch(b.status))
        .limit(1)
    ).first()
    if batch is not None:
        return f"batch {batch.id} of run {batch.run_id} is still open"
    return None


def _has_rows(connection: Connection, period: int) -> bool:
    if partitions.is_partitioned(connection):
        return period in partitions.partitions(connection)
    return bool(
        connection.execute(select(exists().where(*_deliveries_where(connection, period)))).scalar()
    )


def months_before(connection: Connection, before: int) -> list[int]:
    """The months before ``before`` that still have rows (or partitions) in the database."""
    if partitions.is_partitioned(connection):
        return [p for p in partitions.partitions(connection) if p < before]
    found = connection.execute(
        select(runs_t.c.period)
        .where(
            runs_t.c.period < before,
            exists().where(deliveries_t.c.run_id == runs_t.c.id),
        )
        .distinct()
        .order_by(runs_t.c.period)
    ).scalars()
    return [int(p) for p in found]


# -- export ---------------------------------------------------------------------------------------


def _stream(db: Database, query: Select[Any]) -> Iterator[Sequence[Any]]:
    """The query's rows a chunk at a time, from a server-side cursor on PostgreSQL."""
    with db.engine.connect() as connection:
        result = connection.execute(query.execution_options(stream_results=True, yield_per=CHUNK))
        yield from result.partitions(CHUNK)


def _write(path: Path, schema: pa.Schema, chunks: Iterator[Sequence[Any]]) -> tuple[int, int]:
    """Write the rows into ``path`` (a temporary name first); returns (rows, sum of ids)."""
    partial = path.with_name(path.name + ".partial")
    names = schema.names
    rows = total = 0
    with pq.ParquetWriter(partial, schema, compression="zstd") as writer:
        for chunk in chunks:
            columns: list[Sequence[Any]] = (
                list(zip(*chunk, strict=True)) if chunk else [[] for _ in names]
            )
            table = pa.Table.from_arrays(
                [
                    pa.array(list(values), type=schema.field(i).type)
                    for i, values in enumerate(columns)
                ],
                schema=schema,
            )
            writer.write_table(table, row_group_size=CHUNK)
            rows += len(chunk)
            total += sum(int(row[0]) for row in chunk)
    with partial.open("rb") as handle:
        os.fsync(handle.fileno())
    partial.replace(path)
    return rows, total


def _reread(path: Path) -> tuple[int, int]:
    """Count a file's rows and sum its ids, a row group at a time."""
    handle = pq.ParquetFile(path)
    rows = total = 0
    for group in range(handle.num_row_groups):
        ids = handle.read_row_group(group, columns=["id"]).column("id")
        rows += len(ids)
        total += int(pc.sum(ids).as_py() or 0)
    if rows != handle.metadata.num_rows:
        raise ArchiveError(
            f"{path.name}: its row groups hold {rows} rows, its footer says "
            f"{handle.metadata.num_rows}"
        )
    return rows, total


def _export(db: Database, period: int, directory: Path) -> dict[str, Any]:
    """Write and verify the month's files and manifest; returns the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    with db.reading() as session:
        connection = session.connection()
        expected = _counts(connection, period)
        queries = {
            FILES[0]: _deliveries_query(connection, period),
            FILES[1]: _attempts_query(connection, period),
        }
        run_ids = [
            int(i)
            for i in session.scalars(
                select(runs_t.c.id).where(runs_t.c.period == period).order_by(runs_t.c.id)
            )
        ]
    schemas = {
        FILES[0]: _schema(deliveries_t, {"recipient": pa.string()}),
        FILES[1]: _schema(attempts_t, {}),
    }
    files: dict[str, Any] = {}
    for name in FILES:
        path = directory / name
        written = _write(path, schemas[name], _stream(db, queries[name]))
        reread = _reread(path)
        if not written == reread == expected[name]:
            raise ArchiveError(
                f"{partitions.month_text(period)}: {name} does not match the database "
                f"(rows and sum of ids: database {expected[name]}, written {written}, "
                f"read back {reread}); nothing was removed"
            )
        files[name] = {
            "rows": reread[0],
            "id_sum": reread[1],
            "sha256": _sha256(path),
            "columns": [{"name": f.name, "type": str(f.type)} for f in schemas[name]],
        }
    manifest = {
        "format": FORMAT,
        "month": partitions.month_text(period),
        "period": period,
        "created_at": utcnow().isoformat(),
        "runs": run_ids,
        "files": files,
    }
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    (directory / MANIFEST).write_bytes(body)
    sums = "".join(f"{files[name]['sha256']}  {name}\n" for name in FILES)
    sums += f"{hashlib.sha256(body).hexdigest()}  {MANIFEST}\n"
    (directory / SUMS).write_text(sums)
    return manifest


def verify_files(directory: Path) -> dict[str, Any]:
    """Check a month's files against its manifest (rows, ids, SHA-256); returns the manifest."""
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise ArchiveError(f"{directory}: no {MANIFEST}")
    manifest: dict[str, Any] = json.loads(manifest_path.read_bytes())
    for name, described in manifest["files"].items():
        path = directory / name
        if not path.exists():
            raise ArchiveError(f"{directory}: {name} is missing")
        if _sha256(path) != described["sha256"]:
            raise ArchiveError(f"{path}: its SHA-256 is not the manifest's")
        if _reread(path) != (described["rows"], described["id_sum"]):
            raise ArchiveError(f"{path}: its rows are not the manifest's")
    return manifest


# -- removal --------------------------------------------------------------------------------------


def _delivery_ids(connection: Connection, period: int) -> list[list[int]]:
    """The month's delivery ids as [first, last] runs, read in id order a chunk at a time."""
    out: list[list[int]] = []
    result = connection.execute(
        select(deliveries_t.c.id)
        .where(*_deliveries_where(connection, period))
        .order_by(deliveries_t.c.id)
        .execution_options(stream_results=True, yield_per=CHUNK)
    )
    for (delivery_id,) in result:
        if out and out[-1][1] == delivery_id - 1:
            out[-1][1] = delivery_id
        else:
            out.append([int(delivery_id), int(delivery_id)])
    return out


def _remove(connection: Connection, period: int) -> None:
    if partitions.is_partitioned(connection):
        for table in ("attempts", "deliveries"):
            name = partitions.partition_name(table, period)
            connection.exec_driver_sql(f"ALTER TABLE {table} DETACH PARTITION {name}")
            connection.exec_driver_sql(f"DROP TABLE {name}")
    else:
        connection.execute(attempts_t.delete().where(*_attempts_where(connection, period)))
        connection.execute(deliveries_t.delete().where(*_deliveries_where(connection, period)))
    # Dropping a partition fires no trigger: the month's runs' tallies go here (SQLite keeps
    # none, so nothing is there to delete).
    connection.execute(
        delete(DeliveryTally).where(
            DeliveryTally.run_id.in_(select(Run.id).where(Run.period == period))
        )
    )


def archive_month(
    db: Database,
    period: int,
    root: Path,
    *,
    actor: str = "cli",
    current: int | None = None,
) -> MonthResult:
    """Archive one month (see the module's note)."""
    current = current or partitions.current_period()
    text = partitions.month_text(period)
    if period >= current:
        raise ArchiveError(
            f"{text} is the current month or later ({partitions.month_text(current)}): only "
            "past months can be archived"
        )
    directory = month_directory(root, period)
    with db.reading() as session:
        connection = session.connection()
        present = _has_rows(connection, period)
        if not present:
            if (directory / MANIFEST).exists():
                return MonthResult(
                    period, "already", directory, message=f"{text}: already archived in {directory}"
                )
            return MonthResult(period, "empty", directory, message=f"{text}: nothing to archive")
        why = open_work(session, period)
        if why is not None:
            raise ArchiveError(f"{text} still has open work ({why}): it cannot be archived yet")
    manifest = _export(db, period, directory)
    body = (directory / MANIFEST).read_bytes()
    manifest_sha = hashlib.sha256(body).hexdigest()
    files = manifest["files"]
    with db.transaction() as session:
        connection = session.connection()
        if partitions.is_partitioned(connection):
            # Detaching locks the parent tables until the commit, a moment later; it waits for
            # the transactions reading them first, never long: rather fail and be run again.
            connection.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            # Nothing writes the month meanwhile: its partitions are locked until the commit.
            for table in ("deliveries", "attempts"):
                name = partitions.partition_name(table, period)
                connection.exec_driver_sql(f"LOCK TABLE {name} IN SHARE MODE")
        now = _counts(connection, period)
        if any(now[name] != (files[name]["rows"], files[name]["id_sum"]) for name in FILES):
            raise Conflict(
                f"{text}: rows changed while they were exported; nothing was removed, run "
                "the archive again"
            )
        why = open_work(session, period)
        if why is not None:
            raise ArchiveError(f"{text} still has open work ({why}): it cannot be archived yet")
        ids = _delivery_ids(connection, period)
        _remove(connection, period)
        audit.append(
            session,
            audit.draft(
                actor=actor,
                action=ARCHIVED,
                subject=f"month:{text}",
                data={
                    "v": audit.VERSION,
                    "month": text,
                    "period": period,
                    "directory": directory.name,
                    "manifest_sha256": manifest_sha,
                    "files": {
                        name: {"rows": files[name]["rows"], "sha256": files[name]["sha256"]}
                        for name in FILES
                    },
                    "runs": manifest["runs"],
                    "ids": ids,
                },
            ),
        )
    return MonthResult(
        period,
        "archived",
        directory,
        rows={name: files[name]["rows"] for name in FILES},
        manifest_sha256=manifest_sha,
        message=f"{text}: archived {files[FILES[0]]['rows']} deliveries and "
        f"{files[FILES[1]]['rows']} attempts to {directory}",
    )


def archive_before(
    db: Database,
    before: int,
    root: Path,
    *,
    actor: str = "cli",
    current: int | None = None,
    report: Callable[[MonthResult], None] | None = None,
) -> list[MonthResult]:
    """Archive every month before ``before`` that the database still holds, oldest first."""
    current = current or partitions.current_period()
    if before > current:
        raise ArchiveError(
            f"--before {partitions.month_text(before)} is after the current month "
            f"({partitions.month_text(current)}): the current month and later cannot be archived"
        )
    with db.reading() as session:
        months = months_before(session.connection(), before)
        # Every month is checked before any is touched: a refusal changes nothing.
        for period in months:
            why = open_work(session, period)
            if why is not None:
                raise ArchiveError(
                    f"{partitions.month_text(period)} still has open work ({why}): it cannot "
                    "be archived yet; nothing was archived"
                )
    done: list[MonthResult] = []
    already = sorted(
        int(p.name.replace("-", ""))
        for p in (root.iterdir() if root.exists() else [])
        if (p / MANIFEST).exists() and p.name[:4].isdigit()
    )
    for period in already:
        if period < before and period not in months:
            result = MonthResult(
                period,
                "already",
                month_directory(root, period),
                message=f"{partitions.month_text(period)}: already archived",
            )
            done.append(result)
            if report:
                report(result)
    for period in months:
        result = archive_month(db, period, root, actor=actor, current=current)
        done.append(result)
        if report:
            report(result)
    return sorted(done, key=lambda r: r.period)
