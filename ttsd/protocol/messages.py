"""What the daemon sends: replies to requests, and events to every client.

A reply carries the request's ``id`` (when it had one); an event has no ``id``. The
``queued`` message is both: the reply to ``speak`` and, without ``id``, the event
the other clients get. :func:`decode` turns a received frame back into one of these
classes (``error`` is a :class:`JobError` when it names a job, else an
:class:`ErrorReply`); an unknown ``type`` decodes to :class:`Unknown`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ttsd.protocol.base import Message, RequestId

PROTOCOL_VERSION = 1


def _message(cls: type) -> type:
    return dataclasses.dataclass(frozen=True, kw_only=True)(cls)


# --- Replies --------------------------------------------------------------------------


@_message
class Hello(Message):
    """The first message on every connection."""

    TYPE = "hello"
    protocol: int = PROTOCOL_VERSION
    version: str = ""
    client: str = ""
    engine: dict[str, Any] = dataclasses.field(default_factory=dict)
    audio: dict[str, Any] = dataclasses.field(default_factory=dict)
    paused: bool = False
    #: ``"required"`` when the next frame must be an ``auth`` request.
    auth: str | None = None


@_message
class Queued(Message):
    """A job was queued: the reply to ``speak``, and an event for the others."""

    TYPE = "queued"
    job: int
    position: int
    client: str | None = None
    priority: str | None = None
    id: RequestId = None


@_message
class Ok(Message):
    """A request was carried out. Fields depend on the request."""

    TYPE = "ok"
    aborted: list[int] | None = None
    authenticated: bool | None = None
    paused: bool | None = None
    job: int | None = None
    client: str | None = None
    id: RequestId = None


@_message
class ErrorReply(Message):
    """A request failed; nothing happened. Never has a ``job``."""

    TYPE = "error"
    code: str
    message: str
    id: RequestId = None


@_message
class StatusReply(Message):
    TYPE = "status"
    KEEP_NONE = frozenset({"current"})
    version: str = ""
    current: dict[str, Any] | None = None
    queue: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    synthesizing: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    paused: bool = False
    engine: dict[str, Any] = dataclasses.field(default_factory=dict)
    audio: dict[str, Any] = dataclasses.field(default_factory=dict)
    clients: int = 0
    cache: dict[str, Any] | None = None
    id: RequestId = None


@_message
class VoicesReply(Message):
    TYPE = "voices"
    voices: list[str] = dataclasses.field(default_factory=list)
    id: RequestId = None


@_message
class Pong(Message):
    TYPE = "pong"
    id: RequestId = None


@_message
class AudioReply(Message):
    """The reply to ``synthesize``: all of the audio, base64 mono s16le PCM."""

    TYPE = "audio"
    format: str = "s16le"
    channels: int = 1
    sample_rate: int = 0
    samples: int = 0
    data: str = ""
    job: int | None = None
    id: RequestId = None


@_message
class AudioStart(Message):
    """The reply to ``synthesize`` with ``stream``: binary frames of PCM follow."""

    TYPE = "audio_start"
    job: int
    format: str = "s16le"
    channels: int = 1
    sample_rate: int = 0
    id: RequestId = None


@_message
class AudioEnd(Message):
    """The last frame of a streamed synthesis: ``finished``, ``aborted`` or ``error``."""

    TYPE = "audio_end"
    job: int
    outcome: str
    samples: int = 0
    code: str | None = None
    message: str | None = None
    reason: str | None = None
    id: RequestId = None


@_message
class NormalizeReply(Message):
    """What ``normalize`` found: the sentences that would be spoken."""

    TYPE = "normalized"
    format: str = ""
    sentences: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    id: RequestId = None


# --- Job events -----------------------------------------------------------------------


@_message
class Started(Message):
    TYPE = "started"
    job: int
    client: str | None = None


@_message
class Sentence(Message):
    """Sentence ``index`` of the job started playing: ``text[start:end]``."""

    TYPE = "sentence"
    job: int
    index: int
    start: int
    end: int
    client: str | None = None


@_message
class Postponed(Message):
    """Interrupted by a higher-priority job; it will play again from sentence ``index``."""

    TYPE = "postponed"
    job: int
    by: int
    index: int
    start: int
    client: str | None = None


@_message
class Continued(Message):
    """A postponed job plays again, from sentence ``index``."""

    TYPE = "continued"
    job: int
    index: int
    start: int
    client: str | None = None


@_message
class Finished(Message):
    TYPE = "finished"
    job: int
    audio_seconds: float = 0.0
    spoken_chars: int = 0
    underruns: int = 0
    elapsed: float = 0.0
    client: str | None = None


@_message
class Aborted(Message):
    TYPE = "aborted"
    job: int
    reason: str = ""
    by: int | None = None
    audio_seconds: float = 0.0
    spoken_chars: int = 0
    elapsed: float = 0.0
    client: str | None = None


@_message
class JobError(Message):
    """A job failed (an event: it always has a ``job``)."""

    TYPE = "error"
    job: int
    code: str
    message: str
    audio_seconds: float = 0.0
    spoken_chars: int = 0
    elapsed: float = 0.0
    client: str | None = None


@_message
class Paused(Message):
    TYPE = "paused"
    job: int | None = None


@_message
class Resumed(Message):
    TYPE = "resumed"
    job: int | None = None


@_message
class EngineState(Message):
    """The engine changed state; the fields are those of ``hello``'s ``engine``."""

    TYPE = "engine"
    FLATTEN = "info"
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@_message
class AudioState(Message):
    """The audio output changed state; the fields are those of ``hello``'s ``audio``."""

    TYPE = "audio_state"
    FLATTEN = "info"
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@_message
class Unknown(Message):
    """A message of a type this client does not know; everything is in :attr:`extra`."""

    TYPE = "unknown"


#: Terminal job events: exactly one ends every job.
TERMINAL = (Finished, Aborted, JobError)

_BY_TYPE: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Queued,
        Ok,
        StatusReply,
        VoicesReply,
        Pong,
        AudioReply,
        AudioStart,
        AudioEnd,
        NormalizeReply,
        Started,
        Sentence,
        Postponed,
        Continued,
        Finished,
        Aborted,
        Paused,
        Resumed,
        EngineState,
        AudioState,
    )
}


def decode(frame: str | bytes) -> Message:
    """A received frame as a message; raise ``ValueError`` if it is not a JSON object
    with a string ``type``."""
    data = json.loads(frame)
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ValueError("not a JSON object with a type")
    return from_json(data)


def from_json(data: dict[str, Any]) -> Message:
    kind = data["type"]
    if kind == "error":
        return (JobError if "job" in data else ErrorReply).from_json(data)
    cls = _BY_TYPE.get(kind)
    if cls is None:
        return Unknown(extra=dict(data))
    try:
        return cls.from_json(data)
    except TypeError:  # a required field is missing: keep what came
        return Unknown(extra=dict(data))
