"""Find channel adapters by name: the built-ins, then the ``dispatcher.channels`` entry points.

A third party ships an adapter as a package declaring::

    [project.entry-points."dispatcher.channels"]
    sms = "my_package.sms:SmsAdapter"

Everything else the service needs of a channel is read from the adapter's class (see
:mod:`channels.base`): its limits for the renderer (:func:`limits_for`), its rate rules, and
its settings model, which :func:`check_settings` reads for every installed channel when a
process starts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from channels.base import Adapter, ChannelLimits
from channels.settings import AllSettings, ChannelSettings
from dispatcher.core import config
from dispatcher.core.config import ConfigError

ENTRY_POINT_GROUP = "dispatcher.channels"

BUILTIN = {
    "email": "channels.email:EmailAdapter",
    "null": "channels.null:NullAdapter",
    "telegram": "channels.telegram:TelegramAdapter",
    "zalo": "channels.zalo:ZaloAdapter",
    "facebook": "channels.facebook:FacebookAdapter",
    "vssid": "channels.vssid:VssidAdapter",
    "zns": "channels.zns:ZnsAdapter",
}

# The channels of the agency's plan; templates may carry variants for any of them.
PLAN_CHANNELS = ("vssid", "email", "telegram", "zalo", "facebook")

_lock = threading.Lock()
_found: dict[str, str] | None = None
# Adapter classes already imported, by where they live.
_classes: dict[str, type[Adapter]] = {}


class UnknownChannel(LookupError):
    pass


def _load(target: str) -> type[Adapter]:
    adapter = _classes.get(target)
    if adapter is not None:
        return adapter
    module_name, _, attr = target.partition(":")
    found = getattr(import_module(module_name), attr)
    if not (isinstance(found, type) and issubclass(found, Adapter)):
        raise TypeError(f"{target} is not a channels.base.Adapter subclass")
    _classes[target] = found
    return found


def _table() -> dict[str, str]:
    global _found
    found = _found
    if found is None:
        with _lock:
            if _found is None:
                table = dict(BUILTIN)
                for ep in entry_points(group=ENTRY_POINT_GROUP):
                    table.setdefault(ep.name, ep.value)
                _found = table
            found = _found
    return found


def available() -> dict[str, str]:
    """Every known channel name and where its adapter lives."""
    return dict(_table())


def get(name: str) -> type[Adapter]:
    target = _table().get(name)
    if target is None:
        known = ", ".join(sorted(available()))
        raise UnknownChannel(f"unknown channel {name!r}; known channels: {known}")
    return _load(target)


# What a name with no adapter may be: anything (ChannelLimits is frozen, so one is shared).
_NO_LIMITS = ChannelLimits()


def limits_for(name: str) -> ChannelLimits:
    """The limits ``name``'s adapter declares; none for a name with no adapter (a template's
    generic ``default`` variant)."""
    target = _table().get(name)
    if target is None:
        return _NO_LIMITS
    return _load(target).limits


class _DeclaredLimits(Mapping[str, ChannelLimits]):
    """Every installed channel's limits, read from its adapter when asked."""

    def __getitem__(self, name: str) -> ChannelLimits:
        try:
            return get(name).limits
        except UnknownChannel:
            raise KeyError(name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(available())

    def __len__(self) -> int:
        return len(available())


# The limits each installed adapter declares, by channel name (a view, not a table).
declared_limits: Mapping[str, ChannelLimits] = _DeclaredLimits()


def check_settings(settings: Any = None) -> dict[str, ChannelSettings]:
    """Every installed channel's own settings, read as its adapter would read them (values
    given in code taken from ``settings``). Run when a process starts: raises one
    :class:`ConfigError` naming every bad variable of every channel, and every channel whose
    adapter cannot be imported."""
    found: dict[str, ChannelSettings] = {}
    problems: list[str] = []
    for name in sorted(available()):
        try:
            model = get(name).settings_model
        except Exception as exc:
            problems.append(f"channel {name!r} cannot be loaded: {type(exc).__name__}: {exc}")
            continue
        try:
            found[name] = model.load(settings)
        except ConfigError as exc:
            # A variable several channels share (DISPATCHER_HTTP_TIMEOUT) is named once.
            for line in str(exc).splitlines()[1:]:
                if line.strip() not in problems:
                    problems.append(line.strip())
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return found


def load_settings(**overrides: Any) -> AllSettings:
    """The service's settings and every installed channel's, each checked by its own model
    (:func:`dispatcher.core.config.load_settings`, then :func:`check_settings`); a channel's
    values are extra keys named as in code (``smtp_password``)."""
    settings = config.load_settings(**overrides)
    values = settings.model_dump()
    for channel in check_settings(settings).values():
        values.update(channel.by_key())
    return AllSettings.model_construct(**values)


def register(name: str, target: str) -> None:
    """Add an adapter at run time (tests, embedding applications)."""
    _table()
    with _lock:
        assert _found is not None
        _found[name] = target
