"""One asyncio event loop per process, on its own thread, where every send happens.

Worker threads do their database work synchronously and hand the network part of a batch to
this loop, so adapters keep their connections (SMTP pool, HTTP clients) across batches.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dispatcher-loop", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result from the calling thread.

        The coroutine sees the caller's context variables (the ids a worker binds for its log
        lines), as if it ran on the calling thread.
        """
        future = asyncio.run_coroutine_threadsafe(
            _in_context(contextvars.copy_context(), coro), self.loop
        )
        return future.result(timeout)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)


async def _in_context(context: contextvars.Context, coro: Coroutine[Any, Any, T]) -> T:
    # The task running this has its own copy of the loop thread's context: setting the
    # caller's values here reaches this coroutine and the tasks it starts, nothing else.
    for var, value in context.items():
        var.set(value)
    return await coro


_loop: LoopThread | None = None
_loop_pid = 0
_lock = threading.Lock()


def get_loop() -> LoopThread:
    global _loop, _loop_pid
    with _lock:
        if _loop is None or _loop_pid != os.getpid():
            _loop = LoopThread()
            _loop_pid = os.getpid()
        return _loop
