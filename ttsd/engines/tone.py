"""A deterministic test engine that "speaks" a sine tone per chunk.

It exists for exact tests and benchmarks of the queue, abort and playback logic: the
output length is a known function of the text (``ms_per_char`` per character), the
synthesis time is a known delay, and a chunk containing ``fail_marker`` raises, so
engine faults can be provoked on purpose. It never sounds like speech.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ttsd.engines.base import CancelToken, Engine, EngineError, check_number, reject_unknown


class ToneEngine(Engine):
    name = "tone"

    def __init__(
        self,
        *,
        sample_rate: int = 22050,
        ms_per_char: float = 20.0,
        delay_ms: float = 0.0,
        load_ms: float = 0.0,
        frequency: float = 440.0,
        fail_marker: str = "",
        fail_load: bool = False,
    ) -> None:
        self._rate = int(sample_rate)
        self.ms_per_char = float(ms_per_char)
        self.delay_ms = float(delay_ms)
        self.load_ms = float(load_ms)
        self.frequency = float(frequency)
        self.fail_marker = fail_marker
        self.fail_load = fail_load
        self.loaded = False

    @property
    def sample_rate(self) -> int:
        return self._rate

    def load(self) -> None:
        time.sleep(self.load_ms / 1000)
        if self.fail_load:
            raise EngineError("tone engine told to fail loading (fail_load = true)", "engine_load")
        self.loaded = True

    def unload(self) -> None:
        self.loaded = False

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        reject_unknown(options, {"frequency", "ms_per_char"}, self.name)
        checked: dict[str, Any] = {}
        frequency = check_number(options, "frequency", 50, 5000)
        if frequency is not None:
            checked["frequency"] = float(frequency)
        ms_per_char = check_number(options, "ms_per_char", 0.1, 1000)
        if ms_per_char is not None:
            checked["ms_per_char"] = float(ms_per_char)
        return checked

    def speed_options(self, speed: float, voice: str | None) -> dict[str, Any]:
        """The tone's length per character, divided by ``speed``."""
        return {} if speed == 1.0 else {"ms_per_char": self.ms_per_char / speed}

    def samples_for(self, text: str, ms_per_char: float | None = None) -> int:
        """Number of samples :meth:`synthesize` returns for ``text``."""
        per_char = self.ms_per_char if ms_per_char is None else ms_per_char
        return round(len(text) * per_char * self._rate / 1000)

    def stream(
        self,
        text: str,
        voice: str | None,
        options: Mapping[str, Any],
        cancel: CancelToken,
    ) -> Iterator[np.ndarray]:
        """The chunk's tone in one piece, after ``delay_ms`` spent in 10 ms steps that
        stop early once ``cancel`` is set (a stand-in for a model's token steps)."""
        deadline = time.monotonic() + self.delay_ms / 1000
        while not cancel.cancelled and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(0.01, left))
        if cancel.cancelled:
            return
        yield self._tone(text, options)

    def synthesize(self, text: str, voice: str | None, options: Mapping[str, Any]) -> np.ndarray:
        time.sleep(self.delay_ms / 1000)
        return self._tone(text, options)

    def _tone(self, text: str, options: Mapping[str, Any]) -> np.ndarray:
        if self.fail_marker and self.fail_marker in text:
            raise EngineError(f"tone engine told to fail on {self.fail_marker!r}")
        frequency = options.get("frequency", self.frequency)
        t = np.arange(self.samples_for(text, options.get("ms_per_char"))) / self._rate
        return np.round(np.sin(2 * np.pi * frequency * t) * 16000).astype(np.int16)

    def describe(self) -> dict[str, Any]:
        return {"ms_per_char": self.ms_per_char, "delay_ms": self.delay_ms}
