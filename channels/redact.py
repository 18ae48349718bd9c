"""Keeping provider credentials out of error messages and log lines."""

from __future__ import annotations

import logging
from collections.abc import Iterable


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

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the logging module's problem, not ours
            return True
        clean = scrub(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return True
