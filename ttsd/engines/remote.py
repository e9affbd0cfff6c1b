"""Remote: speech made by another machine, through an OpenAI-compatible endpoint.

A laptop without a GPU speaks with a GPU box's voices: each chunk of text goes to
``POST {url}/audio/speech`` (OpenAI's "create speech", spoken by ttsd itself,
Kokoro-FastAPI, Chatterbox-TTS-Server, vLLM-based servers...), and the response is
streamed into the job as it arrives, so playback starts with its first bytes. The
queue, priorities, playback and abort stay local; only synthesis is remote.

Threads. The engine host calls :meth:`RemoteEngine.stream` on its one worker thread.
The HTTP runs on a private asyncio loop with one ``aiohttp.ClientSession`` (kept-alive
connections: one round trip per chunk), on a thread the engine starts in
:meth:`RemoteEngine.load` and stops in :meth:`RemoteEngine.unload`. Each chunk is one
request, a task on that loop that puts what it receives (the response head, body
bytes as they come, the end, or a failure) into a queue the worker thread reads; the
worker turns bytes into whole int16 samples and yields them. An abort (the job's
:class:`CancelToken`) cancels the task from the cancelling thread and wakes the
worker at once: the connection is closed, and a ttsd server aborts the synthesis job
it was making for it.

Sample rate. The engine speaks at one rate, fixed at load: the ``sample_rate``
setting; else, when the first endpoint that answers is a ttsd server, its engine's
own rate (from ``GET /models``); else OpenAI's ``pcm`` rate, 24 kHz; else (nothing
answers at load) the fallback engine's rate. A ttsd server is asked for that rate
(its ``sample_rate`` extension), so with the defaults nothing is resampled anywhere.
Audio that comes at another rate (a WAV header or ``X-Sample-Rate`` says so) and the
fallback's audio are resampled with libsoxr.

Failover. Endpoints are tried in order. One that cannot be reached, answers 429 or
5xx, sends nothing for ``timeout`` seconds (before its answer or mid-stream) or is cut
off mid-stream is marked down, and the chunk is made again from its start by the
next endpoint, or by the local ``fallback`` engine when every endpoint is down (with
no fallback, endpoints marked down are still tried, last, and the job fails with an
error naming each endpoint and why). Endpoints marked down are asked again
(``GET /models``) every ``retry_interval`` seconds in the background, never on a
job's time; the first one in order that answers is used again. Each switch and
return is a log line and a change of :meth:`RemoteEngine.describe` reported to the
host (:meth:`Engine.facts_changed`), which clients see as an ``engine`` event. A key
the server refuses (401/403) is a mistake to fix, not an outage: at load it fails the
engine; during a job it fails the job, with no failover.

Keep-alive. After ``keep_alive`` seconds without a request, the endpoint in use is
asked ``GET /models``: its kept-alive connection stays open (a server closes an idle
one after a while, ttsd after 15 s, and the next chunk would pay one more round trip
to open another), and a box that went away is found before a job needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import queue
import stat
import struct
import threading
from collections.abc import Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ttsd import __version__
from ttsd.engines.base import (
    CancelToken,
    Engine,
    EngineError,
    OptionError,
    StreamingEngine,
    check_number,
)
from ttsd.errors import Code

log = logging.getLogger("ttsd.engine.remote")

T = TypeVar("T")

#: OpenAI's rate of ``pcm``: "raw samples in 24kHz (16-bit signed, low-endian)".
OPENAI_PCM_RATE = 24000

#: ``response_format`` values the engine can read as a stream.
FORMATS = ("pcm", "wav")

#: Engines that may serve as the local fallback.
FALLBACKS = ("piper", "chatterbox", "tone")

#: The range of ttsd's ``sample_rate`` extension: outside it, the engine resamples.
TTSD_RATES = (8000, 48000)

#: Body fields the engine sets itself: ``extra_body`` may not replace them.
_OWN_FIELDS = frozenset({"model", "input", "voice", "response_format"})

#: Most bytes read of an error body or a models or voices list.
_BODY_LIMIT = 1 << 20

#: How often a probe asks again for a ttsd server's rate while its engine loads.
_RATE_POLL = 0.2

UP, DOWN, UNKNOWN = "up", "down", "unknown"


class _Unavailable(Exception):
    """An endpoint could not make the chunk (unreachable, overloaded, too slow, cut
    off): the next source is tried."""


@dataclasses.dataclass
class Endpoint:
    """One server's base URL and what the engine knows of it."""

    url: str
    state: str = UNKNOWN
    #: Why it is down (or what went wrong last).
    error: str = ""
    #: The server is ttsd: it takes the ``sample_rate``, ``options`` and ``format`` fields.
    ttsd: bool = False
    #: A ttsd server's engine rate (Hz), when it said.
    rate: int | None = None
    #: The server's ``GET /audio/voices`` list, when it has one.
    voices: list[str] | None = None
    #: Requests in flight, and when the last one ended (the engine loop's clock): only
    #: the engine's loop touches these.
    busy: int = 0
    last_used: float = 0.0


@dataclasses.dataclass
class Probe:
    """What ``GET /models`` and ``GET /audio/voices`` told of an endpoint."""

    reachable: bool = False
    key_refused: bool = False
    error: str = ""
    ttsd: bool = False
    rate: int | None = None
    voices: list[str] | None = None
    models: list[str] | None = None


@dataclasses.dataclass(frozen=True)
class _Head:
    """The response's status was 200; ``rate`` is its ``X-Sample-Rate``, if any."""

    rate: int | None


_END = object()
_CANCELLED = object()


def normalize_url(url: Any) -> str:
    """The base URL of an OpenAI-compatible API, as OpenAI's ``base_url``
    (``http://box:11500/v1``); a URL with no path gets ``/v1``."""
    if not isinstance(url, str) or not url.strip():
        raise EngineError(f"[remote] url must be a URL such as http://box:11500/v1, got {url!r}")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EngineError(
            f"[remote] url must start with http:// or https:// and name a host: {url!r}"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise EngineError(f"[remote] url takes no query, fragment or credentials: {url!r}")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise EngineError(f"[remote] url has a bad port: {url!r}") from None
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class RemoteEngine(StreamingEngine):
    """Speech from OpenAI-compatible endpoints, with an optional local fallback engine."""

    name = "remote"

    def __init__(
        self,
        *,
        url: str | None = None,
        urls: list[str] | None = None,
        model: str = "tts-1",
        voice: str | None = None,
        api_key: str | None = None,
        api_key_file: str | None = None,
        timeout: float = 10.0,
        response_format: str = "pcm",
        sample_rate: int | None = None,
        retry_interval: float = 15.0,
        keep_alive: float = 10.0,
        extra_body: Mapping[str, Any] | None = None,
        fallback: Engine | None = None,
    ) -> None:
        if (url is None) == (urls is None):
            raise EngineError("[remote] needs url (one endpoint) or urls (a list), not both")
        if urls is not None and (not isinstance(urls, list) or not urls):
            raise EngineError("[remote] urls must be a non-empty list of URLs")
        self.endpoints = [Endpoint(normalize_url(u)) for u in ([url] if url is not None else urls)]
        if len({e.url for e in self.endpoints}) != len(self.endpoints):
            raise EngineError("[remote] urls lists the same endpoint twice")
        if not isinstance(model, str) or not model:
            raise EngineError(f"[remote] model must be a model name, got {model!r}")
        self.model = model
        if voice is not None and (not isinstance(voice, str) or not voice):
            raise EngineError(f"[remote] voice must be a voice name, got {voice!r}")
        #: The voice sent when a job names none (OpenAI's first name, which ttsd and
        #: several servers map onto their default voice).
        self.voice = voice or "alloy"
        if api_key is not None and api_key_file is not None:
            raise EngineError("[remote] takes api_key or api_key_file, not both")
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise EngineError("[remote] api_key must be a non-empty string")
        self._api_key = api_key.strip() if api_key else None
        self.api_key_file = Path(api_key_file).expanduser() if api_key_file else None
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise EngineError(f"[remote] timeout must be a number of seconds, got {timeout!r}")
        if not 0 < timeout <= 600:
            raise EngineError(
                f"[remote] timeout must be more than 0 and at most 600, got {timeout}"
            )
        self.timeout = float(timeout)
        if response_format not in FORMATS:
            raise EngineError(
                f"[remote] response_format must be {' or '.join(FORMATS)}, got {response_format!r}"
            )
        self.response_format = response_format
        if sample_rate is not None and (
            isinstance(sample_rate, bool)
            or not isinstance(sample_rate, int)
            or not 8000 <= sample_rate <= 192000
        ):
            raise EngineError(f"[remote] sample_rate must be 8000-192000 Hz, got {sample_rate!r}")
        self.rate_setting = sample_rate
        if isinstance(retry_interval, bool) or not isinstance(retry_interval, int | float):
            raise EngineError(f"[remote] retry_interval must be seconds, got {retry_interval!r}")
        if not 0.05 <= retry_interval <= 3600:
            raise EngineError("[remote] retry_interval must be between 0.05 and 3600 seconds")
        self.retry_interval = float(retry_interval)
        if isinstance(keep_alive, bool) or not isinstance(keep_alive, int | float):
            raise EngineError(f"[remote] keep_alive must be seconds, got {keep_alive!r}")
        if keep_alive != 0 and not 0.05 <= keep_alive <= 3600:
            raise EngineError("[remote] keep_alive must be 0 (off) or 0.05-3600 seconds")
        self.keep_alive = float(keep_alive)
        extra = dict(extra_body or {})
        if _OWN_FIELDS & set(extra):
            raise EngineError(
                f"[remote] extra_body may not set {', '.join(sorted(_OWN_FIELDS & set(extra)))}"
            )
        self.extra_body = extra
        self.fallback = fallback
        self._rate: int | None = None
        self._headers: dict[str, str] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session: Any = None  # aiohttp.ClientSession, made on the loop
        self._recheck: asyncio.Task[None] | None = None
        self._warm: asyncio.Task[None] | None = None

    # --- Lifecycle -------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        if self._rate is None:
            raise RuntimeError("the remote engine is not loaded")
        return self._rate

    def load(self) -> None:
        """Start the HTTP loop, ask every endpoint what it is (in parallel, each within
        ``timeout``), load the fallback, and fix the sample rate.

        Raises :class:`EngineError` when a server refuses the key or the key file
        cannot be read. Endpoints that do not answer only warn: a laptop may start
        before its network, and a failed engine would stay failed until a restart.
        """
        key = self._read_key()
        self._headers = {"User-Agent": f"ttsd/{__version__} (remote engine)"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._start_loop()
        try:
            probes = self._call(self._probe_all())
            for endpoint, probe in zip(self.endpoints, probes, strict=True):
                if probe.key_refused:
                    raise EngineError(
                        f"{endpoint.url} refused the API key ({probe.error}): "
                        "check api_key or api_key_file in [remote]",
                        Code.ENGINE_LOAD,
                    )
                self._learn(endpoint, probe)
                with self._lock:
                    endpoint.state, endpoint.error = (
                        (UP, "") if probe.reachable else (DOWN, probe.error)
                    )
            if self.fallback is not None:
                try:
                    self.fallback.load()
                except EngineError as exc:
                    raise EngineError(
                        f"the fallback engine {self.fallback.name} failed to load: {exc}",
                        Code.ENGINE_LOAD,
                    ) from exc
        except BaseException:
            self._stop_loop()
            raise
        self._rate, why = self._choose_rate()
        for endpoint, probe in zip(self.endpoints, probes, strict=True):
            if probe.reachable:
                log.info("remote: %s answers (%s)", endpoint.url, _summary(endpoint, probe))
                if probe.models is not None and self.model not in probe.models:
                    log.warning(
                        "remote: %s does not list the model %r (it lists %s)",
                        endpoint.url,
                        self.model,
                        ", ".join(probe.models[:10]) or "none",
                    )
            else:
                log.warning("remote: %s does not answer: %s", endpoint.url, probe.error)
        log.info("remote: speaking at %d Hz (%s)", self._rate, why)
        in_use = self._in_use()
        if in_use == "fallback":
            log.warning(
                "remote: no endpoint answers; speaking with the fallback engine %s until one "
                "does (asked again every %g s)",
                self._fallback_name(),
                self.retry_interval,
            )
        elif in_use is None:
            log.warning(
                "remote: no endpoint answers and there is no fallback: jobs fail until one does"
            )
        if any(e.state == DOWN for e in self.endpoints):
            self._schedule_recheck()
        if self.keep_alive > 0:
            self._call(self._start_keep_warm())

    def unload(self) -> None:
        self._stop_loop()
        if self.fallback is not None:
            self.fallback.unload()

    def _read_key(self) -> str | None:
        if self.api_key_file is None:
            return self._api_key
        path = self.api_key_file
        try:
            mode = path.stat().st_mode
            key = path.read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise EngineError(
                f"[remote] api_key_file {path}: cannot read it: {why}", Code.ENGINE_LOAD
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise EngineError(
                f"[remote] api_key_file {path} may be read by others: chmod 600 it",
                Code.ENGINE_LOAD,
            )
        if not key:
            raise EngineError(f"[remote] api_key_file {path} is empty", Code.ENGINE_LOAD)
        return key

    def _choose_rate(self) -> tuple[int, str]:
        if self.rate_setting is not None:
            return self.rate_setting, "sample_rate in [remote]"
        first = next((e for e in self.endpoints if e.state == UP), None)
        if first is not None and first.ttsd and first.rate:
            return first.rate, f"the engine rate of the ttsd server at {first.url}"
        if first is not None:
            return OPENAI_PCM_RATE, "OpenAI's pcm rate"
        if self.fallback is not None:
            return (
                self.fallback.sample_rate,
                f"no endpoint answers: the {self._fallback_name()} rate",
            )
        return OPENAI_PCM_RATE, "no endpoint answers: OpenAI's pcm rate"

    def _start_loop(self) -> None:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=_run_loop, args=(loop,), name="ttsd-remote-http", daemon=True
        )
        thread.start()
        self._loop, self._thread = loop, thread
        self._session = self._call(self._open_session())

    async def _open_session(self) -> Any:
        import aiohttp

        # ``sock_read`` bounds the wait for the answer's head and every wait for more
        # of its body: "slower than the timeout", before or mid-stream, as one setting.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.timeout, sock_connect=self.timeout, sock_read=self.timeout
        )
        return aiohttp.ClientSession(timeout=timeout, headers=self._headers)

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            self._call(self._close_session(), timeout=5.0)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        self._loop = self._thread = self._session = None

    async def _close_session(self) -> None:
        for task in (self._recheck, self._warm):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._recheck = self._warm = None
        if self._session is not None:
            await self._session.close()

    def _call(self, coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coroutine`` on the engine's loop; wait for its result (worker thread)."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    # --- Probing ---------------------------------------------------------------------

    async def _probe_all(self) -> list[Probe]:
        return list(await asyncio.gather(*(self._probe(e, wait_rate=True) for e in self.endpoints)))

    async def _probe(self, endpoint: Endpoint, *, wait_rate: bool) -> Probe:
        """Ask ``GET /models`` then ``GET /audio/voices``; never raises.

        A ttsd server whose engine is still loading does not say its rate yet: with
        ``wait_rate`` the probe asks again for up to ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            try:
                status, data = await self._get_json(endpoint, "/models")
            except _Unavailable as exc:
                return Probe(error=str(exc))
            if status in (401, 403):
                return Probe(reachable=True, key_refused=True, error=_error_text(status, data))
            if status == 429 or status >= 500:
                return Probe(error=_error_text(status, data))
            probe = Probe(reachable=True)
            listed = data.get("data") if status == 200 and isinstance(data, dict) else None
            if isinstance(listed, list):
                models = [m for m in listed if isinstance(m, dict)]
                probe.models = [str(m.get("id")) for m in models]
                probe.ttsd = any(m.get("owned_by") == "ttsd" for m in models)
                rates = [m.get("sample_rate") for m in models if m.get("owned_by") == "ttsd"]
                probe.rate = next((r for r in rates if isinstance(r, int) and r > 0), None)
            if not (wait_rate and probe.ttsd and probe.rate is None and loop.time() < deadline):
                break
            await asyncio.sleep(_RATE_POLL)
        try:
            status, data = await self._get_json(endpoint, "/audio/voices")
        except _Unavailable:
            return probe  # the list is optional; speech will tell
        if status in (401, 403):
            return Probe(reachable=True, key_refused=True, error=_error_text(status, data))
        voices = data.get("voices") if status == 200 and isinstance(data, dict) else None
        if isinstance(voices, list) and all(isinstance(v, str) for v in voices):
            probe.voices = voices
        return probe

    async def _get_json(self, endpoint: Endpoint, path: str) -> tuple[int, Any]:
        """``GET`` ``path`` of ``endpoint``: its status and its JSON body (None when it
        is not JSON)."""
        import aiohttp

        endpoint.busy += 1
        try:
            for attempt in (1, 2):
                try:
                    async with self._session.get(endpoint.url + path) as response:
                        body = await _read_body(response.content)
                        status = response.status
                    break
                except aiohttp.ServerDisconnectedError as exc:
                    if attempt == 2:  # else: a kept-alive connection closed under us
                        raise _Unavailable(_failure_text(exc, self.timeout, head=False)) from None
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                    raise _Unavailable(_failure_text(exc, self.timeout, head=False)) from None
        finally:
            endpoint.busy -= 1
            endpoint.last_used = asyncio.get_running_loop().time()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, None

    def _learn(self, endpoint: Endpoint, probe: Probe) -> None:
        with self._lock:
            endpoint.ttsd, endpoint.rate = probe.ttsd, probe.rate
            if probe.voices is not None:
                endpoint.voices = probe.voices

    def _schedule_recheck(self) -> None:
        """Make sure endpoints marked down are asked again (from any thread)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is stopping
                loop.call_soon_threadsafe(self._start_recheck)

    def _start_recheck(self) -> None:
        if self._session is not None and (self._recheck is None or self._recheck.done()):
            self._recheck = asyncio.get_running_loop().create_task(self._recheck_forever())

    async def _recheck_forever(self) -> None:
        """Every ``retry_interval`` seconds, ask the endpoints marked down; stop when
        none is. Runs on the engine's loop, so no job ever waits for it."""
        while True:
            await asyncio.sleep(self.retry_interval)
            with self._lock:
                down = [e for e in self.endpoints if e.state == DOWN]
            if not down:
                return
            probes = await asyncio.gather(*(self._probe(e, wait_rate=False) for e in down))
            for endpoint, probe in zip(down, probes, strict=True):
                if probe.reachable and not probe.key_refused:
                    self._learn(endpoint, probe)
                    self._set_state(endpoint, UP)
                elif probe.key_refused:
                    if "key" not in endpoint.error:
                        log.warning("remote: %s answers but refuses the API key", endpoint.url)
                    with self._lock:
                        endpoint.error = f"the API key was refused ({probe.error})"
                else:
                    with self._lock:
                        endpoint.error = probe.error

    async def _start_keep_warm(self) -> None:
        self._warm = asyncio.get_running_loop().create_task(self._keep_warm_forever())

    async def _keep_warm_forever(self) -> None:
        """Ask the endpoint in use for ``GET /models`` after ``keep_alive`` seconds
        without a request.

        The kept-alive connection would otherwise be closed after the server's idle
        limit (15 s for ttsd, and aiohttp's own): the next chunk would pay one more
        round trip to open a new one. It also finds a box that went away before a job
        has to: the switch to the next endpoint or the fallback happens in between.
        """
        loop = asyncio.get_running_loop()
        while True:
            endpoint = next((e for e in self.endpoints if e.state == UP), None)
            if endpoint is None:  # the re-check asks those down
                await asyncio.sleep(self.keep_alive)
                continue
            idle = loop.time() - endpoint.last_used
            if endpoint.busy:  # a request in flight keeps the connection open
                await asyncio.sleep(self.keep_alive)
                continue
            if idle < self.keep_alive:
                await asyncio.sleep(max(0.01, self.keep_alive - idle))
                continue
            try:
                status, data = await self._get_json(endpoint, "/models")
            except _Unavailable as exc:
                self._set_state(endpoint, DOWN, str(exc))
                continue
            if status == 429 or status >= 500:
                self._set_state(endpoint, DOWN, _error_text(status, data))

    # --- State -----------------------------------------------------------------------

    def _in_use(self) -> str | None:
        with self._lock:
            return self._in_use_locked()

    def _in_use_locked(self) -> str | None:
        """The endpoint the next chunk goes to first, ``"fallback"``, or None (every
        endpoint is down and there is no fallback)."""
        for endpoint in self.endpoints:
            if endpoint.state != DOWN:
                return endpoint.url
        return "fallback" if self.fallback is not None else None

    def _fallback_name(self) -> str:
        return self.fallback.name if self.fallback is not None else ""

    def _set_state(self, endpoint: Endpoint, state: str, error: str = "") -> None:
        """Mark ``endpoint`` up or down; log and report a change (any thread)."""
        with self._lock:
            before = self._in_use_locked()
            changed = endpoint.state != state
            endpoint.state, endpoint.error = state, error
            after = self._in_use_locked()
        if not changed:
            return
        if state == DOWN:
            if after == "fallback":
                log.warning(
                    "remote: %s is down (%s); no endpoint answers: speaking with the fallback "
                    "engine %s until one does (asked again every %g s)",
                    endpoint.url,
                    error,
                    self._fallback_name(),
                    self.retry_interval,
                )
            elif after is None:
                log.warning(
                    "remote: %s is down (%s); no endpoint answers and there is no fallback: "
                    "jobs fail until one does",
                    endpoint.url,
                    error,
                )
            elif before != after:
                log.warning("remote: %s is down (%s); speaking with %s", endpoint.url, error, after)
            else:
                log.warning("remote: %s is down (%s)", endpoint.url, error)
            self._schedule_recheck()
        elif before == "fallback":
            log.info(
                "remote: %s answers again; speaking with it, no longer with the fallback engine %s",
                endpoint.url,
                self._fallback_name(),
            )
        elif before != after and before is not None:
            log.info("remote: %s answers again; speaking with it instead of %s", after, before)
        else:
            log.info("remote: %s answers again", endpoint.url)
        self.facts_changed()

    def describe(self) -> dict[str, Any]:
        """The model and voice asked for, the endpoint in use (or ``"fallback"``, or
        null when none answers), the fallback engine, and each endpoint's state."""
        with self._lock:
            endpoints = []
            for e in self.endpoints:
                entry: dict[str, Any] = {"url": e.url, "state": e.state}
                if e.ttsd:
                    entry["server"] = "ttsd"
                if e.error and e.state == DOWN:
                    entry["error"] = e.error
                endpoints.append(entry)
            return {
                "model": self.model,
                "voice": self.voice,
                "response_format": self.response_format,
                "in_use": self._in_use_locked(),
                "fallback": self.fallback.name if self.fallback is not None else None,
                "endpoints": endpoints,
            }

    def source(self) -> str:
        return self._in_use() or ""

    # --- Voices and options ----------------------------------------------------------

    def voices(self) -> list[str]:
        """The voice list of the first endpoint in order that has one (those up first)."""
        with self._lock:
            ordered = sorted(self.endpoints, key=lambda e: e.state == DOWN)
            for endpoint in ordered:
                if endpoint.voices:
                    return list(endpoint.voices)
        return []

    def check_voice(self, voice: str | None) -> None:
        known = self.voices()
        if voice is not None and known and voice not in known:
            shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
            raise OptionError(f"unknown voice {voice!r} (the remote server has: {shown})")

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``speed`` (OpenAI's, 0.25-4.0); anything else is the remote engine's own
        options, which a ttsd server checks (a number, a string or a boolean each)."""
        checked: dict[str, Any] = {}
        for key, value in options.items():
            if key == "speed":
                checked[key] = float(check_number(options, key, 0.25, 4.0) or 1.0)
            elif isinstance(value, bool | str) or (
                isinstance(value, int | float) and math.isfinite(value)
            ):
                checked[key] = value
            else:
                raise OptionError(
                    f"option {key!r} for the remote engine must be a number, a string "
                    f"or a boolean, got {value!r}"
                )
        return checked

    def speed_options(self, speed: float, voice: str | None) -> dict[str, Any]:
        """OpenAI's ``speed`` field, sent as it is: the server maps it (or refuses it)."""
        return {} if speed == 1.0 else {"speed": float(speed)}

    # --- Speaking --------------------------------------------------------------------

    def stream(
        self,
        text: str,
        voice: str | None,
        options: Mapping[str, Any],
        cancel: CancelToken,
    ) -> Iterator[np.ndarray]:
        """The chunk's audio from the first source that can make it, as it arrives.

        A source that fails after some of the chunk's audio was yielded hands over to
        the next, which makes the chunk again from its start: the listener hears the
        sentence begin again in the next voice rather than lose its end.
        """
        failures: list[str] = []
        for endpoint in self._plan():
            if cancel.cancelled:
                return
            if endpoint is None:
                yield from self._speak_fallback(text, voice, options, cancel)
                return
            made = 0
            try:
                for pcm in self._speak_remote(endpoint, text, voice, options, cancel):
                    made += len(pcm)
                    yield pcm
                return
            except _Unavailable as exc:
                if cancel.cancelled:
                    return
                self._set_state(endpoint, DOWN, str(exc))
                failures.append(f"{endpoint.url}: {exc}")
                if made:
                    log.warning(
                        "remote: %s failed after %.2f s of a chunk's audio; the next source "
                        "makes the chunk again from its start",
                        endpoint.url,
                        made / self.sample_rate,
                    )
        raise EngineError(
            "the remote endpoint failed: " + "; ".join(failures)
            if len(failures) == 1
            else "no remote endpoint could speak: " + "; ".join(failures),
            Code.ENGINE_FAILED,
        )

    def _plan(self) -> list[Endpoint | None]:
        """Sources for the next chunk, in order (None: the fallback). With a fallback,
        endpoints marked down are skipped (the background re-check brings them back);
        without one they are tried last, since there is nothing better to do."""
        with self._lock:
            live: list[Endpoint | None] = [e for e in self.endpoints if e.state != DOWN]
            down: list[Endpoint | None] = [e for e in self.endpoints if e.state == DOWN]
        return [*live, None] if self.fallback is not None else [*live, *down]

    def _body(
        self, endpoint: Endpoint, text: str, voice: str | None, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            **self.extra_body,
            "model": self.model,
            "input": text,
            "voice": voice or self.voice,
            "response_format": self.response_format,
        }
        speed = options.get("speed", 1.0)
        if speed != 1.0:
            body["speed"] = speed
        own = {k: v for k, v in options.items() if k != "speed"}
        with self._lock:
            ttsd = endpoint.ttsd
        if ttsd:
            body["format"] = "text"  # already read into sentences (and chunked) here
            if TTSD_RATES[0] <= self.sample_rate <= TTSD_RATES[1]:
                body["sample_rate"] = self.sample_rate
            if own:
                body["options"] = own
        elif own:
            raise EngineError(
                f"{endpoint.url} is not a ttsd server: per-job options "
                f"({', '.join(sorted(own))}) cannot be sent to it (extra_body in [remote] "
                "adds fields to every request)",
                Code.BAD_OPTION,
            )
        return body

    def _speak_remote(
        self,
        endpoint: Endpoint,
        text: str,
        voice: str | None,
        options: Mapping[str, Any],
        cancel: CancelToken,
    ) -> Iterator[np.ndarray]:
        """One request's audio, yielded as its bytes arrive (worker thread).

        Raises :class:`_Unavailable` to fail over, :class:`EngineError` otherwise.
        """
        body = self._body(endpoint, text, voice, options)
        items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._fetch(endpoint, body, items), self._loop)

        def stop() -> None:  # the cancelling thread: drop the request, wake the worker
            future.cancel()
            items.put(_CANCELLED)

        remove = cancel.on_cancel(stop)
        decoder: _Decoder | None = None
        try:
            while True:
                try:
                    # aiohttp's timeouts bound every wait; this only guards against a
                    # request task that vanished without a word (a bug), not a hang.
                    batch = [items.get(timeout=3 * self.timeout + 5)]
                except queue.Empty:
                    raise _Unavailable(f"no progress within {3 * self.timeout + 5:g} s") from None
                # Whatever else has arrived goes out as one piece: fewer, larger pieces
                # for the scheduler, and never a wait for more.
                with contextlib.suppress(queue.Empty):
                    while True:
                        batch.append(items.get_nowait())
                data = bytearray()
                failure: BaseException | None = None
                end = False
                for item in batch:
                    if item is _CANCELLED:
                        return
                    if isinstance(item, _Head):
                        decoder = _Decoder(
                            self.response_format,
                            item.rate or self._assumed_rate(endpoint),
                            self.sample_rate,
                            endpoint.url,
                        )
                        self._set_state(endpoint, UP)
                    elif isinstance(item, bytes):
                        data += item
                    elif item is _END:
                        end = True
                    elif isinstance(item, BaseException):
                        failure = item
                        break
                if cancel.cancelled:
                    return
                if decoder is not None and data:
                    pcm = decoder.feed(bytes(data))
                    if pcm.size:
                        yield pcm
                if failure is not None:
                    raise failure
                if end:
                    assert decoder is not None
                    tail = decoder.finish()
                    if tail.size:
                        yield tail
                    return
        finally:
            remove()
            future.cancel()

    def _assumed_rate(self, endpoint: Endpoint) -> int:
        """The rate of a ``pcm`` answer that does not say (ttsd always does)."""
        with self._lock:
            asked = endpoint.ttsd and TTSD_RATES[0] <= self.sample_rate <= TTSD_RATES[1]
        if asked:
            return self.sample_rate
        return self.rate_setting or OPENAI_PCM_RATE

    async def _fetch(
        self, endpoint: Endpoint, body: dict[str, Any], items: queue.SimpleQueue[Any]
    ) -> None:
        """POST the request; put its head, body bytes and end (or failure) in ``items``.

        Runs on the engine's loop. Cancelled (an abort), it closes the connection, so
        the server sees the client go away at once.
        """
        url = endpoint.url + "/audio/speech"
        endpoint.busy += 1
        try:
            await self._post(endpoint, url, body, items)
        finally:
            endpoint.busy -= 1
            endpoint.last_used = asyncio.get_running_loop().time()

    async def _post(
        self, endpoint: Endpoint, url: str, body: dict[str, Any], items: queue.SimpleQueue[Any]
    ) -> None:
        import aiohttp

        for attempt in (1, 2):
            head = False
            try:
                response = await self._session.post(url, json=body)
            except asyncio.CancelledError:
                raise
            except aiohttp.ServerDisconnectedError:
                if attempt == 1:
                    continue  # a kept-alive connection the server had closed: once more
                items.put(_Unavailable("the server closed the connection before answering"))
                return
            except Exception as exc:
                items.put(self._classify(exc, head))
                return
            complete = False
            try:
                if response.status != 200:
                    data = await _read_body(response.content)
                    complete = True
                    items.put(_refusal(endpoint.url, response.status, data))
                    return
                items.put(_Head(_int_header(response.headers.get("X-Sample-Rate"))))
                head = True
                async for data in response.content.iter_any():
                    items.put(data)
                complete = True
                items.put(_END)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                items.put(self._classify(exc, head))
                return
            finally:
                # A whole answer frees its connection for the next request; anything
                # else (an abort, a failure) closes it.
                if complete:
                    response.release()
                else:
                    response.close()

    def _classify(self, exc: BaseException, head: bool) -> BaseException:
        import aiohttp

        if isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError | OSError):
            return _Unavailable(_failure_text(exc, self.timeout, head=head))
        log.exception("remote: unexpected failure of a request")
        return EngineError(f"remote engine failed: {type(exc).__name__}: {exc}")

    def _speak_fallback(
        self, text: str, voice: str | None, options: Mapping[str, Any], cancel: CancelToken
    ) -> Iterator[np.ndarray]:
        """The chunk by the local fallback engine, at the engine's rate."""
        fallback = self.fallback
        assert fallback is not None
        own_voice = voice if voice is not None and voice in fallback.voices() else None
        resample = _Resampler(fallback.sample_rate, self.sample_rate)
        for piece in fallback.stream(
            text, own_voice, self._fallback_options(options, own_voice), cancel
        ):
            out = resample(np.asarray(piece, dtype=np.int16).reshape(-1))
            if out.size:
                yield out
        if not cancel.cancelled:
            tail = resample(np.zeros(0, dtype=np.int16), last=True)
            if tail.size:
                yield tail

    def _fallback_options(self, options: Mapping[str, Any], voice: str | None) -> dict[str, Any]:
        """The job's options as far as the fallback takes them: its speed control for
        ``speed``; the rest only if they are all its own (else its defaults)."""
        fallback = self.fallback
        assert fallback is not None
        result: dict[str, Any] = {}
        own = {k: v for k, v in options.items() if k != "speed"}
        try:
            result.update(fallback.validate_options(own))
        except OptionError as exc:
            log.debug("remote: the fallback speaks with its defaults: %s", exc)
        speed = options.get("speed", 1.0)
        if speed != 1.0:
            try:
                result.update(fallback.validate_options(fallback.speed_options(speed, voice)))
            except OptionError as exc:
                log.debug("remote: the fallback speaks at its own speed: %s", exc)
        return result


# --- Helpers ----------------------------------------------------------------------------


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The engine's HTTP thread: run ``loop`` until stopped, then tidy up and close it."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _summary(endpoint: Endpoint, probe: Probe) -> str:
    parts = []
    if probe.ttsd:
        parts.append("a ttsd server" + (f", its engine at {probe.rate} Hz" if probe.rate else ""))
    elif probe.models is None:
        parts.append("no model list")
    if probe.voices is not None:
        parts.append(f"{len(probe.voices)} voices")
    return ", ".join(parts) or "an OpenAI-compatible server"


async def _read_body(content: Any, limit: int = _BODY_LIMIT) -> bytes:
    """A response's whole body, up to ``limit`` bytes.

    aiohttp's ``StreamReader.read(n)`` returns what is buffered so far, not all of it:
    a JSON body that arrives in several segments would be cut.
    """
    parts: list[bytes] = []
    size = 0
    while size < limit:
        data = await content.read(limit - size)
        if not data:
            break
        parts.append(data)
        size += len(data)
    return b"".join(parts)


def _int_header(value: str | None) -> int | None:
    try:
        rate = int(value) if value is not None else None
    except ValueError:
        return None
    return rate if rate is not None and 1000 <= rate <= 768000 else None


def _failure_text(exc: BaseException, timeout: float, *, head: bool) -> str:
    """Why a request failed, in a few words."""
    import aiohttp

    connect_timeout = getattr(aiohttp, "ConnectionTimeoutError", ())
    if connect_timeout and isinstance(exc, connect_timeout):
        return f"cannot connect within {timeout:g} s"
    if isinstance(exc, asyncio.TimeoutError):
        if head:
            return f"the audio stalled: nothing for {timeout:g} s mid-stream"
        return f"no answer within {timeout:g} s"
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno = getattr(exc.os_error, "errno", None)
        why = os.strerror(errno) if errno else str(exc.os_error)
        return f"cannot connect ({why})"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut off mid-stream"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection" + (" mid-stream" if head else "")
    return str(exc) or type(exc).__name__


def _error_text(status: int, data: Any) -> str:
    """``HTTP 401: <the server's message>`` from OpenAI's error shape, if it has one."""
    message = ""
    if isinstance(data, dict):
        error = data.get("error", data.get("detail"))
        if isinstance(error, dict):
            message = str(error.get("message") or error.get("code") or "")
        elif isinstance(error, str):
            message = error
    return f"HTTP {status}" + (f": {message}" if message else "")


def _refusal(url: str, status: int, raw: bytes) -> BaseException:
    """The exception for a speech request answered with ``status`` (not 200)."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    text = _error_text(status, data)
    if status in (401, 403):
        return EngineError(f"{url} refused the API key ({text})", Code.ENGINE_FAILED)
    if status == 429 or status >= 500:
        return _Unavailable(text)
    error = data.get("error") if isinstance(data, dict) else None
    code, param = ("", "")
    if isinstance(error, dict):
        code, param = str(error.get("code") or ""), str(error.get("param") or "")
    if code == Code.VOICE_NOT_FOUND.value or param == "voice":
        return EngineError(f"{url}: {text}", Code.VOICE_NOT_FOUND)
    if code == Code.BAD_OPTION.value or param in ("options", "speed"):
        return EngineError(f"{url}: {text}", Code.BAD_OPTION)
    if status == 404 and data is None:
        text += " (is url the API's base, such as http://host:11500/v1?)"
    return EngineError(f"{url}: {text}", Code.ENGINE_FAILED)


class _Resampler:
    """Streaming int16 resampling from ``source`` to ``target`` Hz (identity if equal);
    libsoxr keeps its filter state across pieces, so the joins are seamless."""

    def __init__(self, source: int, target: int) -> None:
        self._stream: Any = None
        if source != target:
            import soxr

            self._stream = soxr.ResampleStream(source, target, 1, dtype="int16", quality="HQ")

    def __call__(self, pcm: np.ndarray, last: bool = False) -> np.ndarray:
        if self._stream is None:
            return pcm
        return np.asarray(self._stream.resample_chunk(pcm, last=last), dtype=np.int16)


#: WAVE_FORMAT_PCM and WAVE_FORMAT_EXTENSIBLE (whose sub-format must then be PCM).
_WAVE_PCM, _WAVE_EXTENSIBLE = 1, 0xFFFE


class _Decoder:
    """One response's bytes to whole int16 mono samples at the engine's rate.

    ``pcm`` is s16le mono at ``rate``. ``wav`` is read as it streams: its header
    gives the rate (and channels, which are mixed down); a data size of 0 or
    0xFFFFFFFF (a stream of unknown length, as ttsd sends) means "to the end".
    """

    def __init__(self, fmt: str, rate: int, out_rate: int, url: str) -> None:
        self.url = url
        self.out_rate = out_rate
        self._header: bytearray | None = bytearray() if fmt == "wav" else None
        self._rest = b""
        self._channels = 1
        self._left: int | None = None  # data bytes still to come, when the header said
        self._resample = _Resampler(rate, out_rate) if self._header is None else None

    def feed(self, data: bytes) -> np.ndarray:
        if self._header is not None:
            self._header += data
            data = self._parse_header()
            if self._header is not None:
                return np.zeros(0, dtype=np.int16)
        data = self._rest + data
        if self._left is not None:
            data = data[: self._left]
            self._left -= len(data)
        frame = 2 * self._channels
        whole = len(data) - len(data) % frame
        self._rest = data[whole:]
        pcm = np.frombuffer(data[:whole], dtype="<i2").astype(np.int16)
        if self._channels > 1:
            pcm = pcm.reshape(-1, self._channels).mean(axis=1).round().astype(np.int16)
        assert self._resample is not None
        return self._resample(pcm)

    def finish(self) -> np.ndarray:
        if self._header is not None:
            raise EngineError(f"{self.url}: the answer ended inside its WAV header")
        assert self._resample is not None
        return self._resample(np.zeros(0, dtype=np.int16), last=True)

    def _parse_header(self) -> bytes:
        """Consume the WAV header if it is all here; return the data bytes after it."""
        assert self._header is not None
        buf = bytes(self._header)
        if len(buf) < 12:
            return b""
        if buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
            raise EngineError(f"{self.url}: the answer is not a WAV file")
        pos, rate = 12, 0
        while len(buf) >= pos + 8:
            kind, size = struct.unpack_from("<4sI", buf, pos)
            if kind == b"data":
                if not rate:
                    raise EngineError(f"{self.url}: the WAV data comes before its format")
                self._left = None if size in (0, 0xFFFFFFFF) else size
                self._header = None
                self._resample = _Resampler(rate, self.out_rate)
                return buf[pos + 8 :]
            if len(buf) < pos + 8 + size:
                return b""
            if kind == b"fmt ":
                rate = self._read_format(buf[pos + 8 : pos + 8 + size])
            pos += 8 + size + (size & 1)
        return b""

    def _read_format(self, fmt: bytes) -> int:
        if len(fmt) < 16:
            raise EngineError(f"{self.url}: the WAV format chunk is too short")
        tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
        if tag == _WAVE_EXTENSIBLE and len(fmt) >= 26:
            tag = struct.unpack_from("<H", fmt, 24)[0]
        if tag != _WAVE_PCM or bits != 16 or not channels or not rate:
            raise EngineError(
                f"{self.url}: the WAV is not 16-bit PCM (format {tag}, {bits} bits): "
                'ask for response_format = "pcm"'
            )
        self._channels = channels
        return int(rate)
