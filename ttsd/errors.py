"""The one list of error codes, shared by every layer.

A code is what a client matches on: the ``code`` of an ``error`` reply or of a job's
``error`` event. The scheduler and the engines raise with these codes; the protocol
puts them on the wire; ``docs/protocol.md`` documents each one (a test checks that the
three agree). This module imports nothing, so any layer may use it.
"""

from __future__ import annotations

import enum


class Code(str, enum.Enum):
    """Every error code ttsd sends. The value is the string on the wire."""

    # Replies to requests that cannot be served (no job was created).
    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_TYPE = "unknown_type"
    TEXT_TOO_LONG = "text_too_long"
    BAD_OPTION = "bad_option"
    QUEUE_FULL = "queue_full"
    CLIENT_QUEUE_FULL = "client_queue_full"
    UNKNOWN_JOB = "unknown_job"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL_ERROR = "internal_error"

    # Job errors (and synthesis errors): the engine.
    ENGINE_FAILED = "engine_failed"
    ENGINE_LOAD = "engine_load"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    VOICE_NOT_FOUND = "voice_not_found"
    VOICE_LOAD = "voice_load"

    # Job errors: playback.
    AUDIO_UNAVAILABLE = "audio_unavailable"
    PLAYBACK_FAILED = "playback_failed"
    PLAYBACK_STALLED = "playback_stalled"

    # The end of a synthesis that was aborted (its reply, since it has no events).
    ABORTED = "aborted"

    def __str__(self) -> str:
        return self.value
