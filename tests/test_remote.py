"""The remote engine, with real parts: daemon B speaks through daemon A's OpenAI endpoint.

A serves ``POST /v1/audio/speech`` (Piper or the tone engine) and plays nothing; B runs
``engine = "remote"`` against A and plays on the recorded private PulseAudio. What
misbehaves on purpose (stalls, cuts, refused keys) is :class:`StubServer`, a small
OpenAI-compatible server in this process. Every wait is on an event, a log line, a
status or recorded audio; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import signal
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from aiohttp import web

from tests.support.daemon import DEFAULTS, Daemon
from tests.support.expected import played_all
from tests.support.net import free_port
from tests.support.pulse import Recorder, find_exact
from ttsd import protocol
from ttsd.client import Client
from ttsd.config import ConfigError, load_config
from ttsd.daemon import build_engine
from ttsd.engines import CancelToken, EngineError
from ttsd.engines.remote import RemoteEngine
from ttsd.engines.tone import ToneEngine
from ttsd.scheduler.chunking import split_text

RATE = 22050
#: Piper made deterministic (A's synthesis is then the same every time).
EXACT = {"noise_scale": 0.0, "noise_w_scale": 0.0}
#: B's jobs in these tests: a chunk per sentence, so one request to A per sentence.
SENTENCES = (
    "The first sentence comes from the other daemon.",
    "The second one is on its way.",
    "A third sentence follows it.",
    "And the fourth one closes the job.",
)
TEXT = " ".join(SENTENCES)


def url_of(daemon_or_port: Daemon | int) -> str:
    port = daemon_or_port if isinstance(daemon_or_port, int) else daemon_or_port.port
    return f"http://127.0.0.1:{port}/v1"


def tone_of(text: str, frequency: float = 440.0, ms_per_char: float = 20.0) -> np.ndarray:
    """The tone engine's audio for ``text``, chunked the way the daemon chunks it."""
    engine = ToneEngine(ms_per_char=ms_per_char)
    chunks = split_text(text, 300, 120)
    return np.concatenate([engine.synthesize(c, None, {"frequency": frequency}) for c in chunks])


def toml(settings: dict[str, Any]) -> str:
    """A TOML document for ``settings`` (tables one level deep; lists of strings)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(item) for item in v) + "]"
        return json.dumps(str(v))

    lines = [f"{k} = {value(v)}" for k, v in settings.items() if not isinstance(v, dict)]
    for table, values in settings.items():
        if isinstance(values, dict):
            lines += [f"[{table}]", *(f"{k} = {value(v)}" for k, v in values.items())]
    return "\n".join(lines) + "\n"


@pytest.fixture
def start_a(start_daemon: Callable[..., Daemon]) -> Callable[..., Daemon]:
    """Start a daemon A: it serves HTTP and plays nothing (no PulseAudio)."""

    def start(settings: dict[str, Any]) -> Daemon:
        return start_daemon({"idle_exit": 0, **settings}, pulse=None)

    return start


@pytest.fixture
def start_b(start_daemon: Callable[..., Daemon], tmp_path: Path) -> Callable[..., Daemon]:
    """Start a daemon B with ``engine = "remote"``: ``start_b(remote_table, **settings)``.

    Its config is written here (the harness writes no lists).
    """
    count = iter(range(100))

    def start(remote: dict[str, Any], **settings: Any) -> Daemon:
        config = {
            **DEFAULTS,
            "engine": "remote",
            "idle_exit": 0,
            **settings,
            "remote": remote,
        }
        path = tmp_path / f"b{next(count)}.toml"
        path.write_text(toml(config))
        return start_daemon({"engine": "remote"}, env={"TTS_CONFIG": str(path)})

    return start


async def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
    """Poll ``condition`` (a function, or a coroutine function) every 10 ms until it
    gives something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or condition}")
        await asyncio.sleep(0.01)


def engine_events(client: Client, since: int = 0) -> list[dict[str, Any]]:
    """The ``engine`` events received after message number ``since``."""
    return [m.info for _, m in client.messages[since:] if isinstance(m, protocol.EngineState)]


async def ready(client: Client, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until the daemon's engine has loaded (or failed); return its facts."""

    def done() -> dict[str, Any] | None:
        infos = [client.hello.engine, *engine_events(client)]
        return next((i for i in reversed(infos) if i.get("state") in ("ready", "failed")), None)

    return await wait_until(done, timeout, "the engine loaded")


async def wait_in_use(
    client: Client, in_use: str | None, since: int, timeout: float = 10.0
) -> dict[str, Any]:
    """Wait for an ``engine`` event, after message ``since``, saying that the engine
    now speaks with ``in_use``."""
    return await wait_until(
        lambda: next((e for e in engine_events(client, since) if e.get("in_use") == in_use), None),
        timeout,
        f"an engine event with in_use={in_use!r}",
    )


async def synthesizing(port: int) -> list[dict[str, Any]]:
    """The synthesis jobs of the daemon on ``port`` now."""
    async with await Client.connect("127.0.0.1", port) as client:
        return (await client.status()).synthesizing


# --- A small server that misbehaves on purpose ----------------------------------------


class StubServer:
    """An OpenAI-compatible speech server (not ttsd) in a thread of this process.

    ``mode`` decides how ``POST /v1/audio/speech`` answers: ``ok`` (the whole ``pcm``),
    ``wav`` (a WAV stream of unknown length at ``rate``, with a LIST chunk before the
    data), ``stall_head`` (nothing, ever), ``stall_body`` (half the audio, then
    nothing), ``cut`` (half, then the connection is dropped), ``refuse_key`` (401),
    ``busy`` (503). A stalled answer ends when its client goes away (``gone`` is set)
    or when the server stops.
    """

    def __init__(self, pcm: np.ndarray, rate: int = RATE) -> None:
        self.pcm = np.asarray(pcm, dtype="<i2").tobytes()
        self.rate = rate
        self.mode = "ok"
        #: Set: the models list says ttsd, and gives its rate after this many asks.
        self.ttsd_after: int | None = None
        self.requests: list[dict[str, Any]] = []
        #: Every request's path and the client's address (one address: one connection).
        self.seen: list[tuple[str, Any]] = []
        self.stalling = threading.Event()
        self.gone = threading.Event()
        self.port = 0
        self._closing = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return url_of(self.port)

    def start(self) -> StubServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @web.middleware
    async def _note(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.seen.append(
            (request.path, request.transport and request.transport.get_extra_info("peername"))
        )
        return await handler(request)

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self._note])
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/audio/voices", self._voices)
        app.router.add_post("/v1/audio/speech", self._speech)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _models(self, request: web.Request) -> web.Response:
        model: dict[str, Any] = {"id": "tts-1", "object": "model", "owned_by": "stub"}
        if self.ttsd_after is not None:  # as ttsd: the rate once its engine "loaded"
            model["owned_by"] = "ttsd"
            if self.ttsd_after <= 0:
                model["sample_rate"] = self.rate
            self.ttsd_after -= 1
        return web.json_response({"object": "list", "data": [model]})

    async def _voices(self, request: web.Request) -> web.Response:
        return web.json_response({"voices": ["amy", "bob"]})

    async def _hold(self, request: web.Request) -> None:
        self.stalling.set()
        while not self._closing:
            if request.transport is None or request.transport.is_closing():
                self.gone.set()
                return
            await asyncio.sleep(0.01)

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"body": body, "auth": request.headers.get("Authorization")})
        mode = self.mode
        if mode == "refuse_key":
            error = {"message": "Incorrect API key", "code": "invalid_api_key"}
            return web.json_response({"error": error}, status=401)
        if mode == "busy":
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        if mode == "stall_head":
            await self._hold(request)
            return web.Response(status=500)
        response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        await response.prepare(request)
        data = self.pcm
        if mode == "wav":
            data = wav_header(self.rate) + data
        half = len(self.pcm) // 4 * 2  # whole samples
        await response.write(data[:half])
        if mode == "stall_body":
            await self._hold(request)
            return response
        if mode == "cut":
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write(data[half:])
        await response.write_eof()
        return response


def wav_header(rate: int) -> bytes:
    """A streamed WAV's head: sizes unknown (0xFFFFFFFF), a LIST chunk before ``data``."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    info = b"INFOISFT\x06\x00\x00\x00stub\x00\x00"
    return (
        b"RIFF\xff\xff\xff\xffWAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"LIST"
        + struct.pack("<I", len(info))
        + info
        + b"data\xff\xff\xff\xff"
    )


@pytest.fixture
def stub() -> Iterator[StubServer]:
    server = StubServer(tone_of("A stub server speaks this sentence.")).start()
    yield server
    server.stop()


# --- Through another ttsd, sample for sample ------------------------------------------


@pytest.mark.piper
async def test_piper_through_another_daemon_plays_sample_for_sample(
    start_a: Callable[..., Daemon], start_b: Callable[..., Daemon], recorder: Recorder
) -> None:
    pytest.importorskip("piper")
    a = start_a({"engine": "piper"})
    async with await Client.connect("127.0.0.1", a.port) as client:
        assert (await ready(client, 60))["state"] == "ready"
    # What A makes of the text, straight from its endpoint, at its engine's own rate.
    reply = httpx.post(
        f"{url_of(a)}/audio/speech",
        json={
            "model": "tts-1",
            "voice": "joe",
            "input": TEXT,
            "response_format": "pcm",
            "sample_rate": RATE,
            "options": EXACT,
        },
        timeout=60,
    )
    assert reply.status_code == 200 and reply.headers["x-sample-rate"] == str(RATE)
    expected = np.frombuffer(reply.content, "<i2")

    b = start_b({"url": url_of(a)})
    async with await Client.connect("127.0.0.1", b.port) as client:
        info = await ready(client)
        assert info["name"] == "remote" and info["state"] == "ready"
        # The rate came from A's model list: B plays at Piper's rate, nothing resampled.
        assert info["sample_rate"] == RATE
        assert info["in_use"] == url_of(a)
        assert info["endpoints"] == [{"url": url_of(a), "state": "up", "server": "ttsd"}]
        assert "joe" in await client.voices()  # A's voice list
        before = len(recorder.samples())
        queued = await client.speak(TEXT, voice="joe", options=EXACT)
        end = await client.wait_for_job(queued.job, 60)
    assert end.TYPE == "finished", end
    recorder.wait_for_silence(0.3)
    start = find_exact(recorder.samples()[before:], expected)
    assert start is not None, "B did not play A's synthesis sample for sample"
    # One request per sentence, each asked with the engine's rate and read as text.
    assert len(re.findall(r"job \d+ synthesizing", a.log)) >= len(SENTENCES) + 1


# --- Aborts ---------------------------------------------------------------------------


async def test_an_abort_cancels_the_http_request_in_flight(
    start_a: Callable[..., Daemon], start_b: Callable[..., Daemon]
) -> None:
    # A takes 20 s per chunk: B's request is in flight when the abort comes.
    a = start_a({"engine": "tone", "tone": {"delay_ms": 20000.0}})
    b = start_b({"url": url_of(a), "timeout": 60})
    async with await Client.connect("127.0.0.1", b.port) as client:
        await ready(client)
        queued = await client.speak("Nobody will hear this sentence.")
        made = await wait_until(lambda: synthesizing(a.port), 10, "A synthesizing B's chunk")
        assert len(made) == 1 and made[0]["client"] == "http@127.0.0.1"
        sent = time.monotonic()
        await client.abort(queued.job)
        end = await client.wait_for_job(queued.job, 10)

        async def gone() -> bool:
            return not await synthesizing(a.port)

        await wait_until(gone, 5, "A's synthesis gone")
        gone_after = time.monotonic() - sent
    assert end.TYPE == "aborted"
    assert gone_after < 1.0, gone_after
    assert re.search(r"job \d+ aborted .*client_disconnected", a.log), a.log


# --- A goes away ----------------------------------------------------------------------


async def test_a_stopped_server_fails_the_job_clearly_and_a_later_job_works(
    start_a: Callable[..., Daemon], start_b: Callable[..., Daemon], recorder: Recorder
) -> None:
    port = free_port()
    slow = {"engine": "tone", "port": port, "tone": {"delay_ms": 400.0}}
    a = start_a(slow)
    b = start_b({"url": url_of(port), "retry_interval": 0.2})
    async with await Client.connect("127.0.0.1", b.port) as client:
        await ready(client)
        since = len(client.messages)
        queued = await client.speak(TEXT)
        # A is stopped while it makes B's second sentence.
        await wait_until(lambda: len(re.findall(r"synthesizing", a.log)) >= 2, 20)
        a.signal(signal.SIGTERM)
        a.wait()
        end = await client.wait_for_job(queued.job, 30)
        assert end.TYPE == "error", end
        assert end.code == "engine_failed"
        # A answered 503 (shutting down), or was gone already for a later sentence.
        assert re.search(rf"{re.escape(url_of(port))}: (HTTP 503|cannot connect)", end.message), (
            end.message
        )
        down = await wait_in_use(client, None, since)
        assert down["endpoints"][0]["state"] == "down"
        # The first sentence was played before the error.
        recorder.wait_for_silence(0.3)
        assert played_all(recorder.samples(), tone_of(SENTENCES[0]))

        # A comes back on the same port: B's next job is spoken by it.
        start_a(slow)
        since = len(client.messages)
        later = "Back again, the other daemon speaks."
        queued = await client.speak(later)
        end = await client.wait_for_job(queued.job, 30)
        assert end.TYPE == "finished", end
        await wait_in_use(client, url_of(port), since)
    recorder.wait_for_silence(0.3)
    assert played_all(recorder.samples(), tone_of(later))
    assert f"remote: {url_of(port)} is down (" in b.log, b.log
    assert f"remote: {url_of(port)} answers again" in b.log


async def test_a_vanished_server_hands_the_job_to_the_fallback_and_it_returns(
    start_a: Callable[..., Daemon], start_b: Callable[..., Daemon], recorder: Recorder
) -> None:
    port = free_port()
    slow = {"engine": "tone", "port": port, "tone": {"delay_ms": 400.0}}
    a = start_a(slow)
    b = start_b(
        {"url": url_of(port), "fallback": "tone", "retry_interval": 0.2},
        tone={"frequency": 880.0},  # the fallback: a tone an octave up
    )
    async with await Client.connect("127.0.0.1", b.port) as client:
        await ready(client)
        since = len(client.messages)
        queued = await client.speak(TEXT)
        await wait_until(lambda: len(re.findall(r"synthesizing", a.log)) >= 2, 20)
        a.signal(signal.SIGKILL)  # the box vanishes mid-request
        a.wait()
        switched = await wait_in_use(client, "fallback", since)
        assert switched["state"] == "ready" and switched["fallback"] == "tone"
        end = await client.wait_for_job(queued.job, 30)
        assert end.TYPE == "finished", end
        status = await client.status()
        assert status.engine["in_use"] == "fallback"
        recorder.wait_for_silence(0.3)
        recording = recorder.samples()
        assert played_all(recording, tone_of(SENTENCES[0]))  # A's
        for sentence in SENTENCES[1:]:  # the fallback's, from the sentence A was making
            assert played_all(recording, tone_of(sentence, 880.0)), sentence

        since = len(client.messages)
        start_a(slow)
        back = await wait_in_use(client, url_of(port), since)
        assert back["endpoints"][0]["state"] == "up"
        # The fallback's audio of a sentence is not replayed from the phrase cache as A's.
        before = len(recorder.samples())
        queued = await client.speak(SENTENCES[2])
        end = await client.wait_for_job(queued.job, 30)
        assert end.TYPE == "finished", end
    recorder.wait_for_silence(0.3)
    after = recorder.samples()[before:]
    assert played_all(after, tone_of(SENTENCES[2]))
    assert not played_all(after, tone_of(SENTENCES[2], 880.0))
    assert "speaking with the fallback engine tone" in b.log
    assert "no longer with the fallback engine tone" in b.log


async def test_failover_to_the_next_url_in_order(
    start_a: Callable[..., Daemon], start_b: Callable[..., Daemon], recorder: Recorder
) -> None:
    nobody = free_port()
    first = start_a({"engine": "tone"})
    second = start_a({"engine": "tone", "tone": {"frequency": 660.0}})
    b = start_b({"urls": [url_of(nobody), url_of(first), url_of(second)]})
    async with await Client.connect("127.0.0.1", b.port) as client:
        info = await ready(client)
        assert info["in_use"] == url_of(first)
        assert [e["state"] for e in info["endpoints"]] == ["down", "up", "up"]
        assert "Connection refused" in info["endpoints"][0]["error"]
        one = "Spoken by the first daemon that answers."
        end = await client.wait_for_job((await client.speak(one)).job, 30)
        assert end.TYPE == "finished", end

        first.signal(signal.SIGKILL)
        first.wait()
        since = len(client.messages)
        two = "Spoken by the second one, the first being gone."
        end = await client.wait_for_job((await client.speak(two)).job, 30)
        assert end.TYPE == "finished", end
        await wait_in_use(client, url_of(second), since)
    recorder.wait_for_silence(0.3)
    recording = recorder.samples()
    assert played_all(recording, tone_of(one))
    assert played_all(recording, tone_of(two, 660.0))
    assert f"is down (cannot connect (Connection refused)); speaking with {url_of(second)}" in b.log


# --- A slow endpoint --------------------------------------------------------------------


@pytest.mark.parametrize("where", ["stall_head", "stall_body"])
async def test_a_stalled_endpoint_times_out(
    stub: StubServer, start_b: Callable[..., Daemon], recorder: Recorder, where: str
) -> None:
    stub.mode = where
    b = start_b({"url": stub.url, "timeout": 0.5, "sample_rate": RATE})
    async with await Client.connect("127.0.0.1", b.port) as client:
        await ready(client)
        queued = await client.speak("A stub server speaks this sentence.")
        await asyncio.to_thread(stub.stalling.wait, 10)
        stalled = time.monotonic()
        end = await client.wait_for_job(queued.job, 10)
        waited = time.monotonic() - stalled
    assert end.TYPE == "error" and end.code == "engine_failed", end
    assert stub.url in end.message
    if where == "stall_head":
        assert "no answer within 0.5 s" in end.message, end.message
    else:
        assert "nothing for 0.5 s mid-stream" in end.message, end.message
        # The half that came was played first.
        half = np.frombuffer(stub.pcm[: len(stub.pcm) // 4 * 2], "<i2")
        recorder.wait_for_silence(0.3)
        assert played_all(recorder.samples(), half)
    assert 0.4 <= waited < 3.0, waited
    assert stub.gone.wait(5), "B did not close the stalled request"


async def test_a_stalled_endpoint_hands_over_to_the_fallback(
    stub: StubServer, start_b: Callable[..., Daemon], recorder: Recorder
) -> None:
    stub.mode = "stall_head"
    b = start_b(
        {"url": stub.url, "timeout": 0.5, "sample_rate": RATE, "fallback": "tone"},
        tone={"frequency": 880.0},
    )
    text = "The fallback says this one."
    async with await Client.connect("127.0.0.1", b.port) as client:
        await ready(client)
        since = len(client.messages)
        end = await client.wait_for_job((await client.speak(text)).job, 10)
        assert end.TYPE == "finished", end
        await wait_in_use(client, "fallback", since)
    recorder.wait_for_silence(0.3)
    assert played_all(recorder.samples(), tone_of(text, 880.0))
    assert "no answer within 0.5 s" in b.log


# --- Keys -----------------------------------------------------------------------------


async def test_a_wrong_key_fails_the_engine_at_load_and_the_right_one_speaks(
    start_a: Callable[..., Daemon],
    start_b: Callable[..., Daemon],
    recorder: Recorder,
    tmp_path: Path,
) -> None:
    token = "0123456789abcdef-remote-token"
    a = start_a({"engine": "tone", "auth": "token", "token": token})
    wrong = start_b({"url": url_of(a), "api_key": "not-the-token-at-all"})
    async with await Client.connect("127.0.0.1", wrong.port) as client:
        failed = await ready(client)
        assert failed["state"] == "failed"
        assert url_of(a) in failed["error"] and "refused the API key" in failed["error"]
        assert "HTTP 401" in failed["error"]
        end = await client.wait_for_job((await client.speak("Not with that key.")).job, 10)
        assert end.TYPE == "error" and end.code == "engine_unavailable", end
        assert "refused the API key" in end.message

    key_file = tmp_path / "box.token"
    key_file.write_text(token + "\n")
    key_file.chmod(0o600)
    right = start_b({"url": url_of(a), "api_key_file": str(key_file)})
    text = "With the right key it speaks."
    async with await Client.connect("127.0.0.1", right.port) as client:
        assert (await ready(client))["state"] == "ready"
        end = await client.wait_for_job((await client.speak(text)).job, 10)
        assert end.TYPE == "finished", end
    recorder.wait_for_silence(0.3)
    assert played_all(recorder.samples(), tone_of(text))


async def test_a_key_refused_during_a_job_fails_it_without_failover(
    stub: StubServer, start_b: Callable[..., Daemon]
) -> None:
    b = start_b(
        {"url": stub.url, "api_key": "rotated-away", "sample_rate": RATE, "fallback": "tone"}
    )
    stub.mode = "refuse_key"  # the models list still answers: the key was fine at load
    async with await Client.connect("127.0.0.1", b.port) as client:
        await ready(client)
        end = await client.wait_for_job((await client.speak("Refused.")).job, 10)
        assert end.TYPE == "error" and end.code == "engine_failed", end
        assert f"{stub.url} refused the API key (HTTP 401: Incorrect API key)" in end.message
        assert (await client.status()).engine["in_use"] == stub.url  # no switch
    assert stub.requests[0]["auth"] == "Bearer rotated-away"


# --- Voices, options, formats -----------------------------------------------------------


async def test_voices_come_from_the_remote_list_and_options_only_go_to_ttsd(
    stub: StubServer, start_b: Callable[..., Daemon]
) -> None:
    b = start_b({"url": stub.url, "sample_rate": RATE, "voice": "amy", "model": "kokoro"})
    async with await Client.connect("127.0.0.1", b.port) as client:
        await ready(client)
        assert await client.voices() == ["amy", "bob"]
        with pytest.raises(Exception, match="unknown voice 'zed'"):
            await client.speak("Who?", voice="zed")
        end = await client.wait_for_job((await client.speak("Hi.", voice="bob")).job, 10)
        assert end.TYPE == "finished", end
        end = await client.wait_for_job((await client.speak("Hello.")).job, 10)
        assert end.TYPE == "finished", end
        end = await client.wait_for_job(
            (await client.speak("Odd.", options={"noise_scale": 0})).job, 10
        )
        assert end.TYPE == "error" and end.code == "bad_option", end
        assert "not a ttsd server" in end.message
    bodies = [r["body"] for r in stub.requests]
    assert bodies[0] == {
        "model": "kokoro",
        "input": "Hi.",
        "voice": "bob",
        "response_format": "pcm",
    }  # no ttsd extensions for a server that is not ttsd
    assert bodies[1]["voice"] == "amy"


def test_a_ttsd_server_is_asked_for_the_engines_rate_and_gets_its_extensions(
    stub: StubServer,
) -> None:
    stub.ttsd_after, stub.rate = 3, 16000  # the "box" says its rate from the 4th ask on
    engine = RemoteEngine(url=stub.url)
    engine.load()
    try:
        assert engine.sample_rate == 16000  # waited for the box's engine to load
        list(engine.stream("Some text.", "bob", {"noise_scale": 0, "speed": 1.5}, CancelToken()))
    finally:
        engine.unload()
    assert stub.requests[0]["body"] == {
        "model": "tts-1",
        "input": "Some text.",
        "voice": "bob",
        "response_format": "pcm",
        "speed": 1.5,
        "format": "text",
        "sample_rate": 16000,
        "options": {"noise_scale": 0},
    }
    assert engine.describe()["endpoints"] == [{"url": stub.url, "state": "up", "server": "ttsd"}]


def test_wav_is_read_as_it_streams_and_resampled(stub: StubServer) -> None:
    stub.mode, stub.rate = "wav", 16000
    engine = RemoteEngine(url=stub.url, response_format="wav", sample_rate=RATE)
    engine.load()
    try:
        pieces = list(engine.stream("Any text.", None, {}, CancelToken()))
    finally:
        engine.unload()
    made = np.concatenate(pieces)
    sent = len(stub.pcm) // 2
    assert abs(len(made) - sent * RATE / 16000) <= 2
    assert np.abs(made.astype(np.int32)).max() > 10000  # the tone, not silence


def test_a_cut_answer_is_made_again_by_the_fallback_at_the_remote_rate(stub: StubServer) -> None:
    stub.mode = "cut"
    fallback = ToneEngine(sample_rate=16000, frequency=880.0)
    engine = RemoteEngine(url=stub.url, sample_rate=RATE, fallback=fallback)
    changes: list[dict[str, Any]] = []
    engine.watch(lambda: changes.append(engine.describe()))
    engine.load()
    try:
        pieces = list(engine.stream("Cut short.", None, {}, CancelToken()))
    finally:
        engine.unload()
    made = np.concatenate(pieces)
    half = np.frombuffer(stub.pcm[: len(stub.pcm) // 4 * 2], "<i2")
    assert np.array_equal(made[: len(half)], half)  # what came before the cut
    rest = made[len(half) :]  # the whole chunk again, by the fallback, 16 -> 22.05 kHz
    assert abs(len(rest) - fallback.samples_for("Cut short.") * RATE / 16000) <= 2
    assert [c["in_use"] for c in changes] == ["fallback"]
    assert "cut off mid-stream" in changes[0]["endpoints"][0]["error"]


def test_an_idle_engine_keeps_its_connection_and_notices_a_box_gone(stub: StubServer) -> None:
    engine = RemoteEngine(
        url=stub.url, sample_rate=RATE, keep_alive=0.2, fallback=ToneEngine(), retry_interval=60
    )
    changes: list[str | None] = []
    engine.watch(lambda: changes.append(engine.describe()["in_use"]))
    engine.load()
    try:
        deadline = time.monotonic() + 10
        # The probe, then 3 pings; the last one answered (the next is 0.2 s away).
        while [p for p, _ in stub.seen].count("/v1/models") < 4 or engine.endpoints[0].busy:
            assert time.monotonic() < deadline, stub.seen
            time.sleep(0.005)
        assert np.array_equal(
            np.concatenate(list(engine.stream("Any text.", None, {}, CancelToken()))),
            np.frombuffer(stub.pcm, "<i2"),
        )
        # The probe, the pings and the speech all went over one kept-alive connection.
        assert len({peer for _, peer in stub.seen}) == 1, stub.seen
        stub.stop()  # the box goes away between jobs: a ping finds out
        while changes != ["fallback"]:
            assert time.monotonic() < deadline + 10, changes
            time.sleep(0.01)
    finally:
        engine.unload()


# --- Settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, "needs url"),
        ({"url": "http://a/v1", "urls": ["http://b/v1"]}, "not both"),
        ({"url": "ftp://box/v1"}, "http:// or https://"),
        ({"url": "http://box/v1", "response_format": "mp3"}, "response_format"),
        ({"url": "http://box/v1", "timeout": 0}, "timeout"),
        ({"url": "http://box/v1", "fallback": "remote"}, "fallback must be one of"),
        ({"url": "http://box/v1", "api_key": "k", "api_key_file": "/f"}, "not both"),
        ({"url": "http://box/v1", "colour": "red"}, "colour"),
        ({"url": "http://box/v1", "extra_body": {"input": "x"}}, "extra_body"),
    ],
)
def test_bad_settings_stop_the_daemon_at_start(
    tmp_path: Path, table: dict[str, Any], message: str
) -> None:
    path = tmp_path / "config.toml"
    text = toml(
        {"engine": "remote", "remote": {k: v for k, v in table.items() if k != "extra_body"}}
    )
    if "extra_body" in table:
        text += 'extra_body = { input = "x" }\n'
    path.write_text(text)
    config = load_config(env={"TTS_CONFIG": str(path)})
    with pytest.raises(ConfigError, match=message):
        build_engine(config, "remote")


def test_a_bare_host_gets_v1_and_the_fallback_has_its_own_table(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        toml(
            {
                "engine": "remote",
                "voice": "af_bella",  # the remote server's voice, not the fallback's
                "remote": {"url": "http://box:8880/", "fallback": "tone"},
                "tone": {"frequency": 330.0},
            }
        )
    )
    engine = build_engine(load_config(env={"TTS_CONFIG": str(path)}), "remote")
    assert isinstance(engine, RemoteEngine)
    assert engine.endpoints[0].url == "http://box:8880/v1"
    assert engine.voice == "af_bella"
    assert isinstance(engine.fallback, ToneEngine) and engine.fallback.frequency == 330.0


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("secret-secret-secret")
    key.chmod(0o644)
    engine = RemoteEngine(url="http://127.0.0.1:9/v1", api_key_file=str(key))
    with pytest.raises(EngineError, match="chmod 600"):
        engine.load()
    assert os.stat(key).st_mode & 0o777 == 0o644


async def test_a_body_that_comes_in_segments_is_read_whole() -> None:
    # aiohttp's read(n) returns what has arrived so far: a /models answer split
    # across TCP segments must still be parsed whole.
    from ttsd.engines.remote import _read_body

    class Segments:
        def __init__(self, parts: list[bytes]) -> None:
            self.parts = parts

        async def read(self, n: int) -> bytes:
            return self.parts.pop(0)[:n] if self.parts else b""

    body = await _read_body(Segments([b'{"data": [', b'{"id": "tts-1"}', b"]}"]))
    assert json.loads(body) == {"data": [{"id": "tts-1"}]}
    assert len(await _read_body(Segments([b"x" * 10] * 5), limit=25)) == 25
