"""Renders of templates that arrive from an editor run in a child process, killed on overrun.

Saving a template (each variant rendered for the sample people) and previewing one are where
untrusted template text first meets the renderer. The renderer's own budget
(:mod:`dispatcher.content.sandbox`) bounds every operation it knows about, but it runs in the
caller's thread and nothing can interrupt a Python thread. So the API renders in a child with
an address-space limit (``DISPATCHER_TEMPLATE_MEMORY_MIB`` beyond what the interpreter already
maps) and a CPU limit, and kills it when it has not answered within
``DISPATCHER_TEMPLATE_RENDER_SECONDS`` (plus a second): whatever the budget misses can stall or
exhaust only that child, never the API. Children are forked from a fork server that has the
renderer imported already (a few milliseconds each); where there is none, they are spawned.

Workers render stored templates in-process (12 µs a message could not pay for a process):
those were checked this way when saved, and their renders keep the in-process budget.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import resource
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any, TypeVar

from dispatcher.content.render import TemplateProblem
from dispatcher.content.sandbox import TemplateLimits

T = TypeVar("T")

# What the fork server imports once, so that each child starts with the renderer loaded.
PRELOAD = ["dispatcher.content.service"]
# Checks running at once; more wait for a turn (each may use its memory budget).
CONCURRENT_CHECKS = 4
# A child that has not answered this long after its render budget is killed.
GRACE_SECONDS = 1.0

_context: BaseContext | None = None
_context_lock = threading.Lock()
_turns = threading.BoundedSemaphore(CONCURRENT_CHECKS)


def _multiprocessing() -> BaseContext:
    global _context
    with _context_lock:
        if _context is None:
            if "forkserver" in multiprocessing.get_all_start_methods():
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(PRELOAD)
                _context = context
            else:
                _context = multiprocessing.get_context("spawn")
        return _context


def _mapped_bytes() -> int | None:
    """The address space this process already maps (Linux), or None where unknown."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _limit_resources(limits: TemplateLimits) -> None:
    mapped = _mapped_bytes()
    if mapped is not None:
        size = mapped + limits.memory_mib * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size, size))
    cpu = math.ceil(limits.seconds + GRACE_SECONDS)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))


def _child(
    sender: Connection, func: Callable[..., Any], args: tuple[Any, ...], limits: TemplateLimits
) -> None:
    try:
        _limit_resources(limits)
        try:
            outcome: tuple[str, Any] = ("ok", func(*args))
        except TemplateProblem as problem:
            outcome = ("problem", problem.as_dict())
        except MemoryError:
            outcome = ("memory", None)
        sender.send(outcome)
    finally:
        sender.close()


def run(func: Callable[..., T], *args: Any, limits: TemplateLimits) -> T:
    """``func(*args)`` in a child process with ``limits``' memory and time. A
    :class:`TemplateProblem` it raises is raised here; a child over its memory or time raises
    one saying so (``template budget exceeded: ...``)."""
    context = _multiprocessing()
    with _turns:
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(  # type: ignore[attr-defined]
            target=_child, args=(sender, func, args, limits), daemon=True
        )
        try:
            process.start()
        except BaseException:
            sender.close()
            receiver.close()
            raise
        sender.close()
        outcome: tuple[str, Any] | None = None
        try:
            if receiver.poll(limits.seconds + GRACE_SECONDS):
                try:
                    outcome = receiver.recv()
                except EOFError:  # it died without answering
                    outcome = None
        finally:
            if process.is_alive():
                process.kill()
            process.join()
            receiver.close()
    if outcome is None:
        if process.exitcode in (None, -signal.SIGKILL, -signal.SIGXCPU):
            raise TemplateProblem(f"template budget exceeded: took over {limits.seconds:g} s")
        outcome = ("memory", None)
    kind: str = outcome[0]
    value: Any = outcome[1]
    if kind == "ok":
        return value
    if kind == "problem":
        raise TemplateProblem(
            value["message"],
            channel=value["channel"],
            locale=value["locale"],
            part=value["part"],
            line=value["line"],
        )
    raise TemplateProblem(f"template budget exceeded: over {limits.memory_mib} MiB of memory")


def start_in_background() -> None:
    """Start the fork server in a thread now, so that the first check need not wait for it."""
    if _multiprocessing().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        threading.Thread(
            target=forkserver.ensure_running, name="template-checks", daemon=True
        ).start()
