"""The job queue, the generation worker and the player.

Three things run concurrently, all driven from the event loop:

* the **generator** picks the next chunk to synthesize (the playing job's first, then
  the queued jobs' in order), runs the engine on the worker thread, and parks the
  audio in the job; it stays at most ``ahead_seconds`` of audio ahead of playback;
* the **player** takes jobs in order, opens one pacat stream per job and writes the
  job's chunks into it back to back as they arrive, so speech starts with the first
  chunk and plays without gaps;
* requests (``submit``, the aborts, ``status``) are plain methods that never wait.

Every job ends in exactly one terminal state, announced by exactly one event:
``finished``, ``aborted`` or ``error``. :meth:`Scheduler._end` is the only place that
ends a job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from ttsd import protocol
from ttsd.audio import AudioUnavailable, PacatStream, PlaybackError, PulseMonitor
from ttsd.config import Config
from ttsd.engines import Engine, EngineError, OptionError
from ttsd.scheduler.chunking import split_text
from ttsd.scheduler.jobs import END_OF_AUDIO, Job, JobState
from ttsd.scheduler.worker import Worker

log = logging.getLogger("ttsd.scheduler")

Emit = Callable[[dict[str, Any]], None]


class Scheduler:
    """Owns the engine, the jobs and the speaker.

    ``make_engine`` builds the engine; it runs on the worker thread because resolving
    ``engine = "auto"`` may import torch. ``emit`` receives every event for all clients;
    it must not block.
    """

    def __init__(
        self,
        config: Config,
        make_engine: Callable[[], Engine],
        emit: Emit,
        monitor: PulseMonitor | None = None,
    ) -> None:
        self.config = config
        self._make_engine = make_engine
        self._emit = emit
        self.monitor = monitor or PulseMonitor()
        self.engine: Engine | None = None
        self.engine_state = "loading"  # loading | ready | failed | unloaded
        self.engine_error = ""
        self.audio_state = "unknown"  # unknown | ok | unavailable
        self.audio_error = ""
        self.current: Job | None = None
        self.queue: deque[Job] = deque()
        self.last_activity = time.monotonic()
        self._next_id = 1
        self._worker = Worker()
        self._wake_generator = asyncio.Event()
        self._wake_player = asyncio.Event()
        self._loading: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._playing: asyncio.Task[None] | None = None
        self._stream: PacatStream | None = None
        self._closed = False

    # --- Lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Start loading the engine and the background tasks; returns at once.

        A named engine is built here, so that bad engine settings fail at startup and
        options can be checked while the model loads.
        """
        if self.config.engine != "auto":
            self.engine = self._make_engine()
        self._loading = asyncio.create_task(self._load_engine())
        self._tasks = [
            asyncio.create_task(self._generate_forever(), name="ttsd-generator"),
            asyncio.create_task(self._play_forever(), name="ttsd-player"),
            asyncio.create_task(self._check_audio(), name="ttsd-audio-check"),
        ]

    async def close(self, reason: str = "terminate") -> list[int]:
        """Abort every job, stop the tasks and the worker; no pacat is left running."""
        aborted = self.abort_all(reason)
        self._closed = True
        tasks = [*self._tasks, *(t for t in (self._playing, self._loading) if t)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._stream is not None:
            self._stream.kill()
            await self._stream.wait_closed()
        self._worker.stop()
        return aborted

    @property
    def busy(self) -> bool:
        """True while any job is playing or waiting."""
        return self.current is not None or bool(self.queue)

    # --- Requests ----------------------------------------------------------------

    def submit(self, request: protocol.Speak, client: str) -> Job:
        """Accept a ``speak`` request as a new job, or raise :class:`ProtocolError`."""
        if self._closed:
            raise protocol.ProtocolError("shutting_down", "the daemon is shutting down")
        if len(self.queue) + (self.current is not None) >= self.config.max_queue:
            raise protocol.ProtocolError(
                protocol.QUEUE_FULL,
                f"{self.config.max_queue} jobs are already queued; try again later",
                request.id,
            )
        mine = sum(1 for j in (self.current, *self.queue) if j is not None and j.client == client)
        if mine >= self.config.max_queue_per_client:
            raise protocol.ProtocolError(
                protocol.CLIENT_QUEUE_FULL,
                f"this connection already has {mine} jobs queued; the limit is "
                f"{self.config.max_queue_per_client}",
                request.id,
            )
        options = request.options
        checked = self.engine is not None
        if self.engine is not None:
            try:
                options = self.engine.validate_options(options)
                self.engine.check_voice(request.voice)
            except OptionError as exc:
                raise protocol.ProtocolError(protocol.BAD_OPTION, str(exc), request.id) from None
        chunks = split_text(request.text, self.config.chunk_chars, self.config.first_chunk_chars)
        job = Job(
            id=self._next_id,
            text=request.text,
            chunks=chunks,
            voice=request.voice,
            options=dict(options),
            volume=self.config.volume if request.volume is None else request.volume,
            client=client,
            options_checked=checked,
            cancel_on_disconnect=request.cancel_on_disconnect,
        )
        self._next_id += 1
        self.queue.append(job)
        self.last_activity = time.monotonic()
        log.info(
            "job %d queued: %d chars in %d chunks from %s",
            job.id,
            len(job.text),
            len(job.chunks),
            client,
            extra={"JOB": job.id, "CLIENT": client, "EVENT": "queued"},
        )
        self._wake_generator.set()
        self._wake_player.set()
        return job

    async def synthesize(self, request: protocol.Synthesize) -> tuple[np.ndarray, int]:
        """Make the audio for ``request`` without playing it; return (PCM, sample rate).

        Chunks go through the same worker as the jobs', interleaved with them.
        """
        if self._closed:
            raise protocol.ProtocolError("shutting_down", "the daemon is shutting down")
        if not await self._ensure_engine():
            raise protocol.ProtocolError(
                "engine_unavailable", f"the engine failed to load: {self.engine_error}", request.id
            )
        assert self.engine is not None
        engine = self.engine
        try:
            options = engine.validate_options(request.options)
            engine.check_voice(request.voice)
        except OptionError as exc:
            raise protocol.ProtocolError(protocol.BAD_OPTION, str(exc), request.id) from None
        parts = []
        for chunk in split_text(request.text, self.config.chunk_chars):
            try:
                parts.append(
                    await self._worker.run(engine.synthesize, chunk, request.voice, options)
                )
            except EngineError as exc:
                raise protocol.ProtocolError(exc.code, str(exc), request.id) from None
        return np.concatenate(parts).astype(np.int16, copy=False), engine.sample_rate

    def position(self, job: Job) -> int:
        """1 + the number of jobs that play before ``job`` (1: it plays now or next)."""
        ahead = [j for j in (self.current, *self.queue) if j is not None]
        return ahead.index(job) + 1

    def abort_current(self, reason: str = "abort_current") -> list[int]:
        """Abort the playing job (if any); the next job starts right away."""
        job = self.current
        if job is None:
            return []
        self._abort(job, reason)
        return [job.id]

    def abort_all(self, reason: str = "abort_all") -> list[int]:
        """Abort the playing job and every queued one."""
        aborted = self.abort_current(reason)
        while self.queue:
            job = self.queue.popleft()
            self._abort(job, reason)
            aborted.append(job.id)
        return aborted

    def abort_job(self, job_id: int, reason: str = "abort") -> list[int]:
        """Abort one job by id, playing or queued; [] if it has already ended."""
        if self.current is not None and self.current.id == job_id:
            return self.abort_current(reason)
        for job in self.queue:
            if job.id == job_id:
                self.queue.remove(job)
                self._abort(job, reason)
                return [job_id]
        if 0 < job_id < self._next_id:
            return []
        raise protocol.ProtocolError(protocol.UNKNOWN_JOB, f"no job {job_id} was ever queued")

    def abort_client_jobs(self, client: str, reason: str = "client_disconnected") -> list[int]:
        """Abort the jobs of ``client`` that asked to be cancelled on disconnect."""
        doomed = [
            job
            for job in (self.current, *self.queue)
            if job is not None and job.client == client and job.cancel_on_disconnect
        ]
        return [jid for job in doomed for jid in self.abort_job(job.id, reason)]

    def engine_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.engine.name if self.engine else self.config.engine,
            "state": self.engine_state,
        }
        if self.engine_error:
            info["error"] = self.engine_error
        if self.engine is not None and self.engine_state == "ready":
            info["sample_rate"] = self.engine.sample_rate
            info.update(self.engine.describe())
        return info

    def audio_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"state": self.audio_state, "sink": self.config.sink or None}
        if self.audio_error:
            info["error"] = self.audio_error
        return info

    def voices(self) -> list[str]:
        return self.engine.voices() if self.engine is not None else []

    def status(self) -> dict[str, Any]:
        current = self.current.describe() if self.current else None
        if current is not None and self._stream is not None:
            current["underruns"] = self._stream.underruns
            current["pid"] = self._stream.pid
            current["sink"] = self.current.sink
            current["sink_input"] = self.current.sink_input
        return {
            "current": current,
            "queue": [{**job.describe(), "position": self.position(job)} for job in self.queue],
            "engine": self.engine_info(),
            "audio": self.audio_info(),
        }

    # --- Ending jobs -------------------------------------------------------------

    def _abort(self, job: Job, reason: str) -> None:
        self._end(job, JobState.ABORTED, protocol.aborted_event(job.id, reason), reason)

    def _end(self, job: Job, state: JobState, event: dict[str, Any], detail: str = "") -> None:
        """Move ``job`` to its terminal ``state`` and announce it, exactly once."""
        if job.state.done:
            return
        job.state = state
        job.ended = time.monotonic()
        job.pending_samples = 0
        if job is self.current:
            if self._stream is not None:
                self._stream.kill()  # silence first, bookkeeping after
            playing = self._playing
            if playing is not None and playing is not asyncio.current_task():
                playing.cancel()
            self.current = None
            self._wake_player.set()
        elif job in self.queue:
            self.queue.remove(job)
        self.last_activity = time.monotonic()
        elapsed = job.ended - job.created
        played = job.played_samples / self.engine.sample_rate if self._engine_ready() else 0.0
        event.setdefault("elapsed", round(elapsed, 3))
        level = logging.WARNING if state is JobState.FAILED else logging.INFO
        log.log(
            level,
            "job %d %s after %.2f s (%.2f s of audio)%s",
            job.id,
            state.value,
            elapsed,
            played,
            f": {detail}" if detail else "",
            extra={"JOB": job.id, "CLIENT": job.client, "EVENT": state.value},
        )
        self._emit(event)
        self._wake_generator.set()

    def _fail(self, job: Job, code: str, message: str) -> None:
        self._end(job, JobState.FAILED, protocol.job_error_event(job.id, code, message), message)

    # --- Engine ------------------------------------------------------------------

    def _engine_ready(self) -> bool:
        return self.engine is not None and self.engine_state == "ready"

    def _set_engine_state(self, state: str, error: str = "") -> None:
        self.engine_state, self.engine_error = state, error
        self._emit({"type": "engine", **self.engine_info()})

    def _build_and_load(self) -> Engine:
        engine = self.engine or self._make_engine()
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

    async def _load_engine(self) -> None:
        self._set_engine_state("loading")
        try:
            self.engine = await self._worker.run(self._build_and_load)
        except Exception as exc:
            message = str(exc) or repr(exc)
            log.error("engine failed to load: %s", message)
            self._set_engine_state("failed", message)
            for job in [j for j in (self.current, *self.queue) if j is not None]:
                self._fail(job, "engine_unavailable", f"the engine failed to load: {message}")
        else:
            self._set_engine_state("ready")
        self._wake_generator.set()
        self._wake_player.set()

    async def _ensure_engine(self) -> bool:
        """Make sure the engine is loaded (reloading it if needed); False if it failed."""
        if self._engine_ready():
            return True
        if self._loading is None or self._loading.done():
            self._loading = asyncio.create_task(self._load_engine())
        await asyncio.shield(self._loading)
        return self._engine_ready()

    async def _unload_engine(self) -> None:
        assert self.engine is not None
        log.info(
            "unloading engine %s after %.0f s idle", self.engine.name, self.config.engine_unload
        )
        await self._worker.run(self.engine.unload)
        self._set_engine_state("unloaded")

    # --- Generator ---------------------------------------------------------------

    def _pending_seconds(self) -> float:
        if not self._engine_ready():
            return 0.0
        jobs = (j for j in (self.current, *self.queue) if j is not None)
        return sum(j.pending_samples for j in jobs) / self.engine.sample_rate

    def _next_chunk(self) -> Job | None:
        """The job whose next chunk should be synthesized now, if any."""
        if self._pending_seconds() >= self.config.ahead_seconds:
            return None
        for job in (self.current, *self.queue):
            if job is not None and not job.state.done and not job.generation_done:
                return job
        return None

    async def _generate_forever(self) -> None:
        while True:
            self._wake_generator.clear()
            job = self._next_chunk()
            if job is None:
                await self._idle_until_woken()
                continue
            if not await self._ensure_engine():
                continue  # _load_engine failed the waiting jobs
            try:
                await self._generate_chunk(job)
            except Exception as exc:  # a bug here must cost one job, not all speech
                log.exception("generator failed on job %d", job.id)
                self._fail(job, "internal_error", f"internal error: {exc!r}")

    async def _idle_until_woken(self) -> None:
        timeout = None
        if self.config.engine_unload > 0 and self.engine_state == "ready" and not self.busy:
            timeout = self.config.engine_unload
        try:
            await asyncio.wait_for(self._wake_generator.wait(), timeout)
        except asyncio.TimeoutError:
            await self._unload_engine()

    async def _generate_chunk(self, job: Job) -> None:
        assert self.engine is not None
        engine = self.engine
        if not job.options_checked:
            try:
                job.options = engine.validate_options(job.options)
                engine.check_voice(job.voice)
            except OptionError as exc:
                self._fail(job, protocol.BAD_OPTION, str(exc))
                return
            job.options_checked = True
        index = job.next_chunk
        job.next_chunk += 1
        started = time.monotonic()
        item: np.ndarray | Exception
        try:
            item = await self._worker.run(
                engine.synthesize, job.chunks[index], job.voice, job.options
            )
        except EngineError as exc:
            item = exc
        except Exception as exc:  # an engine bug must fail the job, not the daemon
            log.exception("engine raised on job %d chunk %d", job.id, index)
            item = EngineError(f"engine failed: {exc!r}")
        if job.state.done:
            return  # aborted while synthesizing: drop the audio
        if isinstance(item, Exception):
            job.next_chunk = len(job.chunks)
            job.audio.put_nowait(item)
            return
        log.debug(
            "job %d chunk %d/%d: %.2f s of audio in %.2f s",
            job.id,
            index + 1,
            len(job.chunks),
            len(item) / engine.sample_rate,
            time.monotonic() - started,
        )
        job.pending_samples += len(item)
        job.audio.put_nowait(item)
        if job.generation_done:
            job.audio.put_nowait(END_OF_AUDIO)

    # --- Player ------------------------------------------------------------------

    async def _play_forever(self) -> None:
        while True:
            self._wake_player.clear()
            if self.current is None and self.queue:
                job = self.current = self.queue.popleft()
                job.state = JobState.PLAYING
                self._playing = asyncio.create_task(self._play(job), name=f"ttsd-job-{job.id}")
                await asyncio.wait({self._playing})
                self._playing = None
                continue
            await self._wake_player.wait()

    async def _play(self, job: Job) -> None:
        """Play ``job`` to its end; every way out of here ends the job."""
        try:
            await self._play_job(job)
        except asyncio.CancelledError:
            if not job.state.done:  # cancelled by close(), not by an abort
                self._abort(job, "terminate")
        except EngineError as exc:
            self._fail(job, exc.code, str(exc))
        except PlaybackError as exc:
            if exc.code == "audio_unavailable":
                self._audio_down(str(exc))
            self._fail(job, exc.code, str(exc))
        except Exception as exc:
            log.exception("job %d failed unexpectedly", job.id)
            self._fail(job, "internal_error", f"internal error: {exc!r}")
        finally:
            if self._stream is not None:
                stream, self._stream = self._stream, None
                stream.kill()
                await stream.wait_closed()

    async def _play_job(self, job: Job) -> None:
        await self._require_audio()
        first: np.ndarray | Exception | None = None
        if not self._engine_ready() and self._loading is not None and not self._loading.done():
            # Cold start: open the stream as soon as the engine is ready (its sample
            # rate is known then), so that pacat starts while the first chunk is made.
            await asyncio.shield(self._loading)
        if not self._engine_ready():
            first = await job.audio.get()  # the engine is loading; wait for the 1st chunk
            if isinstance(first, Exception):
                raise first
        assert self.engine is not None
        stream = self._stream = PacatStream(
            self.engine.sample_rate,
            stream_name=f"ttsd job {job.id}",
            media_role=self.config.media_role,
            sink=self.config.sink,
            volume=job.volume,
            latency_ms=self.config.latency_ms,
        )
        await stream.start()  # overlaps with synthesis of the first chunk
        started = asyncio.create_task(self._announce_start(job, stream))
        try:
            while (item := first if first is not None else await job.audio.get()) is not None:
                first = None
                if isinstance(item, Exception):
                    raise item
                job.pending_samples -= len(item)
                self._wake_generator.set()
                if len(item):
                    await stream.write(item.tobytes())
                    job.played_samples += len(item)
            await stream.finish()
        finally:
            started.cancel()
        self._mark_audio_ok()
        if job.played_samples and not job.started:
            self._announce(job)
        audio_seconds = job.played_samples / self.engine.sample_rate
        if stream.underruns:
            log.warning(
                "job %d: playback ran dry %d time(s): audible gaps (generation too slow, "
                "or the machine too busy to feed pacat)",
                job.id,
                stream.underruns,
                extra={"JOB": job.id, "EVENT": "underrun"},
            )
        self._end(
            job,
            JobState.FINISHED,
            protocol.finished_event(
                job.id, audio_seconds=round(audio_seconds, 3), underruns=stream.underruns
            ),
        )

    async def _announce_start(self, job: Job, stream: PacatStream) -> None:
        await stream.playing.wait()
        self._announce(job)
        if stream.pid is not None:
            await self._check_stream(job, stream.pid)

    async def _check_stream(self, job: Job, pid: int) -> None:
        """Find the job's sink-input; put its volume right if the server changed it.

        pacat asks for the job's volume when it creates the stream, but a module such as
        stream-restore may still apply a remembered one.
        """
        try:
            found = await asyncio.to_thread(self.monitor.sink_input, pid)
            if found is not None and abs(found["volume"] - job.volume) > 0.01:
                log.info("job %d: volume %.2f reset to %.2f", job.id, found["volume"], job.volume)
                await asyncio.to_thread(self.monitor.set_volume, pid, job.volume)
        except AudioUnavailable:
            return  # the stream's own failure, if any, is reported by the player
        if found is not None:
            job.sink_input, job.sink = found["index"], found["sink"]

    def _announce(self, job: Job) -> None:
        if job.started is not None or job.state.done:
            return
        job.started = time.monotonic()
        log.info(
            "job %d started after %.3f s",
            job.id,
            job.started - job.created,
            extra={"JOB": job.id, "CLIENT": job.client, "EVENT": "started"},
        )
        self._emit(protocol.started_event(job.id))

    # --- Audio server health -------------------------------------------------------

    async def _check_audio(self) -> None:
        """Look at the PulseAudio server once at startup and say what was found."""
        try:
            info = await asyncio.to_thread(self.monitor.check)
        except AudioUnavailable as exc:
            self._audio_down(str(exc))
        else:
            log.info(
                "PulseAudio: %s %s, default sink %s", info.name, info.version, info.default_sink
            )
            self._mark_audio_ok()

    async def _require_audio(self) -> None:
        if self.audio_state != "unavailable":
            return
        try:
            await asyncio.to_thread(self.monitor.check)
        except AudioUnavailable as exc:
            self._audio_down(str(exc))
            raise PlaybackError(str(exc), "audio_unavailable") from None
        log.info("PulseAudio is reachable again")
        self._mark_audio_ok()

    def _audio_down(self, message: str) -> None:
        if self.audio_state != "unavailable":
            log.error("audio output unavailable: %s", message)
        self.audio_state, self.audio_error = "unavailable", message

    def _mark_audio_ok(self) -> None:
        self.audio_state, self.audio_error = "ok", ""
