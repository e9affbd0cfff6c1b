"""Jobs: one ``speak`` (or ``synthesize``) request on its way from text to sound.

A job holds its text split into chunks (a sentence each, or part of a long one), the
audio pieces made for it and not yet played, and how far playback got. Its state only
moves forward, and only :meth:`ttsd.scheduler.queue.JobQueue.end` puts it in a
terminal state.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ttsd.engines import CancelToken


class JobState(enum.Enum):
    QUEUED = "queued"  # waiting for its turn at the speaker
    PLAYING = "playing"  # its turn: audio is playing or about to
    PAUSED = "paused"  # its turn, but the speaker is paused
    MAKING = "making"  # a synthesis job (it never plays) being made
    FINISHED = "finished"
    ABORTED = "aborted"
    FAILED = "error"

    @property
    def done(self) -> bool:
        return self in (JobState.FINISHED, JobState.ABORTED, JobState.FAILED)


class JobKind(enum.Enum):
    SPEAK = "speak"  # plays on the speaker
    SYNTHESIZE = "synthesize"  # audio goes back to the requesting client


class Priority(str, enum.Enum):
    """Speech Dispatcher's (SSIP's) five priorities; see :mod:`ttsd.scheduler.queue`."""

    IMPORTANT = "important"
    MESSAGE = "message"
    TEXT = "text"
    NOTIFICATION = "notification"
    PROGRESS = "progress"

    @property
    def rank(self) -> int:
        """Play order among waiting jobs: lower plays first."""
        return _RANKS[self]


_RANKS = {
    Priority.IMPORTANT: 0,
    Priority.MESSAGE: 1,
    Priority.TEXT: 2,
    Priority.PROGRESS: 3,
    Priority.NOTIFICATION: 4,
}


@dataclass(frozen=True)
class Chunk:
    """What the engine speaks in one call, and where it came from in the job's text."""

    index: int
    text: str
    #: Character range ``[start, end)`` of the job's original text of its sentence.
    start: int
    end: int
    #: Index of its sentence; a long sentence is cut into several chunks.
    sentence: int = 0
    #: The first chunk of its sentence (where the sentence starts playing).
    opens: bool = True


@dataclass(frozen=True)
class Piece:
    """Audio made for one chunk (a chunk's audio may come in several pieces)."""

    chunk: int
    pcm: np.ndarray  # mono int16
    #: The first piece of its chunk: where a new sentence starts playing.
    first: bool


@dataclass(eq=False)
class Job:
    id: int
    client: str
    text: str
    chunks: list[Chunk]
    voice: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    volume: float = 1.0
    kind: JobKind = JobKind.SPEAK
    priority: Priority = Priority.MESSAGE
    #: A newer job with the same key replaces this one while it waits.
    key: str | None = None
    #: When this job interrupts a ``message``/``text`` job, that one resumes afterwards.
    resume_interrupted: bool = False
    cancel_on_disconnect: bool = False
    #: False while ``engine = "auto"`` has not built its engine: options are checked late.
    options_checked: bool = True
    state: JobState = JobState.QUEUED
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    ended: float | None = None
    #: Why it was aborted (once it was).
    end_reason: str = ""

    # --- Generation ---------------------------------------------------------------
    #: Index of the next chunk to synthesize.
    next_chunk: int = 0
    #: An engine call is making a chunk of this job right now.
    in_progress: bool = False
    #: Set when the job ends, or when its remaining audio must be made again: stops
    #: the engine call that is making it. Replaced by a fresh token after a restart.
    cancel: CancelToken = field(default_factory=CancelToken)
    #: Audio made and not yet played, in order.
    pieces: deque[Piece] = field(default_factory=deque)
    #: Samples in :attr:`pieces`.
    buffered_samples: int = 0
    #: Seconds the engine spent making this job's audio, and the samples it made.
    synthesis_seconds: float = 0.0
    synthesized_samples: int = 0
    #: Chunks whose audio is completely made (``status`` shows it as ``generated``).
    generated_chunks: int = 0
    #: Why generation stopped early (an engine failure); played out, then the job fails.
    failure: Exception | None = None

    # --- Playback -----------------------------------------------------------------
    #: Samples played so far (across pauses and resumptions).
    played_samples: int = 0
    #: Index of the chunk whose audio is playing (-1 before any).
    spoken_chunk: int = -1
    #: Times the stream ran dry so far.
    underruns: int = 0
    #: Interrupted by a higher priority: it plays again from chunk ``resume_from``.
    postponed: bool = False
    resume_from: int = 0
    #: Where the server plays it (found once its sound started).
    sink: str | None = None
    sink_input: int | None = None

    @property
    def generation_done(self) -> bool:
        """No more audio will be made for this job."""
        if self.failure is not None:
            return True
        return self.next_chunk >= len(self.chunks) and not self.in_progress

    def spoken_chars(self) -> int:
        """Characters of the original text spoken so far (up to the playing chunk's end)."""
        if self.spoken_chunk < 0:
            return 0
        return self.chunks[self.spoken_chunk].end

    def restart_from(self, chunk: int) -> None:
        """Forget the audio from ``chunk`` on: it will be made and played again.

        Used when an interrupted job is to resume from the start of the sentence it
        was in. The engine call making audio for it (if any) is cancelled.
        """
        self.cancel.cancel()
        self.cancel = CancelToken()
        self.pieces.clear()
        self.buffered_samples = 0
        self.next_chunk = chunk
        self.generated_chunks = chunk
        self.failure = None

    def describe(self) -> dict[str, Any]:
        """The job as ``status`` shows it."""
        return {
            "job": self.id,
            "state": self.state.value,
            "text": self.text if len(self.text) <= 200 else self.text[:199] + "…",
            "chunks": len(self.chunks),
            "generated": self.generated_chunks,
            "client": self.client,
            "priority": self.priority.value,
        }
