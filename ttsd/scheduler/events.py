"""What the scheduler tells the layer above: typed domain events, and rejections.

The scheduler never builds wire messages. It calls its ``emit`` with these events and
raises :class:`Rejection` for a request it will not take; the server turns both into
protocol messages (:mod:`ttsd.server.wire`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ttsd.errors import Code
from ttsd.scheduler.jobs import Job


class Rejection(Exception):
    """A request the scheduler will not carry out; nothing changed."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Outcome(enum.Enum):
    FINISHED = "finished"
    ABORTED = "aborted"
    FAILED = "error"


@dataclass(frozen=True)
class Event:
    """Base of the scheduler's events."""


@dataclass(frozen=True)
class JobQueued(Event):
    job: Job
    position: int


@dataclass(frozen=True)
class JobStarted(Event):
    """The job's sound started (PulseAudio reported its stream playing)."""

    job: Job


@dataclass(frozen=True)
class SentenceStarted(Event):
    """Sentence ``index`` of the job started playing; it says ``text[start:end]``."""

    job: Job
    index: int
    start: int
    end: int


@dataclass(frozen=True)
class JobPostponed(Event):
    """A higher-priority job interrupted ``job``; it will resume from sentence
    ``chunk`` (which starts at ``start`` in its text)."""

    job: Job
    by: int
    chunk: int
    start: int


@dataclass(frozen=True)
class JobContinued(Event):
    """A postponed job plays again, from the start of the sentence it was in."""

    job: Job
    chunk: int
    start: int


@dataclass(frozen=True)
class JobEnded(Event):
    """The one terminal event of a job."""

    job: Job
    outcome: Outcome
    #: Why it was aborted (``abort_current``, ``terminate``, ``priority``...).
    reason: str = ""
    #: The job whose arrival caused the abort (priorities, keys).
    by: int | None = None
    code: Code | None = None
    message: str = ""
    #: Seconds of audio played, and characters of the text spoken (up to the end of
    #: the sentence that was playing).
    audio_seconds: float = 0.0
    spoken_chars: int = 0


@dataclass(frozen=True)
class SpeakerPaused(Event):
    """The speaker was paused; ``job`` is the one that was playing (if any)."""

    job: Job | None


@dataclass(frozen=True)
class SpeakerResumed(Event):
    job: Job | None


@dataclass(frozen=True)
class EngineChanged(Event):
    """The engine changed state; ``info`` is what ``status`` shows of it."""

    info: dict[str, Any]


@dataclass(frozen=True)
class AudioChanged(Event):
    """The audio output changed state (``ok``, ``unavailable``...)."""

    info: dict[str, Any]
