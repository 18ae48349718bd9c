"""Durable state for channel adapters, in the database every worker shares."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from dispatcher.core.db import Database
from dispatcher.kit.clock import utcnow
from dispatcher.kit.sql import insert_for
from dispatcher.tables.channel_state import ChannelState


class DatabaseState:
    """A ``channels.base.StateStore`` over the ``channel_state`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _get(self, key: str) -> str | None:
        with self.db.transaction() as session:
            return session.scalar(select(ChannelState.value).where(ChannelState.key == key))

    def _set(self, key: str, value: str) -> None:
        with self.db.transaction() as session:
            statement = insert_for(session, ChannelState).values(
                key=key, value=value, updated_at=utcnow()
            )
            session.execute(
                statement.on_conflict_do_update(
                    index_elements=["key"],
                    set_={"value": value, "updated_at": utcnow()},
                )
            )

    async def get(self, key: str) -> str | None:
        return await asyncio.to_thread(self._get, key)

    async def set(self, key: str, value: str) -> None:
        await asyncio.to_thread(self._set, key, value)
