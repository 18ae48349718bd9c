"""``POST /v1/recipients/import``: a CSV or JSON Lines file of recipients, streamed.

The request body is read as it arrives and is never held whole. Good rows are written in chunks,
one transaction per chunk, so a large file is imported while it uploads. The answer is the
summary with every rejected row (line, external_id, reason), up to 10,000 of them. See
``importer.py`` for the columns and the checks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import anyio
import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from dispatcher.core.config import get_settings
from dispatcher.core.db import get_database
from dispatcher.kit.errors import Invalid
from dispatcher.recipients.importer import (
    DEFAULT_MAX_REJECTIONS,
    ImportFileError,
    ImportFormat,
    ImportSummary,
    import_recipients,
)

__all__ = ["ImportReport", "RejectedRow", "router"]

from dispatcher.auth.service import Role
from dispatcher.units import scope as scopes
from dispatcher.web.http.callers import require
from dispatcher.web.http.deps import request_scope

router = APIRouter(
    prefix="/v1/recipients", tags=["recipients"], dependencies=[Depends(require(Role.editor))]
)

CONTENT_TYPES: dict[str, ImportFormat] = {
    "text/csv": ImportFormat.csv,
    "application/x-ndjson": ImportFormat.jsonl,
    "application/jsonl": ImportFormat.jsonl,
}

_CSV_EXAMPLE = (
    "external_id,full_name,birth_date,province,language,email,zalo,phone,ma_don_vi\n"
    "0100000001,Nguyễn Văn An,15/04/1985,Hà Nội,vi,an.nguyen@example.vn,,0912345678,HN001\n"
    "0100000002,Trần Thị Bích Ngọc,1990-11-02,Quảng Nam,vi,,0987654321,,DN002\n"
)
_JSONL_EXAMPLE = (
    '{"external_id": "0100000001", "full_name": "Nguyễn Văn An", "birth_date": "1985-04-15", '
    '"province": "Hà Nội", "addresses": {"email": "an.nguyen@example.vn"}, '
    '"attributes": {"phone": "0912345678"}}\n'
    '{"external_id": "0100000002", "full_name": "Trần Thị Bích Ngọc", "province": "Quảng Nam", '
    '"addresses": {"zalo": "0987654321"}}\n'
)
_TEXT_BODY = {"type": "string", "description": "UTF-8, with or without a BOM."}

_OPENAPI_EXTRA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The file itself as the raw body (not multipart). It is streamed: "
        "rows are checked and written while the upload is still running.",
        "content": {
            "text/csv": {"schema": _TEXT_BODY, "example": _CSV_EXAMPLE},
            "application/x-ndjson": {"schema": _TEXT_BODY, "example": _JSONL_EXAMPLE},
            "application/jsonl": {"schema": _TEXT_BODY, "example": _JSONL_EXAMPLE},
        },
    }
}

_DESCRIPTION = """
Creates or updates recipients by `external_id` from a file sent as the raw request body:
`Content-Type: text/csv`, or `application/x-ndjson` / `application/jsonl` for JSON Lines.
The `format` query parameter overrides the content type.

**CSV**: a header row, then one recipient per row. Columns: `external_id`, `full_name`,
`birth_date` (`YYYY-MM-DD` or `DD/MM/YYYY`), `province`, `language`, `kind`, one column per
channel (`email`, `telegram`, `zalo`, `facebook`, `vssid`), and `phone`. Any other column is
stored in `attributes`. **JSON Lines**: one `RecipientIn` object per line.

Each row is checked like `POST /v1/recipients`, and further: a `province` must be a Vietnamese
province or city, current (34 since 2025) or former (63), by name or code, and is stored under
its current name. A `phone` must be a Vietnamese mobile number and is stored as `+84…`.

Good rows are written in chunks of 1,000, one transaction per chunk. A bad row does not stop
the import. It is listed in `rejected_rows` with its line number (the header is line 1), its
external_id and a reason that names the field. A row is the whole recipient: addresses it does
not list are removed. Sending the same file again is safe.

Answers 200 with the summary even when rows were rejected. 415 for another content type;
422 when the file as a whole is unusable (no header, no `external_id` column...).
""".strip()


class RejectedRow(BaseModel):
    line: int = Field(description="Line of the file where the row starts; the header is line 1.")
    external_id: str | None
    reason: str = Field(description="What is wrong, naming the field.")


class ImportReport(BaseModel):
    format: ImportFormat
    rows: int = Field(description="Rows read (not counting the header and blank lines).")
    created: int
    updated: int
    rejected: int
    superseded: int = Field(
        description="Rows replaced by a later row with the same external_id in the same chunk."
    )
    bytes_read: int
    elapsed_seconds: float
    rows_per_second: float
    rejected_rows: list[RejectedRow] = Field(
        description=f"The rejected rows, at most {DEFAULT_MAX_REJECTIONS}."
    )
    rejected_rows_omitted: int = Field(
        description="Rejected rows beyond the ones listed (counted in `rejected`)."
    )

    @classmethod
    def of(cls, summary: ImportSummary) -> ImportReport:
        return cls(
            format=summary.format,
            rows=summary.rows,
            created=summary.created,
            updated=summary.updated,
            rejected=summary.rejected,
            superseded=summary.superseded,
            bytes_read=summary.bytes_read,
            elapsed_seconds=round(summary.elapsed_seconds, 3),
            rows_per_second=round(summary.rows_per_second, 1),
            rejected_rows=[
                RejectedRow(line=r.line, external_id=r.external_id, reason=r.reason)
                for r in summary.rejections
            ],
            rejected_rows_omitted=summary.rejections_omitted,
        )


def _format_of(content_type: str | None) -> ImportFormat:
    media_type, _, parameters = (content_type or "").partition(";")
    found = CONTENT_TYPES.get(media_type.strip().lower())
    charset = next(
        (
            value.strip().strip('"').lower()
            for name, _, value in (p.partition("=") for p in parameters.split(";"))
            if name.strip().lower() == "charset"
        ),
        "utf-8",
    )
    if found is None or charset not in {"utf-8", "utf8"}:
        raise HTTPException(
            status_code=415,
            detail=f"unsupported content type {content_type or '(none)'!r}: send the file as "
            "text/csv, or as application/x-ndjson or application/jsonl for JSON Lines, in "
            "UTF-8; or say ?format=csv or ?format=jsonl",
        )
    return found


async def _next_chunk(stream: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


def _body_chunks(stream: AsyncIterator[bytes]) -> Iterator[bytes]:
    """The request body as a plain iterator, for the import running in a worker thread.

    Each chunk is awaited on the event loop as the import asks for it. The upload is therefore
    throttled by how fast rows are written, and never buffered.
    """
    while (chunk := anyio.from_thread.run(_next_chunk, stream)) is not None:
        if chunk:
            yield chunk


@router.post(
    "/import",
    response_model=ImportReport,
    summary="Import recipients from a CSV or JSON Lines file (streamed), with a report",
    description=_DESCRIPTION,
    openapi_extra=_OPENAPI_EXTRA,
    responses={
        415: {"description": "Not CSV or JSON Lines in UTF-8 (and no `format` given)."},
        422: {"description": "The file as a whole is unusable, e.g. it has no header row."},
    },
)
async def import_recipients_file(
    request: Request,
    format: Annotated[
        ImportFormat | None,
        Query(description="csv or jsonl; overrides the request's Content-Type."),
    ] = None,
) -> ImportReport:
    import_format = format or _format_of(request.headers.get("content-type"))
    chunks = _body_chunks(request.stream())
    database = get_database()

    max_depth = get_settings().json_max_depth
    # A unit's editor imports the citizens of its territory only (the root's: everyone).
    territory = request_scope(request)
    provinces = (
        scopes.province_names(territory.territory)
        if territory is not None and territory.territory is not None
        else None
    )

    def run() -> ImportSummary:
        # The engine is synchronous (database work): it runs in a worker thread, so the event
        # loop keeps serving other requests during a long import.
        return import_recipients(
            chunks, format=import_format, db=database, max_depth=max_depth, provinces=provinces
        )

    try:
        summary = await anyio.to_thread.run_sync(run)
    except ImportFileError as exc:
        raise Invalid(str(exc), loc=["body"]) from None
    return ImportReport.of(summary)
