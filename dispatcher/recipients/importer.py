"""Bulk import of recipients from CSV or JSON Lines: streamed, checked row by row, upserted.

The input is a stream of bytes: a binary file, or any iterator of ``bytes`` chunks such as an
HTTP request body. It is decoded and parsed as it arrives. What the engine holds at any time is
the chunk of rows being written (``chunk_size``, 1,000 by default) and the rejected rows
(at most ``max_rejections``, the rest are only counted). Memory therefore does not grow with the
size of the file.

**CSV.** The first row is the header. Known columns are ``external_id``, ``full_name``,
``birth_date`` (``YYYY-MM-DD`` or ``DD/MM/YYYY``), ``province``, ``language`` and ``kind``, plus
one column per channel (``email``, ``telegram``, ``zalo``, ``facebook``, ``vssid``, and any
channel a plugin adds), whose value is the recipient's address there. Every other column goes to
``attributes``; ``phone`` is checked and normalised there. Header names are matched without
regard to case. An empty cell means "not given". The text is UTF-8 with or without a BOM. The
delimiter is a comma, unless the header uses semicolons or tabs instead, as some spreadsheet
exports do.

**JSON Lines.** One object per line, shaped like ``RecipientIn`` (the body of
``POST /v1/recipients``). ``attributes.phone`` is checked like the CSV column.

**Checks.** Every row goes through ``RecipientIn``, so the API and the import accept the same
things. On top of that: ``birth_date`` may be written ``DD/MM/YYYY`` and may not be in the
future. ``province`` must name a provincial-level unit, current or former, or give its code; it
is stored under its current name (see ``provinces.py``). A ``phone`` must be a Vietnamese mobile
number, and is stored as ``+84…``. A rejected row is reported with its line number (where the
record starts, the header being line 1), its external_id if it had one, and a reason that names
the field.

**Writes.** Good rows are upserted by ``external_id`` in chunks, one transaction per chunk.
A crash loses at most the chunk in flight, and running the import again is safe because it is
an upsert. A row is the whole recipient, as with ``service.upsert_many``: its addresses become
exactly those the row gives. An address whose value changes gets a fresh start (``dead_at``
cleared); one that stays the same keeps its state. When an external_id appears more than once in
the file, the last row wins. Within one chunk the earlier rows are dropped and counted as
``superseded``. Across chunks the later row simply updates the recipient.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta, timezone
from enum import StrEnum
from operator import itemgetter
from typing import IO, Any, cast

from pydantic import ValidationError
from sqlalchemy import Table, any_, bindparam, delete, null, or_, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from dispatcher.core.db import Database
from dispatcher.kit import json_depth
from dispatcher.kit.clock import utcnow
from dispatcher.kit.sql import insert_for
from dispatcher.recipients.provinces import normalise_province
from dispatcher.recipients.schemas import RecipientIn, known_channels
from dispatcher.tables.recipients import Address, Recipient

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_REJECTIONS",
    "ImportFileError",
    "ImportFormat",
    "ImportSummary",
    "Rejection",
    "import_recipients",
    "normalise_phone",
]

DEFAULT_CHUNK_SIZE = 1_000
DEFAULT_MAX_REJECTIONS = 10_000
# A physical line longer than this is rejected without being held in memory. Real rows are
# a few hundred characters; the limit only guards against a file with no line breaks.
MAX_LINE_CHARS = 1_000_000
READ_BYTES = 1 << 20
# Keys per lookup query: well under SQLite's limit of bound parameters whatever the chunk size.
LOOKUP_KEYS = 500
MAX_REASON_CHARS = 500

# Vietnam has had no daylight saving time since 1975: a fixed offset is exact.
VIETNAM = timezone(timedelta(hours=7))

_RECIPIENTS = cast(Table, Recipient.__table__)
_ADDRESSES = cast(Table, Address.__table__)
_FIELDS = ("external_id", "full_name", "birth_date", "province", "language", "kind")
_INSERTED = (
    "external_id",
    "full_name",
    "birth_date",
    "province",
    "language",
    "kind",
    "attributes",
    "created_at",
    "updated_at",
)
_UPDATED_ON_CONFLICT = (
    "full_name",
    "birth_date",
    "province",
    "language",
    "kind",
    "attributes",
    "updated_at",
)

_DMY = re.compile(r"([0-9]{1,2})/([0-9]{1,2})/([0-9]{4})")
_PHONE_SEPARATORS = re.compile(r"[\s.\-()]")
# Mobile numbers: 03x, 05x, 07x, 08x, 09x and 8 more digits, after 0 or the country code.
# "84…" without the plus is accepted because spreadsheets drop the "+" of "+84…".
_PHONE = re.compile(r"(?:\+84|0084|84|0)([35789][0-9]{8})")
# Bytes that are not UTF-8 come through the decoder as lone surrogates (surrogateescape), so
# the bad row can be rejected on its own instead of the whole file failing half-way.
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_VALUE_ERROR_PREFIX = "Value error, "


class ImportFormat(StrEnum):
    """The file formats the import reads."""

    csv = "csv"
    jsonl = "jsonl"


class ImportFileError(ValueError):
    """The file as a whole cannot be imported: no header, a required column missing..."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """A row that was not imported."""

    line: int
    external_id: str | None
    reason: str


@dataclass(slots=True)
class ImportSummary:
    """What an import did. ``rows`` = created + updated + rejected + superseded."""

    format: ImportFormat
    rows: int = 0
    created: int = 0
    updated: int = 0
    rejected: int = 0
    superseded: int = 0
    bytes_read: int = 0
    elapsed_seconds: float = 0.0
    rejections: list[Rejection] = field(default_factory=list)
    # Rejections counted in ``rejected`` but not kept in ``rejections`` (over the cap).
    rejections_omitted: int = 0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


@dataclass(slots=True)
class _Row:
    """A checked row, ready to be written."""

    values: dict[str, Any]
    addresses: dict[str, str]


def normalise_phone(value: str) -> str | None:
    """``+84`` and the 9 national digits for a Vietnamese mobile number, else None.

    Accepts ``0912345678``, ``091 234 5678``, ``0912.345.678``, ``+84912345678``,
    ``84912345678`` and ``0084912345678``.
    """
    match = _PHONE.fullmatch(_PHONE_SEPARATORS.sub("", value))
    return None if match is None else f"+84{match.group(1)}"


# -- Reading ------------------------------------------------------------------------------------


class _ChunkReader(io.RawIOBase):
    """A readable raw stream over an iterator of ``bytes`` chunks; counts the bytes it got."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._pending = memoryview(b"")
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
            self.bytes_read += len(chunk)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _chunks_of(source: IO[bytes] | Iterable[bytes]) -> Iterator[bytes]:
    read = getattr(source, "read", None)
    if read is not None:
        return iter(lambda: cast(bytes, read(READ_BYTES)), b"")
    return iter(source)


class _Lines:
    """The physical lines of a text stream, counted, with the bad ones noted by line number.

    A line that is too long is not kept: it is replaced by an empty line and noted. So is one
    whose bytes were not UTF-8. The parsers look the notes up for each record they make.
    """

    def __init__(self, text: io.TextIOBase) -> None:
        self._text = text
        self.number = 0
        self.problems: dict[int, str] = {}

    def __iter__(self) -> Iterator[str]:
        readline = self._text.readline
        while True:
            line = readline(MAX_LINE_CHARS)
            if not line:
                return
            self.number += 1
            if len(line) >= MAX_LINE_CHARS and not line.endswith(("\n", "\r")):
                while True:  # skip the rest of it, a piece at a time
                    rest = readline(MAX_LINE_CHARS)
                    if not rest or rest.endswith(("\n", "\r")):
                        break
                self.problems[self.number] = f"line longer than {MAX_LINE_CHARS} characters"
                line = "\n"
            elif _UNDECODABLE.search(line):
                self.problems[self.number] = "not UTF-8 text (save the file as UTF-8)"
            yield line

    def problem_in(self, first: int, last: int) -> str | None:
        """The first problem noted on lines ``first`` to ``last``; forgets earlier notes."""
        if not self.problems:
            return None
        found = None
        for number in sorted(self.problems):
            if number > last:
                break
            reason = self.problems.pop(number)
            if number >= first and found is None:
                found = reason
        return found


# -- Checking -----------------------------------------------------------------------------------


class _Checker:
    """Turns a raw row (a dict shaped like ``RecipientIn``) into a ``_Row`` or a reason."""

    def __init__(self, *, csv_names: bool) -> None:
        # In a CSV the address of a channel is a column of its own: name it like that.
        self._csv_names = csv_names
        self._channels = known_channels()
        self._today = utcnow().astimezone(VIETNAM).date()

    @staticmethod
    def birth_date(value: Any, errors: list[str]) -> Any:
        """DD/MM/YYYY becomes a date; anything else is left to ``RecipientIn``."""
        if isinstance(value, str) and (match := _DMY.fullmatch(value.strip())):
            day, month, year = (int(part) for part in match.groups())
            try:
                return date(year, month, day)
            except ValueError:
                errors.append(f"birth_date: {value.strip()!r} is not a date")
                return None
        return value

    @staticmethod
    def province(value: Any, errors: list[str]) -> Any:
        if not isinstance(value, str):
            return value  # None, or a wrong type that RecipientIn will name
        if not value.strip():
            return None
        name = normalise_province(value)
        if name is None:
            errors.append(
                f"province: {value.strip()[:64]!r} is not a Vietnamese province or city "
                "(a name such as Hà Nội, current or former, or a code such as 01)"
            )
        return name

    @staticmethod
    def phone(value: Any, errors: list[str]) -> Any:
        if not isinstance(value, str):
            errors.append("phone: give the number as text, e.g. 0912345678")
            return None
        number = normalise_phone(value)
        if number is None:
            errors.append(
                f"phone: {value.strip()[:32]!r} is not a Vietnamese mobile number (10 digits "
                "starting 03, 05, 07, 08 or 09, or +84 and 9 digits)"
            )
        return number

    def check(self, data: dict[str, Any]) -> _Row | str:
        errors: list[str] = []
        if "birth_date" in data:
            data["birth_date"] = self.birth_date(data["birth_date"], errors)
        if "province" in data:
            data["province"] = self.province(data["province"], errors)
        attributes = data.get("attributes")
        if isinstance(attributes, dict) and "phone" in attributes:
            attributes["phone"] = self.phone(attributes["phone"], errors)
        try:
            item = RecipientIn.model_validate(data)
        except ValidationError as exc:
            errors.extend(self._describe(error) for error in exc.errors(include_url=False))
        else:
            if item.birth_date is not None and item.birth_date > self._today:
                errors.append(f"birth_date: {item.birth_date.isoformat()} is in the future")
        if errors:
            return "; ".join(errors)[:MAX_REASON_CHARS]
        return _Row(
            values={
                "external_id": item.external_id,
                "full_name": item.full_name,
                "birth_date": item.birth_date,
                "province": item.province,
                "language": item.language,
                "kind": item.kind,
                "attributes": item.attributes,
            },
            addresses=item.addresses,
        )

    def _describe(self, error: Any) -> str:
        loc = [str(part) for part in error["loc"]]
        message = str(error["msg"]).removeprefix(_VALUE_ERROR_PREFIX)
        if loc == ["addresses"] and message.split(":", 1)[0] in self._channels:
            return message  # the validator already named the channel: "email: ..."
        if self._csv_names and len(loc) > 1 and loc[0] in {"addresses", "attributes"}:
            loc = loc[1:]
        return f"{'.'.join(loc) or 'row'}: {message}"


def _external_id_of(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()[:100]
    return None


# -- Parsing ------------------------------------------------------------------------------------

# A parsed record: its first line, the raw external_id, and the data or the reason it failed.
_Record = tuple[int, str | None, dict[str, Any] | str]


def _csv_records(lines: _Lines) -> Iterator[_Record]:
    line_iter = iter(lines)
    header_line = next(line_iter, None)
    if header_line is None:
        raise ImportFileError("the file is empty; a CSV needs a header row")
    if lines.problems:
        raise ImportFileError(f"header row: {lines.problems[1]}")
    # Spreadsheets set to a Vietnamese locale often export with ";" instead of ",".
    delimiter = max((",", ";", "\t"), key=header_line.count)
    reader = csv.reader(itertools.chain((header_line,), line_iter), delimiter=delimiter)
    header = [name.strip() for name in next(reader)]
    columns = _classify(header)
    width = len(header)
    last = lines.number
    while True:
        first = last + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            last = lines.number
            lines.problem_in(first, last)
            yield first, None, f"row: not readable as CSV ({exc})"
            continue
        last = lines.number
        problem = lines.problem_in(first, last)
        if problem is None and not (row and row[0].strip()) and not "".join(row).strip():
            continue  # a blank line, or one of only delimiters as spreadsheets leave them
        external_id = _external_id_of(row[columns.external_id]) if columns.has_id(row) else None
        if problem is not None:
            yield first, external_id, f"row: {problem}"
        elif len(row) != width:
            yield first, external_id, f"row: {len(row)} fields where the header has {width}"
        else:
            yield first, external_id, columns.to_data(row)


@dataclass(slots=True)
class _Columns:
    """Where each part of a recipient is in a CSV row."""

    fields: list[tuple[int, str]]
    addresses: list[tuple[int, str]]
    attributes: list[tuple[int, str]]
    external_id: int

    def has_id(self, row: list[str]) -> bool:
        return self.external_id < len(row)

    def to_data(self, row: list[str]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for index, name in self.fields:
            value = row[index].strip()
            if value:
                data[name] = value
        addresses = {}
        for index, channel in self.addresses:
            value = row[index].strip()
            if value:
                addresses[channel] = value
        attributes = {}
        for index, name in self.attributes:
            value = row[index].strip()
            if value:
                attributes[name] = value
        if addresses:
            data["addresses"] = addresses
        if attributes:
            data["attributes"] = attributes
        return data


def _classify(header: list[str]) -> _Columns:
    channels = known_channels()
    seen: set[str] = set()
    fields: list[tuple[int, str]] = []
    addresses: list[tuple[int, str]] = []
    attributes: list[tuple[int, str]] = []
    for index, name in enumerate(header):
        lowered = name.lower()
        if not lowered:
            continue  # spreadsheets add unnamed trailing columns
        if lowered in seen:
            raise ImportFileError(f"header row: the column {name!r} appears twice")
        seen.add(lowered)
        if lowered in _FIELDS:
            fields.append((index, lowered))
        elif lowered in channels:
            addresses.append((index, lowered))
        elif lowered == "phone":
            attributes.append((index, "phone"))
        else:
            attributes.append((index, name))
    missing = [name for name in ("external_id", "full_name") if name not in seen]
    if missing:
        raise ImportFileError(
            f"header row: no {' or '.join(missing)} column (columns: {', '.join(header)[:300]})"
        )
    external_id = next(index for index, name in fields if name == "external_id")
    return _Columns(fields, addresses, attributes, external_id)


def _jsonl_records(lines: _Lines, max_depth: int) -> Iterator[_Record]:
    for line in lines:
        number = lines.number
        problem = lines.problem_in(number, number)
        if problem is not None:
            yield number, None, f"row: {problem}"
            continue
        if not line.strip():
            continue
        try:
            data = json_depth.loads(line, max_depth)
        except json_depth.TooDeep as exc:
            yield number, None, f"row: {exc}"
            continue
        except ValueError as exc:
            yield number, None, f"row: not valid JSON ({exc})"
            continue
        if not isinstance(data, dict):
            yield number, None, "row: a JSON object is expected on each line"
            continue
        yield number, _external_id_of(data.get("external_id")), data


# -- Writing ------------------------------------------------------------------------------------


class _Bulk:
    """A Core statement compiled once for the dialect, then run with the driver's executemany.

    Executing a statement with a list of rows through SQLAlchemy converts every parameter of
    every row in Python, and profiling showed that this cost more than the database's own work.
    Here SQLAlchemy still builds and compiles the statement, and the values still go through the
    column types' own bind processors. But those run only for the columns that have one, and the
    chunk's timestamp is converted once per chunk, not once per row.
    """

    def __init__(
        self, statement: Any, *, dialect: Any, table: Table, columns: Sequence[str]
    ) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=columns)
        self.sql: str = compiled.string
        # qmark (SQLite) takes tuples in the compiled order; pyformat (psycopg) takes dicts.
        self.positional = bool(compiled.positional)
        self.names: list[str] = (
            list(compiled.positiontup or ()) if self.positional else list(columns)
        )
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for name in columns:
            processor = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self.processors[name] = processor

    def run(
        self, session: Session, rows: Iterable[dict[str, Any]], constants: dict[str, Any]
    ) -> None:
        """Execute for each row, with ``constants`` (converted once) added to every row."""
        processors = self.processors
        fixed = {
            name: processors[name](value) if name in processors else value
            for name, value in constants.items()
        }
        variable = [name for name in self.names if name not in fixed]
        get = itemgetter(*variable)
        single = len(variable) == 1  # then itemgetter returns the value, not a tuple
        convert = [(i, processors[name]) for i, name in enumerate(variable) if name in processors]
        batch: list[Any] = []
        for row in rows:
            values = [get(row)] if single else list(get(row))
            for index, processor in convert:
                if values[index] is not None:
                    values[index] = processor(values[index])
            batch.append(values)
        if not batch:
            return
        if not self.positional:
            params: list[Any] = [
                dict(zip(variable, values, strict=True)) | fixed for values in batch
            ]
        elif all(name in fixed for name in self.names[len(variable) :]):
            tail = tuple(fixed[name] for name in self.names[len(variable) :])
            params = [(*values, *tail) for values in batch]
        else:
            where = {name: i for i, name in enumerate(variable)}
            params = [
                tuple(values[where[n]] if n in where else fixed[n] for n in self.names)
                for values in batch
            ]
        session.connection().exec_driver_sql(self.sql, params)


class _Lookup:
    """``SELECT columns WHERE key IN (...)``, compiled once, run on the driver.

    SQLAlchemy renders an IN list of bound values anew at every execution, one name per value.
    For 1,000 keys that cost more than the query itself.

    On SQLite the statement has ``LOOKUP_KEYS`` slots, and a shorter list leaves the remaining
    slots NULL, which matches nothing. PostgreSQL gets ``key = ANY(array)``, one parameter.
    With hundreds of parameters, the plan that PostgreSQL caches for the statement (psycopg
    prepares it after a few runs) was made while the table was nearly empty. That plan
    seq-scans, and it got slower with every chunk: 74 ms a lookup at 40,000 rows. An array
    parameter keeps the plan an index scan.
    """

    def __init__(self, columns: list[Any], key: Any, *, dialect: Any) -> None:
        self._array = dialect.name == "postgresql"
        if self._array:
            self._names = ["keys"]
            keys = bindparam("keys", type_=postgresql.ARRAY(key.type))
            statement = select(*columns).where(key == any_(keys))
        else:
            self._names = [f"k{i}" for i in range(LOOKUP_KEYS)]
            slots = [bindparam(name, type_=key.type) for name in self._names]
            statement = select(*columns).where(key.in_(slots))
        compiled = statement.compile(dialect=dialect)
        self._sql: str = compiled.string
        self._order: list[str] | None = (
            list(compiled.positiontup or ()) if compiled.positional else None
        )

    def rows(self, session: Session, keys: list[Any]) -> Iterator[tuple[Any, ...]]:
        connection = session.connection()
        for start in range(0, len(keys), LOOKUP_KEYS):
            part = keys[start : start + LOOKUP_KEYS]
            if self._array:
                values: dict[str, Any] = {"keys": part}
            else:
                values = dict(itertools.zip_longest(self._names, part))
            params: Any = values if self._order is None else tuple(values[n] for n in self._order)
            yield from map(tuple, connection.exec_driver_sql(self._sql, params).all())


class _Statements:
    """The statements of one import, compiled for its database."""

    def __init__(self, session: Session) -> None:
        dialect = session.connection().dialect
        upsert = insert_for(session, _RECIPIENTS)
        upsert = upsert.on_conflict_do_update(
            index_elements=[_RECIPIENTS.c.external_id],
            set_={name: upsert.excluded[name] for name in _UPDATED_ON_CONFLICT},
        )
        self.recipients = _Bulk(upsert, dialect=dialect, table=_RECIPIENTS, columns=_INSERTED)
        address = insert_for(session, _ADDRESSES)
        address = address.on_conflict_do_update(
            index_elements=[_ADDRESSES.c.recipient_id, _ADDRESSES.c.channel],
            # A new address deserves a fresh chance even if the old one was dead. The WHERE
            # leaves an address whose value did not change (and its dead state) as it is.
            set_={"value": address.excluded.value, "dead_at": null(), "dead_reason": null()},
            where=_ADDRESSES.c.value != address.excluded.value,
        )
        self.addresses = _Bulk(
            address,
            dialect=dialect,
            table=_ADDRESSES,
            columns=["recipient_id", "channel", "value"],
        )
        self.ids = _Lookup(
            [_RECIPIENTS.c.external_id, _RECIPIENTS.c.id],
            _RECIPIENTS.c.external_id,
            dialect=dialect,
        )
        self.current_addresses = _Lookup(
            [_ADDRESSES.c.id, _ADDRESSES.c.recipient_id, _ADDRESSES.c.channel, _ADDRESSES.c.value],
            _ADDRESSES.c.recipient_id,
            dialect=dialect,
        )


class _Writer:
    """Writes chunks of checked rows: one transaction per chunk."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._statements: _Statements | None = None

    def write(self, rows: dict[str, _Row]) -> int:
        """Upsert one chunk of recipients with their addresses; returns how many were new."""
        with self._db.transaction() as session:
            if self._statements is None:
                self._statements = _Statements(session)
            return self._write(session, self._statements, rows)

    @staticmethod
    def _write(session: Session, statements: _Statements, rows: dict[str, _Row]) -> int:
        # Which rows are updates: to count them, and because only their addresses can be stale.
        existing: dict[str, int] = dict(statements.ids.rows(session, list(rows)))
        now = utcnow()
        statements.recipients.run(
            session,
            (row.values for row in rows.values()),
            {"created_at": now, "updated_at": now},
        )
        # The driver's executemany returns no rows (SQLite's cannot), so the new ids are read
        # back with one indexed query. It sees this transaction's own rows.
        new = [external_id for external_id in rows if external_id not in existing]
        ids = existing | dict(statements.ids.rows(session, new))

        unchanged: set[tuple[int, str]] = set()
        if existing:
            wanted = {ids[external_id]: rows[external_id].addresses for external_id in existing}
            stale: list[int] = []
            for address_id, recipient_id, channel, value in statements.current_addresses.rows(
                session, list(wanted)
            ):
                new_value = wanted[recipient_id].get(channel)
                if new_value is None:
                    stale.append(address_id)  # the row no longer lists this channel
                elif new_value == value:
                    unchanged.add((recipient_id, channel))  # nothing to write
            for start in range(0, len(stale), LOOKUP_KEYS):
                part = stale[start : start + LOOKUP_KEYS]
                session.execute(delete(_ADDRESSES).where(_ADDRESSES.c.id.in_(part)))

        statements.addresses.run(
            session,
            (
                {"recipient_id": recipient_id, "channel": channel, "value": value}
                for external_id, row in rows.items()
                for recipient_id in (ids[external_id],)
                for channel, value in row.addresses.items()
                if (recipient_id, channel) not in unchanged
            ),
            {},
        )
        return len(rows) - len(existing)


def _recorded_elsewhere(
    db: Database, external_ids: list[str], provinces: frozenset[str]
) -> set[str]:
    """Which of these citizens exist with a province outside ``provinces``."""
    found: set[str] = set()
    with db.reading() as session:
        for start in range(0, len(external_ids), LOOKUP_KEYS):
            part = external_ids[start : start + LOOKUP_KEYS]
            found.update(
                session.scalars(
                    select(_RECIPIENTS.c.external_id).where(
                        _RECIPIENTS.c.external_id.in_(part),
                        or_(
                            _RECIPIENTS.c.province.is_(None),
                            _RECIPIENTS.c.province.not_in(sorted(provinces)),
                        ),
                    )
                )
            )
    return found


# -- The engine ---------------------------------------------------------------------------------


def import_recipients(
    source: IO[bytes] | Iterable[bytes],
    *,
    format: ImportFormat | str,
    db: Database,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_rejections: int = DEFAULT_MAX_REJECTIONS,
    max_depth: int = json_depth.DEFAULT_MAX_DEPTH,
    progress: Callable[[int], None] | None = None,
    on_reject: Callable[[Rejection], None] | None = None,
    provinces: frozenset[str] | None = None,
) -> ImportSummary:
    """Import recipients from ``source``, a binary file or an iterator of ``bytes`` chunks.

        ``provinces`` (the names a unit's territory stores, None: everywhere) rejects a row
        whose province lies elsewhere, and a row of a citizen recorded in another province.

        ``progress`` is called with the number of bytes read so far after each chunk is written.
        ``on_reject`` sees every rejected row, also those beyond ``max_rejections`` (the CLI writes
        them to its report that way). A JSON Lines row nesting deeper than ``max_depth`` is
    rejected. Raises ``ImportFileError`` when the file as a whole is not
        importable; chunks written before that stay written.
    """
    import_format = ImportFormat(format)
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    started = time.monotonic()
    summary = ImportSummary(format=import_format)
    raw = _ChunkReader(_chunks_of(source))
    # utf-8-sig drops a BOM if there is one; newline="" hands line ends to the csv module,
    # which needs them to read quoted fields that span lines.
    text = io.TextIOWrapper(
        io.BufferedReader(raw, buffer_size=READ_BYTES),
        encoding="utf-8-sig",
        errors="surrogateescape",
        newline="",
    )
    lines = _Lines(text)
    is_csv = import_format is ImportFormat.csv
    records = _csv_records(lines) if is_csv else _jsonl_records(lines, max_depth)
    checker = _Checker(csv_names=is_csv)
    writer = _Writer(db)
    pending: dict[str, _Row] = {}
    lines_of: dict[str, int] = {}

    def reject(line: int, external_id: str | None, reason: str) -> None:
        summary.rejected += 1
        rejection = Rejection(line, external_id, reason)
        if on_reject is not None:
            on_reject(rejection)
        if len(summary.rejections) < max_rejections:
            summary.rejections.append(rejection)
        else:
            summary.rejections_omitted += 1

    def flush() -> None:
        if provinces is not None:
            for external_id in _recorded_elsewhere(db, list(pending), provinces):
                del pending[external_id]
                reject(
                    lines_of[external_id],
                    external_id,
                    "this citizen is recorded in a province outside your unit's territory: "
                    "their record is changed by the unit that serves them",
                )
        lines_of.clear()
        created = writer.write(pending)
        summary.created += created
        summary.updated += len(pending) - created
        pending.clear()
        summary.bytes_read = raw.bytes_read
        if progress is not None:
            progress(raw.bytes_read)

    for line, external_id, data in records:
        summary.rows += 1
        if isinstance(data, str):
            reject(line, external_id, data)
            continue
        checked = checker.check(data)
        if isinstance(checked, str):
            reject(line, external_id, checked)
            continue
        if provinces is not None and checked.values.get("province") not in provinces:
            reject(
                line,
                external_id,
                f"province: {checked.values.get('province')!r} lies outside your unit's territory",
            )
            continue
        key = checked.values["external_id"]
        lines_of[key] = line
        if pending.pop(key, None) is not None:
            summary.superseded += 1
        pending[key] = checked
        if len(pending) >= chunk_size:
            flush()
    if pending:
        flush()
    if progress is not None and summary.bytes_read != raw.bytes_read:
        progress(raw.bytes_read)  # the tail after the last chunk: blank or rejected rows
    summary.bytes_read = raw.bytes_read
    summary.elapsed_seconds = time.monotonic() - started
    return summary
