"""A bound on how deeply JSON may nest, checked before anything decodes it.

Python's decoder recurses once per level: a body of a few thousand ``[`` ends in a
``RecursionError`` (a 500), and anything that nests just below that limit is decoded, validated,
stored and served again at the same cost. No request of this service needs more than a few
levels, so every JSON body of the API (:class:`JsonDepthGuard`) and every line of a JSON Lines
import (:func:`loads`) is refused when it nests deeper than ``DISPATCHER_JSON_MAX_DEPTH``.

The check runs in linear time without recursing, with the byte operations of ``bytes``: the
strings are dropped (brackets inside them do not count), then the innermost pairs of brackets
are removed one level at a time.
"""

from __future__ import annotations

import json
from itertools import accumulate
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_DEPTH = 32

# What is left of a body once escapes are gone: quotes and brackets, "{" and "}" read as
# "[" and "]" (only how deep they go matters here; the decoder checks that they match).
_STRUCTURE = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"[]{}')

# Bodies the guard leaves alone: HTML forms are not JSON, and the import's JSON Lines and CSV
# are streamed and checked line by line by the importer itself.
_UNCHECKED_TYPES = (
    "application/x-www-form-urlencoded",
    "multipart/",
    "text/csv",
    "application/x-ndjson",
    "application/jsonl",
)


class TooDeep(ValueError):
    """JSON that nests arrays and objects deeper than the limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"JSON nests arrays and objects more than {limit} levels deep; "
            f"at most {limit} are accepted"
        )
        self.limit = limit


def _brackets(raw: bytes) -> bytes:
    """The brackets of ``raw`` outside its strings, all written ``[`` and ``]``."""
    # An escaped backslash, then an escaped quote: what remains of a string is its quotes.
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    # Two quotes side by side take nothing with them and leave every other character on the
    # same side of the quotes: most strings (those without brackets) go at this speed.
    structure = unescaped.translate(_STRUCTURE, _NOT_STRUCTURE).replace(b'""', b"")
    if b'"' not in structure:
        return structure
    # Odd pieces are inside strings (so is the tail of an unterminated one).
    return b"".join(structure.split(b'"')[::2])


def depth(data: bytes | str, *, stop_above: int | None = None) -> int:
    """How deeply the arrays and objects of ``data`` nest (0 for a scalar).

    With ``stop_above``, any answer above it means "deeper than that" and may be smaller
    than the true depth. For text that is not valid JSON the answer is an upper bound."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    brackets = _brackets(raw)
    rounds = len(brackets) if stop_above is None else stop_above
    removed = 0
    # Each round takes away the innermost pairs, one level everywhere, at the speed of
    # bytes.replace; most documents are gone after a few rounds.
    while brackets and removed < rounds:
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            break
        brackets, removed = shorter, removed + 1
    if b"[" not in brackets:
        return removed
    if stop_above is not None and b"[" * (stop_above + 1 - removed) in brackets:
        return stop_above + 1
    steps = map({ord("["): 1, ord("]"): -1}.__getitem__, brackets)
    return removed + max(accumulate(steps, initial=0))


def check(data: bytes | str, limit: int) -> None:
    """Raise :class:`TooDeep` when ``data`` nests deeper than ``limit``."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    # More opening brackets than the limit is needed to nest deeper than it; most bodies
    # have fewer, and then nothing more is looked at.
    if raw.count(b"[") + raw.count(b"{") > limit and depth(raw, stop_above=limit) > limit:
        raise TooDeep(limit)


def loads(data: bytes | str, limit: int) -> Any:
    """``json.loads`` for text that nests at most ``limit`` levels; raises :class:`TooDeep`
    (a ``ValueError``, like the decoder's own errors) when it nests deeper."""
    check(data, limit)
    return json.loads(data)


def too_deep_error(exc: TooDeep) -> dict[str, Any]:
    """The error as FastAPI lists a request's validation errors."""
    return {"type": "json_too_deep", "loc": ["body"], "msg": str(exc), "input": None}


class JsonDepthGuard:
    """ASGI middleware: a request body that nests deeper than ``limit`` is answered 422.

    The body is checked when the application has read all of it, so a route that never
    reads its body costs nothing. The refusal is raised from the body read as an
    ``HTTPException``, which FastAPI answers as it stands before any validation runs."""

    def __init__(self, app: ASGIApp, *, limit: int = DEFAULT_MAX_DEPTH) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _checked(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        limit = self.limit

        async def checked_receive() -> Message:
            message = await receive()
            if message["type"] != "http.request":
                return message
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                body = b"".join(chunks)
                chunks.clear()
                try:
                    check(body, limit)
                except TooDeep as exc:
                    raise HTTPException(422, detail=[too_deep_error(exc)]) from None
            return message

        await self.app(scope, checked_receive, send)


def _checked(scope: Scope) -> bool:
    if scope.get("method") in {"GET", "HEAD", "OPTIONS"}:
        return False
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media_type = value.decode("latin-1").split(";", 1)[0].strip().lower()
            return not media_type.startswith(_UNCHECKED_TYPES)
    return True
