"""Telegram Bot API through python-telegram-bot 22: one ``Bot`` per adapter, kept open.

The body is Telegram's HTML dialect (``TelegramAdapter.limits.html_body``), so every message goes
out with ``parse_mode="HTML"``. python-telegram-bot's exceptions map onto our classes as the
table in CHANNELS.md says:

=======================================================  ====================================
python-telegram-bot raises                               we raise
=======================================================  ====================================
``RetryAfter`` (429, ``parameters.retry_after``)          ``RateLimitedError(retry_after=N)``
``ChatMigrated`` (group became a supergroup)              ``PermanentError`` (new id in reason)
``Forbidden`` (blocked, deactivated, never started,       ``PermanentError(address_dead=True)``
kicked)
``BadRequest`` "chat not found"                           ``PermanentError(address_dead=True)``
other ``BadRequest`` (too long, can't parse entities)     ``PermanentError``
``InvalidToken`` (401 / 404)                              ``AuthError``
``TimedOut``, ``NetworkError`` (5xx, dropped connection)  ``TransientError``
=======================================================  ====================================

``BadRequest`` and ``TimedOut`` subclass ``NetworkError``, so they are matched first.

python-telegram-bot keeps Telegram's ``error_code`` and ``description`` only in its message
(and drops the description entirely for ``RetryAfter`` and ``ChatMigrated``), so the request
object records each answer's HTTP status and body in a context variable: every error we raise
carries the provider's own code and words.

The bot token is part of every request URL. It is scrubbed from everything we raise, and a
logging filter redacts it from the ``httpx`` and ``telegram`` loggers while the adapter is
open (httpx logs each request URL at INFO; python-telegram-bot logs the API URL at DEBUG and
puts the token into the message of the ``InvalidToken`` that ``Bot.initialize`` raises).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from contextvars import ContextVar
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import telegram
from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict
from telegram import error as tg_error
from telegram.request import HTTPXRequest

from channels.base import (
    Adapter,
    AdapterContext,
    AuthError,
    ChannelLimits,
    DeliveryError,
    Message,
    PermanentError,
    RateLimitedError,
    RateRule,
    SendResult,
    TransientError,
)
from channels.http import POOL_SIZE, HttpSettings, HttpUrl
from channels.redact import RedactSecrets, scrub

# Descriptions of a 400 that mean the chat itself is gone, not just this message.
DEAD_CHAT_MARKERS = ("chat not found",)

# Loggers that may print a request URL (and so the token) while the adapter is open.
TOKEN_LOGGERS = ("httpx", "telegram.Bot", "telegram.BaseRequest", "telegram.HTTPXRequest")

# Concurrent sends share one connection pool; the pipeline runs up to send_concurrency at once.
CONNECTION_POOL_SIZE = POOL_SIZE

# The last HTTP answer (status, body) seen by the current task's request: each send runs in its
# own task (or resets it first), so concurrent sends never read each other's answers.
_last_answer: ContextVar[tuple[int, bytes] | None] = ContextVar(
    "telegram_last_answer", default=None
)


class _RecordingRequest(HTTPXRequest):
    """python-telegram-bot's httpx transport, remembering each answer for error reports."""

    async def do_request(self, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
        status, payload = await super().do_request(*args, **kwargs)
        _last_answer.set((status, payload[:2000]))
        return status, payload


def _secret_forms(token: str) -> list[str]:
    """The token as it may appear in text: raw, URL-quoted, and its secret half alone."""
    forms = {token, quote(token, safe="")}
    _, _, secret = token.partition(":")
    if len(secret) >= 8:
        forms.add(secret)
    # Longest first, so the whole token is replaced before its secret half.
    return sorted((f for f in forms if f), key=len, reverse=True)


def _retry_seconds(exc: tg_error.RetryAfter, parameters: dict[str, Any]) -> float:
    """Telegram's ``parameters.retry_after`` as seconds.

    Read from the answer itself when we have it: PTB 22's ``RetryAfter.retry_after`` is an int
    that emits a deprecation warning, or a timedelta under ``PTB_TIMEDELTA=true``.
    """
    given = parameters.get("retry_after")
    if isinstance(given, int | float) and not isinstance(given, bool):
        return float(given)
    value: int | float | timedelta = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class TelegramSettings(HttpSettings):
    """The bot: ``DISPATCHER_TELEGRAM_*``."""

    model_config = SettingsConfigDict(env_prefix="DISPATCHER_TELEGRAM_")

    token: SecretStr | None = None
    base_url: HttpUrl = "https://api.telegram.org/bot"


class TelegramAdapter(Adapter):
    """Sends HTML messages to Telegram chats (``message.address`` is a chat id or @channel)."""

    name = "telegram"
    # Text up to 4096 characters after entity parsing (UTF-16 code units), in Telegram's HTML.
    limits = ChannelLimits(max_body=4096, html_body=True)
    settings_model = TelegramSettings
    # ~30 messages/s per bot, 1 message/s per chat (CHANNELS.md).
    rate_limits = (
        # Telegram allows about 30 a second per bot; 29, evenly spaced, keeps every one-second
        # window under the limit whatever the network does to arrival times.
        RateRule(per_second=29, burst=1),
        RateRule(per_second=1, burst=1, per_address=True),
    )

    def __init__(
        self,
        *,
        token: str,
        base_url: str = "https://api.telegram.org/bot",
        timeout: float = 15.0,
        pool_size: int = CONNECTION_POOL_SIZE,
        link_previews: bool = False,
    ) -> None:
        if not token:
            raise ValueError("a Telegram bot token is required (DISPATCHER_TELEGRAM_TOKEN)")
        self._token = token
        self._secrets = _secret_forms(token)
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.pool_size = pool_size
        # Official notices: a preview card of the first link mostly adds noise.
        self.link_previews = link_previews
        self._bot: telegram.Bot | None = None
        self._lock: asyncio.Lock | None = None
        self._log_filter = RedactSecrets(self._secrets)

    def __repr__(self) -> str:
        # Never the Bot's own repr: python-telegram-bot's is ``Bot[token=...]``.
        return f"TelegramAdapter(base_url={self.scrub(self.base_url)!r}, open={self.is_open})"

    @classmethod
    def create(cls, settings: TelegramSettings, context: AdapterContext) -> TelegramAdapter:
        secret = settings.token
        token = secret.get_secret_value() if secret is not None else ""
        if not token.strip():
            raise ValueError(
                "the telegram channel needs a bot token: set DISPATCHER_TELEGRAM_TOKEN "
                "(from @BotFather)"
            )
        return cls(token=token.strip(), base_url=settings.base_url, timeout=settings.http_timeout)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._bot is not None

    @property
    def bot(self) -> telegram.Bot | None:
        """The open Bot (None before :meth:`open` and after :meth:`close`)."""
        return self._bot

    async def open(self) -> None:
        """Create the Bot and check the token with getMe; raises a :class:`DeliveryError`."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._bot is not None:
                return
            self._install_log_filter()
            request = _RecordingRequest(
                connection_pool_size=self.pool_size,
                read_timeout=self.timeout,
                write_timeout=self.timeout,
                connect_timeout=self.timeout,
                # Waiting for a free pooled connection is part of the same budget.
                pool_timeout=self.timeout,
            )
            bot = telegram.Bot(self._token, base_url=self.base_url, request=request)
            _last_answer.set(None)
            failure: DeliveryError | None = None
            try:
                await bot.initialize()  # getMe: a bad token fails here, not on every send
            except tg_error.TelegramError as exc:
                failure = self._classify(exc, during="getMe")
            except Exception as exc:
                failure = TransientError(f"telegram getMe failed: {self.scrub(repr(exc))}")
            if failure is not None:
                with contextlib.suppress(Exception):
                    await bot.shutdown()
                self._remove_log_filter()
                # Raised outside the except block: the chained PTB exception may name the token.
                raise failure
            self._bot = bot

    async def close(self) -> None:
        bot, self._bot = self._bot, None
        if bot is not None:
            with contextlib.suppress(Exception):
                await bot.shutdown()
        self._remove_log_filter()

    def _install_log_filter(self) -> None:
        for name in TOKEN_LOGGERS:
            logging.getLogger(name).addFilter(self._log_filter)

    def _remove_log_filter(self) -> None:
        for name in TOKEN_LOGGERS:
            logging.getLogger(name).removeFilter(self._log_filter)

    # -- sending ----------------------------------------------------------------------------

    async def send(self, message: Message) -> SendResult:
        if self._bot is None:
            await self.open()  # a send before open(), or after close(), opens lazily
        bot = self._bot
        assert bot is not None
        _last_answer.set(None)
        failure: DeliveryError
        try:
            sent = await bot.send_message(
                chat_id=message.address,
                text=message.body,
                parse_mode="HTML",
                disable_web_page_preview=not self.link_previews,
            )
        except tg_error.TelegramError as exc:
            failure = self._classify(exc)
        except Exception as exc:  # PTB wraps transport errors; anything else is still a blip
            failure = TransientError(f"telegram send failed: {self.scrub(repr(exc))}")
        else:
            # Telegram numbers messages per chat: the chat makes the id mean one message.
            return SendResult(
                provider_message_id=f"{sent.chat_id}:{sent.message_id}", provider_code="ok"
            )
        # Raised outside the except block, so no exception (and no URL) is chained to it.
        raise failure

    # -- errors -----------------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        """``text`` with every form of the bot token replaced by ``***``."""
        return scrub(text, self._secrets)

    def _provider_words(
        self, exc: tg_error.TelegramError
    ) -> tuple[str | None, str, dict[str, Any]]:
        """Telegram's own ``error_code``, ``description`` (scrubbed) and ``parameters``."""
        answer = _last_answer.get()
        code: str | None = None
        reply = exc.message
        parameters: dict[str, Any] = {}
        if answer is not None:
            status, payload = answer
            code = str(status)
            try:
                body = json.loads(payload)
            except ValueError:
                body = None
            if isinstance(body, dict):
                code = str(body.get("error_code", status))
                reply = str(body.get("description") or reply)
                if isinstance(body.get("parameters"), dict):
                    parameters = body["parameters"]
                    reply += f" {json.dumps(parameters, separators=(',', ':'))}"
            elif payload.strip():
                reply = f"{reply} | {payload.decode('utf-8', 'replace')[:200]}"
        return code, self.scrub(reply)[:500], parameters

    def _classify(self, exc: tg_error.TelegramError, during: str = "sendMessage") -> DeliveryError:
        """One place that turns a python-telegram-bot exception into our error classes."""
        code, reply, parameters = self._provider_words(exc)
        # Order matters: BadRequest and TimedOut are NetworkError subclasses.
        if isinstance(exc, tg_error.RetryAfter):
            seconds = _retry_seconds(exc, parameters)
            return RateLimitedError(
                f"telegram flood control: retry after {seconds:g} s",
                code=code or 429,
                reply=reply,
                retry_after=seconds,
            )
        if isinstance(exc, tg_error.ChatMigrated):
            return PermanentError(
                f"telegram group was upgraded to a supergroup; new chat id {exc.new_chat_id}",
                code=code or 400,
                reply=reply,
            )
        if isinstance(exc, tg_error.Forbidden):
            return PermanentError(
                f"telegram chat unreachable: {reply}",
                code=code or 403,
                reply=reply,
                address_dead=True,
            )
        if isinstance(exc, tg_error.InvalidToken):
            return AuthError(
                f"telegram refused the bot token ({during}): {reply}",
                code=code,
                reply=reply,
            )
        if isinstance(exc, tg_error.BadRequest):
            dead = any(marker in reply.lower() for marker in DEAD_CHAT_MARKERS)
            return PermanentError(
                f"telegram bad request: {reply}",
                code=code or 400,
                reply=reply,
                address_dead=dead,
            )
        if isinstance(exc, tg_error.TimedOut):
            return TransientError(
                f"telegram {during} timed out: {reply}", code=code or "timeout", reply=reply
            )
        if isinstance(exc, tg_error.NetworkError):
            return TransientError(
                f"telegram {during} failed: {reply}", code=code or "network", reply=reply
            )
        # Conflict, EndPointNotFound, an unparsable answer: server-side anomalies, retry later.
        return TransientError(f"telegram {during} error: {reply}", code=code, reply=reply)
