"""The database side of the VssID channel: what ``channels.vssid`` writes and reads.

They implement the adapter's ``Inbox`` and ``Devices`` protocols; the adapter runs on the
event loop, so each call does its database work in a thread.
"""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy import delete, select

from dispatcher.core.db import Database
from dispatcher.kit.clock import utcnow
from dispatcher.kit.sql import insert_for
from dispatcher.tables.inbox import Device, InboxItem
from dispatcher.tables.recipients import Address, Recipient

log = structlog.get_logger(__name__)


class DatabaseInbox:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _add(
        self,
        delivery_id: int,
        recipient: str,
        title: str,
        body: str,
        html: str | None,
        kind: str,
    ) -> str:
        with self.db.transaction() as session:
            recipient_id = session.scalar(
                select(Recipient.id).where(Recipient.external_id == recipient)
            )
            if recipient_id is None:
                raise LookupError(f"recipient {recipient!r} does not exist")
            session.execute(
                insert_for(session, InboxItem)
                .values(
                    recipient_id=recipient_id,
                    delivery_id=delivery_id,
                    kind=kind,
                    title=title,
                    body=body,
                    html=html,
                    created_at=utcnow(),
                )
                .on_conflict_do_nothing()
            )
            item = session.scalar(select(InboxItem.id).where(InboxItem.delivery_id == delivery_id))
            assert item is not None
            return str(item)

    async def add(
        self,
        *,
        delivery_id: int,
        recipient: str,
        account: str,
        title: str,
        body: str,
        html: str | None,
        kind: str,
    ) -> str:
        return await asyncio.to_thread(self._add, delivery_id, recipient, title, body, html, kind)


class DatabaseDevices:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _tokens(self, account: str) -> list[str]:
        with self.db.transaction() as session:
            return list(
                session.scalars(
                    select(Device.token)
                    .join(Address, Address.recipient_id == Device.recipient_id)
                    .where(Address.channel == "vssid", Address.value == account)
                    .order_by(Device.id)
                )
            )

    def _drop(self, token: str) -> None:
        with self.db.transaction() as session:
            session.execute(delete(Device).where(Device.token == token))

    async def tokens(self, account: str) -> list[str]:
        return await asyncio.to_thread(self._tokens, account)

    async def drop(self, token: str, reason: str) -> None:
        # Never log the token itself: it addresses a person's phone.
        log.info("device_dropped", reason=reason)
        await asyncio.to_thread(self._drop, token)
