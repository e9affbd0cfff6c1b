"""The OpenAI-compatible speech endpoint, through the official ``openai`` package and curl.

The daemon runs as a child process (tone engine unless said otherwise) and serves HTTP
on its WebSocket port. Audio is compared sample for sample with the engine's own
output, split the way the daemon splits the text.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import soundfile

from tests.conftest import TONE
from tests.support.daemon import Daemon, write_config
from tests.support.expected import tone
from tests.support.fakes import FakeOutput
from tests.support.pulse import PulseServer
from ttsd.audio.encode import make_encoder
from ttsd.client import Client
from ttsd.config import Config
from ttsd.daemon import IdleExit, settings_of
from ttsd.engines import Engine, OptionError
from ttsd.engines.chatterbox import ChatterboxEngine
from ttsd.engines.tone import ToneEngine
from ttsd.protocol import Started
from ttsd.protocol.openai import OPENAI_VOICES
from ttsd.scheduler import EngineHost, Scheduler
from ttsd.scheduler.chunking import split_text
from ttsd.server import Server

TEXT = "Hello from the speech endpoint. It streams as it speaks."
RATE = 22050

#: Distinct sentences (the phrase cache must not make any of them instantly).
MANY = " ".join(f"Sentence number {n} of a long reply." for n in range(1, 31))

#: The tone engine taking 100 ms per chunk, so that streaming is visible in events.
SLOW_TONE = {
    "engine": "tone",
    "tone": {"ms_per_char": 20.0, "delay_ms": 100.0},
    "phrase_cache_mb": 0,
}


def base_url(daemon: Daemon) -> str:
    return f"http://127.0.0.1:{daemon.port}/v1"


def client_for(daemon: Daemon, api_key: str = "not-needed") -> openai.OpenAI:
    return openai.OpenAI(api_key=api_key, base_url=base_url(daemon), max_retries=0, timeout=30)


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Decode a file with libsndfile; return its int16 samples and rate.

    Read through the C call: soundfile's ``read`` seeks after reading, which a FLAC
    stream of unknown length (as streamed: its STREAMINFO has no total) refuses.
    """
    with soundfile.SoundFile(io.BytesIO(data)) as file:
        parts = []
        while True:
            block = np.empty(65536, np.int16)
            pointer = soundfile._ffi.cast("short *", block.ctypes.data)
            count = soundfile._snd.sf_readf_short(file._file, pointer, len(block))
            if count <= 0:
                break
            parts.append(block[:count].copy())
        return np.concatenate(parts) if parts else np.zeros(0, np.int16), file.samplerate


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def speech_body(**fields: Any) -> dict[str, Any]:
    return {"model": "tts-1", "input": TEXT, "voice": "alloy", **fields}


# --- The openai package --------------------------------------------------------------


def test_openai_package_non_streaming_wav_is_the_engine_output(daemon: Daemon) -> None:
    client = client_for(daemon)
    response = client.audio.speech.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="wav"
    )
    samples, rate = decode(response.content)
    assert rate == RATE
    assert np.array_equal(samples, tone(TEXT))


def test_openai_package_streaming_pcm_is_the_engine_output(daemon: Daemon) -> None:
    client = client_for(daemon)
    with client.audio.speech.with_streaming_response.create(
        model="tone",
        voice="alloy",
        input=TEXT,
        response_format="pcm",
        extra_body={"sample_rate": RATE},  # ttsd extension: the engine's own rate
    ) as response:
        assert response.headers["content-type"] == "audio/pcm"
        assert response.headers["x-sample-rate"] == str(RATE)
        data = b"".join(response.iter_bytes())
    assert np.array_equal(np.frombuffer(data, "<i2"), tone(TEXT))


def test_pcm_is_24_khz_by_default_as_openai_specifies(daemon: Daemon) -> None:
    data = (
        client_for(daemon)
        .audio.speech.create(model="tts-1", voice="nova", input=TEXT, response_format="pcm")
        .content
    )
    expected = len(tone(TEXT)) * 24000 / RATE
    assert abs(len(data) / 2 - expected) <= 2


def test_speed_maps_onto_the_tone_engines_own_control(daemon: Daemon) -> None:
    data = (
        client_for(daemon)
        .audio.speech.create(
            model="tts-1", voice="alloy", input=TEXT, response_format="wav", speed=2.0
        )
        .content
    )
    samples, _ = decode(data)
    fast = ToneEngine(ms_per_char=10.0)
    expected = np.concatenate([fast.synthesize(c, None, {}) for c in split_text(TEXT, 300, 120)])
    assert np.array_equal(samples, expected)


@pytest.mark.parametrize(
    ("fmt", "rate", "media_type"),
    [
        ("wav", RATE, "audio/wav"),
        ("flac", RATE, "audio/flac"),
        ("mp3", RATE, "audio/mpeg"),
        ("opus", 48000, "audio/ogg"),
    ],
)
def test_each_format_decodes_to_the_right_length_and_rate(
    daemon: Daemon, fmt: str, rate: int, media_type: str
) -> None:
    with client_for(daemon).audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=TEXT, response_format=fmt
    ) as response:
        assert response.headers["content-type"] == media_type
        data = response.read()
    samples, decoded_rate = decode(data)
    assert decoded_rate == rate
    expected = tone(TEXT)
    if fmt in ("wav", "flac"):  # lossless: the very samples
        assert np.array_equal(samples, expected)
    elif fmt == "mp3":
        # LAME's delay and padding stay (no LAME tag in a stream): a few frames more.
        assert len(expected) <= len(samples) <= len(expected) + 3 * 1152
        assert np.abs(samples.astype(np.int32)).max() > 8000  # the tone, not silence
    else:
        assert abs(len(samples) - len(expected) * rate / RATE) <= rate * 0.01
        assert np.abs(samples.astype(np.int32)).max() > 8000


def test_models_and_voices(daemon: Daemon) -> None:
    client = client_for(daemon)
    ids = [model.id for model in client.models.list()]
    assert ids == ["tone", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"]
    assert client.models.retrieve("tts-1-hd").id == "tts-1-hd"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("whisper-1")
    voices = httpx.get(f"{base_url(daemon)}/audio/voices").json()
    assert voices == {"voices": list(OPENAI_VOICES)}  # the tone engine has no voices


def test_openai_errors_become_the_packages_exceptions(daemon: Daemon) -> None:
    client = client_for(daemon)
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model="tts-1", voice="nobody", input="Hi.")
    assert caught.value.body["param"] == "voice"
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", response_format="aac")
    assert caught.value.body["param"] == "response_format"


# --- curl ------------------------------------------------------------------------------


def test_curl_gets_speech_and_errors(daemon: Daemon, tmp_path: Path) -> None:
    url = f"{base_url(daemon)}/audio/speech"
    out = tmp_path / "speech.wav"
    body = json.dumps(speech_body(response_format="wav"))
    subprocess.run(
        [
            "curl",
            "-sS",
            "--fail",
            url,
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            "-o",
            str(out),
        ],
        check=True,
        timeout=30,
    )
    samples, rate = decode(out.read_bytes())
    assert rate == RATE and np.array_equal(samples, tone(TEXT))

    # -N (no buffering) with raw pcm, as a player pipe would read it.
    pcm = subprocess.run(
        [
            "curl",
            "-sS",
            "-N",
            "--fail",
            url,
            "-d",
            json.dumps(speech_body(response_format="pcm", sample_rate=RATE)),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    ).stdout
    assert np.array_equal(np.frombuffer(pcm, "<i2"), tone(TEXT))

    bad = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", url, "-d", '{"model": "tts-1"'],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    text, status = bad.rsplit("\n", 1)
    assert status == "400"
    assert json.loads(text)["error"]["code"] == "bad_json"


# --- Errors ------------------------------------------------------------------------------


def test_bad_requests_get_their_status_and_openais_error_shape(start_daemon) -> None:
    daemon = start_daemon({**TONE, "max_text_length": 100, "max_message_bytes": 4096})
    url = f"{base_url(daemon)}/audio/speech"
    with httpx.Client(timeout=30) as http:
        assert_openai_error(http.post(url, content=b"{not json"), 400, "bad_json")
        assert_openai_error(http.post(url, content=b"[1, 2]"), 400, "bad_request")
        error = assert_openai_error(http.post(url, json=speech_body(voice="zz")), 400)
        assert error["param"] == "voice" and error["type"] == "invalid_request_error"
        error = assert_openai_error(http.post(url, json=speech_body(response_format="ogg")), 400)
        assert error["param"] == "response_format"
        error = assert_openai_error(
            http.post(url, json=speech_body(input="x" * 101)), 400, "string_above_max_length"
        )
        assert error["param"] == "input"
        assert_openai_error(http.post(url, json=speech_body(model="gpt-4")), 400, "model_not_found")
        assert_openai_error(http.post(url, json=speech_body(speed=9)), 400)
        assert_openai_error(
            http.post(url, json=speech_body(options={"nope": 1})), 400, "bad_option"
        )
        assert_openai_error(http.post(url, json=speech_body(stream_format="sse")), 400)
        assert_openai_error(http.post(url, json={"input": "Hi.", "voice": "alloy"}), 400)
        assert_openai_error(
            http.post(url, content=json.dumps(speech_body(input="y" * 5000))),
            413,
            "request_too_large",
        )
        assert_openai_error(http.get(url), 405, "method_not_allowed")
        assert http.get(url).headers["allow"] == "POST"
        assert_openai_error(http.get(f"{base_url(daemon)}/chat/completions"), 404, "not_found")
        # ``instructions`` is accepted and ignored: the same audio as without it.
        plain = http.post(url, json=speech_body(response_format="wav"))
        styled = http.post(url, json=speech_body(response_format="wav", instructions="Cheerful."))
        assert plain.status_code == styled.status_code == 200
        assert plain.content == styled.content


def test_an_engine_that_cannot_load_is_a_503(start_daemon) -> None:
    daemon = start_daemon({"engine": "tone", "tone": {"fail_load": True}})
    response = httpx.post(f"{base_url(daemon)}/audio/speech", json=speech_body(), timeout=30)
    error = assert_openai_error(response, 503, "engine_unavailable")
    assert error["type"] == "server_error"
    # A bad request is still answered as such, without waiting for the engine.
    assert_openai_error(httpx.post(f"{base_url(daemon)}/audio/speech", content=b"{"), 400)


def test_the_home_page_says_what_the_port_offers(daemon: Daemon) -> None:
    response = httpx.get(f"http://127.0.0.1:{daemon.port}/")
    assert response.status_code == 426
    assert response.headers["upgrade"] == "websocket"
    assert "/v1/audio/speech" in response.text


def test_a_head_too_long_is_refused_before_any_server_sees_it(daemon: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 40000)
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 431 ")


def test_the_token_is_required_when_auth_is_token(start_daemon) -> None:
    token = "0123456789abcdef-http-token"
    daemon = start_daemon({**TONE, "auth": "token", "token": token})
    with pytest.raises(openai.AuthenticationError) as caught:
        client_for(daemon, api_key="wrong-token-wrong-token").audio.speech.create(
            model="tts-1", voice="alloy", input="Hi."
        )
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"
    no_header = httpx.post(f"{base_url(daemon)}/audio/speech", json=speech_body())
    assert_openai_error(no_header, 401, "invalid_api_key")
    assert no_header.headers["www-authenticate"].startswith("Bearer")
    audio = client_for(daemon, api_key=token).audio.speech.create(
        model="tts-1", voice="alloy", input=TEXT, response_format="wav"
    )
    assert np.array_equal(decode(audio.content)[0], tone(TEXT))


def test_a_foreign_origin_is_refused_an_allowed_one_gets_cors(start_daemon) -> None:
    allowed = "http://app.example:8080"
    daemon = start_daemon({**TONE, "allowed_origins": allowed})
    url = f"{base_url(daemon)}/audio/speech"
    foreign = httpx.post(url, json=speech_body(), headers={"Origin": "http://evil.example"})
    assert_openai_error(foreign, 403, "forbidden")
    assert "access-control-allow-origin" not in foreign.headers
    rebinding = httpx.get(f"{base_url(daemon)}/models", headers={"Host": "evil.example"})
    assert_openai_error(rebinding, 403)

    preflight = httpx.options(
        url,
        headers={
            "Origin": allowed,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == allowed
    assert "POST" in preflight.headers["access-control-allow-methods"]
    ok = httpx.post(url, json=speech_body(response_format="wav"), headers={"Origin": allowed})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == allowed
    assert "X-Sample-Rate" in ok.headers["access-control-expose-headers"]


def test_the_rate_limit_answers_429(start_daemon) -> None:
    daemon = start_daemon({**TONE, "max_requests_per_second": 3})
    with httpx.Client() as http:
        statuses = [http.get(f"{base_url(daemon)}/models").status_code for _ in range(12)]
        refused = http.get(f"{base_url(daemon)}/models")
    assert statuses[:3] == [200, 200, 200]
    assert 429 in statuses
    if refused.status_code == 429:
        assert_openai_error(refused, 429, "rate_limited")
    with pytest.raises(openai.RateLimitError):
        for _ in range(12):
            client_for(daemon).models.list()


def test_chatterbox_refuses_a_speed_it_cannot_make() -> None:
    # Chatterbox has no duration control: any speed but 1.0 is refused (a 400), and
    # the refusal is the interface's default, not an if-chain in the server.
    assert ChatterboxEngine.speed_options is Engine.speed_options

    class NoSpeed(Engine):
        name = "chatterbox"
        sample_rate = RATE

        def load(self) -> None:
            pass

        def synthesize(self, text: str, voice: str | None, options: Any) -> np.ndarray:
            return np.zeros(0, np.int16)

    assert NoSpeed().speed_options(1.0, None) == {}
    with pytest.raises(OptionError, match="no speed control"):
        NoSpeed().speed_options(1.5, None)


# --- Streaming, fairness, disconnects ----------------------------------------------


async def test_audio_arrives_while_the_job_is_still_being_made(start_daemon) -> None:
    daemon = start_daemon(SLOW_TONE)
    body = speech_body(input=MANY, response_format="pcm", sample_rate=RATE)
    async with (
        await Client.connect("127.0.0.1", daemon.port) as ws,
        httpx.AsyncClient(timeout=30) as http,
        http.stream("POST", f"{base_url(daemon)}/audio/speech", json=body) as response,
    ):
        assert response.status_code == 200
        job = int(response.headers["x-ttsd-job"])
        data = bytearray()
        seen_while_making = None
        async for chunk in response.aiter_bytes():
            data += chunk
            if seen_while_making is None:
                status = await ws.status()
                seen_while_making = [j for j in status.synthesizing if j["job"] == job]
    assert seen_while_making and seen_while_making[0]["generated"] < seen_while_making[0]["chunks"]
    assert np.array_equal(np.frombuffer(bytes(data), "<i2"), tone(MANY))


async def test_a_speak_job_is_not_held_up_by_http_synthesis(start_daemon) -> None:
    daemon = start_daemon(SLOW_TONE)
    body = speech_body(input=MANY, response_format="pcm", sample_rate=RATE)
    order: list[str] = []
    async with (
        await Client.connect("127.0.0.1", daemon.port) as ws,
        httpx.AsyncClient(timeout=60) as http,
        http.stream("POST", f"{base_url(daemon)}/audio/speech", json=body) as response,
    ):
        chunks = response.aiter_bytes()
        await anext(chunks)  # the HTTP synthesis is under way
        queued = await ws.speak("Meanwhile, a spoken notice.")
        order.append("queued")

        async def count_http() -> None:
            async for _ in chunks:
                order.append("http")

        reader = asyncio.create_task(count_http())
        await ws.wait_for(Started, queued.job, timeout=30)
        order.append("started")
        end = await ws.wait_for_job(queued.job, timeout=30)
        await asyncio.wait_for(reader, 60)
    assert end.TYPE == "finished"
    between = order[order.index("queued") : order.index("started")].count("http")
    # The engine finishes the chunk in hand, then makes the speak job's first chunk.
    assert between <= 2, order[:20]
    assert order.count("http") >= 20  # the synthesis went on meanwhile and finished


@pytest.mark.parametrize("fmt", ["pcm", "mp3"])  # mp3: encoded off the event loop
async def test_an_http_client_that_disconnects_aborts_its_job(start_daemon, fmt: str) -> None:
    daemon = start_daemon(SLOW_TONE)
    body = speech_body(input=MANY, response_format=fmt)
    async with await Client.connect("127.0.0.1", daemon.port) as ws:
        async with (
            httpx.AsyncClient(timeout=30) as http,
            http.stream("POST", f"{base_url(daemon)}/audio/speech", json=body) as response,
        ):
            job = int(response.headers["x-ttsd-job"])
            await anext(response.aiter_bytes())
            assert [j["job"] for j in (await ws.status()).synthesizing] == [job]
        # The connection is closed here, long before the 30 chunks are made.
        deadline = time.monotonic() + 10
        while (await ws.status()).synthesizing and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert (await ws.status()).synthesizing == []
    assert re.search(rf"job {job} aborted .*client_disconnected", daemon.log), daemon.log


# --- Piper ---------------------------------------------------------------------------------


@pytest.mark.piper
def test_piper_is_sample_exact_with_deterministic_options(start_daemon) -> None:
    pytest.importorskip("piper")
    from ttsd.engines.piper import PiperEngine

    daemon = start_daemon({"engine": "piper"})
    exact = {"noise_scale": 0.0, "noise_w_scale": 0.0}
    client = client_for(daemon)
    assert "joe" in httpx.get(f"{base_url(daemon)}/audio/voices").json()["voices"]
    piper = PiperEngine()
    piper.load()
    chunks = split_text(TEXT, 300, 120)
    for speed, extra in ((1.0, {}), (1.25, {"length_scale": 0.8})):
        data = client.audio.speech.create(
            model="piper",
            voice="joe",
            input=TEXT,
            response_format="wav",
            speed=speed,
            extra_body={"options": exact},
        ).content
        samples, rate = decode(data)
        expected = np.concatenate([piper.synthesize(c, None, {**exact, **extra}) for c in chunks])
        assert rate == piper.sample_rate
        assert np.array_equal(samples, expected), speed


# --- Socket activation -------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="needs it")
def test_socket_activation_serves_http_as_the_first_connection(
    tmp_path: Path, pulse: PulseServer
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path / "config.toml", {**TONE, "tone": TONE["tone"]})
    env = {
        "HOME": str(tmp_path),
        "XDG_RUNTIME_DIR": str(tmp_path),
        "TTS_CONFIG": str(config),
        **pulse.env(),
    }
    command = ["systemd-socket-activate", "-l", f"127.0.0.1:{port}"]
    for name, value in env.items():
        command += ["-E", f"{name}={value}"]
    activator = subprocess.Popen(
        [*command, sys.executable, "-m", "ttsd", "serve"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=os.getcwd(),
    )
    try:
        deadline = time.monotonic() + 10
        while True:  # until the activator listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/audio/speech",
            json=speech_body(response_format="wav"),
            timeout=30,
        )
        assert response.status_code == 200
        assert np.array_equal(decode(response.content)[0], tone(TEXT))
    finally:
        activator.terminate()
        activator.wait(10)


# --- Encoders, without a daemon -----------------------------------------------------------


@pytest.mark.parametrize("fmt", ["pcm", "wav", "mp3", "flac", "opus"])
def test_each_encoder_hands_out_bytes_before_the_end(fmt: str) -> None:
    """Streaming: a few seconds of audio in pieces give bytes before ``end``."""
    rng = np.random.default_rng(7)
    pcm = (rng.standard_normal(RATE * 4) * 3000).astype(np.int16)  # speech-like density
    encoder = make_encoder(fmt, RATE)
    sizes = [len(encoder.begin())]
    sizes += [len(encoder.encode(piece)) for piece in np.array_split(pcm, 20)]
    before_end = sum(sizes)
    last = encoder.end()
    assert before_end > 0.5 * (before_end + len(last)), (fmt, sizes, len(last))
    # the first audio bytes come within the first second (Opus: one Ogg page, ~1 s)
    first = next(i for i, size in enumerate(sizes[1:], 1) if size)
    assert first <= 6, (fmt, sizes)


# --- Idle exit ------------------------------------------------------------------------------


async def test_idle_exit_waits_for_a_connection_still_sending_its_first_request() -> None:
    """A connection accepted but not yet routed (its request head is still coming) is a
    client arriving: the idle exit stays up for it, serves it, then exits."""
    config = Config(engine="tone", port=0, idle_exit=1.0)
    engine = ToneEngine()
    scheduler = Scheduler(
        settings_of(config),
        EngineHost(lambda: (engine, "test"), name="tone", engine=engine),
        FakeOutput(),
        lambda event: None,
    )
    server = Server(config, scheduler)
    scheduler.start()
    port = await server.start()
    idle = IdleExit(server, scheduler, config.idle_exit)
    loop = asyncio.get_running_loop()
    raw = socket.create_connection(("127.0.0.1", port))
    raw.setblocking(False)
    try:
        await asyncio.sleep(0.2)  # accepted; not a word sent yet
        assert server.arriving and not server.clients
        assert await idle.confirm() is False

        request = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        await loop.sock_sendall(raw, request)
        reply = await asyncio.wait_for(loop.sock_recv(raw, 65536), 10)
        assert reply.startswith(b"HTTP/1.1 200 ")
        raw.close()

        await asyncio.sleep(0.2)
        assert not server.arriving
        assert await idle.confirm() is True
    finally:
        raw.close()
        await scheduler.close()
        await server.close()
