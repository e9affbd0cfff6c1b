"""OpenAI's speech API as ttsd understands it: the request body and the error shape. No I/O.

``POST /v1/audio/speech`` takes a JSON object (OpenAI's "Create speech"):

* ``model`` (required): the engine's name (``piper``) or one of :data:`OPENAI_MODELS`;
  every name means the daemon's one engine.
* ``input`` (required): the text, at most ``max_text_length`` characters.
* ``voice`` (required): a voice of the engine, or one of OpenAI's names
  (:data:`OPENAI_VOICES`), which all mean the engine's default voice.
* ``response_format``: ``mp3`` (OpenAI's default), ``opus``, ``flac``, ``wav`` or
  ``pcm``; ``aac`` is refused (no well-kept encoder in ttsd's dependencies).
* ``speed``: 0.25-4.0 (1.0 default), mapped onto the engine's own control.
* ``instructions``: accepted and ignored (no engine of ttsd takes style prompts).
* ``stream_format``: ``audio`` (the default); ``sse`` is refused.

ttsd's extensions, which OpenAI's clients pass as ``extra_body``:

* ``options``: the engine's per-job options, as in the WebSocket API's ``speak``
  (Piper: ``noise_scale``, ``noise_w_scale``, ``length_scale``, ``speaker_id``).
* ``format``: how to read ``input``, as in ``speak``: ``auto``, ``text`` or
  ``markdown`` (default: the daemon's ``text_format``).
* ``sample_rate``: the rate of the audio sent back (Hz). By default ``pcm`` is 24 kHz
  as OpenAI specifies, ``opus`` 48 kHz, and the other formats the engine's own rate.

Every refusal is an :class:`OpenAIError`, which carries the HTTP status and renders
OpenAI's body ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from ttsd.errors import Code
from ttsd.protocol.requests import FORMATS as TEXT_FORMATS
from ttsd.protocol.requests import find_surrogate

#: OpenAI's speech models; each stands for the daemon's one engine, as its own name does.
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")

#: OpenAI's voice names; each stands for the engine's default voice.
OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)

#: ``response_format`` values served, and OpenAI's that are refused.
FORMATS = ("mp3", "opus", "flac", "wav", "pcm")
REFUSED_FORMATS = {"aac": "no encoder for AAC is part of ttsd; use mp3, opus, flac, wav or pcm"}

#: OpenAI's ``speed`` range.
MIN_SPEED, MAX_SPEED = 0.25, 4.0

#: ``sample_rate`` range (the extension).
MIN_RATE, MAX_RATE = 8000, 48000

#: The body fields understood; anything else is refused, so a typo is not ignored.
_FIELDS = frozenset(
    {
        "model",
        "input",
        "voice",
        "response_format",
        "speed",
        "instructions",
        "stream_format",
        "options",
        "sample_rate",
        "format",
    }
)

#: HTTP status and OpenAI error ``type`` for each ttsd error code.
_STATUS: dict[Code, tuple[int, str]] = {
    Code.BAD_JSON: (400, "invalid_request_error"),
    Code.BAD_REQUEST: (400, "invalid_request_error"),
    Code.UNKNOWN_TYPE: (400, "invalid_request_error"),
    Code.TEXT_TOO_LONG: (400, "invalid_request_error"),
    Code.BAD_OPTION: (400, "invalid_request_error"),
    Code.VOICE_NOT_FOUND: (400, "invalid_request_error"),
    Code.UNKNOWN_JOB: (400, "invalid_request_error"),
    Code.UNAUTHORIZED: (401, "authentication_error"),
    Code.QUEUE_FULL: (429, "rate_limit_error"),
    Code.CLIENT_QUEUE_FULL: (429, "rate_limit_error"),
    Code.RATE_LIMITED: (429, "rate_limit_error"),
    # Someone else (abort_all, a WebSocket client) aborted the synthesis.
    Code.ABORTED: (409, "conflict_error"),
    Code.SHUTTING_DOWN: (503, "server_error"),
    Code.ENGINE_UNAVAILABLE: (503, "server_error"),
    Code.ENGINE_LOAD: (503, "server_error"),
    Code.VOICE_LOAD: (500, "server_error"),
    Code.ENGINE_FAILED: (500, "server_error"),
    Code.INTERNAL_ERROR: (500, "server_error"),
}

#: The ``type`` for statuses raised without a ttsd code.
_TYPE_OF_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


class OpenAIError(Exception):
    """A request refused or failed, as OpenAI reports it: an HTTP status and a JSON body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,  # OpenAI's field name
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPE_OF_STATUS.get(
            status, "server_error" if status >= 500 else "invalid_request_error"
        )

    @classmethod
    def of_code(cls, code: Code, message: str, *, param: str | None = None) -> OpenAIError:
        """The error for a ttsd :class:`Code` (a scheduler rejection, an engine failure)."""
        status, kind = _STATUS.get(code, (500, "server_error"))
        return cls(status, message, param=param, code=code.value, type=kind)

    def body(self) -> dict[str, Any]:
        """OpenAI's error object."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_json(self) -> str:
        return json.dumps(self.body())


@dataclass(frozen=True)
class SpeechRequest:
    """A checked ``POST /v1/audio/speech`` body."""

    model: str
    input: str
    voice: str
    response_format: str = "mp3"
    speed: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)
    sample_rate: int | None = None
    #: How to read ``input`` (None: the daemon's ``text_format``).
    format: str | None = None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _bad(message: str, param: str | None, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def _string(body: dict[str, Any], name: str, *, limit: int = 200) -> str:
    value = body.get(name)
    if value is None:
        raise _bad(f"'{name}' is required", name, "missing_required_parameter")
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise _bad(f"'{name}' must be a non-empty string of at most {limit} characters", name)
    return value


def check_model(model: str, models: Collection[str]) -> None:
    """Raise :class:`OpenAIError` (400 ``model_not_found``) unless ``model`` is served."""
    if model not in models:
        raise _bad(
            f"model {model!r} does not exist here; use one of {', '.join(models)}",
            "model",
            "model_not_found",
        )


def parse_speech(
    raw: bytes,
    *,
    models: Collection[str] | None,
    max_text_length: int,
) -> SpeechRequest:
    """Parse and check a speech request body; raise :class:`OpenAIError` (400) if bad.

    Control characters in ``input`` are accepted, as on the WebSocket: the daemon's text
    layer removes them from what is spoken. ``models`` None leaves ``model`` unchecked
    (:func:`check_model` later, once the engine's name is known).
    """
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise _bad(f"the body is not valid JSON: {exc}", None, Code.BAD_JSON.value) from None
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object", None, Code.BAD_REQUEST.value)
    if find_surrogate(body):
        raise _bad("strings must be valid Unicode (a lone surrogate was found)", None)
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise _bad(
            f"unknown field(s): {', '.join(map(repr, unknown))}", unknown[0], "unknown_field"
        )

    model = _string(body, "model")
    if models is not None:
        check_model(model, models)
    text = body.get("input")
    if text is None:
        raise _bad("'input' is required", "input", "missing_required_parameter")
    if not isinstance(text, str):
        raise _bad("'input' must be a string", "input")
    if len(text) > max_text_length:
        raise _bad(
            f"'input' is {len(text)} characters; the limit is {max_text_length}",
            "input",
            "string_above_max_length",
        )
    if not text.strip():
        raise _bad("'input' is empty", "input", "string_below_min_length")
    voice = _string(body, "voice")

    fmt = body.get("response_format", "mp3")
    if fmt in REFUSED_FORMATS:
        raise _bad(REFUSED_FORMATS[fmt], "response_format", "unsupported_value")
    if fmt not in FORMATS:
        raise _bad(
            f"'response_format' must be one of {', '.join(FORMATS)}, got {fmt!r}",
            "response_format",
        )

    speed = body.get("speed", 1.0)
    if (
        isinstance(speed, bool)
        or not isinstance(speed, int | float)
        or not math.isfinite(speed)
        or not MIN_SPEED <= speed <= MAX_SPEED
    ):
        raise _bad(f"'speed' must be a number from {MIN_SPEED} to {MAX_SPEED}", "speed")

    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _bad("'instructions' must be a string", "instructions")
    stream_format = body.get("stream_format", "audio")
    if stream_format != "audio":
        raise _bad(
            "only stream_format 'audio' is supported: the audio is always streamed as it is made",
            "stream_format",
            "unsupported_value",
        )

    options = body.get("options", {})
    if not isinstance(options, dict):
        raise _bad("'options' (ttsd extension) must be an object", "options")
    rate = body.get("sample_rate")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE
    ):
        raise _bad(
            f"'sample_rate' (ttsd extension) must be an integer from {MIN_RATE} to {MAX_RATE}",
            "sample_rate",
        )
    text_format = body.get("format")
    if text_format is not None and text_format not in TEXT_FORMATS:
        raise _bad(f"'format' (ttsd extension) must be one of {', '.join(TEXT_FORMATS)}", "format")
    return SpeechRequest(
        model=model,
        input=text,
        voice=voice,
        response_format=fmt,
        speed=float(speed),
        options=options,
        sample_rate=rate,
        format=text_format,
    )
