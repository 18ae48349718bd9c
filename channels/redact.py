"""Keeping provider credentials out of error messages and log lines."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

# Shorter values are too likely to be ordinary text to be replaced wherever they appear.
MIN_SECRET_LENGTH = 6
_known: tuple[str, ...] = ()
_known_lock = threading.Lock()


def remember(secrets: Iterable[str]) -> None:
    """Add credentials this process holds to the ones scrubbed from every log line."""
    global _known
    fresh = {s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}
    with _known_lock:
        if fresh - set(_known):
            _known = tuple(sorted(fresh | set(_known), key=len, reverse=True))


def known() -> tuple[str, ...]:
    """Every remembered credential, longest first."""
    return _known


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every given secret replaced by ``***`` (pass the longest forms first)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class RedactSecrets(logging.Filter):
    """Rewrites any log record whose message contains a secret, before a handler sees it.

    Attached to the HTTP libraries' loggers while an adapter is open: httpx logs request URLs,
    and some providers put the token in the URL.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = sorted(set(secrets), key=len, reverse=True)
        remember(self.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the logging module's problem, not ours
            return True
        clean = scrub(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return True
