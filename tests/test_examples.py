"""The Node examples in ``examples/`` against a live daemon, with the audio recorded.

They need Node 20+ (its standard ``WebSocket``); on Node 20/21 the global is behind
``--experimental-websocket``, which these tests pass exactly as the README says.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.events import wait_for_event
from tests.support.expected import played_all, tone
from tests.support.pulse import Recorder, first_audible, last_audible, sound_spans
from ttsd import protocol
from ttsd.client import Client

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def node_command() -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the examples need Node.js 20 or later")
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
    major = int(version.strip().lstrip("v").split(".")[0])
    assert major >= 20, f"the examples need Node.js 20 or later, found {version.strip()}"
    return [node, "--experimental-websocket"] if major < 22 else [node]


class Run:
    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.code, self.stdout, self.stderr = code, stdout, stderr
        self.ended = time.monotonic()


async def start_example(name: str, *args: str, port: int) -> asyncio.subprocess.Process:
    env = {**os.environ, "TTS_PORT": str(port), "TTS_HOST": "127.0.0.1"}
    return await asyncio.create_subprocess_exec(
        *node_command(),
        str(EXAMPLES / name),
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def example(name: str, *args: str, port: int, timeout: float = 30) -> Run:
    process = await start_example(name, *args, port=port)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Run(process.returncode, stdout.decode(), stderr.decode())


# --- speak.mjs -------------------------------------------------------------------------


async def test_speak_plays_and_exits_0_after_finished(daemon: Daemon, recorder: Recorder) -> None:
    text = "Hello from Node. The example waits for its own job."
    run = await example("speak.mjs", *text.split(), port=daemon.port)
    assert run.code == 0, run.stderr
    expected = tone(text)
    recorder.wait_for_silence(0.2)  # parec delivers with a delay under load
    samples = recorder.samples()
    assert played_all(samples, expected), "the example's speech was not recorded"
    last = last_audible(samples)
    assert last is not None
    assert run.ended >= recorder.time_of(last) - 0.05, "exited before the end"


@pytest.mark.piper
async def test_speak_with_piper_records_speech(start_daemon, recorder: Recorder) -> None:
    daemon = start_daemon({"engine": "piper"})
    async with await Client.connect("127.0.0.1", daemon.port) as watcher:
        run = await example("speak.mjs", "Speech from the Node example.", port=daemon.port)
        assert run.code == 0, run.stderr
        finished = next(m for _, m in watcher.messages if isinstance(m, protocol.Finished))
    spans = sound_spans(recorder.samples(), 0.5, recorder.rate)
    assert len(spans) == 1
    heard = (spans[0][1] - spans[0][0]) / recorder.rate
    assert finished.audio_seconds > 1.0
    assert heard == pytest.approx(finished.audio_seconds, abs=0.3)


async def test_speak_reports_errors_and_aborts(start_daemon, recorder: Recorder) -> None:
    daemon = start_daemon({"engine": "tone", "tone": {"ms_per_char": 20.0, "fail_marker": "FAIL"}})
    failed = await example("speak.mjs", "Please FAIL now.", port=daemon.port)
    assert failed.code == 1
    assert "engine_failed: tone engine told to fail on 'FAIL'" in failed.stderr

    refused = await example("speak.mjs", "x" * 30000, port=daemon.port)
    assert refused.code == 1 and "text_too_long" in refused.stderr

    async with await Client.connect("127.0.0.1", daemon.port) as client:
        process = await start_example("speak.mjs", "Long. " * 100, port=daemon.port)
        started = await wait_for_event(client, protocol.Started, timeout=15)
        assert await client.abort_current() == [started.job]
        _, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 3
    assert "aborted (abort_current)" in stderr.decode()


async def test_speak_without_a_daemon_says_so(unused_port: int) -> None:
    run = await example("speak.mjs", "Hello.", port=unused_port)
    assert run.code == 1
    assert f"no ttsd daemon answers at ws://127.0.0.1:{unused_port}" in run.stderr
    assert "ttsd serve" in run.stderr


# --- abort-demo.mjs --------------------------------------------------------------------


async def test_abort_demo_stops_the_speech_3_seconds_after_it_started(
    daemon: Daemon, recorder: Recorder
) -> None:
    run = await example("abort-demo.mjs", port=daemon.port)
    assert run.code == 0, run.stderr
    printed = [protocol.from_json(json.loads(line)) for line in run.stdout.splitlines()]
    assert isinstance(printed[0], protocol.Queued)
    job = printed[0].job
    kinds = [(m.TYPE, m.get("job")) for m in printed]
    assert ("started", job) in kinds and ("aborted", job) in kinds
    assert ("ok", None) in kinds  # the reply to abort_current, printed too
    aborted = next(m for m in printed if isinstance(m, protocol.Aborted))
    assert aborted.reason == "abort_current"
    # Nothing it printed is unknown to the protocol.
    assert not any(isinstance(m, protocol.Unknown) for m in printed), printed

    recorder.wait_for_silence(0.3)
    samples = recorder.samples()
    start, end = first_audible(samples), last_audible(samples)
    assert start is not None and end is not None
    heard = (end - start) / recorder.rate
    assert 2.7 <= heard <= 3.6, f"{heard:.2f} s of sound; the abort came 3 s after started"
    assert played_all(samples, tone(PASSAGE_PREFIX)[: recorder.rate])


#: The passage in abort-demo.mjs begins like this (its first chunk's first second).
PASSAGE_PREFIX = "It was a bright cold day in April, and the clocks were striking thirteen."


# --- terminate.mjs ---------------------------------------------------------------------


async def test_terminate_ends_the_daemon_with_exit_0(daemon: Daemon) -> None:
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        job = (await client.speak("Long. " * 100)).job
        run = await example("terminate.mjs", port=daemon.port)
        assert run.code == 0, run.stderr
        assert f"aborted jobs: [{job}]" in run.stdout
        end = await client.wait_for_job(job, 5)
        assert isinstance(end, protocol.Aborted) and end.reason == "terminate"
    assert daemon.wait(15) == 0


async def test_speak_sends_the_token_when_the_daemon_wants_one(
    start_daemon, recorder: Recorder
) -> None:
    token = "token-for-the-examples-0123456789"
    daemon = start_daemon({"engine": "tone", "auth": "token", "token": token})
    refused = await example("speak.mjs", "Hello.", port=daemon.port)
    assert refused.code == 1 and "set TTS_TOKEN" in refused.stderr
    os.environ["TTS_TOKEN"] = token
    try:
        run = await example("speak.mjs", "With a token.", port=daemon.port)
    finally:
        del os.environ["TTS_TOKEN"]
    assert run.code == 0, run.stderr
    assert played_all(recorder.samples(), tone("With a token."))
