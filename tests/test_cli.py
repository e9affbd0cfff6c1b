"""The ``ttsd`` command line against a live daemon, with its audio recorded."""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import signal
import sys
import time
import wave
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest

from tests.support.daemon import Daemon
from tests.support.events import poll, wait_for_event
from tests.support.expected import played_all, tone
from tests.support.pulse import Recorder, audible, last_audible
from ttsd import protocol
from ttsd.client import Client
from ttsd.scheduler.chunking import split_text

LONG = " ".join(["This sentence keeps the tone engine busy for a while."] * 8)  # ~8.6 s

M = TypeVar("M", bound=protocol.Message)


class Result:
    def __init__(self, code: int, stdout: bytes, stderr: bytes, ended: float) -> None:
        self.code = code
        self.stdout = stdout.decode(errors="replace")
        self.raw_stdout = stdout
        self.stderr = stderr.decode()
        self.ended = ended


def cli_env(port: int | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TTS_HOST", "TTS_PORT")}
    if port is not None:
        env["TTS_PORT"] = str(port)
    return {**env, **extra}


async def start_cli(
    *args: str, port: int | None, env: dict[str, str] | None = None, stdin: int | None = None
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ttsd",
        *args,
        env=env or cli_env(port),
        stdin=stdin if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def ttsd(
    *args: str,
    port: int | None,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30,
) -> Result:
    """Run ``python -m ttsd ARGS`` with TTS_PORT=port; return its exit code and output."""
    process = await start_cli(
        *args, port=port, env=env, stdin=asyncio.subprocess.PIPE if input is not None else None
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(input), timeout)
    assert process.returncode is not None
    return Result(process.returncode, stdout, stderr, time.monotonic())


async def wait_for_clients(client: Client, count: int, timeout: float = 10) -> None:
    async def enough() -> bool:
        return (await client.status()).clients >= count

    await poll(enough, timeout, f"{count} clients connected")


async def wait_for_type(client: Client, kind: type[M], job: int | None = None) -> M:
    """The first event of class ``kind`` (for ``job``), received before or after now."""
    return await wait_for_event(client, kind, lambda m: job is None or m.get("job") == job, 15)


# --- say -------------------------------------------------------------------------------


async def test_say_speaks_and_waits_until_finished(daemon: Daemon, recorder: Recorder) -> None:
    text = "Hello from the command line."
    result = await ttsd("say", "Hello", "from", "the", "command", "line.", port=daemon.port)
    assert result.code == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # progress only on a terminal
    expected = tone(text)
    recorder.wait_for_silence(0.2)  # parec delivers with a delay under load
    samples = recorder.samples()
    assert played_all(samples, expected), "the spoken audio was not recorded"
    last = last_audible(samples)
    assert last is not None
    # It returned only after the sound ended (allowing for the recorder's delivery delay).
    assert result.ended >= recorder.time_of(last) - 0.05


async def test_say_reads_stdin(daemon: Daemon, recorder: Recorder) -> None:
    text = "Text from a pipe.\nSecond line."
    result = await ttsd("say", "-", port=daemon.port, input=text.encode())
    assert result.code == 0, result.stderr
    recorder.wait_for_silence(0.2)  # parec delivers with a delay under load
    assert played_all(recorder.samples(), tone(text))


async def test_say_passes_options_and_volume(daemon: Daemon, recorder: Recorder) -> None:
    text = "High pitched."
    result = await ttsd("say", "-o", "frequency=900", text, port=daemon.port)
    assert result.code == 0, result.stderr
    assert played_all(recorder.samples(), tone(text, 900.0))
    assert not played_all(recorder.samples(), tone(text, 440.0))

    before = len(recorder.samples())
    quiet = await ttsd("say", "--volume", "0", "Not heard at all.", port=daemon.port)
    assert quiet.code == 0, quiet.stderr
    assert not audible(recorder.samples()[before:]).any()


async def test_say_no_wait_prints_the_job_id_after_queued(daemon: Daemon) -> None:
    async with await Client.connect("127.0.0.1", daemon.port) as watcher:
        result = await ttsd("say", "--no-wait", LONG, port=daemon.port)
        assert result.code == 0, result.stderr
        job = int(result.stdout.strip())
        queued = await wait_for_type(watcher, protocol.Queued, job)
        assert queued.position == 1
        # The command was back long before the job could end (~8.6 s of audio).
        assert not any(isinstance(m, protocol.Finished) for m in watcher.job_events(job))
        assert (await watcher.abort(job)) == [job]


async def test_say_exit_codes_error_and_aborted(start_daemon, recorder: Recorder) -> None:
    daemon = start_daemon({"engine": "tone", "tone": {"ms_per_char": 20.0, "fail_marker": "FAIL"}})
    failed = await ttsd("say", "This chunk will FAIL.", port=daemon.port)
    assert failed.code == 1
    assert "engine_failed" in failed.stderr and "FAIL" in failed.stderr

    refused = await ttsd("say", "-o", "pitch=3", "Hello.", port=daemon.port)
    assert refused.code == 1
    assert "bad_option" in refused.stderr and "pitch" in refused.stderr

    async with await Client.connect("127.0.0.1", daemon.port) as client:
        process = await start_cli("say", LONG, port=daemon.port)
        started = await wait_for_type(client, protocol.Started)
        assert (await client.abort_current()) == [started.job]
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 3
    assert f"job {started.job} aborted (abort_current)" in stderr.decode()


async def test_say_ctrl_c_aborts_its_job(daemon: Daemon, recorder: Recorder) -> None:
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        process = await start_cli("say", LONG, port=daemon.port)
        started = await wait_for_type(client, protocol.Started)
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
        assert process.returncode == 130, stderr
        aborted = await wait_for_type(client, protocol.Aborted, started.job)
        assert aborted.reason == "abort"


async def test_say_usage_errors_exit_2(daemon: Daemon) -> None:
    for args in (
        ("say",),
        ("say", "--volume", "1.5", "hi"),
        ("say", "-o", "novalue", "hi"),
        ("say", "--no-wait", "--output", "x.wav", "hi"),
        ("say", "--volume", "0.5", "--output", "x.wav", "hi"),
        ("say", "a", "-"),
        ("abort", "3", "--all"),
        ("--port", "99999", "status"),
        ("nosuchcommand",),
    ):
        result = await ttsd(*args, port=daemon.port)
        assert result.code == 2, (args, result.stderr)
        assert "usage:" in result.stderr
    empty = await ttsd("say", "-", port=daemon.port, input=b"  \n")
    assert empty.code == 2 and "stdin was empty" in empty.stderr


async def test_progress_is_shown_on_a_terminal(daemon: Daemon) -> None:
    leader, follower = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ttsd",
            "say",
            "Progress please.",
            env=cli_env(daemon.port),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=follower,
        )
        assert await asyncio.wait_for(process.wait(), 15) == 0
        os.close(follower)
        follower = -1
        shown = b""
        while chunk := await asyncio.to_thread(_read_pty, leader):
            shown += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    text = shown.decode()
    assert "queued" in text and "speaking" in text and "finished" in text, text


def _read_pty(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the terminal's other side is closed and drained
        return b""


# --- say --output ----------------------------------------------------------------------


#: The data size a streaming WAV writer declares when it cannot seek back (a pipe).
TO_THE_END = 0xFFFFFFFF - 36


def read_wav(data: bytes | Path) -> tuple[int, np.ndarray]:
    """Rate and samples of a mono 16-bit WAV file; its sizes must be exact, except that
    a pipe's header says "to the end" (the audio is written as it is made)."""
    source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    with wave.open(source, "rb") as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        frames = wav.readframes(wav.getnframes())
        if isinstance(data, bytes) and wav.getnframes() == TO_THE_END // 2:
            assert len(data) == 44 + len(frames)  # all the rest is audio
        else:
            assert len(frames) == 2 * wav.getnframes()
        return wav.getframerate(), np.frombuffer(frames, dtype="<i2")


async def test_output_writes_the_engines_samples_to_a_wav(
    daemon: Daemon, recorder: Recorder, tmp_path: Path
) -> None:
    text = "Written, not spoken. " * 30  # 30 sentences: 30 chunks, as a speak job has
    path = tmp_path / "speech.wav"
    before = len(recorder.samples())
    result = await ttsd("say", "--output", str(path), "-o", "frequency=700", text, port=daemon.port)
    assert result.code == 0, result.stderr
    rate, samples = read_wav(path)
    assert rate == 22050
    expected = tone(text, 700.0)
    assert len(split_text(text, 300, 120)) == 30
    assert np.array_equal(samples, expected)
    # Half a second more recorded after the command returned (as the server counts
    # time, however late parec delivers): silence all through.
    recorder.wait_for_samples(len(recorder.samples()) + recorder.rate // 2)
    assert not audible(recorder.samples()[before:]).any(), "--output must not play"

    piped = await ttsd("say", "--output", "-", "Short.", port=daemon.port)
    assert piped.code == 0, piped.stderr
    assert np.array_equal(read_wav(piped.raw_stdout)[1], tone("Short."))

    bad_dir = await ttsd("say", "--output", str(tmp_path / "no" / "x.wav"), "Hi.", port=daemon.port)
    assert bad_dir.code == 1 and "cannot write" in bad_dir.stderr


@pytest.mark.piper
async def test_output_with_piper_matches_the_engine_in_process(
    start_daemon, tmp_path: Path
) -> None:
    from ttsd.engines.piper import PiperEngine

    daemon = start_daemon({"engine": "piper"})
    text = "The quick brown fox jumps over the lazy dog. It was not amused."
    path = tmp_path / "piper.wav"
    options = ("-o", "noise_scale=0", "-o", "noise_w_scale=0")
    result = await ttsd("say", *options, "--output", str(path), text, port=daemon.port, timeout=60)
    assert result.code == 0, result.stderr

    engine = PiperEngine()
    engine.load()
    checked = engine.validate_options({"noise_scale": 0, "noise_w_scale": 0})
    chunks = split_text(text, 300, 120)  # the daemon's defaults: a sentence each
    assert len(chunks) == 2
    expected = np.concatenate([engine.synthesize(c, None, checked) for c in chunks])
    rate, samples = read_wav(path)
    assert rate == engine.sample_rate == 22050
    assert len(samples) > rate  # real speech, over a second of it
    assert np.array_equal(samples, expected)

    voices = await ttsd("voices", port=daemon.port)
    assert voices.code == 0 and "joe" in voices.stdout.split()
    assert "joe" in json.loads((await ttsd("voices", "--json", port=daemon.port)).stdout)


# --- abort, status, events, voices, terminate ----------------------------------------


async def test_abort_current_job_and_all(daemon: Daemon, client: Client) -> None:
    first, second, third, fourth = [(await client.speak(LONG)).job for _ in range(4)]
    await wait_for_type(client, protocol.Started, first)

    async def reason(job: int) -> str:
        end = await client.wait_for_job(job, 5)
        assert isinstance(end, protocol.Aborted), end
        return end.reason

    result = await ttsd("abort", str(third), port=daemon.port)
    assert (result.code, result.stdout) == (0, f"{third}\n")
    assert await reason(third) == "abort"

    result = await ttsd("abort", port=daemon.port)
    assert (result.code, result.stdout) == (0, f"{first}\n")
    assert await reason(first) == "abort_current"

    await wait_for_type(client, protocol.Started, second)
    result = await ttsd("abort", "--all", port=daemon.port)
    assert (result.code, result.stdout.split()) == (0, [str(second), str(fourth)])
    for job in (second, fourth):
        assert await reason(job) == "abort_all"

    idle = await ttsd("abort", port=daemon.port)
    assert (idle.code, idle.stdout) == (0, "")
    assert "nothing was playing" in idle.stderr
    ended = await ttsd("abort", str(first), port=daemon.port)
    assert (ended.code, ended.stdout) == (0, "")
    assert "already ended" in ended.stderr
    unknown = await ttsd("abort", "999", port=daemon.port, timeout=20)
    assert unknown.code == 1 and "unknown_job" in unknown.stderr


async def test_status_human_and_json(daemon: Daemon, client: Client) -> None:
    playing = (await client.speak(LONG)).job
    waiting = (await client.speak("Waiting in line.")).job
    await wait_for_type(client, protocol.Started, playing)

    human = await ttsd("status", port=daemon.port)
    assert human.code == 0, human.stderr
    assert "engine:  tone (ready, 22050 Hz)" in human.stdout
    assert f"playing: job {playing} (playing" in human.stdout
    assert f"2. job {waiting} (queued" in human.stdout

    raw = await ttsd("status", "--json", port=daemon.port)
    status = protocol.from_json(json.loads(raw.stdout))  # the wire object, as printed
    assert isinstance(status, protocol.StatusReply) and status.id is None
    assert status.current is not None and status.current["job"] == playing
    assert [(j["job"], j["position"]) for j in status.queue] == [(waiting, 2)]
    assert status.clients == 2 and status.paused is False and status.synthesizing == []
    await client.abort_all()


async def test_events_prints_json_lines_until_interrupted(daemon: Daemon, client: Client) -> None:
    process = await start_cli("events", port=daemon.port)
    await wait_for_clients(client, 2)
    job = await client.speak("Watched by events.")
    await client.wait_for_job(job.job, 10)
    assert process.stdout is not None
    lines = [json.loads(await asyncio.wait_for(process.stdout.readline(), 5)) for _ in range(4)]
    # Each line is the event as it came on the wire: what this client got, bar the id.
    mine = [m.to_json() for m in client.job_events(job.job)]
    assert lines == [{k: v for k, v in mine[0].items() if k != "id"}, *mine[1:]]
    assert [e["type"] for e in lines] == ["queued", "started", "sentence", "finished"]
    assert lines[0]["position"] == 1 and "id" not in lines[0]
    process.send_signal(signal.SIGINT)
    await asyncio.wait_for(process.wait(), 10)
    assert process.returncode == 0


async def test_events_ends_when_the_daemon_stops(daemon: Daemon) -> None:
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        process = await start_cli("events", port=daemon.port)
        await wait_for_clients(client, 2)
        daemon.signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 15)
    assert process.returncode == 0  # a clean close (1001 going away) is a normal end


async def test_terminate_stops_the_daemon(daemon: Daemon, client: Client) -> None:
    job = (await client.speak(LONG)).job
    await wait_for_type(client, protocol.Started, job)
    result = await ttsd("terminate", port=daemon.port)
    assert result.code == 0, result.stderr
    assert daemon.wait(15) == 0
    end = await client.wait_for_job(job, 5)
    assert isinstance(end, protocol.Aborted) and end.reason == "terminate"


async def test_voices_of_the_tone_engine_is_empty(daemon: Daemon) -> None:
    result = await ttsd("voices", "--json", port=daemon.port)
    assert (result.code, json.loads(result.stdout)) == (0, [])


# --- addresses and a missing daemon ---------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("say", "hi"), ("abort",), ("status",), ("events",), ("terminate",), ("voices",)],
)
async def test_no_daemon_gives_one_clear_line(args: tuple[str, ...], unused_port: int) -> None:
    result = await ttsd(*args, port=unused_port)
    assert result.code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{unused_port}" in lines[0] and "ttsd serve" in lines[0]


async def test_host_and_port_flags_override_the_environment(
    daemon: Daemon, unused_port: int
) -> None:
    for args in (
        ("--port", str(daemon.port), "status", "--json"),
        ("status", "--json", "--port", str(daemon.port)),
        ("--host", "localhost", "--port", str(daemon.port), "status", "--json"),
    ):
        result = await ttsd(*args, port=unused_port)
        assert result.code == 0, (args, result.stderr)
        assert json.loads(result.stdout)["type"] == "status"
    env = cli_env(None, TTS_HOST="127.0.0.1", TTS_PORT=str(daemon.port))
    assert (await ttsd("status", port=None, env=env)).code == 0
    wrong_host = await ttsd("--host", "127.0.0.2", "status", port=daemon.port)
    assert wrong_host.code == 1 and "127.0.0.2" in wrong_host.stderr
