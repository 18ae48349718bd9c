"""Shared harness for the provider emulators.

What lives here:

- :class:`EmulatorServer` runs any ASGI app with uvicorn on 127.0.0.1 in a background thread.
  ``start()`` binds a free port itself and returns only once the server really accepts TCP
  connections (it polls; it never sleeps a fixed time); ``stop()`` shuts it down cleanly and
  releases requests the emulator is deliberately holding (:class:`Delay`).
- Outcomes a script can hold for any emulator: a provider answer (:class:`Reply`), a held
  request (:class:`Delay`, for client timeouts), a dropped connection (:class:`Disconnect`)
  and :data:`OK` ("serve this one normally").
- :class:`Emulator`, the base of every provider emulator: a context manager owning the server,
  a :class:`RequestLog` of every HTTP request received (body included, recorded before the
  response leaves so a client never races it), an ``outbox`` :class:`Journal` of accepted
  messages (:class:`Delivery`), per-address scripts of outcomes (``script(address, *outcomes)``),
  and :class:`RateLimits` built from :class:`TokenBucket`; ``expire_token_after(n)`` lets the
  credential authorise n more calls, then expires it as the provider would.
- ``GET /_emulator/stats`` on every emulator: request counts by status and accepted messages,
  for benchmarks. It is not part of any provider's contract, and it is not recorded.
- :class:`ManualClock`, a hand-driven wall clock *and* monotonic clock, so tests never depend on
  the real date or on real time passing.
- Small helpers every emulator needs: body parsing (JSON, form-urlencoded, multipart), ids.

All mutable state is guarded by locks: the server thread and the test thread touch it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from email.policy import default as default_email_policy
from types import TracebackType
from typing import Any, Generic, Self, TypeVar
from urllib.parse import parse_qsl, unquote_plus

import uvicorn
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

T = TypeVar("T")

Clock = Callable[[], datetime]
"""A wall clock: returns an aware :class:`datetime`."""

Monotonic = Callable[[], float]
"""A monotonic clock in seconds, used by the rate limiters."""

LOCALHOST = "127.0.0.1"


def utc_now() -> datetime:
    """The real wall clock, aware, in UTC (the default for every emulator)."""
    return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to: both a wall clock and a monotonic clock.

    Call it for the wall time (an aware datetime); use :meth:`monotonic` as the rate limiters'
    clock. :meth:`advance` moves both together, so "wait 1 s for the rate limit" in a test is
    ``clock.advance(1)`` rather than a real sleep.
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._now = start
        self._mono = 1000.0  # any origin will do; monotonic clocks have no meaningful zero
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float | timedelta) -> None:
        delta = seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
        if delta < timedelta(0):
            raise ValueError("clocks only move forward")
        with self._lock:
            self._now += delta
            self._mono += delta.total_seconds()

    def set(self, when: datetime) -> None:
        """Jump the wall clock to ``when`` (forward only; monotonic time moves with it)."""
        with self._lock:
            delta = when - self._now
        self.advance(delta)


class Journal(Generic[T]):
    """A thread-safe, append-only list that tests can inspect or wait on."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._cond = threading.Condition()

    def append(self, item: T) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def snapshot(self) -> list[T]:
        with self._cond:
            return list(self._items)

    def clear(self) -> None:
        with self._cond:
            self._items.clear()

    def last(self) -> T:
        with self._cond:
            if not self._items:
                raise IndexError("journal is empty")
            return self._items[-1]

    def wait_for(self, count: int, timeout: float = 5.0) -> list[T]:
        """Block until at least ``count`` items exist (a condition wait, not a sleep)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._items) >= count, timeout):
                raise TimeoutError(f"expected {count} items, have {len(self._items)}")
            return list(self._items)

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self.snapshot())

    def __getitem__(self, index: int) -> T:
        with self._cond:
            return self._items[index]

    def __bool__(self) -> bool:
        return len(self) > 0


@dataclass(frozen=True)
class RecordedRequest:
    """One HTTP exchange as the emulator saw it (request in full, response status and body)."""

    method: str
    path: str
    query_string: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    at: datetime
    status: int
    response_body: bytes = b""
    response_headers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k == wanted), None)

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.query_string, keep_blank_values=True))

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def response_json(self) -> Any:
        return json.loads(self.response_body)

    def mentions(self, needle: str) -> list[str]:
        """Which parts of the request contain ``needle`` (raw or URL-decoded).

        Parts: ``"path"``, ``"query"``, ``"headers"``, ``"body"``. Lets a test assert e.g. that
        a token travels only in the header where the provider expects it.
        """
        parts = {
            "path": self.path,
            "query": self.query_string,
            "headers": "\n".join(f"{k}: {v}" for k, v in self.headers),
            "body": self.text,
        }
        return [
            name
            for name, value in parts.items()
            if needle in value or needle in unquote_plus(value)
        ]


class RequestLog(Journal[RecordedRequest]):
    """Every request an emulator received, in arrival order of completion."""

    def filter(
        self, *, method: str | None = None, path: str | None = None
    ) -> list[RecordedRequest]:
        """Requests with this method and whose path contains ``path``."""
        return [
            r
            for r in self.snapshot()
            if (method is None or r.method == method.upper()) and (path is None or path in r.path)
        ]

    def mentioning(self, needle: str) -> list[tuple[RecordedRequest, list[str]]]:
        """Requests in which ``needle`` occurs anywhere, with the parts it occurs in."""
        found = ((r, r.mentions(needle)) for r in self.snapshot())
        return [(r, parts) for r, parts in found if parts]


@dataclass(frozen=True)
class Delivery:
    """A message the emulated provider accepted (what the user would have received).

    ``kind`` is provider-specific: the Telegram method, the Zalo message type
    (cs/transaction/promotion), the Messenger ``messaging_type`` (or ``"feed"``), the FCM target
    kind (token/topic/condition). ``payload`` is the request's parameters as received.
    """

    address: str
    text: str | None
    kind: str
    message_id: str
    at: datetime
    tag: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A canned HTTP answer. ``body``: dict/list → JSON; str/bytes → sent as is."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    media_type: str = "application/json"

    def to_response(self) -> Response:
        if isinstance(self.body, str | bytes):
            return Response(
                self.body, self.status, headers=dict(self.headers), media_type=self.media_type
            )
        return JSONResponse(self.body, self.status, headers=dict(self.headers))


@dataclass(frozen=True)
class Delay:
    """Hold the request ``seconds`` (released early when the server stops), then serve it
    normally. Lets a test drive a client's timeout without the emulator sleeping blindly."""

    seconds: float


@dataclass(frozen=True)
class Disconnect(Reply):
    """A network failure: the response starts, then the connection drops mid-body.

    Clients see an incomplete response (httpx: ``RemoteProtocolError``; python-telegram-bot:
    ``NetworkError``). uvicorn logs "ASGI callable returned without completing response".
    """

    def to_response(self) -> Response:
        return _DroppedResponse(status_code=self.status)


class _DroppedResponse(Response):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Promise more bytes than are sent, then return: the server has to cut the connection.
        headers = [(b"content-type", b"application/json"), (b"content-length", b"1024")]
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"ok":', "more_body": True})


class Pass(enum.Enum):
    """Process the request normally (a placeholder inside a script: fail, OK, fail...)."""

    OK = "ok"


OK = Pass.OK

Outcome = Reply | Delay | Pass

ANY = "*"
"""Script address matching every address (e.g. a provider-wide outage)."""


class Scripts:
    """Per-address outcomes: one-shot queues first, then a sticky (persistent) outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Outcome]] = {}
        self._sticky: dict[str, Outcome] = {}

    def push(self, address: str, outcomes: Iterable[Outcome]) -> None:
        with self._lock:
            self._queues.setdefault(address, deque()).extend(outcomes)

    def stick(self, address: str, outcome: Outcome) -> None:
        with self._lock:
            self._sticky[address] = outcome

    def unstick(self, address: str) -> None:
        with self._lock:
            self._sticky.pop(address, None)

    def take(self, address: str) -> Outcome | None:
        with self._lock:
            for key in (address, ANY):
                queue = self._queues.get(key)
                if queue:
                    return queue.popleft()
            for key in (address, ANY):
                if key in self._sticky:
                    return self._sticky[key]
        return None

    def pending(self, address: str) -> int:
        with self._lock:
            return len(self._queues.get(address, ()))

    def clear(self, address: str | None = None) -> None:
        with self._lock:
            if address is None:
                self._queues.clear()
                self._sticky.clear()
            else:
                self._queues.pop(address, None)
                self._sticky.pop(address, None)


_EPSILON = 1e-9  # float refill arithmetic (e.g. 30 × 1/30 s) must not deny a due token


class TokenBucket:
    """Classic token bucket: ``rate`` tokens per second refill up to ``capacity`` (the burst).

    Thread-safe. ``try_acquire`` returns 0.0 when granted, otherwise the seconds until enough
    tokens will be there, which emulators turn into the provider's retry-after answer.
    """

    def __init__(self, rate: float, capacity: float, monotonic: Monotonic = time.monotonic) -> None:
        if rate <= 0 or capacity < 1:
            raise ValueError("rate must be > 0 and capacity >= 1")
        self.rate = rate
        self.capacity = capacity
        self._monotonic = monotonic
        self._tokens = float(capacity)
        self._stamp = monotonic()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._monotonic()
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)
        self._stamp = now

    def _wait(self, tokens: float) -> float:
        if tokens > self.capacity:
            raise ValueError("request larger than the bucket can ever hold")
        missing = tokens - self._tokens
        return 0.0 if missing <= _EPSILON else missing / self.rate

    def try_acquire(self, tokens: float = 1.0) -> float:
        with self._lock:
            self._refill()
            wait = self._wait(tokens)
            if wait == 0.0:
                self._tokens -= tokens
            return wait

    @property
    def available(self) -> float:
        with self._lock:
            self._refill()
            return self._tokens


@dataclass(frozen=True)
class _Rule:
    rate: float
    burst: float


class RateLimits:
    """Named rate-limit rules, each a family of token buckets keyed by e.g. chat id.

    ``acquire(("global", ""), ("chat", "42"))`` takes one token from every named bucket
    atomically, or from none: a request denied by the per-chat limit must not eat the
    global budget.
    """

    def __init__(self, monotonic: Monotonic = time.monotonic) -> None:
        self._monotonic = monotonic
        self._rules: dict[str, _Rule] = {}
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._lock = threading.Lock()

    def set_rule(self, name: str, rate: float | None, burst: float | None = None) -> None:
        """``rate`` per second (None disables the rule); ``burst`` defaults to max(1, rate)."""
        with self._lock:
            self._buckets = {k: b for k, b in self._buckets.items() if k[0] != name}
            if rate is None:
                self._rules.pop(name, None)
            else:
                self._rules[name] = _Rule(rate, burst if burst is not None else max(1.0, rate))

    def acquire(self, *keys: tuple[str, str]) -> tuple[str, float] | None:
        """None when granted; else ``(rule, seconds to wait)`` for the longest wait."""
        with self._lock:
            buckets: list[tuple[str, TokenBucket]] = []
            for rule_name, key in keys:
                rule = self._rules.get(rule_name)
                if rule is None:
                    continue
                bucket = self._buckets.get((rule_name, key))
                if bucket is None:
                    bucket = TokenBucket(rule.rate, rule.burst, self._monotonic)
                    self._buckets[(rule_name, key)] = bucket
                buckets.append((rule_name, bucket))
            denial: tuple[str, float] | None = None
            for rule_name, bucket in buckets:
                bucket._refill()
                wait = bucket._wait(1.0)
                if wait > 0 and (denial is None or wait > denial[1]):
                    denial = (rule_name, wait)
            if denial is not None:
                return denial
            for _, bucket in buckets:
                bucket._tokens -= 1.0
            return None

    def reset(self) -> None:
        """Refill everything (the rules stay)."""
        with self._lock:
            self._buckets.clear()


class BodyError(ValueError):
    """The request body could not be parsed as its content type claims."""


def parse_body(content_type: str | None, body: bytes) -> dict[str, Any]:
    """Parse a JSON object, form-urlencoded or multipart/form-data body into a dict.

    Form values stay strings (callers decode JSON-encoded fields where the provider does).
    """
    media = (content_type or "").split(";")[0].strip().lower()
    if not body.strip():
        return {}
    if (
        media == "application/json"
        or media.endswith("+json")
        or (not media and body.lstrip()[:1] == b"{")
    ):
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise BodyError(f"invalid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise BodyError("JSON body is not an object")
        return data
    if media in ("application/x-www-form-urlencoded", ""):
        try:
            return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError as exc:
            raise BodyError("form body is not UTF-8") from exc
    if media == "multipart/form-data":
        return _parse_multipart(content_type or "", body)
    raise BodyError(f"unsupported content type {media!r}")


def _parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    # The stdlib MIME parser reads multipart/form-data once given the Content-Type header;
    # python-multipart is not a dependency of the project.
    raw = b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    message = BytesParser(policy=default_email_policy).parsebytes(raw)
    if not message.is_multipart():
        raise BodyError("malformed multipart body")
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        if part.get_filename() is None:
            fields[name] = data.decode(part.get_content_charset() or "utf-8")
        else:
            fields[name] = data
    return fields


def maybe_json(value: Any) -> Any:
    """Decode a form field that carries JSON (objects, arrays, numbers, booleans)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class RecordingMiddleware:
    """ASGI middleware appending every HTTP exchange to a :class:`RequestLog`.

    The body is read in full before the app runs (so requests rejected early are still
    recorded whole), and the record is appended before the last response chunk is sent, so a
    client that has its answer can rely on finding the request in the log.
    """

    def __init__(self, app: ASGIApp, log: RequestLog, clock: Clock) -> None:
        self.app = app
        self.log = log
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        at = self.clock()
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        status = 500
        response_headers: tuple[tuple[str, str], ...] = ()
        response_chunks: list[bytes] = []
        recorded = False

        def record() -> None:
            nonlocal recorded
            recorded = True
            self.log.append(
                RecordedRequest(
                    method=scope["method"],
                    path=scope["path"],
                    query_string=scope.get("query_string", b"").decode("latin-1"),
                    headers=tuple(
                        (k.decode("latin-1").lower(), v.decode("latin-1"))
                        for k, v in scope.get("headers", [])
                    ),
                    body=body,
                    at=at,
                    status=status,
                    response_body=b"".join(response_chunks),
                    response_headers=response_headers,
                )
            )

        async def send_recorded(message: Message) -> None:
            nonlocal status, response_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = tuple(
                    (k.decode("latin-1").lower(), v.decode("latin-1"))
                    for k, v in message.get("headers", [])
                )
            elif message["type"] == "http.response.body":
                response_chunks.append(message.get("body", b""))
                if not message.get("more_body", False) and not recorded:
                    record()
            await send(message)

        try:
            await self.app(scope, replay, send_recorded)
        finally:
            if not recorded:
                record()


STATS_PATH = "/_emulator/stats"


class StatsEndpoint:
    """Answers ``GET /_emulator/stats`` with :meth:`Emulator.stats`; passes the rest through.

    It sits outside the recording middleware, so polling it never shows up in the request log
    or in the counts it reports.
    """

    def __init__(self, app: ASGIApp, emulator: Emulator) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == STATS_PATH and scope["method"] == "GET":
            await JSONResponse(self.emulator.stats())(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _ThreadedUvicorn(uvicorn.Server):
    """uvicorn.Server whose idle loop can be woken from another thread.

    Stock uvicorn polls ``should_exit`` every 0.1 s; waking it makes stop() prompt, and the
    same event releases requests held by a :class:`Delay`.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self.wake = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's own shutdown sleeps a fixed 0.1 s and then polls every 0.1 s; a test suite
        # starting an emulator per test pays that each time. Same steps, polled finely.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.config.timeout_graceful_shutdown or 5)
        state = self.server_state
        while (state.connections or state.tasks) and not self.force_exit:
            if loop.time() > deadline:
                for task in state.tasks:
                    task.cancel(msg="emulator shutdown timed out")
                break
            await asyncio.sleep(0.002)
        for server in self.servers:
            await server.wait_closed()
        if not self.force_exit:
            await self.lifespan.shutdown()

    def request_exit(self) -> None:
        self.should_exit = True
        loop, wake = self.loop, self.wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop may have closed already
                loop.call_soon_threadsafe(wake.set)

    async def hold(self, seconds: float) -> None:
        """Wait ``seconds`` or until the server is asked to stop, whichever comes first."""
        if self.wake is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)


class EmulatorServer:
    """Serve an ASGI app on ``host`` (loopback) with uvicorn in a daemon thread."""

    def __init__(self, app: ASGIApp, host: str = LOCALHOST, port: int = 0) -> None:
        self.app = app
        self.host = host
        self._wanted_port = port
        self._port: int | None = None
        self._server: _ThreadedUvicorn | None = None
        self._thread: threading.Thread | None = None
        self._poll = threading.Event()  # never set: its wait() is the polling interval

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> Self:
        if self.running:
            return self
        # Binding here (port 0 → the kernel picks a free port) avoids the race of probing for a
        # free port and binding it later.
        # proto must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on connections of
        # such sockets, and without it every response stalls ~40 ms (Nagle + delayed ACK).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._wanted_port))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=port,
            interface="asgi3",
            loop="asyncio",
            lifespan="off",
            ws="none",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        server = _ThreadedUvicorn(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"emulator:{port}", daemon=True
        )
        self._server, self._thread, self._port = server, thread, port
        thread.start()
        deadline = time.monotonic() + timeout
        while not (server.started and _accepts(self.host, port)):
            if not thread.is_alive():
                sock.close()
                raise RuntimeError("emulator server thread died during start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"emulator did not accept connections within {timeout} s")
            self._poll.wait(0.002)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.request_exit()
        thread.join(timeout)
        if thread.is_alive():  # graceful shutdown stuck on a connection: cut it short
            server.force_exit = True
            thread.join(timeout)
        self._server = self._thread = None

    async def hold(self, seconds: float) -> None:
        server = self._server
        if server is None:
            await asyncio.sleep(seconds)
        else:
            await server.hold(seconds)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Emulator(ABC):
    """Base of the provider emulators: server lifecycle, request log, outbox, scripts, limits.

    Subclasses implement :meth:`build_app` (a Starlette app) and use :meth:`next_outcome`,
    :attr:`limits`, :meth:`deliver` and :attr:`clock` in their handlers.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        monotonic: Monotonic | None = None,
        host: str = LOCALHOST,
        port: int = 0,
    ) -> None:
        self.clock: Clock = clock or utc_now
        self.monotonic: Monotonic = monotonic or time.monotonic
        self.requests = RequestLog()
        self.outbox: Journal[Delivery] = Journal()
        self.limits = RateLimits(self.monotonic)
        self.scripts = Scripts()
        # One re-entrant lock for each emulator's own state (tokens, per-user flags, counters).
        self._lock = threading.RLock()
        self._token_calls_left: int | None = None  # see expire_token_after()
        self._host = host
        self._port = port
        self._server: EmulatorServer | None = None
        self._app: ASGIApp | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @abstractmethod
    def build_app(self) -> ASGIApp:
        """The provider's HTTP API as an ASGI app."""

    @property
    def app(self) -> ASGIApp:
        """The recording ASGI app (usable in-process too, e.g. with httpx.ASGITransport)."""
        if self._app is None:
            recording = RecordingMiddleware(self.build_app(), self.requests, self.clock)
            self._app = StatsEndpoint(recording, self)
        return self._app

    def start(self) -> Self:
        if self._server is None:
            self._server = EmulatorServer(self.app, self._host, self._port)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return self._server.port

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return self._server.base_url

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- scripting ------------------------------------------------------------------------

    def script(self, address: str | int, *outcomes: Outcome) -> None:
        """Queue one-shot outcomes for the next requests to ``address`` (:data:`ANY` = all).

        Each request to the address consumes one outcome; :data:`OK` means "serve normally";
        once the queue is empty the address behaves normally (or per its sticky state).
        """
        self.scripts.push(str(address), outcomes)

    def pending(self, address: str | int) -> int:
        """One-shot outcomes still queued for ``address``."""
        return self.scripts.pending(str(address))

    def reset_scripts(self, address: str | int | None = None) -> None:
        self.scripts.clear(None if address is None else str(address))

    async def next_outcome(self, address: str) -> Reply | None:
        """The scripted reply for this request, if any; a :class:`Delay` is served here."""
        outcome = self.scripts.take(address)
        if isinstance(outcome, Delay):
            await self.hold(outcome.seconds)
            return None
        if isinstance(outcome, Reply):
            return outcome
        return None

    async def hold(self, seconds: float) -> None:
        if self._server is None:
            await asyncio.sleep(seconds)
        else:
            await self._server.hold(seconds)

    # -- credentials ----------------------------------------------------------------------

    def expire_token_after(self, calls: int) -> None:
        """Let the credential authorise ``calls`` more API calls, then expire it.

        Every call that passes the credential check counts, whatever it is answered then (a
        send refused for a bad chat still used the token; Telegram's getMe counts too). The
        token presented on the last counted call is expired the provider's way (see each
        emulator's ``_expire_credential``), so the call after it gets the provider's auth
        error; a token obtained afterwards (a refresh, a new grant, ``add_token``) works. The
        countdown is one-shot and stops there. ``calls=0`` expires the credential now.
        """
        if calls < 0:
            raise ValueError("calls must be zero or more")
        with self._lock:
            self._token_calls_left = calls or None
            if calls == 0:
                self._expire_credential(None)

    @property
    def token_calls_left(self) -> int | None:
        """Calls the credential may still authorise (None: no countdown running)."""
        with self._lock:
            return self._token_calls_left

    def _spend_token_call(self, token: str) -> None:
        """Count one call ``token`` authorised; the last one of the budget expires it.

        Subclasses call this once a call has passed their credential check.
        """
        with self._lock:
            if self._token_calls_left is None:
                return
            self._token_calls_left -= 1
            if self._token_calls_left == 0:
                self._token_calls_left = None
                self._expire_credential(token)

    def _expire_credential(self, token: str | None) -> None:
        """Make ``token`` (None: the provider's current credential) fail as expired."""
        raise TypeError(f"{type(self).__name__} has no credential to expire")

    # -- stats (not part of any provider's contract) ----------------------------------------

    def stats(self) -> dict[str, Any]:
        """What ``GET /_emulator/stats`` answers: counts for benchmarks and dashboards.

        ``requests`` and ``by_status`` count every recorded HTTP request (the stats endpoint
        itself is not recorded); ``accepted`` counts messages delivered to the outbox, with
        ``accepted_per_second[i]`` those accepted in the i-th second after the first one.
        """
        requests = self.requests.snapshot()
        by_status = Counter(str(r.status) for r in requests)
        times = sorted(d.at for d in self.outbox.snapshot())
        per_second: list[int] = []
        if times:
            first = times[0]
            per_second = [0] * (int((times[-1] - first).total_seconds()) + 1)
            for at in times:
                per_second[int((at - first).total_seconds())] += 1
        return {
            "note": "emulator statistics; not part of any provider's API",
            "requests": len(requests),
            "by_status": dict(sorted(by_status.items())),
            "accepted": len(times),
            "first_accepted_at": times[0].isoformat() if times else None,
            "last_accepted_at": times[-1].isoformat() if times else None,
            "accepted_per_second": per_second,
        }

    # -- outbox ---------------------------------------------------------------------------

    def deliver(self, delivery: Delivery) -> None:
        self.outbox.append(delivery)

    def delivered_to(self, address: str | int) -> list[Delivery]:
        return [d for d in self.outbox if d.address == str(address)]


def ceil_seconds(seconds: float, minimum: int = 1) -> int:
    """Whole seconds to tell a client to wait (providers answer in integral seconds)."""
    whole = int(seconds)
    if whole < seconds - _EPSILON:
        whole += 1
    return max(minimum, whole)
