"""Searching the archived months: "did X get Y" answered from the Parquet files.

``dispatcher archive`` moves a month's deliveries and attempts into
``DISPATCHER_ARCHIVE_DIR/YYYY-MM/{deliveries,attempts}.parquet``
(:mod:`dispatcher.deliveries.archive`). DuckDB reads them all in place, in one query over the
directory's files, with the same filters as the live search except the address (an address is
looked up among the recipients' current ones, which says nothing of a month long gone: search
by recipient instead). Answers come as the live search's, in delivery id order, marked
``archived``; addresses are masked the same way (the recipient's current address on the channel,
and anything shaped like an address in a reason or a reply).

Only what an archive explicitly asks for reads the files: ``dispatcher search --archives`` and
the delivery search's ``include_archived=true``.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from dispatcher.deliveries.archive import FILES, MANIFEST
from dispatcher.deliveries.schemas import AttemptOut, DeliveryOut, DeliveryPage
from dispatcher.kit.cursors import decode_cursor, encode_cursor
from dispatcher.kit.errors import Invalid
from dispatcher.recipients.masking import mask_address, mask_known, mask_text
from dispatcher.tables.campaigns import Campaign
from dispatcher.tables.deliveries import OPEN_STATUSES
from dispatcher.tables.recipients import Address
from dispatcher.units import scope as scopes


def months(root: Path) -> list[Path]:
    """The archived months' directories (those with a manifest: their export completed)."""
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if (p / MANIFEST).is_file() and (p / FILES[0]).is_file()
    )


def _paths(directories: list[Path], name: str) -> list[str]:
    return [str(d / name) for d in directories if (d / name).is_file()]


def _where(
    filters: Any, after_id: int | None, campaigns: list[int] | None = None
) -> tuple[list[str], list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []

    def add(clause: str, value: Any) -> None:
        clauses.append(clause)
        params.append(value)

    if campaigns is not None:
        # The caller's scope: the campaigns it may see (an archived delivery is seen through
        # its campaign, as a live one is).
        add("list_contains(?, campaign_id)", campaigns)

    if getattr(filters, "address", None) is not None:
        raise Invalid(
            "the archives cannot be searched by address (addresses change; an archived month "
            "keeps who it was sent to): search by recipient",
            loc=["query", "address"],
        )
    for name, column in (
        ("campaign_id", "campaign_id"),
        ("run_id", "run_id"),
        ("recipient", "recipient"),
        ("status", "status"),
        ("channel", "channel"),
        ("error_class", "error_class"),
    ):
        value = getattr(filters, name, None)
        if value is not None:
            add(f"{column} = ?", value)
    since: datetime | None = getattr(filters, "since", None)
    until: datetime | None = getattr(filters, "until", None)
    if since is not None:
        add("updated_at >= ?", since)
    if until is not None:
        add("updated_at < ?", until)
    if after_id is not None:
        add("id > ?", after_id)
    return clauses, params


def find(
    session: Session | None,
    root: Path,
    filters: Any,
    *,
    after_id: int | None = None,
    limit: int = 100,
    campaigns: list[int] | None = None,
) -> list[DeliveryOut]:
    """Archived deliveries matching ``filters``, with their attempts, in id order (at most
    ``limit``, after ``after_id``); addresses masked. ``campaigns``: only those campaigns'
    deliveries (None: every campaign)."""
    directories = months(root)
    clauses, params = _where(filters, after_id, campaigns)
    if not directories:
        return []
    where = " AND ".join(clauses) or "TRUE"
    connection = duckdb.connect()
    try:
        deliveries = _paths(directories, FILES[0])
        rows = connection.execute(
            "SELECT id, campaign_id, run_id, recipient_id, recipient, channel, status, attempts, "
            "locale, provider_message_id, error_class, error_reason, created_at, updated_at, "
            "sent_at, available_at FROM read_parquet(?, union_by_name = true) "
            f"WHERE {where} ORDER BY id LIMIT ?",
            [deliveries, *params, int(limit)],
        ).fetchall()
        found: dict[int, list[AttemptOut]] = defaultdict(list)
        tried = _paths(directories, FILES[1])
        ids = [int(row[0]) for row in rows]
        addresses = _addresses(session, rows)
        if ids and tried:
            for (
                delivery_id,
                number,
                started_at,
                duration_ms,
                outcome,
                error_class,
                provider_code,
                reply,
                message_id,
                locale,
                duplicate,
            ) in connection.execute(
                "SELECT delivery_id, number, started_at, duration_ms, outcome, error_class, "
                "provider_code, provider_reply, provider_message_id, locale, possible_duplicate "
                "FROM read_parquet(?, union_by_name = true) "
                "WHERE list_contains(?, delivery_id) ORDER BY delivery_id, number, id",
                [tried, ids],
            ).fetchall():
                known = (addresses.get(int(delivery_id)),)
                found[int(delivery_id)].append(
                    AttemptOut(
                        number=number,
                        started_at=started_at,
                        duration_ms=duration_ms,
                        outcome=outcome,
                        error_class=error_class,
                        provider_code=provider_code,
                        provider_reply=mask_text(reply, known),
                        provider_message_id=mask_known(message_id, known),
                        locale=locale,
                        possible_duplicate=bool(duplicate),
                    )
                )
    finally:
        connection.close()
    out: list[DeliveryOut] = []
    for row in rows:
        (
            delivery_id,
            campaign_id,
            run_id,
            _recipient_id,
            recipient,
            channel,
            status,
            attempts,
            locale,
            message_id,
            error_class,
            reason,
            created_at,
            updated_at,
            sent_at,
            available_at,
        ) = row
        value = addresses.get(int(delivery_id))
        out.append(
            DeliveryOut(
                id=delivery_id,
                campaign_id=campaign_id,
                run_id=run_id,
                recipient=recipient or "",
                channel=channel,
                address=mask_address(value),
                status=status,
                attempts_count=attempts,
                locale=locale,
                provider_message_id=mask_known(message_id, (value,)),
                error_class=error_class,
                error_reason=mask_text(reason, (value,)),
                created_at=created_at,
                updated_at=updated_at,
                sent_at=sent_at,
                next_attempt_at=available_at if status in OPEN_STATUSES else None,
                attempts=found.get(int(delivery_id), []),
                archived=True,
            )
        )
    return out


def _addresses(session: Session | None, rows: list[Any]) -> dict[int, str]:
    """Each archived delivery's recipient's current address on its channel, by delivery id."""
    if session is None or not rows:
        return {}
    pairs = {(int(row[3]), str(row[5])) for row in rows}
    by_pair: dict[tuple[int, str], str] = {}
    recipients = sorted({r for r, _ in pairs})
    for start in range(0, len(recipients), 1000):
        for rid, channel, value in session.execute(
            select(Address.recipient_id, Address.channel, Address.value).where(
                and_(Address.recipient_id.in_(recipients[start : start + 1000]))
            )
        ):
            by_pair[(int(rid), str(channel))] = value
    return {
        int(row[0]): by_pair[(int(row[3]), str(row[5]))]
        for row in rows
        if (int(row[3]), str(row[5])) in by_pair
    }


def include(
    session: Session,
    page: DeliveryPage,
    *,
    root: Path,
    filters: Any,
    cursor: str | None,
    limit: int,
) -> DeliveryPage:
    """The live search's page with the archived deliveries that belong in it, in id order.

    The live page holds the first ``limit`` live matches after the cursor; the archives'
    first ``limit`` matches after it are read too, and the first ``limit`` of both make the
    page (a delivery both live and archived, from an archive cut short, is shown live)."""
    after_id = None if cursor is None else decode_cursor(cursor)
    scope = scopes.current(session)
    # The session's scope narrows the campaigns read here, and through them the archives.
    campaigns = None if scope.everything else list(session.scalars(select(Campaign.id)))
    archived = find(session, root, filters, after_id=after_id, limit=limit + 1, campaigns=campaigns)
    if not archived:
        return page
    live_ids = {item.id for item in page.items}
    merged = sorted(
        [*page.items, *(item for item in archived if item.id not in live_ids)],
        key=lambda item: item.id,
    )
    more = page.next_cursor is not None or len(merged) > limit
    merged = merged[:limit]
    return DeliveryPage(
        items=merged, next_cursor=encode_cursor(merged[-1].id) if more and merged else None
    )
