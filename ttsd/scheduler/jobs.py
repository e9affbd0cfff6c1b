"""Jobs: one ``speak`` request on its way from text to sound."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class JobState(enum.Enum):
    QUEUED = "queued"  # waiting for its turn at the speaker
    PLAYING = "playing"  # its stream is open (audio may still be generating)
    FINISHED = "finished"
    ABORTED = "aborted"
    FAILED = "error"

    @property
    def done(self) -> bool:
        return self in (JobState.FINISHED, JobState.ABORTED, JobState.FAILED)


#: Put in a job's audio queue after its last chunk.
END_OF_AUDIO = None


@dataclass(eq=False)
class Job:
    id: int
    text: str
    chunks: list[str]
    voice: str | None
    options: dict[str, Any]
    volume: float
    client: str
    options_checked: bool = True
    cancel_on_disconnect: bool = False
    state: JobState = JobState.QUEUED
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    ended: float | None = None
    #: Index of the next chunk for the generator to synthesize.
    next_chunk: int = 0
    #: Generated audio waiting for playback: int16 arrays, an Exception, or END_OF_AUDIO.
    audio: asyncio.Queue[np.ndarray | Exception | None] = field(default_factory=asyncio.Queue)
    #: Samples in ``audio`` not yet handed to the stream.
    pending_samples: int = 0
    #: Samples handed to the stream so far.
    played_samples: int = 0
    #: Where PulseAudio plays the job (found once the stream has started).
    sink: str | None = None
    sink_input: int | None = None

    @property
    def generation_done(self) -> bool:
        return self.next_chunk >= len(self.chunks)

    def describe(self) -> dict[str, Any]:
        """The job as shown by ``status``."""
        return {
            "job": self.id,
            "state": self.state.value,
            "text": self.text if len(self.text) <= 200 else self.text[:199] + "…",
            "chunks": len(self.chunks),
            "generated": self.next_chunk,
            "client": self.client,
        }
