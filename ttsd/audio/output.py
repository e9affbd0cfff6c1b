"""The audio-output interface: what the player needs from a sound server.

The player opens one stream per job (mono s16le at the engine's rate), writes PCM into
it as it is made, finishes it (waits until everything has played) or kills it (silence
at once). The real implementation is :class:`ttsd.audio.pacat.PacatOutput`; tests use a
fake that records what was written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ttsd.errors import Code


class AudioUnavailable(Exception):
    """The sound server cannot be reached (or did not answer in time)."""


class PlaybackError(Exception):
    """A stream failed; ``code`` becomes the job's error code."""

    def __init__(self, message: str, code: Code = Code.PLAYBACK_FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ServerInfo:
    name: str
    version: str
    default_sink: str


@dataclass(frozen=True)
class StreamInfo:
    """Where the server plays a stream, as ``status`` shows it."""

    index: int
    sink: str
    volume: float
    mute: bool
    properties: dict[str, str]


class AudioStream(Protocol):
    """One playback stream. Every method may be called at any time after :meth:`start`."""

    rate: int
    #: Set when the server starts playing the stream (its first sample is audible).
    playing: asyncio.Event
    #: Times the stream ran dry (each an audible gap).
    underruns: int
    #: Samples handed to the stream so far.
    written: int
    #: When the stream last made progress (``time.monotonic()``): it played more, or
    #: took more audio. A stream whose progress stops is stalled.
    progressed_at: float

    @property
    def pid(self) -> int | None:
        """The process behind the stream, if any (shown in ``status``)."""

    async def start(self) -> None:
        """Open the stream; raise :class:`PlaybackError` if that is impossible."""

    async def write(self, pcm: bytes) -> None:
        """Queue ``pcm``; returns once the stream has taken most of it."""

    async def finish(self) -> None:
        """End of audio: return once everything written has played."""

    def kill(self) -> None:
        """Stop the sound now; safe to call any number of times."""

    async def wait_closed(self) -> None:
        """Wait until the stream's resources are released (after finish or kill)."""

    def played(self) -> int:
        """Samples played so far: the exact position to resume from after a kill."""


class AudioOutput(Protocol):
    """Where streams play, and the health of the server behind them."""

    def stream(self, rate: int, *, name: str, volume: float) -> AudioStream:
        """A new stream (not started yet)."""

    async def check(self) -> ServerInfo:
        """Describe the server, or raise :class:`AudioUnavailable` (bounded in time)."""

    async def stream_info(self, stream: AudioStream) -> StreamInfo | None:
        """Where the server plays ``stream`` (None if it cannot tell)."""

    async def set_volume(self, stream: AudioStream, volume: float) -> None:
        """Set the stream's volume on the server (if the server changed it)."""

    def watch(self, on_change: Callable[[bool, str], None]) -> None:
        """Report server loss and return as ``on_change(reachable, why)`` (from any
        thread-safe context the implementation chooses; the player posts to its loop)."""

    def close(self) -> None:
        """Stop watching; never blocks on the server."""
