"""The generator: makes the jobs' audio ahead of playback, a chunk at a time.

It picks the job that needs audio most (the playing job when its buffer runs low, the
next job's first chunk, synthesis requests in turn, then the rest in play order), asks
the engine host for that job's next chunk and parks the pieces in the job as they come,
within ``ahead_seconds`` of playback. Chunks said before come from the phrase cache. It
is also the player's :class:`.player.Feed`: playback starts when :mod:`.pacing` says the
rest will keep up, and takes the pieces in order.

It never ends a job: a failure is left in ``job.failure`` for whoever reads the job's
audio (the player, or a synthesis request), who ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from ttsd.engines import CancelToken, EngineError
from ttsd.errors import Code
from ttsd.scheduler.cache import PhraseCache, cache_key
from ttsd.scheduler.engine_host import EngineHost
from ttsd.scheduler.events import Rejection
from ttsd.scheduler.jobs import Job, JobKind, Piece
from ttsd.scheduler.pacing import Pacing
from ttsd.scheduler.queue import JobQueue

log = logging.getLogger("ttsd.scheduler")

#: A playing job with less audio buffered than this (seconds) is served first.
LOW_WATER = 3.0


class Changes:
    """A wake-up for everyone who waits on the jobs: the loops, the player's feed.

    Take :attr:`current`, check what you wait for, then ``await current.wait()``: a
    change made in between is not missed, since :meth:`notify` sets the event taken.
    """

    def __init__(self) -> None:
        self.current = asyncio.Event()

    def notify(self) -> None:
        self.current.set()
        self.current = asyncio.Event()


class Generator:
    """Makes audio for the jobs in ``queue`` with the engine in ``host``."""

    def __init__(
        self,
        queue: JobQueue,
        host: EngineHost,
        changes: Changes,
        *,
        ahead_seconds: float,
        gapless: bool,
        cache_bytes: int,
    ) -> None:
        self.queue = queue
        self.host = host
        self.changes = changes
        self.ahead_seconds = ahead_seconds
        #: Hold playback until the rest can keep up (see :mod:`.pacing`); else start at once.
        self.gapless = gapless
        self.pacing = Pacing()
        self.cache = PhraseCache(cache_bytes) if cache_bytes > 0 else None
        self._synthesis_turn = 0
        #: The job whose chunk the engine makes now, and that call's own token.
        self._making: tuple[Job, CancelToken] | None = None
        #: The job the player waits to start (or resume) until enough audio is made.
        self._starting: Job | None = None

    def _buffered_seconds(self, jobs: Iterable[Job]) -> float:
        if not self.host.ready:
            return 0.0
        return sum(job.buffered_samples for job in jobs) / self.host.sample_rate

    def _needs_audio(self, job: Job) -> bool:
        # A failed chunk ends the job's making: what was made before it plays, then the
        # error (the rest would be a hole in the middle of the text).
        return (
            not job.state.done
            and not job.in_progress
            and job.failure is None
            and job.next_chunk < len(job.chunks)
        )

    def _next_to_generate(self) -> Job | None:
        """The job whose next chunk the engine should make now, if any."""
        speaking = [job for job in self.queue.speaking_jobs() if self._needs_audio(job)]
        within_ahead = self._buffered_seconds(self.queue.speaking_jobs()) < self.ahead_seconds
        playing = self.queue.playing
        if playing in speaking:
            buffered = self._buffered_seconds([playing])
            if buffered == 0 or buffered < min(LOW_WATER, self.ahead_seconds):
                return playing
            if self._starting is playing:
                return playing  # the player waits for enough audio to start (wait_ready)
        following = self.queue.waiting[0] if self.queue.waiting else None
        if following in speaking and following.buffered_samples == 0:
            return following  # its first words: what the listener waits for next
        making = [job for job in self.queue.making if self._needs_audio(job)]
        if making:
            self._synthesis_turn = (self._synthesis_turn + 1) % len(making)
            return making[self._synthesis_turn]
        if speaking and within_ahead:
            return speaking[0]
        return None

    async def run(self) -> None:
        while True:
            changed = self.changes.current
            job = self._next_to_generate()
            if job is None:
                await changed.wait()
                continue
            try:
                await self._generate_chunk(job)
            except Exception as exc:  # a bug here must cost one job, not all speech
                log.exception("generator failed on job %d", job.id)
                job.failure = EngineError(f"internal error: {exc!r}", Code.INTERNAL_ERROR)
                self.changes.notify()

    async def _generate_chunk(self, job: Job) -> None:
        host = self.host
        index = job.next_chunk
        token = job.cancel
        job.in_progress = True
        job.next_chunk += 1
        try:
            if not await host.ensure_ready():
                self._fail_all_unmade(f"the engine failed to load: {host.error}")
                return
            if token is not job.cancel or job.state.done:
                return  # ended, or postponed and restarted, while the engine loaded
            if not job.options_checked:
                try:
                    options = host.check(job.voice, job.options)
                except Rejection as exc:
                    job.failure = EngineError(exc.message, Code.BAD_OPTION)
                    return
                job.options = dict(options or {})
                job.options_checked = True
            if not self._play_cached(job, index):
                await self._stream_chunk(job, index, token)
        finally:
            job.in_progress = False
            self.changes.notify()

    def _cache_key(self, job: Job, index: int, source: str) -> Any:
        """The chunk's key; ``source`` is the engine's source that makes (or made) it.

        The sample rate is part of it: an engine may come back from an unload at
        another rate (the remote engine picks its rate at each load).
        """
        engine = f"{self.host.name}:{source}" if source else self.host.name
        engine = f"{engine}@{self.host.sample_rate}"
        return cache_key(engine, job.voice, job.options, job.chunks[index].text)

    def _play_cached(self, job: Job, index: int) -> bool:
        """Park chunk ``index`` from the phrase cache; False if it is not there."""
        if self.cache is None:
            return False
        pieces = self.cache.get(self._cache_key(job, index, self.host.source()))
        if pieces is None:
            return False
        opens = job.chunks[index].opens
        for number, pcm in enumerate(pieces):
            job.pieces.append(Piece(index, pcm, first=opens and number == 0))
            job.buffered_samples += len(pcm)
        job.generated_chunks = index + 1
        log.debug("job %d chunk %d/%d: from the phrase cache", job.id, index + 1, len(job.chunks))
        return True

    async def _stream_chunk(self, job: Job, index: int, token: CancelToken) -> None:
        chunk = job.chunks[index]
        rate = self.host.sample_rate
        first = True
        made = 0
        made_pieces: list[np.ndarray] = []
        began = last = time.monotonic()
        source = self.host.source()
        # The engine call stops when the job ends (its token) or when a more urgent job
        # needs the engine (:meth:`preempt`): then this chunk is made again later.
        call = CancelToken()
        unlink = token.on_cancel(call.cancel)
        self._making = (job, call)
        try:
            async with contextlib.aclosing(
                self.host.stream(chunk.text, job.voice, job.options, call)
            ) as pieces:
                async for pcm in pieces:
                    now = time.monotonic()
                    self.pacing.observe_speed(now - last, len(pcm) / rate)
                    last = now
                    if token is not job.cancel or job.state.done:
                        return  # aborted or restarted while making it: drop the audio
                    job.pieces.append(Piece(index, pcm, first and chunk.opens))
                    job.buffered_samples += len(pcm)
                    job.synthesized_samples += len(pcm)
                    made += len(pcm)
                    made_pieces.append(pcm)
                    first = False
                    self.changes.notify()
        except EngineError as exc:
            if token is not job.cancel or job.state.done:
                return
            if call.cancelled:  # preempted, and the engine said so with an error
                self._take_back(job, index, len(made_pieces))
                return
            log.warning("job %d chunk %d: %s", job.id, index + 1, exc)
            job.failure = exc
            return
        finally:
            unlink()
            self._making = None
        if token is not job.cancel or job.state.done:
            return
        if call.cancelled:  # preempted: forget its pieces, make the chunk again later
            self._take_back(job, index, len(made_pieces))
            return
        job.synthesis_seconds += time.monotonic() - began
        job.generated_chunks = index + 1
        # Audio is cached under the source that made it; one that changed source midway
        # (the remote engine failing over) is not cached at all.
        if self.cache is not None and self.host.source() == source:
            self.cache.put(self._cache_key(job, index, source), made_pieces)
        self.pacing.observe_length(len(chunk.text), made / rate)
        log.debug(
            "job %d chunk %d/%d: %.2f s of audio in %.3f s",
            job.id,
            index + 1,
            len(job.chunks),
            made / rate,
            time.monotonic() - began,
        )

    def preempt(self, urgent: Job) -> None:
        """Stop making audio for a job that will play after ``urgent``, if ``urgent``
        needs the engine now: an important message must not wait for the rest of a
        later job's sentence (seconds, with Chatterbox)."""
        making = self._making
        if making is None or urgent.kind is not JobKind.SPEAK:
            return
        job, call = making
        order = list(self.queue.speaking_jobs())
        if job is urgent or job not in order or job is self.queue.playing:
            return
        if order.index(urgent) < order.index(job):
            log.debug("job %d preempts the making of job %d", urgent.id, job.id)
            call.cancel()

    def _take_back(self, job: Job, index: int, count: int) -> None:
        """Undo the making of chunk ``index`` of ``job`` (its last ``count`` pieces)."""
        if sum(1 for piece in job.pieces if piece.chunk == index) == count:
            for _ in range(count):
                piece = job.pieces.pop()
                job.buffered_samples -= len(piece.pcm)
            job.next_chunk = index
        # else: some of it was taken for playback meanwhile; what was made stays.

    def _fail_all_unmade(self, message: str) -> None:
        """The engine cannot load: every job still waiting for audio fails."""
        for job in self.queue.all_jobs():
            if not job.generation_done or job.in_progress:
                job.failure = EngineError(message, Code.ENGINE_UNAVAILABLE)
        self.changes.notify()

    # --- Feeding the player (the player.Feed protocol) -----------------------------------

    async def engine_ready(self, job: Job) -> int:
        """Wait until the engine is loaded; return its sample rate (raise if it failed)."""
        while True:
            changed = self.changes.current
            if self.host.ready:
                return self.host.sample_rate
            if job.failure is not None:
                raise job.failure
            await changed.wait()

    async def wait_ready(self, job: Job) -> None:
        # While the player waits here, the generator makes this job's audio whatever
        # ``ahead_seconds`` says: the pacing may want more buffered than that (a slow
        # engine), and each would otherwise wait for the other forever.
        self._starting = job
        self.changes.notify()
        try:
            while True:
                changed = self.changes.current
                if job.failure is not None and not job.pieces:
                    raise job.failure
                if job.generation_done or self._enough_buffered(job):
                    return
                await changed.wait()
        finally:
            self._starting = None

    def _enough_buffered(self, job: Job) -> bool:
        if not job.pieces or not self.host.ready:
            return False
        if not self.gapless:
            return True
        rate = self.host.sample_rate
        remaining: list[float] = []
        if job.in_progress:
            chunk = job.chunks[job.next_chunk - 1]
            made = sum(len(p.pcm) for p in job.pieces if p.chunk == chunk.index) / rate
            remaining.append(max(0.0, self.pacing.estimate(len(chunk.text)) - made))
        remaining += [self.pacing.estimate(len(c.text)) for c in job.chunks[job.next_chunk :]]
        return job.buffered_samples / rate >= self.pacing.needed(remaining)

    async def next_piece(self, job: Job) -> Piece | None:
        while True:
            changed = self.changes.current
            if job.state.done:
                return None  # ended (an abort): no more of its audio goes out
            if job.pieces:
                piece = job.pieces.popleft()
                job.buffered_samples -= len(piece.pcm)
                self.changes.notify()  # the generator may go further ahead now
                return piece
            if job.failure is not None:
                raise job.failure
            if job.generation_done or job.state.done:
                return None
            await changed.wait()
