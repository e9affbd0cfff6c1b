"""A single worker thread that runs blocking calls one at a time for the event loop.

Speech models are not thread-safe and hog the CPU or GPU, so every engine call goes
through one thread. Unlike ``ThreadPoolExecutor`` the thread is a daemon: a shutdown
does not wait for a long synthesis call to return.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_STOP = object()


class Worker:
    def __init__(self, name: str = "ttsd-engine") -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._calls.get()
            if item is _STOP:
                return
            loop, future, function, args = item
            if future.cancelled():
                continue
            try:
                result = function(*args)
            except BaseException as exc:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(_set_exception, future, exc)
            else:
                loop.call_soon_threadsafe(_set_result, future, result)

    def run(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Schedule ``function(*args)`` on the thread; await the returned future."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, function, args))
        return future

    def stop(self) -> None:
        """Let the thread exit after the call it is running, if any."""
        self._calls.put(_STOP)


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
