"""The engine host: owns the engine, its worker thread, its state and its idle unload.

Every engine call goes through :meth:`EngineHost.stream`, which pulls the engine's
pieces one at a time on the worker thread and counts the call as in flight; the model
is never unloaded while a call runs or while the scheduler has work. Options and
voices are checked in one place, :meth:`EngineHost.check`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ttsd.engines import CancelToken, Engine, EngineError, OptionError
from ttsd.errors import Code
from ttsd.scheduler.events import Rejection
from ttsd.scheduler.worker import Worker

log = logging.getLogger("ttsd.engine")

#: ``make_engine()`` returns the engine and why it was chosen (shown in ``hello``).
EngineFactory = Callable[[], tuple[Engine, str]]

_END = object()


class EngineState(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADED = "unloaded"


class EngineHost:
    """Runs one engine on one worker thread for the event loop.

    ``engine`` may be given already built (a named engine, built at startup so that bad
    settings fail at once); otherwise ``make_engine`` builds it on the worker thread,
    since choosing ``engine = "auto"`` may import torch. ``on_change`` hears every state
    change with :meth:`info`, and every change of a ready engine's own facts that the
    engine reports (:meth:`Engine.watch`), on the event loop. ``unload_after`` > 0
    unloads the model after that many seconds with no call in flight while
    ``is_idle()`` holds.
    """

    def __init__(
        self,
        make_engine: EngineFactory,
        *,
        name: str,
        on_change: Callable[[dict[str, Any]], None] = lambda info: None,
        engine: Engine | None = None,
        selected: str = "",
        unload_after: float = 0.0,
        is_idle: Callable[[], bool] = lambda: True,
    ) -> None:
        self._make_engine = make_engine
        self.name = engine.name if engine is not None else name
        self.engine = engine
        self.selected = selected
        self._on_change = on_change
        self.unload_after = unload_after
        self._is_idle = is_idle
        self.state = EngineState.LOADING
        self.error = ""
        #: Engine calls running or waiting for the worker.
        self.in_flight = 0
        self.last_used = time.monotonic()
        self.worker = Worker()
        self._loading: asyncio.Task[None] | None = None
        self._unloader: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        if engine is not None:
            engine.watch(self._facts_changed)

    # --- Lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """Start loading the model in the background; returns at once."""
        self._loop = asyncio.get_running_loop()
        self._loading = asyncio.create_task(self._load(), name="ttsd-engine-load")
        if self.unload_after > 0:
            self._unloader = asyncio.create_task(self._unload_when_idle(), name="ttsd-unload")

    async def close(self, timeout: float) -> bool:
        """Stop the worker after its current call; True if it stopped within ``timeout``.

        The callers' cancel tokens must already be set: the call in flight then returns
        at the engine's next check (a sentence for Piper, a token step for Chatterbox).
        """
        for task in (self._loading, self._unloader):
            if task is not None:
                task.cancel()
        engine = self.engine
        if engine is not None and self.state is EngineState.READY:
            # Unloaded after the call in flight, on the worker like every engine call:
            # an engine that holds threads or connections (the remote engine's HTTP
            # loop) lets them go, so the process can exit normally.
            self.worker.run(_quietly, engine.unload)
        self.worker.stop()
        return await self.worker.join(timeout)

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.state is EngineState.READY

    @property
    def sample_rate(self) -> int:
        assert self.engine is not None
        return self.engine.sample_rate

    def info(self) -> dict[str, Any]:
        """The engine as ``hello``, ``status`` and ``engine`` events show it."""
        info: dict[str, Any] = {"name": self.name, "state": self.state.value}
        if self.selected:
            info["selected"] = self.selected
        if self.error:
            info["error"] = self.error
        if self.ready:
            assert self.engine is not None
            info["sample_rate"] = self.engine.sample_rate
            info.update(self.engine.describe())
        return info

    def _set_state(self, state: EngineState, error: str = "") -> None:
        self.state, self.error = state, error
        self._on_change(self.info())

    def _facts_changed(self) -> None:
        """The engine's listener (any thread): report its new facts on the event loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._report_facts)

    def _report_facts(self) -> None:
        if self.ready:  # facts of an engine not ready are reported with its next state
            self._on_change(self.info())

    def _build_and_load(self) -> Engine:
        engine = self.engine
        if engine is None:
            engine, self.selected = self._make_engine()
            self.name = engine.name
            engine.watch(self._facts_changed)
            log.info("engine %s selected: %s", engine.name, self.selected)
        started = time.monotonic()
        log.info("loading engine %s", engine.name)
        engine.load()
        log.info(
            "engine %s ready in %.2f s (%d Hz)",
            engine.name,
            time.monotonic() - started,
            engine.sample_rate,
        )
        return engine

    async def _load(self) -> None:
        if self.state is not EngineState.LOADING:
            self._set_state(EngineState.LOADING)
        else:
            self._on_change(self.info())
        try:
            self.engine = await self.worker.run(self._build_and_load)
        except Exception as exc:
            message = str(exc) or repr(exc)
            log.error("engine failed to load: %s", message)
            self._set_state(EngineState.FAILED, message)
        else:
            self._set_state(EngineState.READY)

    async def ensure_ready(self) -> bool:
        """Wait until the model is loaded, (re)loading it if needed; False if it failed."""
        if self.ready:
            return True
        if self.state is EngineState.UNLOADED and (self._loading is None or self._loading.done()):
            self._loading = asyncio.create_task(self._load(), name="ttsd-engine-load")
        if self._loading is not None:
            await asyncio.shield(self._loading)
        return self.ready

    async def _unload_when_idle(self) -> None:
        """Unload the model after ``unload_after`` seconds without calls or work."""
        period = min(1.0, self.unload_after / 4)
        while True:
            await asyncio.sleep(period)
            if not self.ready or self.in_flight or not self._is_idle():
                continue
            if time.monotonic() - self.last_used < self.unload_after:
                continue
            engine = self.engine
            assert engine is not None
            log.info("unloading engine %s after %.0f s idle", engine.name, self.unload_after)
            # The state changes before the unload runs, so a call that arrives meanwhile
            # queues a load behind the unload on the same thread: never a call on an
            # unloaded model.
            self._set_state(EngineState.UNLOADED)
            await self.worker.run(engine.unload)

    # --- Calls ----------------------------------------------------------------------

    def check(self, voice: str | None, options: Mapping[str, Any]) -> dict[str, Any] | None:
        """Check a request's voice and options; return the options normalised.

        None means the engine is not built yet (``auto`` is still choosing): the
        generator checks again before the job's first call.
        """
        if self.engine is None:
            return None
        try:
            checked = self.engine.validate_options(options)
            self.engine.check_voice(voice)
        except OptionError as exc:
            raise Rejection(Code.BAD_OPTION, str(exc)) from None
        return checked

    def speed_options(self, speed: float, voice: str | None) -> dict[str, Any]:
        """The options that make the engine speak ``speed`` times as fast (see
        :meth:`Engine.speed_options`); Rejection ``bad_option`` if it cannot."""
        if self.engine is None:
            raise Rejection(Code.ENGINE_UNAVAILABLE, "the engine is not loaded yet")
        try:
            return self.engine.speed_options(speed, voice)
        except OptionError as exc:
            raise Rejection(Code.BAD_OPTION, str(exc)) from None

    async def stream(
        self,
        text: str,
        voice: str | None,
        options: Mapping[str, Any],
        cancel: CancelToken,
    ) -> AsyncIterator[np.ndarray]:
        """Speak ``text``, yielding PCM pieces as the engine makes them.

        Each piece is pulled on the worker thread, so an abort (``cancel``) lets the
        next caller in after at most one of the engine's units of work. Raises
        :class:`EngineError` (``engine_unavailable`` when the model cannot be loaded).
        Use it with ``contextlib.aclosing`` so that an early exit closes the engine's
        iterator on the worker.
        """
        self.in_flight += 1
        iterator: Iterator[np.ndarray] | None = None
        try:
            if not await self.ensure_ready():
                raise EngineError(
                    f"the engine failed to load: {self.error}", Code.ENGINE_UNAVAILABLE
                )
            engine = self.engine
            assert engine is not None
            iterator = await self.worker.run(_start, engine, text, voice, options, cancel)
            while not cancel.cancelled:
                piece = await self.worker.run(_next_piece, iterator)
                if piece is _END:
                    break
                yield piece
        finally:
            if iterator is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.worker.run(_close, iterator))
            self.in_flight -= 1
            self.last_used = time.monotonic()

    def voices(self) -> list[str]:
        return self.engine.voices() if self.engine is not None else []

    def source(self) -> str:
        """The engine's source of audio now (see :meth:`Engine.source`)."""
        return self.engine.source() if self.engine is not None else ""


# These run on the worker thread.


def _start(
    engine: Engine,
    text: str,
    voice: str | None,
    options: Mapping[str, Any],
    cancel: CancelToken,
) -> Iterator[np.ndarray]:
    return iter(engine.stream(text, voice, options, cancel))


def _next_piece(iterator: Iterator[np.ndarray]) -> Any:
    try:
        piece = next(iterator, _END)
    except EngineError:
        raise
    except Exception as exc:  # an engine bug fails the job, not the daemon
        log.exception("engine raised")
        raise EngineError(f"engine failed: {type(exc).__name__}: {exc}") from exc
    if piece is _END:
        return _END
    return np.asarray(piece, dtype=np.int16).reshape(-1)


def _quietly(function: Callable[[], None]) -> None:
    try:
        function()
    except Exception:  # leaving anyway: a failed unload is only worth a line
        log.exception("engine unload failed")


def _close(iterator: Iterator[np.ndarray]) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
