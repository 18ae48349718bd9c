"""The witness: every seal, also written outside the database.

A seal in ``audit_seals`` proves the chain up to it only as long as the seal itself is there;
whoever can edit the database can delete the seals and rewrite the chain consistently. The
witness is an append-only file (``DISPATCHER_AUDIT_WITNESS``) with one JSON line per seal, which
``dispatcher audit verify`` compares with the database. The same fields are in the scheduler's
``audit_sealed`` log line, so a log sink that keeps JSON lines off-host serves as a witness too:
its lines that are not seals are skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

EVENT = "audit_sealed"


@dataclass(frozen=True, slots=True)
class Witnessed:
    line: int
    seal: int
    seq: int
    hash: str
    at: datetime
    mac: str


@dataclass(frozen=True, slots=True)
class Unreadable:
    line: int
    message: str


def record(*, seal: int, seq: int, chain_hash: str, at: datetime, mac: str) -> dict[str, Any]:
    """A seal's fields as the witness and the log line hold them."""
    return {
        "seal": seal,
        "seq": seq,
        "hash": chain_hash,
        "at": at.isoformat(timespec="microseconds"),
        "mac": mac,
    }


def write(path: str, fields: dict[str, Any]) -> None:
    """Append one seal to the witness file and sync it to disk before returning."""
    line = json.dumps({"event": EVENT, **fields}, sort_keys=True, separators=(",", ":")) + "\n"
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # O_APPEND alone: the file may carry the append-only attribute (chattr +a).
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: str) -> Iterator[Witnessed | Unreadable]:
    """The seals a witness file holds, one line at a time (a missing file holds none)."""
    try:
        handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
    except FileNotFoundError:
        return
    with handle:
        for number, text in enumerate(handle, start=1):
            text = text.strip()
            if not text:
                continue
            try:
                data = json.loads(text)
            except ValueError:
                continue  # not a JSON line: a log sink's other lines
            if not isinstance(data, dict) or data.get("event") != EVENT:
                continue
            try:
                yield Witnessed(
                    line=number,
                    seal=int(data["seal"]),
                    seq=int(data["seq"]),
                    hash=str(data["hash"]),
                    at=datetime.fromisoformat(str(data["at"])),
                    mac=str(data["mac"]),
                )
            except (KeyError, TypeError, ValueError) as exc:
                yield Unreadable(number, f"witness line {number} is a damaged seal ({exc})")
