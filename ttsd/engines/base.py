"""The interface every speech engine implements.

An engine turns one chunk of text (a sentence or a few) into mono int16 PCM at its own
sample rate, either in one piece (:meth:`Engine.synthesize`) or as a stream of pieces
made one after another (:meth:`Engine.stream`), which lets playback start with the first
piece and lets an abort stop the engine between pieces (:class:`CancelToken`).

The engine host calls :meth:`Engine.load`, :meth:`Engine.stream` (and the iteration of
what it returns), :meth:`Engine.synthesize` and :meth:`Engine.unload` from a single
worker thread, one call at a time, so engines need no locking of their own.
:meth:`Engine.validate_options`, :meth:`Engine.check_voice` and :meth:`Engine.voices`
may be called from the event loop and must be cheap and must not touch the model.
Only :meth:`CancelToken.cancel` crosses threads, and, for an engine whose facts change
on their own (the remote engine switching to its local fallback and back), the
listener set with :meth:`Engine.watch`, which :meth:`Engine.facts_changed` calls from
whatever thread noticed the change; :meth:`Engine.describe` and :meth:`Engine.source`
are then read from the event loop while the engine works, so such an engine guards
the state behind them with a lock.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np


class EngineError(Exception):
    """An engine failed; ``code`` becomes the ``code`` of the job's ``error`` event."""

    def __init__(self, message: str, code: str = "engine_failed") -> None:
        super().__init__(message)
        self.code = code


class OptionError(ValueError):
    """A per-job engine option is unknown or out of range (the client gets ``bad_option``)."""


class CancelToken:
    """Asks a running engine call to stop; set from any thread, polled by the engine.

    An engine checks :attr:`cancelled` between units of work it can stop after (a
    sentence, a token step, a vocoder call) and then returns early. An engine whose
    library can abort a call in progress (onnxruntime's ``RunOptions.terminate``)
    registers that with :meth:`on_cancel`.
    """

    __slots__ = ("_callbacks", "_event", "_lock")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def cancel(self) -> None:
        """Ask the call to stop at its next check. Idempotent."""
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (from the cancelling thread) when the token is cancelled,
        at once if it already is. Returns a function that unregisters it."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(callback)

                def remove() -> None:
                    with self._lock, contextlib.suppress(ValueError):
                        self._callbacks.remove(callback)

                return remove
        callback()
        return lambda: None

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def __repr__(self) -> str:
        return f"CancelToken(cancelled={self.cancelled})"


class Engine(ABC):
    """A text-to-speech engine behind the scheduler."""

    #: Short name used in config, logs and the protocol (``"piper"``).
    name: str = ""

    #: Set by :meth:`watch`; a class attribute so that engines need no ``__init__`` call.
    _facts_listener: Callable[[], None] | None = None

    @property
    @abstractmethod
    def sample_rate(self) -> int:
        """Sample rate in Hz of the PCM returned by :meth:`synthesize` (valid after load)."""

    @abstractmethod
    def load(self) -> None:
        """Load the model; may take long. Raise :class:`EngineError` on failure."""

    def unload(self) -> None:  # noqa: B027 - optional hook
        """Free the model's memory. The engine may be loaded again later."""

    @abstractmethod
    def synthesize(self, text: str, voice: str | None, options: Mapping[str, Any]) -> np.ndarray:
        """Speak one chunk of text; return mono int16 PCM as a 1-D array.

        ``options`` has already been through :meth:`validate_options`.
        Raise :class:`EngineError` when the chunk cannot be spoken.
        """

    def stream(
        self,
        text: str,
        voice: str | None,
        options: Mapping[str, Any],
        cancel: CancelToken,
    ) -> Iterator[np.ndarray]:
        """Speak one chunk of text as a sequence of PCM pieces, as they are made.

        The pieces, concatenated, are the chunk's audio (mono int16, 1-D arrays). Once
        ``cancel`` is set the iterator should stop soon, by returning: what "soon" means
        is the engine's unit of work (Piper: a sentence or a bounded part of one;
        Chatterbox: one token step or one vocoder call). Raise :class:`EngineError` when
        the chunk cannot be spoken. The default makes the whole chunk with
        :meth:`synthesize`, so it cannot stop midway.
        """
        if not cancel.cancelled:
            yield self.synthesize(text, voice, options)

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check per-job options; return them normalised or raise :class:`OptionError`."""
        if options:
            raise OptionError(f"{self.name} takes no options, got {sorted(options)}")
        return {}

    def speed_options(self, speed: float, voice: str | None) -> dict[str, Any]:
        """The per-job options that make ``voice`` speak ``speed`` times as fast.

        ``speed`` is OpenAI's (1.0 normal, 2.0 twice as fast). The result goes through
        :meth:`validate_options` like any client's options. An engine without a
        faithful speed control raises :class:`OptionError` for any speed but 1.0,
        rather than pretending. Cheap: called from the event loop.
        """
        if speed == 1.0:
            return {}
        raise OptionError(f"the {self.name} engine has no speed control: speed must be 1.0")

    def check_voice(self, voice: str | None) -> None:  # noqa: B027 - optional hook
        """Raise :class:`OptionError` if ``voice`` is clearly unusable (cheap check)."""

    def voices(self) -> list[str]:
        """Names a client may pass as ``voice``."""
        return []

    def describe(self) -> dict[str, Any]:
        """Extra facts for ``hello``/``status`` (model, device, default voice...)."""
        return {}

    def source(self) -> str:
        """Which of its sources would make the engine's next audio ("" for an engine
        with only one). The phrase cache keys audio by it, so that audio one source
        made (the remote engine's local fallback) is never replayed as another's (the
        remote voice). Cheap; read from the event loop."""
        return ""

    def watch(self, listener: Callable[[], None] | None) -> None:
        """Have ``listener()`` called whenever :meth:`describe` or :meth:`source`
        change on their own, outside :meth:`load` and :meth:`unload` (which the host
        reports itself). The engine host sets it before loading the engine and emits
        an ``engine`` event for each call. The listener may be called from any thread
        and returns at once."""
        self._facts_listener = listener

    def facts_changed(self) -> None:
        """Tell the host that :meth:`describe` changed (called by engines, any thread)."""
        listener = self._facts_listener
        if listener is not None:
            listener()


class StreamingEngine(Engine):
    """An engine that makes its audio piece by piece: it defines :meth:`Engine.stream`,
    and its one-shot :meth:`synthesize` is the pieces joined."""

    @abstractmethod
    def stream(
        self,
        text: str,
        voice: str | None,
        options: Mapping[str, Any],
        cancel: CancelToken,
    ) -> Iterator[np.ndarray]: ...

    def synthesize(self, text: str, voice: str | None, options: Mapping[str, Any]) -> np.ndarray:
        pieces = list(self.stream(text, voice, options, CancelToken()))
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)


def check_number(
    options: Mapping[str, Any], key: str, low: float, high: float, *, integer: bool = False
) -> float | int | None:
    """Return ``options[key]`` if it is a number within ``[low, high]``, else raise.

    Returns None when the key is absent. Booleans are rejected even though Python
    treats them as integers.
    """
    if key not in options:
        return None
    value = options[key]
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise OptionError(f"option {key!r} must be {kind}, got {value!r}")
    if not (low <= value <= high):  # also rejects NaN
        raise OptionError(f"option {key!r} must be between {low} and {high}, got {value!r}")
    return value


def reject_unknown(options: Mapping[str, Any], known: set[str], engine: str) -> None:
    """Raise :class:`OptionError` naming any option not in ``known``."""
    unknown = sorted(set(options) - known)
    if unknown:
        raise OptionError(
            f"unknown option(s) for {engine}: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(known)) or 'none'})"
        )


def float_to_int16(samples: np.ndarray) -> np.ndarray:
    """Convert float audio in [-1, 1] to int16 PCM, clipping anything outside."""
    clipped = np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)
    return np.round(clipped * 32767.0).astype(np.int16)
