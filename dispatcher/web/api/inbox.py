"""The VssID inbox as the app reads it, and device registration for pushes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select, update

from dispatcher.inbox.schemas import DeviceIn, DeviceOut, InboxItemOut, InboxPage
from dispatcher.kit.clock import utcnow
from dispatcher.kit.cursors import decode_cursor, encode_cursor
from dispatcher.kit.errors import NotFound
from dispatcher.kit.sql import insert_for
from dispatcher.tables.inbox import Device, InboxItem
from dispatcher.tables.recipients import Address, Recipient
from dispatcher.web.http.callers import Sender, SenderOrOperator
from dispatcher.web.http.deps import Cursor, DbSession, PathId

router = APIRouter(tags=["vssid inbox"])


def _recipient_id(session: DbSession, external_id: str) -> int:
    found = session.scalar(select(Recipient.id).where(Recipient.external_id == external_id))
    if found is None:
        raise NotFound(f"recipient {external_id!r} does not exist")
    return found


def _out(item: InboxItem) -> InboxItemOut:
    return InboxItemOut(
        id=item.id,
        kind=item.kind,
        title=item.title,
        body=item.body,
        html=item.html,
        created_at=item.created_at,
        read_at=item.read_at,
    )


@router.get("/v1/inbox/{external_id}", response_model=InboxPage, summary="Newest first")
def read_inbox(
    caller: SenderOrOperator,
    external_id: str,
    session: DbSession,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    unread: bool = False,
) -> InboxPage:
    recipient_id = _recipient_id(session, external_id)
    query = (
        select(InboxItem)
        .where(InboxItem.recipient_id == recipient_id)
        .order_by(InboxItem.id.desc())
        .limit(limit + 1)
    )
    if unread:
        query = query.where(InboxItem.read_at.is_(None))
    if cursor is not None:
        query = query.where(InboxItem.id < decode_cursor(cursor))
    items = list(session.scalars(query))
    more = len(items) > limit
    items = items[:limit]
    unread_count = session.scalar(
        select(func.count())
        .select_from(InboxItem)
        .where(InboxItem.recipient_id == recipient_id, InboxItem.read_at.is_(None))
    )
    return InboxPage(
        items=[_out(i) for i in items],
        unread=unread_count or 0,
        next_cursor=encode_cursor(items[-1].id) if more else None,
    )


@router.post("/v1/inbox/{external_id}/{item_id}/read", response_model=InboxItemOut)
def mark_read(
    external_id: str, item_id: PathId, session: DbSession, caller: Sender
) -> InboxItemOut:
    recipient_id = _recipient_id(session, external_id)
    item = session.get(InboxItem, item_id)
    if item is None or item.recipient_id != recipient_id:
        raise NotFound(f"inbox item {item_id} does not exist for {external_id!r}")
    if item.read_at is None:
        item.read_at = utcnow()
    return _out(item)


@router.post(
    "/v1/recipients/{external_id}/devices",
    response_model=DeviceOut,
    status_code=201,
    summary="Register a VssID device for pushes (re-registering a token moves it)",
)
def register_device(
    external_id: str, data: DeviceIn, session: DbSession, caller: Sender
) -> DeviceOut:
    recipient_id = _recipient_id(session, external_id)
    now = utcnow()
    session.execute(
        insert_for(session, Device)
        .values(
            recipient_id=recipient_id,
            token=data.token,
            platform=data.platform,
            created_at=now,
            last_seen_at=now,
        )
        .on_conflict_do_update(
            index_elements=["token"],
            set_={"recipient_id": recipient_id, "platform": data.platform, "last_seen_at": now},
        )
    )
    # A phone registered again: the VssID address reaches someone once more.
    session.execute(
        update(Address)
        .where(Address.recipient_id == recipient_id, Address.channel == "vssid")
        .values(dead_at=None, dead_reason=None)
    )
    device = session.scalar(select(Device).where(Device.token == data.token))
    assert device is not None
    return DeviceOut(id=device.id, platform=device.platform, created_at=device.created_at)
