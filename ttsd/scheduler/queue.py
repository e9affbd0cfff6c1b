"""The job queue: admission, play order, priorities, selection and the end of jobs.

Pure bookkeeping: no I/O, no asyncio, no engine. The wiring (:mod:`.scheduler`) asks
it what to do and carries it out.

Play order follows Speech Dispatcher's SSIP priorities (its documentation, "Priority
Categories"), applied across all clients:

* ``important`` plays before everything else waiting, in arrival order, and is never
  interrupted. It cancels the job that is playing unless that one is ``important``
  too; with ``resume`` the interrupted ``message`` or ``text`` job is instead put back
  to play again from the start of the sentence it was in (ttsd's extension).
  Waiting ``notification`` jobs are cancelled; waiting ``message`` and ``text`` jobs
  just wait (they are "postponed").
* ``message`` (the default) waits for ``important`` and earlier ``message`` jobs and
  cancels ``text`` and ``notification`` jobs, playing or waiting.
* ``text`` waits for ``important`` and ``message`` jobs, cancels ``notification``
  jobs and interrupts itself: an older ``text`` job, playing or waiting, is cancelled.
* ``notification`` is dropped at once when anything of another priority is playing
  or waiting; it interrupts itself (a newer one cancels the older).
* ``progress`` never interrupts: a newer ``progress`` job replaces an older one that
  is still waiting, so the latest report is the one spoken, and it is not cancelled
  by other priorities (where SSIP cancels it and later speaks the last of a series
  anyway, ttsd lets the latest wait: the same last word, simpler to reason about).
  An ``important`` job that interrupts a playing ``progress`` job puts it back to
  wait, unless a newer ``progress`` job is already waiting.

A ``key`` lets a newer job replace a waiting job with the same key, whatever their
priorities. Synthesis jobs (``synthesize`` requests) are admitted here too, for their
ids and limits, but never take part in the play order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ttsd.errors import Code
from ttsd.scheduler.events import Outcome, Rejection
from ttsd.scheduler.jobs import Job, JobKind, JobState, Priority

#: Why a job was aborted because another one arrived.
REASON_PRIORITY = "priority"
REASON_REPLACED = "replaced"


@dataclass(frozen=True)
class Limits:
    max_queue: int = 100
    max_queue_per_client: int = 20
    max_synthesize_per_client: int = 2


@dataclass
class Admission:
    """What accepting a job means for the others; the wiring carries it out."""

    job: Job
    #: Jobs to abort now, with the reason (``priority`` or ``replaced``).
    displaced: list[tuple[Job, str]] = field(default_factory=list)
    #: The playing job, to be stopped and put back to play again later.
    postponed: Job | None = None
    #: The new job itself is dropped at once (a ``notification`` under others).
    dropped: bool = False


class JobQueue:
    """Jobs that play (one at a time, in order) and synthesis jobs, by id."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        #: The job whose turn it is at the speaker (playing or paused), if any.
        self.playing: Job | None = None
        #: Jobs waiting for the speaker, in play order.
        self.waiting: list[Job] = []
        #: Synthesis jobs in progress, in arrival order.
        self.making: list[Job] = []
        self._next_id = 1

    # --- Admission ----------------------------------------------------------------

    def new_id(self) -> int:
        job_id = self._next_id
        self._next_id += 1
        return job_id

    def check_room(self, client: str, kind: JobKind) -> None:
        """Raise :class:`Rejection` if ``client`` may not add a job of ``kind`` now."""
        if kind is JobKind.SYNTHESIZE:
            mine = sum(1 for job in self.making if job.client == client)
            if mine >= self.limits.max_synthesize_per_client:
                raise Rejection(
                    Code.CLIENT_QUEUE_FULL,
                    f"this connection already has {mine} synthesize requests in progress; "
                    f"the limit is {self.limits.max_synthesize_per_client}",
                )
            return
        if len(self.waiting) + (self.playing is not None) >= self.limits.max_queue:
            raise Rejection(
                Code.QUEUE_FULL,
                f"{self.limits.max_queue} jobs are already queued; try again later",
            )
        mine = sum(1 for job in self.speaking_jobs() if job.client == client)
        if mine >= self.limits.max_queue_per_client:
            raise Rejection(
                Code.CLIENT_QUEUE_FULL,
                f"this connection already has {mine} jobs queued; the limit is "
                f"{self.limits.max_queue_per_client}",
            )

    def admit(self, job: Job) -> Admission:
        """Add ``job`` (room already checked) and say which jobs it displaces."""
        if job.kind is JobKind.SYNTHESIZE:
            job.state = JobState.MAKING
            self.making.append(job)
            return Admission(job)
        admission = Admission(job)
        doomed: dict[int, tuple[Job, str]] = {}
        if job.key is not None:
            for other in self.waiting:
                if other.key == job.key:
                    doomed[other.id] = (other, REASON_REPLACED)
        priority = job.priority
        present = [j for j in self.speaking_jobs() if j.id not in doomed]

        def cancel(priorities: set[Priority]) -> None:
            for other in present:
                if other.priority in priorities and other.id not in doomed:
                    doomed[other.id] = (other, REASON_PRIORITY)

        if priority is Priority.NOTIFICATION:
            if any(other.priority is not Priority.NOTIFICATION for other in present):
                admission.dropped = True
            else:
                cancel({Priority.NOTIFICATION})
        elif priority is Priority.PROGRESS:
            cancel({Priority.NOTIFICATION})
            for other in self.waiting:
                if other.priority is Priority.PROGRESS and other.id not in doomed:
                    doomed[other.id] = (other, REASON_REPLACED)
        elif priority in (Priority.MESSAGE, Priority.TEXT):
            cancel({Priority.TEXT, Priority.NOTIFICATION})
        elif priority is Priority.IMPORTANT:
            cancel({Priority.NOTIFICATION})
            current = self.playing
            if current is not None and current.id not in doomed:
                if current.priority is Priority.IMPORTANT:
                    pass  # important jobs are never interrupted
                elif current.priority is Priority.PROGRESS:
                    newer = any(o.priority is Priority.PROGRESS for o in self.waiting)
                    if newer:
                        doomed[current.id] = (current, REASON_REPLACED)
                    else:
                        admission.postponed = current
                elif job.resume_interrupted and current.priority in (
                    Priority.MESSAGE,
                    Priority.TEXT,
                ):
                    admission.postponed = current
                else:
                    doomed[current.id] = (current, REASON_PRIORITY)
        admission.displaced = list(doomed.values())
        if not admission.dropped:
            self._insert(job)
        return admission

    def _insert(self, job: Job, *, front_of_rank: bool = False) -> None:
        """Put ``job`` in the waiting list by priority: after the jobs that outrank it
        and (unless ``front_of_rank``) after those of its own rank."""
        rank = job.priority.rank
        index = 0
        for index, other in enumerate(self.waiting):  # noqa: B007 - index used after
            if other.priority.rank > rank or (front_of_rank and other.priority.rank == rank):
                break
        else:
            index = len(self.waiting)
        self.waiting.insert(index, job)

    def postpone(self, job: Job) -> None:
        """Move the playing ``job`` back to wait at the front of its priority."""
        if self.playing is job:
            self.playing = None
        job.state = JobState.QUEUED
        self._insert(job, front_of_rank=True)

    # --- Turns and ends -------------------------------------------------------------

    def take_turn(self) -> Job | None:
        """Give the speaker to the first waiting job, if it is free; return that job."""
        if self.playing is not None or not self.waiting:
            return None
        job = self.playing = self.waiting.pop(0)
        job.state = JobState.PLAYING
        return job

    def end(self, job: Job, outcome: Outcome) -> bool:
        """Put ``job`` in its terminal state; False if it had already ended.

        This is the only place a job ends, which is what makes "exactly one terminal
        event per job" hold: the caller emits that event only when this returns True.
        """
        if job.state.done:
            return False
        if self.playing is job:
            self.playing = None
        elif job in self.waiting:
            self.waiting.remove(job)
        elif job in self.making:
            self.making.remove(job)
        job.state = {
            Outcome.FINISHED: JobState.FINISHED,
            Outcome.ABORTED: JobState.ABORTED,
            Outcome.FAILED: JobState.FAILED,
        }[outcome]
        job.cancel.cancel()
        return True

    # --- Looking up -------------------------------------------------------------------

    def speaking_jobs(self) -> Iterator[Job]:
        """The playing job, then the waiting ones, in play order."""
        if self.playing is not None:
            yield self.playing
        yield from self.waiting

    def all_jobs(self) -> list[Job]:
        """Every job not ended: the speaking jobs in play order, then synthesis jobs."""
        return [*self.speaking_jobs(), *self.making]

    @property
    def busy(self) -> bool:
        return self.playing is not None or bool(self.waiting) or bool(self.making)

    def position(self, job: Job) -> int:
        """1 + the number of jobs that play before ``job`` (1: it plays now or next)."""
        return list(self.speaking_jobs()).index(job) + 1

    def find(self, job_id: int) -> Job | None:
        return next((job for job in self.all_jobs() if job.id == job_id), None)

    def was_issued(self, job_id: int) -> bool:
        """True if ``job_id`` was ever handed out (it may have ended since)."""
        return 0 < job_id < self._next_id

    def of_client(self, client: str) -> list[Job]:
        return [job for job in self.all_jobs() if job.client == client]
