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
import time
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
    """Where the player gets a job's audio (the generator)."""

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
        #: The stream :meth:`pause` killed: its end is a pause, not a failure.
        self._paused_stream: AudioStream | None = None
        self._timing: _Timing | None = None
        #: The open stream and the job it plays.
        self.stream: AudioStream | None = None
        self.job: Job | None = None

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
            self._paused_stream = self.stream
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
        timing = self._timing = _Timing(job, stream, listener)
        drained = False
        base = job.played_samples  # samples of the job heard before this stream
        try:
            # pacat starts while the first audio is still being made: it is ready by then.
            await stream.start()
            announcer = asyncio.create_task(self._announce(timing))
            try:
                await self._or_pause(feed.wait_ready(job))
                failure: Exception | None = None
                while True:
                    try:
                        piece = await self._next_or_pause(job, feed)
                    except _EndOfAudio:
                        break
                    except EngineError as exc:  # play out what was made, then fail
                        failure = exc
                        break
                    timing.add(stream.written, piece)
                    if len(piece.pcm):
                        await self._watched(stream, stream.write(piece.pcm.tobytes()), "write")
                await self._watched(stream, stream.finish(), "finish")
                drained = True
                if failure is not None:
                    raise failure
            finally:
                announcer.cancel()
        except PlaybackError:
            if stream is self._paused_stream:
                raise _Pause() from None
            raise
        finally:
            stream.kill()
            heard = stream.written if drained else min(stream.played(), stream.written)
            timing.close(heard)
            self._account(job, timing.written, heard, base, stream is self._paused_stream)
            job.underruns += stream.underruns
            self.stream = None
            self._timing = None
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

    async def _watched(self, stream: AudioStream, operation: Awaitable[None], what: str) -> None:
        """Await a stream operation; fail with ``playback_stalled`` once the stream has
        made no progress (played nothing, taken nothing) for ``stall_timeout`` seconds.

        Progress, not duration, is watched: draining a long buffer on a loaded machine
        (underruns stop the stream's clock) is slow but moves; a frozen server does not.
        """
        task = asyncio.ensure_future(operation)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=min(0.25, self.stall_timeout))
                if done:
                    task.result()
                    return
                idle = time.monotonic() - stream.progressed_at
                if idle >= self.stall_timeout:
                    raise PlaybackError(
                        f"the audio stream made no progress for {idle:.1f} s ({what}): the "
                        "sound server is frozen or overloaded",
                        Code.PLAYBACK_STALLED,
                    )
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, PlaybackError):
                    await task

    def _account(
        self, job: Job, written: list[_Written], heard: int, base: int, paused: bool
    ) -> None:
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
        if paused:
            for piece in reversed(unheard):
                job.pieces.appendleft(piece)
                job.buffered_samples += len(piece.pcm)

    async def _announce(self, timing: _Timing) -> None:
        """Report the start once the server plays the stream, then time the sentences."""
        await timing.stream.playing.wait()
        timing.listener.started(timing.job)
        timing.start()

    def heard(self, job: Job) -> int:
        """Samples of ``job`` heard so far, the open stream included."""
        if self.job is job and self._timing is not None:
            return job.played_samples + min(
                self._timing.stream.played(), self._timing.stream.written
            )
        return job.played_samples

    def chunk_heard(self) -> int | None:
        """Index of the chunk whose audio the open stream plays now (None: none yet)."""
        timing = self._timing
        if timing is None:
            return None
        heard = timing.stream.played()
        chunks = [entry.piece.chunk for entry in timing.written if entry.offset <= heard]
        return chunks[-1] if chunks else None

    def stop(self) -> None:
        """Kill the open stream, if any (an abort, a postponement, shutdown)."""
        if self.stream is not None:
            self.stream.kill()


class _EndOfAudio(Exception):
    """Internal: the job has no more audio."""


class _Timing:
    """Reports each sentence of one stream when its first sample is heard.

    Before the stream plays, written pieces are only remembered; once it plays, each
    sentence start is timed from the stream's playback position.
    """

    def __init__(self, job: Job, stream: AudioStream, listener: Listener) -> None:
        self.job = job
        self.stream = stream
        self.listener = listener
        self.written: list[_Written] = []
        self._timers: list[asyncio.TimerHandle] = []
        self._started = False
        self._fired: set[int] = set()

    def add(self, offset: int, piece: Piece) -> None:
        self.written.append(_Written(offset, piece))
        if self._started:
            self._schedule(offset, piece)

    def start(self) -> None:
        self._started = True
        for entry in self.written:
            self._schedule(entry.offset, entry.piece)

    def close(self, heard: int) -> None:
        """The stream ended after ``heard`` samples: report the sentences heard whose
        timers had not fired yet (the clock and the stream never agree to the sample),
        and drop the others."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._started:
            for entry in self.written:
                if entry.offset < heard:
                    self._fire(entry.piece)

    def _schedule(self, offset: int, piece: Piece) -> None:
        if not piece.first:
            return
        delay = (offset - self.stream.played()) / self.stream.rate
        if delay <= 0:
            self._fire(piece)
        else:
            loop = asyncio.get_running_loop()
            self._timers.append(loop.call_later(delay, self._fire, piece))

    def _fire(self, piece: Piece) -> None:
        if not piece.first or piece.chunk in self._fired:
            return
        self._fired.add(piece.chunk)
        self.job.spoken_chunk = max(self.job.spoken_chunk, piece.chunk)
        self.listener.sentence(self.job, piece.chunk)
