"""Playback streams through ``pacat``, one child process per stream.

pacat connects to PulseAudio (or PipeWire's pulse server) like any desktop client, so
the stream shows up with its name and role in volume controls and can be ducked or
moved. Killing the process ends the sound at once: the server drops the stream's
buffer when its client disconnects. Writes to a pacat that died, whoever killed it,
raise :class:`PlaybackError`, never ``BrokenPipeError``.

This module is the only code that starts or kills pacat.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections import deque
from collections.abc import Callable

from ttsd.audio.output import PlaybackError, ServerInfo, StreamInfo
from ttsd.audio.pulse import PulseMonitor
from ttsd.errors import Code

PACAT = "pacat"

# pacat -v redraws its status line with carriage returns and "erase line" escapes.
_LINE_BREAK = re.compile(rb"[\r\n]+|\x1b\[K")
# Every 50 ms pacat -v prints the stream's playback time (the sample being heard).
_TIME = re.compile(r"Time: (\d+\.\d+) sec")


class PacatStream:
    """A pacat process playing mono s16le PCM at ``rate`` Hz (an ``AudioStream``)."""

    def __init__(
        self,
        rate: int,
        *,
        stream_name: str,
        media_role: str = "a11y",
        sink: str = "",
        volume: float = 1.0,
        latency_ms: int = 250,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.args = [
            PACAT,
            "--playback",
            "--verbose",  # reports "Stream started.", underruns and the playback time
            "--raw",
            "--format=s16le",
            "--channels=1",
            f"--rate={rate}",
            "--client-name=ttsd",
            f"--stream-name={stream_name}",
            f"--latency-msec={latency_ms}",
            f"--volume={round(volume * 65536)}",
            "--property=application.name=ttsd",
            "--property=application.id=ttsd",
            "--property=application.icon_name=audio-speakers",
            f"--property=media.role={media_role}",
        ]
        if sink:
            self.args.append(f"--device={sink}")
        self.process: asyncio.subprocess.Process | None = None
        self.killed = False
        self.playing = asyncio.Event()
        self.underruns = 0
        self.written = 0
        self._clock = clock
        self.progressed_at = clock()
        self._last_time = -1.0
        #: Playback time minus our clock, at most (see :meth:`played`); None before the
        #: first report since the start or the last underrun.
        self._clock_offset: float | None = None
        self._killed_at: float | None = None
        self._messages: deque[str] = deque(maxlen=8)
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self) -> None:
        """Start pacat; raise :class:`PlaybackError` if it cannot be started."""
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise PlaybackError(f"cannot run pacat: {exc}", Code.AUDIO_UNAVAILABLE) from exc
        self.progressed_at = self._clock()
        self._reader = asyncio.create_task(self._read_messages())

    async def _read_messages(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        buffer = b""
        while chunk := await self.process.stderr.read(4096):
            *lines, buffer = _LINE_BREAK.split(buffer + chunk)
            for raw in lines:
                line = raw.decode(errors="replace").strip()
                if not line:
                    continue
                if line.startswith("Time: "):
                    if match := _TIME.match(line):
                        reported = float(match.group(1))
                        if reported > self._last_time:
                            self._last_time = reported
                            self.progressed_at = self._clock()
                        offset = reported - self._clock()
                        if self._clock_offset is None or offset > self._clock_offset:
                            self._clock_offset = offset
                    continue
                if line == "Stream started.":
                    self.playing.set()
                    self.progressed_at = self._clock()
                elif line == "Stream underrun.":
                    self.underruns += 1
                    self._clock_offset = None  # the stream's clock stood still meanwhile
                self._messages.append(line)

    async def write(self, pcm: bytes) -> None:
        """Queue ``pcm`` for playback; returns once pacat has taken most of it."""
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(pcm)
            self.written += len(pcm) // 2
            await self.process.stdin.drain()
            self.progressed_at = self._clock()
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            # RuntimeError: the transport was closed under us by kill().
            raise await self._failure() from None

    async def finish(self) -> None:
        """Signal end of audio and wait until pacat has played everything out."""
        assert self.process is not None and self.process.stdin is not None
        # No stdin.wait_closed(): it awaits asyncio's own close future, and a task
        # cancelled there (an abort while draining) cancels that future too, so the pipe
        # closing later makes asyncio log InvalidStateError. pacat's exit says enough.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
            self.process.stdin.close()
        await self.process.wait()
        if self.process.returncode != 0:
            raise await self._failure()

    async def _failure(self) -> PlaybackError:
        """Describe why pacat stopped taking audio."""
        assert self.process is not None
        returncode = await self.process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 1.0)
        last = next((m for m in reversed(self._messages) if "ailed" in m or "rror" in m), "")
        if returncode < 0:
            name = signal.Signals(-returncode).name
            return PlaybackError(f"pacat was killed ({name}) during playback")
        if any(word in last for word in ("Connection failure", "Connection refused")) or (
            "Connection terminated" in last or "Stream error" in last
        ):
            return PlaybackError(f"PulseAudio is unreachable: {last}", Code.AUDIO_UNAVAILABLE)
        return PlaybackError(f"pacat exited with status {returncode}: {last or 'no message'}")

    def kill(self) -> None:
        """Stop the sound now. Safe to call at any time, any number of times."""
        if self.process is not None and self.process.returncode is None and not self.killed:
            self.killed = True
            self._killed_at = self._clock()
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            if self.process.stdin is not None:
                self.process.stdin.close()

    async def wait_closed(self) -> None:
        """Reap the process after :meth:`kill` or :meth:`finish` so no zombie is left."""
        if self.process is not None:
            await self.process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._reader, 1.0)

    def played(self) -> int:
        """Samples heard so far (up to the kill), from pacat's reported playback time.

        pacat reports the stream's time every 50 ms, to the millisecond. A report reaches
        us late (pipe, event loop), never early, so each one gives a lower bound of
        "stream time minus our clock", and the largest is the best estimate (as for a
        recorder's clock): about a millisecond, whatever the load. An underrun stops the
        stream's clock, so the estimate starts over after one.
        """
        if self._clock_offset is None or not self.playing.is_set():
            return 0
        now = self._killed_at if self._killed_at is not None else self._clock()
        seconds = now + self._clock_offset
        return max(0, min(self.written, round(seconds * self.rate)))


class PacatOutput:
    """The ``AudioOutput`` of the daemon: pacat streams and a :class:`PulseMonitor`."""

    def __init__(
        self,
        *,
        media_role: str = "a11y",
        sink: str = "",
        latency_ms: int = 250,
        monitor: PulseMonitor | None = None,
    ) -> None:
        self.media_role = media_role
        self.sink = sink
        self.latency_ms = latency_ms
        self.monitor = monitor or PulseMonitor()

    def stream(self, rate: int, *, name: str, volume: float) -> PacatStream:
        return PacatStream(
            rate,
            stream_name=name,
            media_role=self.media_role,
            sink=self.sink,
            volume=volume,
            latency_ms=self.latency_ms,
        )

    async def check(self) -> ServerInfo:
        return await self.monitor.check()

    async def stream_info(self, stream: PacatStream) -> StreamInfo | None:  # type: ignore[override]
        if stream.pid is None:
            return None
        return await self.monitor.stream_info(stream.pid)

    async def set_volume(self, stream: PacatStream, volume: float) -> None:  # type: ignore[override]
        if stream.pid is not None:
            await self.monitor.set_volume(stream.pid, volume)

    def watch(self, on_change: Callable[[bool, str], None]) -> None:
        self.monitor.watch(on_change)

    def close(self) -> None:
        self.monitor.close()
