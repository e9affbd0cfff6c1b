"""What clients send: requests, parsed strictly.

:func:`parse_request` never trusts its input: anything malformed raises
:class:`ProtocolError` with a code from :class:`ttsd.errors.Code` and, whenever the
frame had a usable ``id``, that id, so the error reply can always be matched. A
client builds the same classes and sends :meth:`Message.to_json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from ttsd.errors import Code
from ttsd.protocol.base import Message, RequestId

PRIORITIES = ("important", "message", "text", "notification", "progress")
FORMATS = ("auto", "text", "markdown")

_MAX_ID_LENGTH = 200
_MAX_KEY_LENGTH = 200
_MAX_NAME_LENGTH = 100


class ProtocolError(Exception):
    """A request that cannot be served; becomes an ``error`` reply with ``id``."""

    def __init__(self, code: Code, message: str, request_id: RequestId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


def _request(cls: type) -> type:
    return dataclasses.dataclass(frozen=True, kw_only=True)(cls)


@_request
class Request(Message):
    """Base of all requests."""

    id: RequestId = None


@_request
class Speak(Request):
    TYPE = "speak"
    text: str
    voice: str | None = None
    volume: float | None = None
    options: dict[str, Any] | None = None
    #: Abort the job when the connection that queued it closes.
    cancel_on_disconnect: bool | None = None
    priority: str | None = None
    #: A newer job with the same key replaces this one while it waits.
    key: str | None = None
    #: With ``priority: important``: the job it interrupts resumes afterwards.
    resume: bool | None = None
    format: str | None = None


@_request
class Synthesize(Request):
    """Make the audio and send it back instead of playing it."""

    TYPE = "synthesize"
    text: str
    voice: str | None = None
    options: dict[str, Any] | None = None
    #: Send the audio as binary frames as it is made.
    stream: bool | None = None
    format: str | None = None


@_request
class AbortCurrent(Request):
    TYPE = "abort_current"


@_request
class AbortAll(Request):
    TYPE = "abort_all"


@_request
class Abort(Request):
    """Abort one job (``job``) or every job of one client (``client``)."""

    TYPE = "abort"
    job: int | None = None
    client: str | None = None


@_request
class Pause(Request):
    TYPE = "pause"


@_request
class Resume(Request):
    TYPE = "resume"


@_request
class Status(Request):
    TYPE = "status"


@_request
class Voices(Request):
    TYPE = "voices"


@_request
class Terminate(Request):
    TYPE = "terminate"


@_request
class Ping(Request):
    TYPE = "ping"


@_request
class Auth(Request):
    """Presents the daemon's token; the first request when ``auth = "token"``."""

    TYPE = "auth"
    token: str


@_request
class Normalize(Request):
    """Show what ``speak`` would say for ``text``, sentence by sentence."""

    TYPE = "normalize"
    text: str
    format: str | None = None


@_request
class Identify(Request):
    """Name this client and set defaults for its later ``speak`` requests."""

    TYPE = "identify"
    name: str
    voice: str | None = None
    priority: str | None = None
    volume: float | None = None


REQUEST_CLASSES: dict[str, type[Request]] = {
    cls.TYPE: cls
    for cls in (
        Speak,
        Synthesize,
        AbortCurrent,
        AbortAll,
        Abort,
        Pause,
        Resume,
        Status,
        Voices,
        Terminate,
        Ping,
        Auth,
        Normalize,
        Identify,
    )
}
REQUEST_TYPES = tuple(REQUEST_CLASSES)


# --- Parsing ------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _usable_id(value: Any) -> RequestId:
    """``value`` if it is a usable request id, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and len(value) <= _MAX_ID_LENGTH and not _has_surrogate(value):
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
    return _usable_id(message.get("id")) if isinstance(message, dict) else None


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def find_surrogate(value: Any, depth: int = 0) -> bool:
    """True if any string in ``value`` holds a lone surrogate (``"\\ud800"`` in JSON).

    Such strings cannot be encoded as UTF-8, so echoing them later (a job's text in
    ``status``) would break the connection: the request is refused now instead.
    """
    if isinstance(value, str):
        return _has_surrogate(value)
    if depth > 100:
        return False  # json.loads already bounds nesting; this only bounds the walk
    if isinstance(value, dict):
        return any(find_surrogate(k) or find_surrogate(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return any(find_surrogate(v, depth + 1) for v in value)
    return False


def has_control_chars(text: str) -> bool:
    """True if ``text`` holds C0 controls other than tab and newlines, DEL or C1 controls."""
    return any((ord(c) < 32 and c not in "\t\n\r") or 0x7F <= ord(c) < 0xA0 for c in text)


class _Fields:
    """Typed access to a request's fields; every failure names the field."""

    def __init__(self, message: dict[str, Any], request_id: RequestId) -> None:
        self.message = message
        self.id = request_id

    def fail(self, text: str, code: Code = Code.BAD_REQUEST) -> ProtocolError:
        return ProtocolError(code, text, self.id)

    def string(
        self, name: str, *, required: bool = False, limit: int = 500, code: Code = Code.BAD_REQUEST
    ) -> str | None:
        value = self.message.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value or len(value) > limit:
            raise self.fail(
                f"'{name}' must be a non-empty string of at most {limit} characters", code
            )
        return value

    def boolean(self, name: str) -> bool | None:
        value = self.message.get(name)
        if value is not None and not isinstance(value, bool):
            raise self.fail(f"'{name}' must be true or false")
        return value

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        value = self.message.get(name)
        if value is not None and value not in choices:
            raise self.fail(f"'{name}' must be one of {', '.join(choices)}", Code.BAD_OPTION)
        return value

    def volume(self) -> float | None:
        value = self.message.get("volume")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
            raise self.fail("'volume' must be a number between 0.0 and 1.0", Code.BAD_OPTION)
        return float(value)

    def text(self, max_length: int) -> str:
        text = self.message.get("text")
        if not isinstance(text, str):
            raise self.fail("'text' must be a string")
        if len(text) > max_length:
            raise self.fail(
                f"text is {len(text)} characters; the limit is {max_length}", Code.TEXT_TOO_LONG
            )
        if not text.strip():
            raise self.fail("text is empty")
        return text

    def options(self) -> dict[str, Any] | None:
        options = self.message.get("options")
        if options is not None and not isinstance(options, dict):
            raise self.fail("'options' must be an object", Code.BAD_OPTION)
        return options


def parse_request(frame: str, *, max_text_length: int, allow_control: bool = True) -> Request:
    """Parse one text frame into a :class:`Request` or raise :class:`ProtocolError`.

    ``allow_control``: control characters in ``text`` (ANSI colour codes, form feeds)
    are accepted, for the daemon's text layer removes them from what is spoken; with
    False they are refused (``bad_request``).
    """
    try:
        message = json.loads(frame, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(Code.BAD_JSON, f"frame is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(Code.BAD_REQUEST, "a request must be a JSON object")
    raw_id = message.get("id")
    request_id = _usable_id(raw_id)
    if "id" in message and request_id is None:
        raise ProtocolError(
            Code.BAD_REQUEST, "id must be a string (<= 200 chars, valid Unicode) or a number"
        )
    fields = _Fields(message, request_id)
    if find_surrogate(message):
        raise fields.fail(
            "strings must be valid Unicode: this request holds a lone surrogate "
            "(\\ud800-\\udfff), as text decoded from a wrong encoding does"
        )
    kind = message.get("type")
    if not isinstance(kind, str):
        raise fields.fail("a request needs a string field 'type'")
    cls = REQUEST_CLASSES.get(kind)
    if cls is None:
        raise fields.fail(f"unknown request type {kind!r}", Code.UNKNOWN_TYPE)
    allowed = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    unknown = sorted(set(message) - allowed - {"type"})
    if unknown:
        raise fields.fail(f"unknown field(s) for {kind}: {', '.join(map(repr, unknown))}")

    def text() -> str:
        value = fields.text(max_text_length)
        if not allow_control and has_control_chars(value):
            raise fields.fail("text contains control characters")
        return value

    if cls is Speak:
        if message.get("resume") and message.get("priority") != "important":
            raise fields.fail("'resume' applies to priority 'important' only", Code.BAD_OPTION)
        return Speak(
            id=request_id,
            text=text(),
            voice=fields.string("voice"),
            volume=fields.volume(),
            options=fields.options(),
            cancel_on_disconnect=fields.boolean("cancel_on_disconnect"),
            priority=fields.choice("priority", PRIORITIES),
            key=fields.string("key", limit=_MAX_KEY_LENGTH),
            resume=fields.boolean("resume"),
            format=fields.choice("format", FORMATS),
        )
    if cls is Synthesize:
        return Synthesize(
            id=request_id,
            text=text(),
            voice=fields.string("voice"),
            options=fields.options(),
            stream=fields.boolean("stream"),
            format=fields.choice("format", FORMATS),
        )
    if cls is Normalize:
        return Normalize(id=request_id, text=text(), format=fields.choice("format", FORMATS))
    if cls is Abort:
        job = message.get("job")
        client = fields.string("client", limit=_MAX_NAME_LENGTH + 100)
        if (job is None) == (client is None):
            raise fields.fail("'abort' takes either 'job' or 'client'")
        if job is not None and (
            isinstance(job, bool) or not isinstance(job, int) or not 0 < job < 2**53
        ):
            raise fields.fail("'job' must be a positive integer job id")
        return Abort(id=request_id, job=job, client=client)
    if cls is Auth:
        token = message.get("token")
        if not isinstance(token, str) or not token or len(token) > 1000:
            raise fields.fail("'token' must be a non-empty string", Code.UNAUTHORIZED)
        return Auth(id=request_id, token=token)
    if cls is Identify:
        name = fields.string("name", required=True, limit=_MAX_NAME_LENGTH)
        assert name is not None
        if has_control_chars(name):
            raise fields.fail("'name' must not contain control characters")
        return Identify(
            id=request_id,
            name=name,
            voice=fields.string("voice"),
            priority=fields.choice("priority", PRIORITIES),
            volume=fields.volume(),
        )
    return cls(id=request_id)
