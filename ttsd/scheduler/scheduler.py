"""The scheduler: thin wiring between the job queue, the engine host and the player.

Two loops run on the event loop:

* the :class:`.generator.Generator` makes the jobs' audio with the engine host, a
  chunk at a time, ahead of playback;
* the **player loop** gives the speaker to the next job (:class:`.queue.JobQueue`) and
  has the :class:`.player.Player` play it, fed by the generator.

Requests (``submit``, the aborts, ``pause``, ``status``) are plain methods that never
wait. Every job ends in exactly one terminal state through :meth:`Scheduler._end`,
which emits exactly one :class:`.events.JobEnded`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ttsd.audio.output import AudioOutput, PlaybackError
from ttsd.engines import EngineError
from ttsd.errors import Code
from ttsd.scheduler.chunking import chunk_speech
from ttsd.scheduler.engine_host import EngineHost
from ttsd.scheduler.events import (
    AudioChanged,
    Event,
    JobContinued,
    JobEnded,
    JobPostponed,
    JobQueued,
    JobStarted,
    Outcome,
    Rejection,
    SentenceStarted,
    SpeakerPaused,
    SpeakerResumed,
)
from ttsd.scheduler.generator import Changes, Generator
from ttsd.scheduler.jobs import Job, JobKind, JobState, Priority
from ttsd.scheduler.player import AudioState, Listener, Player
from ttsd.scheduler.queue import Admission, JobQueue, Limits

if TYPE_CHECKING:
    from ttsd.text import Speech

log = logging.getLogger("ttsd.scheduler")

Emit = Callable[[Event], None]


@dataclass(frozen=True)
class Settings:
    """What the scheduler needs of the daemon's configuration."""

    chunk_chars: int = 300
    first_chunk_chars: int = 120
    ahead_seconds: float = 30.0
    #: Hold playback until the rest can keep up (see :mod:`.pacing`); else start at once.
    gapless: bool = True
    volume: float = 1.0
    limits: Limits = field(default_factory=Limits)
    stall_timeout: float = 5.0
    #: Seconds a stopping daemon waits for the engine call in flight to return.
    stop_timeout: float = 1.5
    #: Bytes of synthesized audio kept for phrases said again (0: no cache).
    cache_bytes: int = 32 * 2**20
    #: How text is read when a request does not say (``auto``, ``text``, ``markdown``),
    #: and what code blocks and emoji become (see :func:`ttsd.text.speakable`).
    text_format: str = "auto"
    code_blocks: str = "summarize"
    emoji: str = "drop"


@dataclass(frozen=True)
class Order:
    """A request for speech: a ``speak`` job or a ``synthesize`` job."""

    text: str
    client: str
    kind: JobKind = JobKind.SPEAK
    voice: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    volume: float | None = None
    priority: Priority = Priority.MESSAGE
    key: str | None = None
    resume_interrupted: bool = False
    cancel_on_disconnect: bool = False
    #: How to read the text (None: the daemon's ``text_format``).
    format: str | None = None


class Scheduler:
    """Owns the jobs; wires the queue, the engine host and the player together.

    ``emit`` receives every event, synchronously and in order; it must not block.
    """

    def __init__(
        self,
        settings: Settings,
        host: EngineHost,
        output: AudioOutput,
        emit: Emit,
    ) -> None:
        self.settings = settings
        self.host = host
        self._emit = emit
        self.queue = JobQueue(settings.limits)
        self.player = Player(
            output,
            on_audio=lambda info: self._emit(AudioChanged(info)),
            stall_timeout=settings.stall_timeout,
        )
        self.output = output
        self.changes = Changes()
        self.generator = Generator(
            self.queue,
            host,
            self.changes,
            ahead_seconds=settings.ahead_seconds,
            gapless=settings.gapless,
            cache_bytes=settings.cache_bytes,
        )
        self.last_activity = time.monotonic()
        self._tasks: list[asyncio.Task[Any]] = []
        self._playing: asyncio.Task[None] | None = None
        self._inspection: asyncio.Task[None] | None = None
        self._closed = False

    # --- Lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Start loading the engine and the loops; returns at once."""
        self.host.start()
        self.player.watch()
        self._tasks = [
            asyncio.create_task(self.generator.run(), name="ttsd-generator"),
            asyncio.create_task(self._play_forever(), name="ttsd-player"),
            asyncio.create_task(self.player.check(), name="ttsd-audio-check"),
        ]

    async def close(self, reason: str = "terminate") -> tuple[list[int], bool]:
        """Abort every job, stop the loops and the worker; no stream is left open.

        Returns the aborted job ids and whether the engine's worker stopped in time (if
        not, an engine call is stuck in native code and the process should leave with
        ``os._exit``).
        """
        self._closed = True
        aborted = self.abort_all(reason)
        self.player.stop()
        tasks = [*self._tasks, *([self._playing] if self._playing else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stopped = await self.host.close(self.settings.stop_timeout)
        self.output.close()
        return aborted, stopped

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def busy(self) -> bool:
        """True while any job plays, waits or is being made."""
        return self.queue.busy

    def _notify(self) -> None:
        """Wake whoever waits for a change of jobs or audio (both loops, the feed)."""
        self.changes.notify()

    # --- Requests ----------------------------------------------------------------------

    def submit(self, order: Order) -> Job:
        """Accept ``order`` as a new job, or raise :class:`Rejection`.

        A speak job is announced with :class:`JobQueued` (then any jobs it displaced
        end); a synthesis job's audio is read with :meth:`audio`.
        """
        if self._closed:
            raise Rejection(Code.SHUTTING_DOWN, "the daemon is shutting down")
        self.queue.check_room(order.client, order.kind)
        options = self.host.check(order.voice, order.options)
        speech = self.speech(order.text, order.format)
        chunks = chunk_speech(speech, self.settings.chunk_chars, self.settings.first_chunk_chars)
        if not chunks:
            raise Rejection(
                Code.BAD_REQUEST,
                f"nothing to say: read as {speech.format}, the text has no words "
                "(only markup, code or control characters)",
            )
        job = Job(
            id=self.queue.new_id(),
            client=order.client,
            text=order.text,
            chunks=chunks,
            voice=order.voice,
            options=dict(options if options is not None else order.options),
            volume=self.settings.volume if order.volume is None else order.volume,
            kind=order.kind,
            priority=order.priority,
            key=order.key,
            resume_interrupted=order.resume_interrupted,
            cancel_on_disconnect=order.cancel_on_disconnect,
            options_checked=options is not None,
        )
        admission = self.queue.admit(job)
        self.last_activity = time.monotonic()
        log.info(
            "job %d %s: %d chars in %d chunks from %s%s",
            job.id,
            "queued" if job.kind is JobKind.SPEAK else "synthesizing",
            len(job.text),
            len(job.chunks),
            job.client,
            "" if job.priority is Priority.MESSAGE else f", priority {job.priority.value}",
            extra={"JOB": job.id, "CLIENT": job.client, "EVENT": "queued"},
        )
        if job.kind is JobKind.SPEAK:
            self._emit(JobQueued(job, self.queue.position(job) if not admission.dropped else 1))
            self._carry_out(admission)
            if not job.state.done:
                self.generator.preempt(job)
        self._notify()
        return job

    def _carry_out(self, admission: Admission) -> None:
        """Stop the jobs a new job displaced or postponed, and drop it if it must go."""
        job = admission.job
        current = admission.postponed
        if current is not None and not current.state.done:
            heard = self.player.chunk_heard() if self.player.job is current else None
            chunk = max(heard if heard is not None else current.spoken_chunk, 0)
            while chunk > 0 and not current.chunks[chunk].opens:
                chunk -= 1  # back to the start of the sentence
            self._stop_playing(current)
            self.queue.postpone(current)
            current.postponed = True
            current.resume_from = chunk
            current.restart_from(chunk)
            log.info(
                "job %d postponed by job %d; it resumes from sentence %d",
                current.id,
                job.id,
                chunk + 1,
                extra={"JOB": current.id, "EVENT": "postponed"},
            )
            self._emit(
                JobPostponed(
                    current, job.id, current.chunks[chunk].sentence, current.chunks[chunk].start
                )
            )
        for other, reason in admission.displaced:
            self._end(other, Outcome.ABORTED, reason=reason, by=job.id)
        if admission.dropped:
            self._end(job, Outcome.ABORTED, reason="priority")

    def abort_current(self, reason: str = "abort_current") -> list[int]:
        """Abort the playing job (if any); the next job starts right away."""
        job = self.queue.playing
        if job is None:
            return []
        self._end(job, Outcome.ABORTED, reason=reason)
        return [job.id]

    def abort_all(self, reason: str = "abort_all") -> list[int]:
        """Abort every job: the playing one, the waiting ones and synthesis jobs."""
        return self._abort_each(self.queue.all_jobs(), reason)

    def abort_job(self, job_id: int, reason: str = "abort") -> list[int]:
        """Abort one job by id; [] if it has already ended."""
        job = self.queue.find(job_id)
        if job is not None:
            return self._abort_each([job], reason)
        if self.queue.was_issued(job_id):
            return []
        raise Rejection(Code.UNKNOWN_JOB, f"no job {job_id} was ever queued")

    def abort_client(self, client: str, reason: str = "abort") -> list[int]:
        """Abort every job of ``client``."""
        return self._abort_each(self.queue.of_client(client), reason)

    def client_gone(self, client: str) -> list[int]:
        """A connection closed: abort its synthesis jobs (nobody will read their audio)
        and the speak jobs that asked for it."""
        doomed = [
            job
            for job in self.queue.of_client(client)
            if job.kind is JobKind.SYNTHESIZE or job.cancel_on_disconnect
        ]
        return self._abort_each(doomed, "client_disconnected")

    def _abort_each(self, jobs: Iterable[Job], reason: str) -> list[int]:
        return [job.id for job in list(jobs) if self._end(job, Outcome.ABORTED, reason=reason)]

    def pause(self) -> Job | None:
        """Stop the sound now and hold the speaker; return the job that was playing.

        Pausing a paused speaker changes nothing (and emits nothing).
        """
        job = self.queue.playing
        if self.player.pause():
            if job is not None:
                job.state = JobState.PAUSED
            log.info("paused" + (f" during job {job.id}" if job else ""))
            self._emit(SpeakerPaused(job))
        return job

    def resume(self) -> Job | None:
        """Let the speaker play again, from where it stopped."""
        job = self.queue.playing
        if self.player.resume():
            if job is not None and job.state is JobState.PAUSED:
                job.state = JobState.PLAYING
            log.info("resumed" + (f" job {job.id}" if job else ""))
            self._emit(SpeakerResumed(job))
            self._notify()
        return job

    @property
    def paused(self) -> bool:
        return self.player.paused

    def status(self) -> dict[str, Any]:
        """What ``status`` shows: the jobs, the engine, the audio output."""
        current = self.queue.playing
        stream = self.player.stream
        playing = None
        if current is not None:
            playing = {**current.describe(), "underruns": current.underruns}
            if stream is not None and self.player.job is current:
                playing.update(underruns=current.underruns + stream.underruns, pid=stream.pid)
            playing.update(sink=current.sink, sink_input=current.sink_input)
        return {
            "current": playing,
            "queue": [
                {**job.describe(), "position": index + 2 - (current is None)}
                for index, job in enumerate(self.queue.waiting)
            ],
            "synthesizing": [job.describe() for job in self.queue.making],
            "paused": self.player.paused,
            "engine": self.host.info(),
            "audio": self.player.info(),
            "cache": self.generator.cache.info() if self.generator.cache is not None else None,
        }

    def voices(self) -> list[str]:
        return self.host.voices()

    def speech(self, text: str, format: str | None = None) -> Speech:
        """What a job would say for ``text``: its sentences and their ranges."""
        from ttsd.text import speakable  # imported late: see ttsd.scheduler.chunking

        return speakable(
            text,
            format or self.settings.text_format,  # type: ignore[arg-type]
            code=self.settings.code_blocks,  # type: ignore[arg-type]
            emoji=self.settings.emoji,  # type: ignore[arg-type]
        )

    # --- Synthesis jobs --------------------------------------------------------------

    async def audio(self, job: Job) -> AsyncIterator[np.ndarray]:
        """The audio of synthesis ``job`` as it is made; ends the job when all is read.

        Raises :class:`EngineError` if the engine fails (the job then failed), and
        :class:`Rejection` with code ``aborted`` if the job was aborted.
        """
        try:
            while True:
                piece = await self.generator.next_piece(job)
                if piece is None:
                    break
                yield piece.pcm
        except EngineError as exc:
            self._end(job, Outcome.FAILED, code=Code(exc.code), message=str(exc))
            raise
        if job.state is JobState.ABORTED:
            if job.end_reason == "terminate":
                raise Rejection(Code.SHUTTING_DOWN, "the daemon is shutting down")
            raise Rejection(Code.ABORTED, f"the synthesis was aborted ({job.end_reason})")
        self._end(job, Outcome.FINISHED)

    @property
    def sample_rate(self) -> int:
        return self.host.sample_rate

    # --- Ending jobs --------------------------------------------------------------------

    def _end(
        self,
        job: Job,
        outcome: Outcome,
        *,
        reason: str = "",
        by: int | None = None,
        code: Code | None = None,
        message: str = "",
    ) -> bool:
        """The only way a job ends: the queue's transition, then exactly one event."""
        was_playing = self.queue.playing is job
        heard = self.player.heard(job)  # before its stream is killed
        if not self.queue.end(job, outcome):
            return False
        job.pieces.clear()  # audio nobody will hear (or read) now
        job.buffered_samples = 0
        if was_playing:
            self._stop_playing(job)
        job.ended = time.monotonic()
        job.end_reason = reason
        rate = self.host.sample_rate if self.host.ready else 0
        audio_seconds = heard / rate if rate else 0.0
        elapsed = job.ended - job.created
        detail = reason or (f"{code}: {message}" if code else "")
        level = logging.WARNING if outcome is Outcome.FAILED else logging.INFO
        log.log(
            level,
            "job %d %s after %.2f s (%.2f s of audio heard)%s",
            job.id,
            outcome.value,
            elapsed,
            audio_seconds,
            f": {detail}" if detail else "",
            extra={"JOB": job.id, "CLIENT": job.client, "EVENT": outcome.value},
        )
        if job.kind is JobKind.SPEAK:  # a synthesis ends in its reply (see audio())
            self._emit(
                JobEnded(
                    job,
                    outcome,
                    reason=reason,
                    by=by,
                    code=code,
                    message=message,
                    audio_seconds=audio_seconds,
                    spoken_chars=job.spoken_chars()
                    if outcome is not Outcome.FINISHED
                    else len(job.text),
                )
            )
        self.last_activity = time.monotonic()
        self._notify()
        return True

    def _stop_playing(self, job: Job) -> None:
        """Silence ``job`` now and stop its play task (it ended or was postponed)."""
        if self.player.job is job:
            self.player.stop()
        if self._playing is not None and not self._playing.done():
            self._playing.cancel()

    # --- Playing ------------------------------------------------------------------------

    async def _play_forever(self) -> None:
        while True:
            changed = self.changes.current
            job = None if self._closed else self.queue.take_turn()
            if job is None:
                await changed.wait()
                continue
            if self.player.paused:
                job.state = JobState.PAUSED
            self._notify()
            self._playing = asyncio.create_task(self._play(job), name=f"ttsd-job-{job.id}")
            await asyncio.wait({self._playing})
            self._playing = None

    async def _play(self, job: Job) -> None:
        """Play ``job``; every way out of here but a postponement ends the job."""
        listener = Listener(started=self._on_started, sentence=self._on_sentence)
        try:
            rate = await self.generator.engine_ready(job)
            await self.player.play(job, rate, self.generator, listener)
        except asyncio.CancelledError:
            return  # ended (or postponed) by whoever cancelled: they emitted the event
        except Exception as exc:
            if self.queue.playing is not job:
                # Ended or postponed meanwhile: killing its stream caused this error, and
                # it won the race with the cancellation (asyncio.wait_for returns an
                # inner result that is ready when it is cancelled).
                return
            self._fail_playing(job, exc)
            return
        if self.player.state is not AudioState.OK:
            self.player.set_state(AudioState.OK)
        if job.underruns:
            log.warning(
                "job %d: playback ran dry %d time(s): audible gaps (generation too slow, "
                "or the machine too busy to feed the stream)",
                job.id,
                job.underruns,
                extra={"JOB": job.id, "EVENT": "underrun"},
            )
        self._end(job, Outcome.FINISHED)

    def _fail_playing(self, job: Job, exc: Exception) -> None:
        if isinstance(exc, EngineError):
            self._end(job, Outcome.FAILED, code=Code(exc.code), message=str(exc))
        elif isinstance(exc, PlaybackError):
            if exc.code is Code.AUDIO_UNAVAILABLE:
                self.player.set_state(AudioState.UNAVAILABLE, str(exc))
            self._end(job, Outcome.FAILED, code=exc.code, message=str(exc))
        else:
            log.error("job %d failed unexpectedly", job.id, exc_info=exc)
            self._end(job, Outcome.FAILED, code=Code.INTERNAL_ERROR, message=repr(exc))

    def _on_started(self, job: Job) -> None:
        if job.state.done:
            return
        if job.started is None:
            job.started = time.monotonic()
            log.info(
                "job %d started after %.3f s",
                job.id,
                job.started - job.created,
                extra={"JOB": job.id, "CLIENT": job.client, "EVENT": "started"},
            )
            self._emit(JobStarted(job))
            self._inspection = asyncio.create_task(self._inspect_stream(job))
        elif job.postponed:
            job.postponed = False
            chunk = job.resume_from
            job.spoken_chunk = chunk
            self._emit(JobContinued(job, job.chunks[chunk].sentence, job.chunks[chunk].start))

    def _on_sentence(self, job: Job, index: int) -> None:
        if job.state.done:
            return
        chunk = job.chunks[index]
        self._emit(SentenceStarted(job, chunk.sentence, chunk.start, chunk.end))

    async def _inspect_stream(self, job: Job) -> None:
        """Find where the server plays the job; put its volume right if a module such as
        stream-restore applied a remembered one."""
        stream = self.player.stream
        if stream is None:
            return
        try:
            found = await self.output.stream_info(stream)
            if found is not None and abs(found.volume - job.volume) > 0.01:
                log.info("job %d: volume %.2f reset to %.2f", job.id, found.volume, job.volume)
                await self.output.set_volume(stream, job.volume)
        except Exception as exc:  # a question about the stream must never fail the job
            log.debug("job %d: cannot inspect its stream: %s", job.id, exc)
            return
        if found is not None:
            job.sink, job.sink_input = found.sink, found.index
