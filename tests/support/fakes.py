"""Fakes for fast unit tests of the scheduler: an engine and an audio output.

They stand in for Piper and pacat in tests of *logic* (queue, priorities, ends,
cancellation, pause accounting), which then run in milliseconds without PulseAudio.
The recorded-audio tests with the real parts stay; these come in addition.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ttsd.audio.output import AudioUnavailable, PlaybackError, ServerInfo, StreamInfo
from ttsd.engines import CancelToken, EngineError
from ttsd.engines.base import StreamingEngine

RATE = 1000  # samples per second: small numbers, easy arithmetic


def pcm_of(text: str, piece: int = 0) -> np.ndarray:
    """What :class:`FakeEngine` makes for piece ``piece`` of ``text``: 10 samples per
    character, valued from the text's hash and the piece index, so any mix-up shows."""
    base = (sum(map(ord, text)) * 31 + piece * 7) % 20000
    return (np.arange(len(text) * 10, dtype=np.int64) % 97 + base).astype(np.int16)


class FakeEngine(StreamingEngine):
    """Makes each chunk in ``pieces`` pieces; counts calls; can be held at a gate.

    ``gate``: when set (a :class:`threading.Event`), every piece waits until it is set,
    so a test can hold an engine call "in native code" and look at the world. Cancel is
    checked before every piece, as a real engine checks before each unit of work.
    """

    name = "fake"

    def __init__(self, *, pieces: int = 1, fail_on: str = "", load_fails: bool = False) -> None:
        self.pieces = pieces
        self.fail_on = fail_on
        self.load_fails = load_fails
        self.loaded = False
        self.loads = 0
        self.unloads = 0
        #: (text, piece index) of every piece made, in order.
        self.made: list[tuple[str, int]] = []
        #: Pieces made after the call's token was cancelled (must stay 0).
        self.after_cancel = 0
        self.gate: threading.Event | None = None
        self.calls = 0
        self.active = 0  # calls running (must never exceed 1)
        self.max_active = 0

    @property
    def sample_rate(self) -> int:
        return RATE

    def load(self) -> None:
        self.loads += 1
        if self.load_fails:
            raise EngineError("told to fail loading", "engine_load")
        self.loaded = True

    def unload(self) -> None:
        self.unloads += 1
        self.loaded = False

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return dict(options)

    def stream(
        self, text: str, voice: str | None, options: Mapping[str, Any], cancel: CancelToken
    ) -> Iterator[np.ndarray]:
        if not self.loaded:
            raise EngineError("called while not loaded", "engine_load")
        self.calls += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            whole = pcm_of(text)
            bounds = np.linspace(0, len(whole), self.pieces + 1).astype(int)
            for index in range(self.pieces):
                if cancel.cancelled:
                    return
                if self.gate is not None:
                    self.gate.wait(10)
                if cancel.cancelled:
                    self.after_cancel += 0  # stopped at the check: nothing made
                    return
                if self.fail_on and self.fail_on in text and index == self.pieces - 1:
                    raise EngineError(f"told to fail on {self.fail_on!r}")
                self.made.append((text, index))
                yield whole[bounds[index] : bounds[index + 1]]
        finally:
            self.active -= 1


class FakeStream:
    """A stream that "plays" ``speed`` times faster than real time.

    ``played()`` follows a clock from the first write; ``finish`` waits until all is
    played. ``stall`` makes writes hang (a frozen server); ``fail_after`` makes a write
    fail once that many samples were written (pacat killed from outside).
    """

    def __init__(self, output: FakeOutput, rate: int, name: str, volume: float) -> None:
        self.output = output
        self.rate = rate
        self.name = name
        self.volume = volume
        self.playing = asyncio.Event()
        self.underruns = 0
        self.written = 0
        self.data: list[np.ndarray] = []
        self.killed = False
        self.finished = False
        self.progressed_at = time.monotonic()
        self._started_at: float | None = None
        self._killed_played: int | None = None

    @property
    def pid(self) -> int | None:
        return None

    async def start(self) -> None:
        if self.output.unavailable:
            raise PlaybackError("fake server unavailable", "audio_unavailable")
        self.output.opened.append(self)

    async def write(self, pcm: bytes) -> None:
        if self.killed:
            raise PlaybackError("killed")
        if self.output.stall:
            await asyncio.Event().wait()
        samples = np.frombuffer(pcm, dtype="<i2")
        fail_after = self.output.fail_after
        if fail_after is not None and self.written + len(samples) > fail_after:
            raise PlaybackError("fake pacat died")
        self.data.append(samples.copy())
        self.written += len(samples)
        self.progressed_at = time.monotonic()
        if self._started_at is None:
            self._started_at = time.monotonic()
            self.playing.set()
        await asyncio.sleep(0)

    def played(self) -> int:
        if self._killed_played is not None:
            return self._killed_played
        if self._started_at is None:
            return 0
        elapsed = time.monotonic() - self._started_at
        return min(self.written, int(elapsed * self.rate * self.output.speed))

    async def finish(self) -> None:
        if self.output.stall:
            await asyncio.Event().wait()
        while self.played() < self.written:
            if self.killed:
                raise PlaybackError("killed")
            self.progressed_at = time.monotonic()
            await asyncio.sleep(0.001)
        self.finished = True

    def kill(self) -> None:
        if not self.killed and not self.finished:
            self._killed_played = self.played()
            self.killed = True

    async def wait_closed(self) -> None:
        return None

    def heard(self) -> np.ndarray:
        """The samples actually played (up to the kill, if killed)."""
        audio = np.concatenate(self.data) if self.data else np.zeros(0, np.int16)
        return audio[: self.played()] if self.killed else audio


class FakeOutput:
    """An ``AudioOutput`` of :class:`FakeStream` streams."""

    def __init__(self, speed: float = 20.0) -> None:
        self.speed = speed
        self.opened: list[FakeStream] = []
        self.unavailable = False
        self.stall = False
        self.fail_after: int | None = None
        self._on_change: Any = None

    def stream(self, rate: int, *, name: str, volume: float) -> FakeStream:
        return FakeStream(self, rate, name, volume)

    async def check(self) -> ServerInfo:
        if self.unavailable:
            raise AudioUnavailable("fake server down")
        return ServerInfo("fake", "1", "null")

    async def stream_info(self, stream: Any) -> StreamInfo | None:
        return None

    async def set_volume(self, stream: Any, volume: float) -> None:
        return None

    def watch(self, on_change: Any) -> None:
        self._on_change = on_change

    def close(self) -> None:
        return None

    def heard(self) -> np.ndarray:
        """Everything heard on every stream, in order."""
        parts = [s.heard() for s in self.opened]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)
