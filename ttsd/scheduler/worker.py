"""A single worker thread that runs blocking calls one at a time for the event loop.

Speech models are not thread-safe and hog the CPU or GPU, so every engine call goes
through one thread. Unlike ``ThreadPoolExecutor`` the thread is a daemon and nothing
joins it at interpreter exit: shutting down never waits on a model call. The daemon
instead asks the engine to stop (its cancel token), waits a bounded time for the call
to return (:meth:`Worker.join`), and leaves with ``os._exit`` if it did not.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        #: True while a call runs on the thread.
        self.busy = False
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._calls.get()
            if item is _STOP:
                return
            loop, future, function, args = item
            if future.cancelled():
                continue
            self.busy = True
            try:
                result = function(*args)
            except BaseException as exc:  # handed to the awaiting coroutine
                _post(loop, _set_exception, future, exc)
            else:
                _post(loop, _set_result, future, result)
            finally:
                self.busy = False

    def run(self, function: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Schedule ``function(*args)`` on the thread; await the returned future."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, function, args))
        return future

    def stop(self) -> None:
        """Let the thread exit once the calls already scheduled have run."""
        self._calls.put(_STOP)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    async def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the thread to exit; True if it did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._thread.is_alive() and loop.time() < deadline:
            await asyncio.sleep(0.01)
        return not self._thread.is_alive()


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    # The loop may be closed already when a call outlived the daemon's shutdown.
    # (RuntimeError: it closed between the check and the call; nobody awaits the result.)
    if not loop.is_closed():
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback, *args)


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
