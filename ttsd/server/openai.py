"""OpenAI-compatible speech over HTTP: ``/v1/audio/speech``, ``/v1/models``, voices.

``POST /v1/audio/speech`` becomes a synthesis job, exactly like the WebSocket API's
``synthesize``: it shares the engine worker fairly with the speaking jobs (which
the scheduler serves first when their audio runs low) and counts against the
per-client ``max_synthesize_per_client`` limit, the client being the HTTP client's
address (``http@127.0.0.1``). Its audio is encoded (:mod:`ttsd.audio.encode`) and
written to the response as each piece is made; the response's status is sent with
the first piece, so a request that fails before any audio gets a proper error
status. A client that goes away aborts its job; a job that fails or is aborted
mid-stream cuts the connection (the chunked body never ends), so a client cannot
mistake a truncated file for a whole one.

The request body, the formats and the error shape are in
:mod:`ttsd.protocol.openai`; routing and access checks in :mod:`ttsd.server.http`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ttsd.audio.encode import Encoder, FormatError, make_encoder
from ttsd.config import Config
from ttsd.engines import EngineError
from ttsd.errors import Code
from ttsd.protocol.openai import (
    OPENAI_MODELS,
    OPENAI_VOICES,
    OpenAIError,
    SpeechRequest,
    check_model,
    parse_speech,
)
from ttsd.scheduler import JobKind, Order, Rejection, Scheduler
from ttsd.server.http import Route, json_response, response_headers

log = logging.getLogger("ttsd.server.openai")

#: Bytes read from a request body at a time.
_READ_CHUNK = 65536


def client_of(request: web.BaseRequest) -> str:
    """How jobs and ``status`` name an HTTP client: by its address."""
    return f"http@{request.remote or '?'}"


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The request body; :class:`OpenAIError` 413 if it is over ``limit`` bytes."""
    too_large = OpenAIError(
        413, f"the request body is over {limit} bytes", code="request_too_large"
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_chunked(_READ_CHUNK):
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


class OpenAISpeech:
    """The OpenAI-compatible endpoints, on top of the scheduler's public API.

    ``stopping()`` tells whether the daemon is shutting down (new work is refused).
    """

    def __init__(
        self,
        config: Config,
        scheduler: Scheduler,
        *,
        stopping: Callable[[], bool],
    ) -> None:
        self.config = config
        self.scheduler = scheduler
        self.stopping = stopping

    def routes(self) -> list[Route]:
        return [
            Route(re.compile(r"/v1/audio/speech"), {"POST": self.speech}),
            Route(re.compile(r"/v1/models"), {"GET": self.models}),
            Route(re.compile(r"/v1/models/[^/]+"), {"GET": self.model}),
            Route(re.compile(r"/v1/audio/voices"), {"GET": self.voices}),
        ]

    # --- Models and voices ---------------------------------------------------------

    def model_names(self) -> list[str]:
        """The engine's name, then OpenAI's model names: all of them this one engine."""
        return [self.scheduler.host.name, *OPENAI_MODELS]

    def _model(self, name: str) -> dict[str, Any]:
        """OpenAI's model object, with ttsd's ``engine`` and, once it is loaded, the
        engine's ``sample_rate`` (a remote engine asks for that rate: no resampling)."""
        host = self.scheduler.host
        model: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "ttsd",
            "engine": host.name,
        }
        if host.ready:
            model["sample_rate"] = host.sample_rate
        return model

    async def models(self, request: web.BaseRequest) -> web.Response:
        return json_response(
            request, {"object": "list", "data": [self._model(n) for n in self.model_names()]}
        )

    async def model(self, request: web.BaseRequest) -> web.Response:
        name = request.path.rsplit("/", 1)[1]
        if name not in self.model_names():
            raise OpenAIError(
                404,
                f"the model {name!r} does not exist here",
                param="model",
                code="model_not_found",
            )
        return json_response(request, self._model(name))

    async def voices(self, request: web.BaseRequest) -> web.Response:
        """The engine's voices, then OpenAI's names (each the engine's default voice)."""
        own = self.scheduler.voices()
        return json_response(
            request, {"voices": [*own, *(v for v in OPENAI_VOICES if v not in own)]}
        )

    def _voice(self, name: str) -> str | None:
        """The engine voice a request's ``voice`` means (None: the engine's default)."""
        if name in self.scheduler.voices():
            return name
        if name in OPENAI_VOICES:
            return None
        raise OpenAIError(
            400,
            f"unknown voice {name!r}; GET /v1/audio/voices lists them",
            param="voice",
            code=Code.VOICE_NOT_FOUND.value,
        )

    # --- Speech --------------------------------------------------------------------

    async def speech(self, request: web.BaseRequest) -> web.StreamResponse:
        """``POST /v1/audio/speech``: check the request, submit a synthesis job, stream it."""
        body = await read_body(request, self.config.max_message_bytes)
        # Checked before waiting for the engine: a bad request is answered at once.
        speech = parse_speech(body, models=None, max_text_length=self.config.max_text_length)
        host = self.scheduler.host
        if self.stopping() or self.scheduler.closed:
            raise OpenAIError.of_code(Code.SHUTTING_DOWN, "the daemon is shutting down")
        # The engine is needed to know its name (``auto``), check the voice, map the
        # speed and pick the sample rate: wait for it to load (at once when it is).
        if not await host.ensure_ready():
            raise OpenAIError.of_code(
                Code.ENGINE_UNAVAILABLE, f"the engine failed to load: {host.error}"
            )
        check_model(speech.model, self.model_names())
        voice = self._voice(speech.voice)
        options = self._options(speech, voice)
        try:
            encoder = make_encoder(
                speech.response_format, self.scheduler.sample_rate, speech.sample_rate
            )
        except FormatError as exc:
            param = "sample_rate" if speech.sample_rate else "response_format"
            raise OpenAIError(400, str(exc), param=param, code="unsupported_value") from None
        order = Order(
            text=speech.input,
            client=client_of(request),
            kind=JobKind.SYNTHESIZE,
            voice=voice,
            options=options,
            format=speech.format,
        )
        try:
            job = self.scheduler.submit(order)
        except Rejection as exc:
            raise OpenAIError.of_code(
                exc.code, exc.message, param="options" if exc.code is Code.BAD_OPTION else None
            ) from None
        return await self._stream(request, job, encoder)

    def _options(self, speech: SpeechRequest, voice: str | None) -> dict[str, Any]:
        """The job's engine options: ``speed`` mapped by the engine, then ``options``."""
        try:
            speed = self.scheduler.host.speed_options(speech.speed, voice)
        except Rejection as exc:
            raise OpenAIError.of_code(exc.code, exc.message, param="speed") from None
        clash = sorted(set(speed) & set(speech.options))
        if clash:
            raise OpenAIError(
                400,
                f"'speed' sets {', '.join(clash)}: give one or the other",
                param="speed",
                code="invalid_value",
            )
        return {**speed, **speech.options}

    async def _stream(
        self, request: web.BaseRequest, job: Any, encoder: Encoder
    ) -> web.StreamResponse:
        """Write the job's audio as it is made; abort the job if the response fails."""
        response: web.StreamResponse | None = None
        finished = False
        try:
            async with contextlib.aclosing(self.scheduler.audio(job)) as pieces:
                first = await anext(pieces, None)
                response = web.StreamResponse(
                    status=200,
                    headers={
                        **response_headers(request),
                        "Content-Type": encoder.media_type,
                        "X-Sample-Rate": str(encoder.rate),
                        "X-Ttsd-Job": str(job.id),
                        "Cache-Control": "no-store",
                    },
                )
                response.enable_chunked_encoding()
                await response.prepare(request)
                await _write(response, encoder.begin())
                if first is not None:
                    await _write(response, await _run(encoder, encoder.encode, first))
                    async for pcm in pieces:
                        await _write(response, await _run(encoder, encoder.encode, pcm))
                await _write(response, await _run(encoder, encoder.end))
            finished = True
            await response.write_eof()
            return response
        except (Rejection, EngineError) as exc:
            code = exc.code if isinstance(exc, Rejection) else Code(exc.code)
            message = exc.message if isinstance(exc, Rejection) else str(exc)
            if response is None:
                raise OpenAIError.of_code(code, message) from None
            log.warning(
                "job %d: cutting its HTTP response mid-stream: %s: %s",
                job.id,
                code.value,
                message,
                extra={"JOB": job.id, "EVENT": "http_cut"},
            )
            if request.transport is not None:
                request.transport.abort()
            return response
        except Exception as exc:
            if response is None:
                raise  # nothing written yet: the caller answers 500
            # Headers and audio are out: a second response cannot follow; cut this one.
            if isinstance(exc, ConnectionError):
                log.info("job %d: the HTTP client went away: %s", job.id, exc)
            else:
                log.exception("job %d: cutting its HTTP response mid-stream", job.id)
            if request.transport is not None:
                request.transport.abort()
            return response
        finally:
            if not finished:
                # The client went away (the request was cancelled) or the write failed:
                # nobody will read this audio. A job that ended already is left alone.
                self.scheduler.abort_job(job.id, reason="client_disconnected")


async def _run(encoder: Encoder, step: Callable[..., bytes], *args: Any) -> bytes:
    """Run an encoder step, off the event loop if it is costly: a 3 s sentence in mp3
    would otherwise hold up the loop, and the speaking job's feed, for ~0.1 s. The
    steps of one encoder still run one at a time (each is awaited)."""
    if encoder.costly:
        return await asyncio.to_thread(step, *args)
    return step(*args)


async def _write(response: web.StreamResponse, data: bytes) -> None:
    """Write ``data`` unless it is empty (an empty chunk would end a chunked body)."""
    if data:
        await response.write(data)
