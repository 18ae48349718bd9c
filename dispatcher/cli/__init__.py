"""The ``dispatcher`` command: serve, worker, scheduler, migrate, dev, config, import, keys,
people, units, accounts, audit, channels, archive, search, tallies."""

from __future__ import annotations

from dispatcher.cli.common import app

# Importing a command group's module adds its commands to the app, in this order in --help.
# isort: off
from dispatcher.cli import setup, processes, keys, people, units, accounts, audit, imports
from dispatcher.cli import channels, archive, tallies
# isort: on


@app.callback()
def _main() -> None:
    """Every command reads DISPATCHER_* settings; see `dispatcher config`."""


def main() -> None:
    app()


__all__ = [
    "accounts",
    "app",
    "archive",
    "audit",
    "channels",
    "imports",
    "keys",
    "main",
    "people",
    "processes",
    "setup",
    "tallies",
    "units",
]
