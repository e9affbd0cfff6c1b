"""The ttsd WebSocket protocol: parsing requests and building events. No I/O.

Every frame is a text frame holding one JSON object with a ``type``. Requests may carry
an ``id`` (string or number) that the direct reply echoes. ``docs/protocol.md`` is the
contract; this module is its executable form. Parsing never trusts its input: anything
malformed raises :class:`ProtocolError` with a stable ``code``.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1

#: Error codes of replies to bad requests (``error`` with an ``id``, no ``job``).
BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
UNKNOWN_TYPE = "unknown_type"
TEXT_TOO_LONG = "text_too_long"
QUEUE_FULL = "queue_full"
BAD_OPTION = "bad_option"
UNKNOWN_JOB = "unknown_job"
CLIENT_QUEUE_FULL = "client_queue_full"
RATE_LIMITED = "rate_limited"
UNAUTHORIZED = "unauthorized"
INTERNAL_ERROR = "internal_error"

RequestId = str | int | float | None

_MAX_ID_LENGTH = 200


class ProtocolError(Exception):
    """A request that cannot be served; becomes an ``error`` reply."""

    def __init__(self, code: str, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    """Base of all parsed requests."""

    id: RequestId = None


@dataclass(frozen=True)
class Speak(Request):
    text: str = ""
    voice: str | None = None
    volume: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: Abort the job when the connection that queued it closes.
    cancel_on_disconnect: bool = False


@dataclass(frozen=True)
class Synthesize(Request):
    """Like :class:`Speak`, but the audio comes back in the reply instead of playing."""

    text: str = ""
    voice: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AbortCurrent(Request):
    pass


@dataclass(frozen=True)
class AbortAll(Request):
    pass


@dataclass(frozen=True)
class AbortJob(Request):
    job: int = 0


@dataclass(frozen=True)
class Status(Request):
    pass


@dataclass(frozen=True)
class Voices(Request):
    pass


@dataclass(frozen=True)
class Terminate(Request):
    pass


@dataclass(frozen=True)
class Ping(Request):
    pass


@dataclass(frozen=True)
class Auth(Request):
    """Presents the daemon's token; the first request when ``auth = "token"``."""

    token: str = ""


# type name -> (request class, allowed fields besides "type" and "id")
_REQUESTS: dict[str, tuple[type[Request], frozenset[str]]] = {
    "speak": (Speak, frozenset({"text", "voice", "volume", "options", "cancel_on_disconnect"})),
    "synthesize": (Synthesize, frozenset({"text", "voice", "options"})),
    "abort_current": (AbortCurrent, frozenset()),
    "abort_all": (AbortAll, frozenset()),
    "abort": (AbortJob, frozenset({"job"})),
    "status": (Status, frozenset()),
    "voices": (Voices, frozenset()),
    "terminate": (Terminate, frozenset()),
    "ping": (Ping, frozenset()),
    "auth": (Auth, frozenset({"token"})),
}

REQUEST_TYPES = tuple(_REQUESTS)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _request_id(message: dict[str, Any]) -> RequestId:
    """The request's ``id`` if it is usable, else None (so errors can still echo it)."""
    value = message.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and len(value) <= _MAX_ID_LENGTH:
        return value
    if isinstance(value, int) and abs(value) < 2**53:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return None


def peek_id(frame: str | bytes) -> RequestId:
    """The ``id`` of a request that will not be parsed further (to echo it), or None."""
    try:
        message = json.loads(frame, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or _has_lone_surrogate(message.get("id")):
        return None
    return _request_id(message)


def _has_control_chars(text: str) -> bool:
    return any((ord(c) < 32 and c not in "\t\n\r") or 0x7F <= ord(c) < 0xA0 for c in text)


def _has_lone_surrogate(value: Any, depth: int = 0) -> bool:
    """True if any string in ``value`` holds a surrogate (``"\\ud800"`` in JSON).

    Such strings cannot be encoded as UTF-8, so echoing them (an ``id``, a job's text in
    ``status``) would break the connection later instead of failing the request now.
    """
    if isinstance(value, str):
        return not value.isascii() and any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if depth > 100:
        return False  # json.loads already bounds nesting; this only bounds the walk
    if isinstance(value, dict):
        return any(
            _has_lone_surrogate(k, depth + 1) or _has_lone_surrogate(v, depth + 1)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return any(_has_lone_surrogate(v, depth + 1) for v in value)
    return False


def parse_request(frame: str, *, max_text_length: int) -> Request:
    """Parse one text frame into a :class:`Request` or raise :class:`ProtocolError`."""
    try:
        message = json.loads(frame, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(BAD_JSON, f"frame is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(BAD_REQUEST, "a request must be a JSON object")
    if _has_lone_surrogate(message):
        raise ProtocolError(
            BAD_REQUEST, "strings must not contain lone surrogates (\\ud800-\\udfff)"
        )
    request_id = _request_id(message)
    if "id" in message and message["id"] is not None and request_id is None:
        raise ProtocolError(BAD_REQUEST, "id must be a string (<= 200 chars) or a number")

    def bad(message_text: str, code: str = BAD_REQUEST) -> ProtocolError:
        return ProtocolError(code, message_text, request_id)

    kind = message.get("type")
    if not isinstance(kind, str):
        raise bad("a request needs a string field 'type'")
    if kind not in _REQUESTS:
        raise bad(f"unknown request type {kind!r}", UNKNOWN_TYPE)
    cls, allowed = _REQUESTS[kind]
    unknown = sorted(set(message) - allowed - {"type", "id"})
    if unknown:
        raise bad(f"unknown field(s) for {kind}: {', '.join(map(repr, unknown))}")

    if cls is Speak:
        return _parse_speak(message, request_id, max_text_length, bad)
    if cls is Synthesize:
        speak = _parse_speak(message, request_id, max_text_length, bad)
        return Synthesize(id=request_id, text=speak.text, voice=speak.voice, options=speak.options)
    if cls is AbortJob:
        job = message.get("job")
        if isinstance(job, bool) or not isinstance(job, int) or not 0 < job < 2**53:
            raise bad("'job' must be a positive integer job id")
        return AbortJob(id=request_id, job=job)
    if cls is Auth:
        token = message.get("token")
        if not isinstance(token, str) or not token or len(token) > 1000:
            raise bad("'token' must be a non-empty string", UNAUTHORIZED)
        return Auth(id=request_id, token=token)
    return cls(id=request_id)


def _parse_speak(
    message: dict[str, Any], request_id: RequestId, max_text_length: int, bad: Any
) -> Speak:
    text = message.get("text")
    if not isinstance(text, str):
        raise bad("'text' must be a string")
    if len(text) > max_text_length:
        raise bad(f"text is {len(text)} characters; the limit is {max_text_length}", TEXT_TOO_LONG)
    if _has_control_chars(text):
        raise bad("text contains control characters")
    if not text.strip():
        raise bad("text is empty")
    voice = message.get("voice")
    if voice is not None and (not isinstance(voice, str) or not voice or len(voice) > 500):
        raise bad("'voice' must be a non-empty string")
    volume = message.get("volume")
    if volume is not None and (
        isinstance(volume, bool) or not isinstance(volume, int | float) or not 0.0 <= volume <= 1.0
    ):
        raise bad("'volume' must be a number between 0.0 and 1.0", BAD_OPTION)
    options = message.get("options", {})
    if not isinstance(options, dict):
        raise bad("'options' must be an object", BAD_OPTION)
    cancel = message.get("cancel_on_disconnect", False)
    if not isinstance(cancel, bool):
        raise bad("'cancel_on_disconnect' must be true or false")
    return Speak(
        id=request_id,
        text=text,
        voice=voice,
        volume=None if volume is None else float(volume),
        options=options,
        cancel_on_disconnect=cancel,
    )


# --- Messages from the server -------------------------------------------------------


def encode(message: dict[str, Any]) -> str:
    """Serialise a server message to the text of one frame (always valid UTF-8)."""
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a surrogate slipped in (an engine's message?)
            text = json.dumps(message, separators=(",", ":"))
    return text


def with_id(message: dict[str, Any], request_id: RequestId) -> dict[str, Any]:
    """Return ``message`` with ``id`` set (only when the request had one)."""
    return message if request_id is None else {**message, "id": request_id}


def error_reply(code: str, message: str, request_id: RequestId = None) -> dict[str, Any]:
    return with_id({"type": "error", "code": code, "message": message}, request_id)


def ok_reply(request_id: RequestId = None, **fields: Any) -> dict[str, Any]:
    return with_id({"type": "ok", **fields}, request_id)


def audio_reply(pcm: bytes, sample_rate: int, request_id: RequestId = None) -> dict[str, Any]:
    """The reply to ``synthesize``: mono s16le PCM, base64-encoded."""
    return with_id(
        {
            "type": "audio",
            "format": "s16le",
            "channels": 1,
            "sample_rate": sample_rate,
            "samples": len(pcm) // 2,
            "data": base64.b64encode(pcm).decode("ascii"),
        },
        request_id,
    )


def hello(version: str, **fields: Any) -> dict[str, Any]:
    return {"type": "hello", "protocol": PROTOCOL_VERSION, "version": version, **fields}


def queued_event(job: int, position: int, **fields: Any) -> dict[str, Any]:
    return {"type": "queued", "job": job, "position": position, **fields}


def started_event(job: int, **fields: Any) -> dict[str, Any]:
    return {"type": "started", "job": job, **fields}


def finished_event(job: int, **fields: Any) -> dict[str, Any]:
    return {"type": "finished", "job": job, **fields}


def aborted_event(job: int, reason: str, **fields: Any) -> dict[str, Any]:
    return {"type": "aborted", "job": job, "reason": reason, **fields}


def job_error_event(job: int, code: str, message: str, **fields: Any) -> dict[str, Any]:
    return {"type": "error", "job": job, "code": code, "message": message, **fields}
