"""Telegram Bot API emulator.

Speaks ``POST`` (and ``GET``) ``/bot<TOKEN>/<method>`` exactly as python-telegram-bot calls it
with ``Bot(token, base_url=f"{emulator.base_url}/bot")``: parameters come form-encoded (values
that are not strings JSON-encoded), as JSON, as multipart, or in the query string.

Methods: ``getMe`` and ``sendMessage`` (others answer 404 "Not Found", as Telegram does).
Answers are ``{"ok":true,"result":...}`` or
``{"ok":false,"error_code":N,"description":"...","parameters":{"retry_after":N}}``.

Enforced like the real service:

- token: a well-formed but unknown/revoked token → 401 "Unauthorized"; a malformed one → 404;
- text: required, ≤ 4096 UTF-16 code units *after* entity parsing → 400 "Bad Request: message is
  too long"; ``parse_mode`` HTML / MarkdownV2 / Markdown is parsed and bad markup answers
  400 "Bad Request: can't parse entities: ..." (e.g. ``<br>``, an unescaped ``.`` in MarkdownV2);
- flood control: ~30 messages/s per bot, 1 message/s per chat, 20/min per group → 429
  "Too Many Requests: retry after N" with ``parameters.retry_after`` (all configurable).

The bot token can be revoked now (:meth:`TelegramEmulator.revoke_token`) or after n more calls
(``expire_token_after(n)``; getMe counts). Per chat, tests can make a chat blocked /
deactivated / never started / unknown (:meth:`TelegramEmulator.block` & co.) or script one-shot
answers with ``script(chat_id, flood(3), OK, server_error())`` using the factories in this
module; ``script(ANY, *[server_error()] * k)`` answers the next k sends (any chat) with a 5xx.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from .base import (
    LOCALHOST,
    BodyError,
    Clock,
    Delivery,
    Emulator,
    Monotonic,
    Reply,
    ceil_seconds,
    maybe_json,
    parse_body,
)

DEFAULT_TOKEN = "7000000001:AAHtestTokenForTheLocalEmulator0000"
MAX_TEXT_UTF16 = 4096
PARSE_MODES = {"html": "HTML", "markdownv2": "MarkdownV2", "markdown": "Markdown"}

# -- canned answers (each is a real Telegram answer) -------------------------------------------


def error(status: int, description: str, **parameters: int) -> Reply:
    """Any Bot API error; ``parameters`` become the ``parameters`` object when given."""
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if parameters:
        body["parameters"] = parameters
    return Reply(status, body)


def blocked() -> Reply:
    return error(403, "Forbidden: bot was blocked by the user")


def user_deactivated() -> Reply:
    return error(403, "Forbidden: user is deactivated")


def not_started() -> Reply:
    """The user never pressed Start: bots cannot write first."""
    return error(403, "Forbidden: bot can't initiate conversation with a user")


def kicked() -> Reply:
    return error(403, "Forbidden: bot was kicked from the group chat")


def chat_not_found() -> Reply:
    return error(400, "Bad Request: chat not found")


def message_too_long() -> Reply:
    return error(400, "Bad Request: message is too long")


def bad_entities(detail: str = "Can't find end of the entity starting at byte offset 0") -> Reply:
    return error(400, f"Bad Request: can't parse entities: {detail}")


def flood(retry_after: int = 35) -> Reply:
    return error(429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after)


def migrated(new_chat_id: int) -> Reply:
    """A group upgraded to a supergroup: python-telegram-bot raises ChatMigrated."""
    return error(
        400,
        "Bad Request: group chat was upgraded to a supergroup chat",
        migrate_to_chat_id=new_chat_id,
    )


def unauthorized() -> Reply:
    return error(401, "Unauthorized")


def not_found() -> Reply:
    return error(404, "Not Found")


def server_error(status: int = 500, description: str = "Internal Server Error") -> Reply:
    return error(status, description)


def bad_gateway() -> Reply:
    """What the front proxy answers when the Bot API backend is down: HTML, not JSON."""
    html = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    html += "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    html += "</body>\r\n</html>\r\n"
    return Reply(502, html, media_type="text/html")


# -- entity parsing ----------------------------------------------------------------------------


class EntityError(ValueError):
    """Markup Telegram would refuse: the text after "can't parse entities: "."""


def utf16_len(text: str) -> int:
    """Telegram measures text in UTF-16 code units (an emoji outside the BMP counts 2)."""
    return len(text.encode("utf-16-le")) // 2


def visible_text(text: str, parse_mode: str | None) -> str:
    """The text the user sees once ``parse_mode`` markup is parsed; raises EntityError."""
    if parse_mode == "HTML":
        return _parse_html(text)
    if parse_mode == "MarkdownV2":
        return _parse_markdown_v2(text)
    if parse_mode == "Markdown":
        return _parse_markdown(text)
    return text


def _offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8"))


_HTML_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "span",
    "tg-spoiler",
    "a",
    "tg-emoji",
    "code",
    "pre",
    "blockquote",
}
_TAG_RE = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)((?:\s[^<>]*)?)>")
_ENTITY_RE = re.compile(r"&(#[0-9]+|#x[0-9A-Fa-f]+|[A-Za-z]+);")
_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}


def _parse_html(text: str) -> str:
    out: list[str] = []
    stack: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "<":
            match = _TAG_RE.match(text, i)
            if match is None:
                raise EntityError(f'Unsupported start tag "" at byte offset {_offset(text, i)}')
            closing, name = match.group(1) == "/", match.group(2).lower()
            if closing:
                if not stack or stack[-1] != name:
                    expected = f', expected "</{stack[-1]}>"' if stack else ""
                    raise EntityError(
                        f"Unmatched end tag at byte offset {_offset(text, i)}{expected}, "
                        f'found "</{name}>"'
                    )
                stack.pop()
            elif name not in _HTML_TAGS:
                raise EntityError(
                    f'Unsupported start tag "{name}" at byte offset {_offset(text, i)}'
                )
            else:
                stack.append(name)
            i = match.end()
        elif char == "&":
            match = _ENTITY_RE.match(text, i)
            ref = match.group(1) if match else ""
            if ref.startswith("#x"):
                out.append(chr(int(ref[2:], 16)))
            elif ref.startswith("#"):
                out.append(chr(int(ref[1:])))
            elif ref in _NAMED_ENTITIES:
                out.append(_NAMED_ENTITIES[ref])
            else:  # Telegram keeps unknown entities and stray ampersands as text
                out.append("&")
                i += 1
                continue
            assert match is not None
            i = match.end()
        else:
            out.append(char)
            i += 1
    if stack:
        raise EntityError(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(out)


_MDV2_RESERVED = set("_*[]()~`>#+-=|{}.!")
_MDV2_NAMES = {
    "*": "Bold",
    "_": "Italic",
    "__": "Underline",
    "~": "Strikethrough",
    "||": "Spoiler",
    "[": "TextUrl",
}


def _reserved(char: str) -> EntityError:
    return EntityError(
        f"Character '{char}' is reserved and must be escaped with the preceding '\\'"
    )


def _find_unescaped(text: str, needle: str, start: int) -> int:
    i = start
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(needle, i):
            return i
        i += 1
    return -1


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text, flags=re.DOTALL)


def _parse_markdown_v2(text: str) -> str:
    out: list[str] = []
    stack: list[tuple[str, int]] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            if i + 1 >= len(text):
                raise _reserved("\\")
            out.append(text[i + 1])
            i += 2
        elif char == "`":
            fence = "```" if text.startswith("```", i) else "`"
            end = _find_unescaped(text, fence, i + len(fence))
            if end < 0:
                kind = "Pre" if fence == "```" else "Code"
                raise EntityError(
                    f"Can't find end of {kind} entity at byte offset {_offset(text, i)}"
                )
            body = text[i + len(fence) : end]
            if fence == "```" and "\n" in body and " " not in body.split("\n", 1)[0]:
                body = body.split("\n", 1)[1]  # the first line names the language
            out.append(_unescape(body))
            i = end + len(fence)
        elif char == "[":
            stack.append(("[", i))
            i += 1
        elif char == "]" and stack and stack[-1][0] == "[":
            stack.pop()
            i += 1
            if text.startswith("(", i):
                end = _find_unescaped(text, ")", i + 1)
                if end < 0:
                    raise EntityError(f"Can't find end of a URL at byte offset {_offset(text, i)}")
                i = end + 1
        elif char in "*_~" or text.startswith("||", i):
            marker = "__" if text.startswith("__", i) else "||" if char == "|" else char
            if stack and stack[-1][0] == marker:
                stack.pop()
            else:
                stack.append((marker, i))
            i += len(marker)
        elif char == ">" and (i == 0 or text[i - 1] == "\n"):
            i += 1  # a blockquote line
        elif char in _MDV2_RESERVED:
            raise _reserved(char)
        else:
            out.append(char)
            i += 1
    if stack:
        marker, at = stack[-1]
        raise EntityError(
            f"Can't find end of {_MDV2_NAMES[marker]} entity at byte offset {_offset(text, at)}"
        )
    return "".join(out)


def _parse_markdown(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] in "_*`[":
            out.append(text[i + 1])
            i += 2
            continue
        if char in "*_`[":
            fence = "```" if text.startswith("```", i) else char
            closer = "]" if fence == "[" else fence
            end = text.find(closer, i + len(fence))
            if end < 0:
                raise EntityError(
                    f"Can't find end of the entity starting at byte offset {_offset(text, i)}"
                )
            out.append(text[i + len(fence) : end])
            i = end + len(closer)
            if char == "[" and text.startswith("(", i):
                close = text.find(")", i)
                if close < 0:
                    raise EntityError(
                        f"Can't find end of the entity starting at byte offset {_offset(text, i)}"
                    )
                i = close + 1
            continue
        out.append(char)
        i += 1
    return "".join(out)


# -- the emulator ------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"^[0-9]+:[A-Za-z0-9_-]+$")
_INT_RE = re.compile(r"^-?[0-9]+$")


class TelegramEmulator(Emulator):
    """A Telegram Bot API server for one bot (more tokens can be added)."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        username: str = "vss_notify_bot",
        first_name: str = "BHXH Việt Nam",
        global_rate: float | None = 30.0,
        global_burst: float | None = None,
        chat_rate: float | None = 1.0,
        chat_burst: float = 1.0,
        group_per_minute: float | None = 20.0,
        clock: Clock | None = None,
        monotonic: Monotonic | None = None,
        host: str = LOCALHOST,
        port: int = 0,
    ) -> None:
        """Rates are messages per second (``group_per_minute`` per minute); None disables.

        ``global_burst`` defaults to ``global_rate``: Telegram smooths its ~30/s over a second.
        """
        super().__init__(clock=clock, monotonic=monotonic, host=host, port=port)
        if not _TOKEN_RE.match(token):
            raise ValueError("a bot token looks like '123456:ABC-DEF...'")
        self.token = token
        self.username = username
        self.first_name = first_name
        self._tokens = {token}
        self._message_ids: dict[str, int] = {}
        self.limits.set_rule("global", global_rate, global_burst)
        self.limits.set_rule("chat", chat_rate, chat_burst)
        self.limits.set_rule(
            "group",
            None if group_per_minute is None else group_per_minute / 60.0,
            group_per_minute,
        )

    # -- configuration & scripting -----------------------------------------------------------

    @property
    def bot_base_url(self) -> str:
        """What to pass as python-telegram-bot's ``base_url`` (no trailing slash)."""
        return f"{self.base_url}/bot"

    @property
    def bot_id(self) -> int:
        return int(self.token.split(":", 1)[0])

    def add_token(self, token: str) -> None:
        with self._lock:
            self._tokens.add(token)

    def revoke_token(self, token: str | None = None) -> None:
        """Make a token (default: the bot's) answer 401, as after /revoke in BotFather."""
        with self._lock:
            self._tokens.discard(token or self.token)

    def _expire_credential(self, token: str | None) -> None:
        self.revoke_token(token)  # Telegram tokens never expire; they are revoked: 401

    def block(self, chat_id: int | str) -> None:
        """The user blocked the bot: every send answers 403 until :meth:`restore`."""
        self.scripts.stick(str(chat_id), blocked())

    def deactivate(self, chat_id: int | str) -> None:
        self.scripts.stick(str(chat_id), user_deactivated())

    def never_started(self, chat_id: int | str) -> None:
        self.scripts.stick(str(chat_id), not_started())

    def forget_chat(self, chat_id: int | str) -> None:
        """The chat does not exist (or the bot never met it): 400 chat not found."""
        self.scripts.stick(str(chat_id), chat_not_found())

    def restore(self, chat_id: int | str) -> None:
        self.scripts.unstick(str(chat_id))

    # -- HTTP ------------------------------------------------------------------------------

    def build_app(self) -> ASGIApp:
        return Starlette(
            routes=[
                Route("/bot{token}/{method}", self._endpoint, methods=["GET", "POST"]),
                Route("/{path:path}", self._not_found, methods=["GET", "POST"]),
            ]
        )

    async def _not_found(self, request: Request) -> Response:
        return not_found().to_response()

    async def _endpoint(self, request: Request) -> Response:
        token = request.path_params["token"]
        if not _TOKEN_RE.match(token):
            return not_found().to_response()
        with self._lock:
            known = token in self._tokens
            if known:
                self._spend_token_call(token)
        if not known:
            return unauthorized().to_response()
        params: dict[str, Any] = dict(request.query_params)
        try:
            params.update(parse_body(request.headers.get("content-type"), await request.body()))
        except BodyError:
            return error(400, "Bad Request: can't parse request body").to_response()
        method = request.path_params["method"].lower()
        if method == "getme":
            return _ok(self._bot_user(token, full=True))
        if method == "sendmessage":
            return await self._send_message(token, params)
        return not_found().to_response()

    def _bot_user(self, token: str, *, full: bool = False) -> dict[str, Any]:
        user: dict[str, Any] = {
            "id": int(token.split(":", 1)[0]),
            "is_bot": True,
            "first_name": self.first_name,
            "username": self.username,
        }
        if full:
            user.update(
                can_join_groups=True,
                can_read_all_group_messages=False,
                supports_inline_queries=False,
                can_connect_to_business=False,
                has_main_web_app=False,
            )
        return user

    async def _send_message(self, token: str, params: Mapping[str, Any]) -> Response:
        raw_chat = params.get("chat_id")
        if raw_chat is None or str(raw_chat).strip() == "":
            return error(400, "Bad Request: chat_id is empty").to_response()
        text = params.get("text")
        if not isinstance(text, str) or text == "":
            return error(400, "Bad Request: message text is empty").to_response()
        chat = _chat(raw_chat)
        if chat is None:
            return chat_not_found().to_response()
        address = str(chat["id"]) if "username" not in chat else f"@{chat['username']}"
        raw_mode = params.get("parse_mode")
        parse_mode: str | None = None
        if raw_mode not in (None, ""):
            parse_mode = PARSE_MODES.get(str(raw_mode).lower())
            if parse_mode is None:
                return error(400, "Bad Request: unsupported parse_mode").to_response()

        scripted = await self.next_outcome(address)
        if scripted is not None:
            return scripted.to_response()
        try:
            shown = visible_text(text, parse_mode)
        except EntityError as exc:
            return bad_entities(str(exc)).to_response()
        if not shown.strip():
            return error(400, "Bad Request: message text is empty").to_response()
        if utf16_len(shown) > MAX_TEXT_UTF16:
            return message_too_long().to_response()

        keys = [("global", token), ("chat", address)]
        if chat["type"] != "private":
            keys.append(("group", address))
        denied = self.limits.acquire(*keys)
        if denied is not None:
            return flood(ceil_seconds(denied[1])).to_response()

        now = self.clock()
        with self._lock:
            message_id = self._message_ids.get(address, 0) + 1
            self._message_ids[address] = message_id
        self.deliver(
            Delivery(
                address=address,
                text=shown,
                kind="sendMessage",
                message_id=str(message_id),
                at=now,
                payload={k: maybe_json(v) for k, v in params.items()},
            )
        )
        return _ok(
            {
                "message_id": message_id,
                "from": self._bot_user(token),
                "chat": chat,
                "date": int(now.timestamp()),
                "text": shown,
            }
        )


def _ok(result: Any) -> Response:
    return Reply(200, {"ok": True, "result": result}).to_response()


def _chat(raw: Any) -> dict[str, Any] | None:
    """The chat object Telegram would echo for this ``chat_id`` (None: not a valid id)."""
    value = str(raw).strip()
    if _INT_RE.match(value):
        chat_id = int(value)
        if chat_id > 0:
            return {"id": chat_id, "first_name": "Người dùng", "type": "private"}
        kind = "supergroup" if value.startswith("-100") else "group"
        return {"id": chat_id, "title": "Nhóm thử nghiệm", "type": kind}
    if re.match(r"^@[A-Za-z][A-Za-z0-9_]{3,}$", value):
        # Channels are addressed by @username; their numeric id is stable per name.
        chat_id = -(10**12) - zlib.crc32(value.lower().encode())
        return {"id": chat_id, "title": value[1:], "username": value[1:], "type": "channel"}
    return None
