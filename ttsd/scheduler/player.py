"""The player: plays one job at a time through an audio output, and keeps audio health.

It is the only code that opens or kills streams. For a job it waits until enough
audio is buffered (the scheduler's pacing decides), opens a stream, writes the job's
pieces into it as they arrive, and finishes it; it reports when the sound started and
when each sentence starts playing. Pausing kills the stream at once and puts the
audio not yet heard back in front of the job, so resuming continues where the sound
stopped. A stream that stops taking audio for ``stall_timeout`` seconds fails the job
with ``playback_stalled``, so a frozen sound server never hangs a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ttsd.audio.output import AudioOutput, AudioStream, AudioUnavailable, PlaybackError
from ttsd.engines import EngineError
from ttsd.errors import Code
from ttsd.scheduler.jobs import Job, Piece

log = logging.getLogger("ttsd.player")

T = TypeVar("T")


class AudioState(str, enum.Enum):
    UNKNOWN = "unknown"  # not checked yet
    OK = "ok"
    UNAVAILABLE = "unavailable"


class Feed(Protocol):
    """Where the player gets a job's audio (the scheduler)."""

    async def wait_ready(self, job: Job) -> None:
        """Return once playback may start without running dry (or all audio is made);
        raise the job's engine failure if it failed before making anything."""

    async def next_piece(self, job: Job) -> Piece | None:
        """The job's next piece, waiting for it; None once all of it has been taken.
        Raises the job's engine failure after its last good piece."""


@dataclass
class Listener:
    """What the player reports while a job plays (the scheduler's callbacks)."""

    started: Callable[[Job], None]
    sentence: Callable[[Job, int], None]


class _Pause(Exception):
    """Internal: the stream was stopped by :meth:`Player.pause`."""


@dataclass
class _Written:
    offset: int  # sample offset of the piece in the stream
    piece: Piece


class Player:
    """Plays jobs on an :class:`AudioOutput`; see the module docstring."""

    def __init__(
        self,
        output: AudioOutput,
        *,
        on_audio: Callable[[dict[str, Any]], None] = lambda info: None,
        stall_timeout: float = 5.0,
    ) -> None:
        self.output = output
        self._on_audio = on_audio
        self.stall_timeout = stall_timeout
        self.state = AudioState.UNKNOWN
        self.error = ""
        self.paused = False
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self._pause_requested = asyncio.Event()
        #: The open stream and the job it plays.
        self.stream: AudioStream | None = None
        self.job: Job | None = None
        self._sentence_timers: list[asyncio.TimerHandle] = []

    # --- Audio health -----------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """The audio output as ``hello``, ``status`` and ``audio`` events show it."""
        info: dict[str, Any] = {"state": self.state.value}
        if self.error:
            info["error"] = self.error
        return info

    def set_state(self, state: AudioState, error: str = "") -> None:
        if (state, error) == (self.state, self.error):
            return
        if state is AudioState.UNAVAILABLE and self.state is not AudioState.UNAVAILABLE:
            log.error("audio output unavailable: %s", error)
        elif state is AudioState.OK and self.state is AudioState.UNAVAILABLE:
            log.info("audio output is reachable again")
        self.state, self.error = state, error
        self._on_audio(self.info())

    def watch(self) -> None:
        """Follow the server's comings and goings (reported from the output's thread)."""
        loop = asyncio.get_running_loop()

        def changed(reachable: bool, why: str) -> None:
            state = AudioState.OK if reachable else AudioState.UNAVAILABLE
            with contextlib.suppress(RuntimeError):  # the loop closed: shutting down
                loop.call_soon_threadsafe(self.set_state, state, why)

        self.output.watch(changed)

    async def check(self) -> None:
        """Ask the server once and record what was found."""
        try:
            info = await self.output.check()
        except AudioUnavailable as exc:
            self.set_state(AudioState.UNAVAILABLE, str(exc))
        else:
            log.info("audio: %s %s, default sink %s", info.name, info.version, info.default_sink)
            self.set_state(AudioState.OK)

    async def _require_audio(self) -> None:
        if self.state is not AudioState.UNAVAILABLE:
            return
        await self.check()
        if self.state is AudioState.UNAVAILABLE:
            raise PlaybackError(self.error, Code.AUDIO_UNAVAILABLE)

    # --- Pause ------------------------------------------------------------------------

    def pause(self) -> bool:
        """Stop the sound now and hold the speaker; False if it was already paused."""
        if self.paused:
            return False
        self.paused = True
        self._unpaused.clear()
        self._pause_requested.set()
        if self.stream is not None:
            self.stream.kill()
        return True

    def resume(self) -> bool:
        """Let the speaker play again; False if it was not paused."""
        if not self.paused:
            return False
        self.paused = False
        self._pause_requested.clear()
        self._unpaused.set()
        return True

    # --- Playing a job ------------------------------------------------------------------

    async def play(self, job: Job, rate: int, feed: Feed, listener: Listener) -> None:
        """Play ``job`` to its end; return once all of it has been heard.

        Raises :class:`PlaybackError` when the output fails, or the job's engine failure
        after playing what was made before it. Cancelling the task stops the sound at
        once; ``job.played_samples`` and ``job.spoken_chunk`` then say how far it got.
        """
        self.job = job
        try:
            while True:
                await self._require_audio()
                await self._unpaused.wait()
                try:
                    await self._play_stream(job, rate, feed, listener)
                    return
                except _Pause:
                    continue
        finally:
            self.job = None

    async def _play_stream(self, job: Job, rate: int, feed: Feed, listener: Listener) -> None:
        stream = self.stream = self.output.stream(
            rate, name=f"ttsd job {job.id}", volume=job.volume
        )
        timing = _Timing(job, stream, listener, self._sentence_timers)
        drained = False
        base = job.played_samples  # samples of the job heard before this stream
        try:
            # pacat starts while the first audio is still being made: it is ready by then.
            await stream.start()
            announcer = asyncio.create_task(self._announce(timing))
            failure: EngineError | None = None
            try:
                await self._or_pause(feed.wait_ready(job))
                while True:
                    try:
                        piece = await self._next_or_pause(job, feed)
                    except _EndOfAudio:
                        break
                    except EngineError as exc:  # after the last good piece: play it out
                        failure = exc
                        break
                    timing.add(stream.written, piece)
                    if len(piece.pcm):
                        await self._bounded(stream.write(piece.pcm.tobytes()), "write")
                await self._bounded(stream.finish(), "finish", stream)
                drained = True
            finally:
                announcer.cancel()
            if failure is not None:
                raise failure
        except PlaybackError:
            if self._pause_requested.is_set() and stream.written:
                raise _Pause() from None
            raise
        finally:
            timing.cancel()
            stream.kill()
            heard = stream.written if drained else min(stream.played(), stream.written)
            self._account(job, timing.written, heard, base)
            job.underruns += stream.underruns
            self.stream = None
            await stream.wait_closed()

    async def _or_pause(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` unless a pause comes first (then raise :class:`_Pause`)."""
        if self._pause_requested.is_set():
            raise _Pause()
        getting = asyncio.ensure_future(awaitable)
        pausing = asyncio.ensure_future(self._pause_requested.wait())
        try:
            await asyncio.wait({getting, pausing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pausing.cancel()
            if not getting.done():
                getting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await getting
        if getting.done() and not getting.cancelled():
            return getting.result()  # raises what it raised (the job's engine failure)
        raise _Pause()

    async def _next_or_pause(self, job: Job, feed: Feed) -> Piece:
        """The next piece, or :class:`_Pause` / :class:`_EndOfAudio`."""
        piece = await self._or_pause(feed.next_piece(job))
        if piece is None:
            raise _EndOfAudio()
        if self._pause_requested.is_set():
            job.pieces.appendleft(piece)  # not written: it stays first in line
            job.buffered_samples += len(piece.pcm)
            raise _Pause()
        return piece

    async def _bounded(
        self, operation: Awaitable[None], what: str, stream: AudioStream | None = None
    ) -> None:
        """Await a stream operation; fail with ``playback_stalled`` if it hangs."""
        timeout = self.stall_timeout
        if stream is not None and what == "finish":
            # Draining takes as long as the audio still buffered.
            timeout += max(0.0, (stream.written - stream.played()) / stream.rate)
        try:
            await asyncio.wait_for(operation, timeout)
        except asyncio.TimeoutError:
            raise PlaybackError(
                f"the audio stream made no progress for {timeout:.1f} s ({what}): the sound "
                "server is frozen or overloaded",
                Code.PLAYBACK_STALLED,
            ) from None

    def _account(self, job: Job, written: list[_Written], heard: int, base: int) -> None:
        """Record how much of this stream was heard; when pausing, put the rest back in
        front of the job so that the next stream starts at the next sample."""
        job.played_samples = base + heard
        unheard: list[Piece] = []
        for entry in written:
            start, pcm = entry.offset, entry.piece.pcm
            if start + len(pcm) <= heard:
                job.spoken_chunk = max(job.spoken_chunk, entry.piece.chunk)
            elif start < heard:  # heard in part: its sentence had started
                job.spoken_chunk = max(job.spoken_chunk, entry.piece.chunk)
                unheard.append(Piece(entry.piece.chunk, pcm[heard - start :], first=False))
            else:
                unheard.append(entry.piece)
        if self._pause_requested.is_set():
            for piece in reversed(unheard):
                job.pieces.appendleft(piece)
                job.buffered_samples += len(piece.pcm)

    async def _announce(self, timing: _Timing) -> None:
        """Report the start once the server plays the stream, then time the sentences."""
        await timing.stream.playing.wait()
        timing.listener.started(timing.job)
        timing.start()

    def played_samples(self, job: Job) -> int:
        """Samples of ``job`` heard so far, its open stream included (``job.played_samples``
        is only brought up to date when a stream closes)."""
        stream = self.stream
        if self.job is job and stream is not None:
            return job.played_samples + min(stream.played(), stream.written)
        return job.played_samples

    def stop(self) -> None:
        """Kill the open stream, if any (shutdown)."""
        if self.stream is not None:
            self.stream.kill()


class _EndOfAudio(Exception):
    """Internal: the job has no more audio."""


class _Timing:
    """Reports each sentence of one stream when its first sample is heard.

    Before the stream plays, written pieces are only remembered; once it plays, each
    sentence start is timed from the stream's playback position.
    """

    def __init__(
        self,
        job: Job,
        stream: AudioStream,
        listener: Listener,
        timers: list[asyncio.TimerHandle],
    ) -> None:
        self.job = job
        self.stream = stream
        self.listener = listener
        self.written: list[_Written] = []
        self._timers = timers
        self._started = False

    def add(self, offset: int, piece: Piece) -> None:
        self.written.append(_Written(offset, piece))
        if self._started:
            self._schedule(offset, piece)

    def start(self) -> None:
        self._started = True
        for entry in self.written:
            self._schedule(entry.offset, entry.piece)

    def cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def _schedule(self, offset: int, piece: Piece) -> None:
        if not piece.first:
            return
        delay = (offset - self.stream.played()) / self.stream.rate

        def fire() -> None:
            self.job.spoken_chunk = max(self.job.spoken_chunk, piece.chunk)
            self.listener.sentence(self.job, piece.chunk)

        if delay <= 0:
            fire()
        else:
            self._timers.append(asyncio.get_running_loop().call_later(delay, fire))
