"""Find channel adapters by name: the built-ins, then the ``dispatcher.channels`` entry points.

A third party ships an adapter as a package declaring::

    [project.entry-points."dispatcher.channels"]
    sms = "my_package.sms:SmsAdapter"
"""

from __future__ import annotations

import threading
from importlib import import_module
from importlib.metadata import entry_points

from channels.base import Adapter

ENTRY_POINT_GROUP = "dispatcher.channels"

BUILTIN = {
    "email": "channels.email:EmailAdapter",
    "null": "channels.null:NullAdapter",
    "telegram": "channels.telegram:TelegramAdapter",
    "zalo": "channels.zalo:ZaloAdapter",
    "facebook": "channels.facebook:FacebookAdapter",
    "vssid": "channels.vssid:VssidAdapter",
}

_lock = threading.Lock()
_found: dict[str, str] | None = None


class UnknownChannel(LookupError):
    pass


def _load(target: str) -> type[Adapter]:
    module_name, _, attr = target.partition(":")
    adapter = getattr(import_module(module_name), attr)
    if not (isinstance(adapter, type) and issubclass(adapter, Adapter)):
        raise TypeError(f"{target} is not a channels.base.Adapter subclass")
    return adapter


def available() -> dict[str, str]:
    """Every known channel name and where its adapter lives."""
    global _found
    with _lock:
        if _found is None:
            found = dict(BUILTIN)
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                found.setdefault(ep.name, ep.value)
            _found = found
        return dict(_found)


def get(name: str) -> type[Adapter]:
    try:
        target = available()[name]
    except KeyError:
        known = ", ".join(sorted(available()))
        raise UnknownChannel(f"unknown channel {name!r}; known channels: {known}") from None
    return _load(target)


def register(name: str, target: str) -> None:
    """Add an adapter at run time (tests, embedding applications)."""
    available()
    with _lock:
        assert _found is not None
        _found[name] = target
