"""Renders of templates that arrive from an editor run in a child process, killed on overrun.

Saving a template (each variant rendered for the sample people) and previewing one are where
untrusted template text first meets the renderer. The renderer's own budget
(:mod:`dispatcher.content.sandbox`) bounds every operation it knows about, but it runs in the
caller's thread and nothing can interrupt a Python thread. So the API renders in a child with
an address-space limit (``DISPATCHER_TEMPLATE_MEMORY_MIB`` beyond what the interpreter already
maps) and a CPU limit, and kills it when it has not answered within
``DISPATCHER_TEMPLATE_RENDER_SECONDS`` (plus a second): whatever the budget misses can stall or
exhaust only that child, never the API.

A *check server* (``python -m dispatcher.content.isolation``, a few started on demand and kept)
imports the renderer once, and forks one child per render: a fork of a small single-threaded
process costs milliseconds, where a fork of the API (threads, connections) would not be safe
and a fresh interpreter would cost seconds. The API talks to it over its stdin and stdout.

Workers render stored templates in-process (12 µs a message could not pay for a process):
those were checked this way when saved, and their renders keep the in-process budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pickle
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from channels.base import ChannelLimits
from dispatcher.content.render import Rendered, Renderer, TemplateProblem, VariantData
from dispatcher.content.render import limit_problems as channel_problems
from dispatcher.content.sandbox import TemplateLimits

# Checks running at once; more wait for a turn (each may use its memory budget).
CONCURRENT_CHECKS = 4
# A child that has not answered this long after its render budget is killed.
GRACE_SECONDS = 1.0
# How long the API waits for a check server beyond that (its start, on a busy machine).
SERVER_START_SECONDS = 30.0

_HEADER = struct.Struct("!Q")


# -- what runs in the child -----------------------------------------------------------------


def check_all(
    jobs: Sequence[tuple[VariantData, Mapping[str, Any]]],
    limits: TemplateLimits,
    channels: Mapping[str, ChannelLimits] | None = None,
) -> list[list[str]]:
    """Compile and render each (variant, context); how each breaks its channel's limits (those
    in ``channels``, which the caller read from the adapters, else the adapters' own). The
    first variant that cannot render raises its :class:`TemplateProblem`."""
    renderer = Renderer(limits=limits, channels=channels)
    found = []
    # Each variant is checked for several sample people: compile it once, under a stand-in id
    # that only this renderer's cache knows.
    cached: dict[int, VariantData] = {}
    for variant, context in jobs:
        keyed = cached.get(id(variant))
        if keyed is None:
            renderer.check_syntax(variant)
            keyed = cached[id(variant)] = dataclasses.replace(variant, id=-1 - len(cached))
        rendered = renderer.render(keyed, context)
        found.append(channel_problems(rendered, renderer.channel_limits(variant.channel)))
    return found


def render_one(
    variant: VariantData,
    context: Mapping[str, Any],
    limits: TemplateLimits,
    channels: Mapping[str, ChannelLimits] | None = None,
) -> tuple[Rendered, list[str]]:
    """``variant`` rendered, and how it breaks its channel's limits (as in :func:`check_all`)."""
    renderer = Renderer(limits=limits, channels=channels)
    rendered = renderer.render(variant, context)
    return rendered, channel_problems(rendered, renderer.channel_limits(variant.channel))


FUNCTIONS: dict[str, Callable[..., Any]] = {"check_all": check_all, "render_one": render_one}


def _limit_resources(limits: TemplateLimits) -> None:
    try:
        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        mapped = None  # not Linux: the time limit and the render's own budget still hold
    if mapped is not None:
        size = mapped + limits.memory_mib * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    cpu = math.ceil(limits.seconds + GRACE_SECONDS)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))


def _child(name: str, args: tuple[Any, ...], limits: TemplateLimits) -> tuple[str, Any]:
    _limit_resources(limits)
    try:
        return "ok", FUNCTIONS[name](*args)
    except TemplateProblem as problem:
        return "problem", problem.as_dict()
    except MemoryError:
        return "memory", None
    except Exception as exc:  # a bug, not the template: say so rather than hide it
        return "problem", {"message": f"the check failed: {type(exc).__name__}: {exc}"}


# -- the check server -----------------------------------------------------------------------


def _write(stream: IO[bytes], value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytes | None:
    """``size`` bytes from ``fd``; None at end of file or past ``deadline``."""
    chunks = []
    while size:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read(fd: int, deadline: float | None = None) -> Any:
    header = _read_exactly(fd, _HEADER.size, deadline)
    if header is None:
        return None
    data = _read_exactly(fd, _HEADER.unpack(header)[0], deadline)
    return None if data is None else pickle.loads(data)  # noqa: S301 - our own process


def _fork_and_run(name: str, args: tuple[Any, ...], limits: TemplateLimits) -> tuple[str, Any]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        try:
            with os.fdopen(write_fd, "wb") as out:
                _write(out, _child(name, args, limits))
        finally:
            os._exit(0)
    os.close(write_fd)
    try:
        outcome = _read(read_fd, time.monotonic() + limits.seconds + GRACE_SECONDS)
    finally:
        os.close(read_fd)
    if outcome is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if outcome is not None:
        return outcome
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGKILL, signal.SIGXCPU):
        return "time", None
    return "memory", None


def serve() -> None:
    """The check server's loop: one request at a time from stdin, its outcome to stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the API stops it by closing its stdin
    # Answers go to the original stdout; anything else that prints goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    while True:
        request = _read(sys.stdin.fileno())
        if request is None:
            return
        name, args, limits = request
        _write(out, _fork_and_run(name, args, limits))


# -- the API's side -------------------------------------------------------------------------


class _Server:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dispatcher.content.isolation"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # its own process group: killed with its child
        )

    def ask(self, request: tuple[str, tuple[Any, ...], TemplateLimits], wait: float) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        _write(self.process.stdin, request)
        return _read(self.process.stdout.fileno(), time.monotonic() + wait)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


_idle: list[_Server] = []
_idle_lock = threading.Lock()
_turns = threading.BoundedSemaphore(CONCURRENT_CHECKS)


def _take() -> _Server:
    with _idle_lock:
        if _idle:
            return _idle.pop()
    return _Server()


def _give_back(server: _Server) -> None:
    with _idle_lock:
        _idle.append(server)


def run(name: str, *args: Any, limits: TemplateLimits) -> Any:
    """``FUNCTIONS[name](*args)`` in a child process with ``limits``' memory and time. A
    :class:`TemplateProblem` it raises is raised here; a child over its memory or time raises
    one saying so (``template budget exceeded: ...``)."""
    with _turns:
        server = _take()
        try:
            outcome = server.ask((name, args, limits), limits.seconds + SERVER_START_SECONDS)
        except OSError:
            outcome = None
        if outcome is None:  # the server itself is stuck or gone: replace it
            server.stop()
            outcome = ("time", None)
        else:
            _give_back(server)
    kind: str = outcome[0]
    value: Any = outcome[1]
    if kind == "ok":
        return value
    if kind == "problem":
        raise TemplateProblem(
            value["message"],
            channel=value.get("channel"),
            locale=value.get("locale"),
            part=value.get("part"),
            line=value.get("line"),
        )
    if kind == "time":
        raise TemplateProblem(f"template budget exceeded: took over {limits.seconds:g} s")
    raise TemplateProblem(f"template budget exceeded: over {limits.memory_mib} MiB of memory")


def start_in_background() -> None:
    """Start a check server now, so that the first check need not wait for its imports."""
    with _idle_lock:
        if not _idle:
            _idle.append(_Server())


if __name__ == "__main__":
    serve()
