"""Structured logs: JSON lines in production, readable lines on a terminal.

structlog's own lines and the standard library's (dramatiq, uvicorn, httpx, ...) go through one
handler and one chain of processors, so every line has the same shape: ``event``, ``level``,
``logger``, ``timestamp``, and whatever the context holds. A worker binds ``campaign_id``,
``run_id`` and ``batch_id`` around a batch, and ``delivery_id`` around each send
(``structlog.contextvars``), so every line written on their behalf carries them.

Log calls pass ids (campaign, run, delivery), never addresses or tokens. Behind that rule, a
last processor scrubs every line: credentials this process holds (settings, adapters — see
``channels.redact``), email addresses, bot tokens, API keys, bearer tokens, unsubscribe tokens
in ``/u/...`` paths, and the values of keys that name an address. Libraries that would log
message payloads or addresses (python-telegram-bot, httpx, aiosmtplib) are held at WARNING.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import IO, Any

import structlog
from pydantic import SecretStr

from channels import redact

# Libraries whose INFO/DEBUG lines carry request URLs, chat ids, recipients or message text.
QUIET_LIBRARIES = ("telegram", "httpx", "httpcore", "aiosmtplib", "hpack", "hishel")
# Event keys whose value is an address (or a credential) whatever it looks like.
SENSITIVE_KEYS = frozenset(
    {
        "address",
        "addresses",
        "chat_id",
        "email",
        "recipient_address",
        "to",
        "phone",
        "password",
        "secret",
        "authorization",
        "api_key",
        "access_token",
        "refresh_token",
    }
)
HIDDEN = "***"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Bearer credentials and API keys (bhxh_<prefix>_<secret>: the prefix names the key).
    (re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+"), r"\1" + HIDDEN),
    (re.compile(r"\b(bhxh_[0-9a-f]+_)[A-Za-z0-9_\-]+"), r"\1" + HIDDEN),
    # Telegram bot tokens: <bot id>:<secret>.
    (re.compile(r"(?<![0-9])\d{5,}:[A-Za-z0-9_\-]{30,}"), HIDDEN),
    # A citizen's unsubscribe token in a path or a link.
    (re.compile(r"(/u/)[A-Za-z0-9_\-.=%]+"), r"\1" + HIDDEN),
    # Email addresses.
    (re.compile(r"[\w.+\-%]+@[\w\-]+(?:\.[\w\-]+)+"), HIDDEN),
)


def scrub_text(text: str, secrets: tuple[str, ...] | None = None) -> str:
    """``text`` without credentials, addresses or tokens."""
    text = redact.scrub(text, redact.known() if secrets is None else secrets)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _scrub_value(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return scrub_text(value, secrets)
    if isinstance(value, Mapping):
        return {
            k: HIDDEN if str(k).lower() in SENSITIVE_KEYS else _scrub_value(v, secrets)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub_value(v, secrets) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return scrub_text(str(value), secrets)


def redact_event(logger: Any, method_name: str, event_dict: Any) -> Any:
    """The last processor before rendering: nothing private leaves the process."""
    secrets = redact.known()
    for key, value in event_dict.items():
        if key.lower() in SENSITIVE_KEYS:
            event_dict[key] = HIDDEN
        else:
            event_dict[key] = _scrub_value(value, secrets)
    return event_dict


def remember_settings_secrets() -> None:
    """The credentials in the settings, the service's and every installed channel's, are
    scrubbed from every line, whoever logs them."""
    from channels import registry
    from dispatcher.core.config import ConfigError, get_settings

    try:
        settings = get_settings()
    except ConfigError:
        return
    models: list[Any] = [settings]
    for name in registry.available():
        try:
            models.append(registry.get(name).settings_model.load(settings))
        except Exception:  # noqa: S112 - a channel that cannot start is reported at start-up
            continue
    found = []
    for model in models:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
    redact.remember(found)


def configure_logging(
    level: str | None = None, *, json: bool | None = None, stream: IO[str] | None = None
) -> None:
    """Send structlog's and the standard library's lines, scrubbed, to ``stream`` (stderr)."""
    out = stream if stream is not None else sys.stderr
    level_name = (level or os.environ.get("DISPATCHER_LOG_LEVEL") or "INFO").upper()
    numeric = logging.getLevelName(level_name)
    if not isinstance(numeric, int):
        numeric, level_name = logging.INFO, "INFO"
    tty = hasattr(out, "isatty") and out.isatty()
    if json is None:
        json = os.environ.get("DISPATCHER_LOG_FORMAT", "").lower() == "json" or not tty
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if json
        else structlog.dev.ConsoleRenderer(colors=tty)
    )
    remember_settings_secrets()
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            timestamper,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            timestamper,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_event,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    # Python warnings become log lines too, rather than raw text on stderr.
    logging.captureWarnings(True)
