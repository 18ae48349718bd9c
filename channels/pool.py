"""The adapters a worker process has open, created on first use and kept across batches.

One adapter is open per channel *account*: the environment's settings of a channel (its root
account, keyed by the channel's name as before) or an account of its own that a unit holds
(``zalo@HN``), built from that account's settings. Adapters know nothing of accounts: each is
built through :meth:`~channels.base.Adapter.from_settings` with its account's settings, and
its durable state is kept under the account's own scope (:class:`AccountState`), so two Zalo
OAs rotate their own tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import structlog

from channels import registry
from channels.base import Adapter, AdapterContext, StateStore
from channels.settings import ChannelSettings

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Account:
    """Which account of a channel a message goes through.

    ``key`` names it wherever something is kept per account (rate limits, pauses, adapter
    state, logs): the channel's name for the root account (the environment's settings, so an
    install with one unit keeps its keys), ``channel@UNIT`` for a unit's own. ``settings`` are
    the account's own (None: the environment's); ``revision`` changes when they do, so the
    pool opens a fresh adapter. ``repr`` shows no setting: they hold secrets.
    """

    channel: str
    key: str
    settings: ChannelSettings | None = dataclasses.field(default=None, repr=False)
    revision: str = ""
    # Why the account cannot be used now (its secrets cannot be read): its sends wait.
    problem: str | None = None
    # Where its adapter's state is kept ("@HN.<digest>"): a unit's and its credentials', so that
    # two channels of one unit on the same credentials share their state as the environment's
    # do (ZNS and Zalo rotate one token pair), and new credentials start afresh.
    state_scope: str | None = None

    @classmethod
    def root(cls, channel: str) -> Account:
        """The environment's account of ``channel`` (one instance each: every send asks)."""
        return _root_account(channel) if cls is Account else cls(channel, channel)

    @property
    def is_root(self) -> bool:
        return self.key == self.channel


class AccountState:
    """An adapter's state store seen through one account: its keys under the account's state
    scope (``@HN.1a2b3c4d/zalo:refresh_token``). The root account's keys are unchanged."""

    def __init__(self, state: StateStore, scope: str) -> None:
        self.state = state
        self.prefix = f"{scope}/"

    async def get(self, key: str) -> str | None:
        return await self.state.get(self.prefix + key)

    async def set(self, key: str, value: str) -> None:
        await self.state.set(self.prefix + key, value)


class AdapterPool:
    def __init__(self, settings: Any, context: AdapterContext | None = None) -> None:
        self.settings = settings
        self.context = context or AdapterContext()
        # By account key: the adapter and the revision of the settings it was built from.
        self._adapters: dict[str, tuple[Adapter, str]] = {}
        self._lock: asyncio.Lock | None = None

    def opened(self, account: Account) -> Adapter | None:
        """The account's adapter when it is open and built from the account's current
        settings; None when :meth:`get` has to open one."""
        found = self._adapters.get(account.key)
        if found is not None and found[1] == account.revision:
            return found[0]
        return None

    async def get(self, channel: str, account: Account | None = None) -> Adapter:
        """The open adapter for ``channel`` (through ``account``, the root's by default); must
        be awaited on the process's send loop."""
        account = account or Account.root(channel)
        ready = self.opened(account)
        if ready is not None:
            return ready
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            found = self._adapters.get(account.key)
            if found is not None and found[1] == account.revision:
                return found[0]
            adapter = self._build(channel, account)
            await adapter.open()
            self._adapters[account.key] = (adapter, account.revision)
            log.info("adapter_opened", channel=channel, account=account.key)
        if found is not None:
            # The account's settings changed: the adapter built from the old ones goes.
            with contextlib.suppress(Exception):
                await found[0].close()
        return adapter

    def _build(self, channel: str, account: Account) -> Adapter:
        adapter_class = registry.get(channel)
        if account.is_root:
            return adapter_class.from_settings(self.settings, self.context)
        context = dataclasses.replace(
            self.context, state=AccountState(self.context.state, account.state_scope or account.key)
        )
        return adapter_class.from_settings(account.settings, context)

    def add(self, adapter: Adapter, account: Account | None = None) -> None:
        """Use an adapter built elsewhere (tests, embedding)."""
        account = account or Account.root(adapter.name)
        self._adapters[account.key] = (adapter, account.revision)

    async def close(self) -> None:
        adapters, self._adapters = self._adapters, {}
        for adapter, _ in adapters.values():
            with contextlib.suppress(Exception):
                await adapter.close()


@lru_cache(maxsize=256)
def _root_account(channel: str) -> Account:
    return Account(channel, channel)
