"""One playback stream: raw PCM written into a ``pacat`` child process.

pacat connects to PulseAudio (or PipeWire's pulse server) like any desktop client, so
the stream shows up with its name and role in volume controls and can be ducked or
moved. Killing the process ends the sound at once: the server drops the stream's
buffer when its client disconnects. Writes to a pacat that died, whoever killed it,
raise :class:`PlaybackError` and never ``BrokenPipeError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections import deque

PACAT = "pacat"

# pacat -v redraws its status line with carriage returns and "erase line" escapes.
_LINE_BREAK = re.compile(rb"[\r\n]+|\x1b\[K")


class PlaybackError(Exception):
    """The stream failed; ``code`` becomes the job's error code."""

    def __init__(self, message: str, code: str = "playback_failed") -> None:
        super().__init__(message)
        self.code = code


class PacatStream:
    """A pacat process playing mono s16le PCM at ``rate`` Hz."""

    def __init__(
        self,
        rate: int,
        *,
        stream_name: str,
        media_role: str = "a11y",
        sink: str = "",
        volume: float = 1.0,
        latency_ms: int = 250,
    ) -> None:
        self.rate = rate
        self.args = [
            PACAT,
            "--playback",
            "--verbose",  # reports "Stream started." and underruns on stderr
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
        #: Set when PulseAudio starts playing the stream (its buffer filled).
        self.playing = asyncio.Event()
        #: Times the stream ran dry (an audible gap).
        self.underruns = 0
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
            raise PlaybackError(f"cannot run pacat: {exc}", "audio_unavailable") from exc
        self._reader = asyncio.create_task(self._read_messages())

    async def _read_messages(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        buffer = b""
        while chunk := await self.process.stderr.read(4096):
            *lines, buffer = _LINE_BREAK.split(buffer + chunk)
            for raw in lines:
                line = raw.decode(errors="replace").strip()
                if not line or line.startswith("Time: "):
                    continue
                if line == "Stream started.":
                    self.playing.set()
                elif line == "Stream underrun.":
                    self.underruns += 1
                self._messages.append(line)

    async def write(self, pcm: bytes) -> None:
        """Queue ``pcm`` for playback; returns once pacat has taken most of it."""
        assert self.process is not None and self.process.stdin is not None
        try:
            self.process.stdin.write(pcm)
            await self.process.stdin.drain()
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
        if "Connection failure" in last or "Connection refused" in last:
            return PlaybackError(f"PulseAudio is unreachable: {last}", "audio_unavailable")
        return PlaybackError(f"pacat exited with status {returncode}: {last or 'no message'}")

    def kill(self) -> None:
        """Stop the sound now. Safe to call at any time, any number of times."""
        if self.process is not None and self.process.returncode is None:
            self.killed = True
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            if self.process.stdin is not None:
                self.process.stdin.close()

    async def wait_closed(self) -> None:
        """Reap the process after :meth:`kill` so no zombie is left."""
        if self.process is not None:
            await self.process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._reader, 1.0)
