"""The defects of issue 11, each reproduced the way it was found, with real parts.

Each test failed on the code before its fix: a frozen PulseAudio, runaway synthesis,
lone surrogates, memory, shutdown details, audio state, wrong answers, small things.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, DaemonExited
from tests.support.pulse import PulseServer, Recorder
from tests.test_cli import cli_env, ttsd
from ttsd import protocol
from ttsd.client import Audio, Client, RequestFailed

TONE = {"engine": "tone", "tone": {"ms_per_char": 20.0}}
LONG = "A long sentence that takes the tone engine a while to play out. " * 4
PIPER_EXACT = {"noise_scale": 0.0, "noise_w_scale": 0.0}

pytestmark = pytest.mark.timeout(180)


async def wait_until(condition, timeout: float = 20.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        await asyncio.sleep(0.05)


async def error_reply(client: Client, frame: str) -> protocol.ErrorReply:
    """Send a raw ``frame``; return the error reply it gets (within 5 s)."""
    before = len(client.messages)
    await client.send_raw(frame)
    deadline = time.monotonic() + 5
    while True:
        for _, message in client.messages[before:]:
            if isinstance(message, protocol.ErrorReply):
                return message
        assert time.monotonic() < deadline, "no error reply"
        await asyncio.sleep(0.01)


# --- 1. A frozen PulseAudio hangs neither jobs nor shutdown -------------------------------


async def test_a_frozen_sound_server_fails_the_job_and_never_holds_up_shutdown(
    start_daemon, pulse: PulseServer
) -> None:
    daemon = start_daemon({**TONE, "stall_timeout": 1.0})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        job = (await client.speak(LONG)).job
        await client.wait_for(protocol.Started, job, timeout=30)
        assert pulse.process is not None
        pulse.process.send_signal(signal.SIGSTOP)
        try:
            end = await client.wait_for_job(job, timeout=30)
            assert isinstance(end, protocol.JobError) and end.code == "playback_stalled"
            # Jobs behind it end too, and shutdown does not wait for the server.
            later = (await client.speak("Later.")).job
            end = await client.wait_for_job(later, timeout=30)
            assert isinstance(end, protocol.JobError)
            assert end.code in ("playback_stalled", "audio_unavailable")
            stopped = time.monotonic()
            daemon.signal(signal.SIGTERM)
            assert await asyncio.to_thread(daemon.wait, 15) == 0
            assert time.monotonic() - stopped < 5, "shutdown waited on the frozen server"
        finally:
            pulse.process.send_signal(signal.SIGCONT)
    assert "Traceback" not in daemon.log


async def test_after_the_server_is_resumed_jobs_play_again(
    start_daemon, pulse: PulseServer, recorder: Recorder
) -> None:
    daemon = start_daemon({**TONE, "stall_timeout": 1.0})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        assert pulse.process is not None
        pulse.process.send_signal(signal.SIGSTOP)
        try:
            job = (await client.speak("While frozen.")).job
            end = await client.wait_for_job(job, timeout=30)
            assert isinstance(end, protocol.JobError)
        finally:
            pulse.process.send_signal(signal.SIGCONT)
        job = (await client.speak("After the thaw.")).job
        assert isinstance(await client.wait_for_job(job, timeout=30), protocol.Finished)


# --- 2. synthesize is bounded, cancellable, and shares the engine -------------------------


async def test_a_disconnected_clients_syntheses_stop(start_daemon) -> None:
    daemon = start_daemon({"engine": "tone", "tone": {"ms_per_char": 20.0, "delay_ms": 200.0}})
    async with await Client.connect("127.0.0.1", daemon.port) as watcher:
        greedy = await Client.connect("127.0.0.1", daemon.port)
        for _ in range(2):
            await greedy.send_raw(json.dumps({"type": "synthesize", "text": LONG * 5}))

        async def synthesizing() -> bool:
            return len((await watcher.status()).synthesizing) == 2

        await wait_until(synthesizing, what="two syntheses in progress")
        await greedy.close()

        async def none_left() -> bool:
            return not (await watcher.status()).synthesizing

        await wait_until(none_left, timeout=10, what="the syntheses aborted")


async def test_a_streamed_synthesis_has_a_job_that_abort_ends(start_daemon) -> None:
    daemon = start_daemon({"engine": "tone", "tone": {"ms_per_char": 20.0, "delay_ms": 100.0}})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        # Different sentences: a repeated one would come from the phrase cache at once.
        text = " ".join(f"Sentence number {n} of the streamed text." for n in range(20))
        stream = await client.stream_audio(text)
        assert await client.abort(stream.job) == [stream.job]
        with pytest.raises(RequestFailed) as exc:
            async for _ in stream:
                pass
        assert exc.value.code == "aborted"
        assert stream.end is not None and stream.end.outcome == "aborted"


async def test_speaking_jobs_are_not_held_up_behind_another_clients_syntheses(
    start_daemon,
) -> None:
    # Each chunk takes 150 ms to make; 2 clients ask for 40 chunks each.
    daemon = start_daemon(
        {
            "engine": "tone",
            "max_synthesize_per_client": 2,
            "tone": {"ms_per_char": 20.0, "delay_ms": 150.0},
        }
    )
    sentences = " ".join(f"Sentence number {n} of many." for n in range(40))
    async with await Client.connect("127.0.0.1", daemon.port) as speaker:
        greedy = [await Client.connect("127.0.0.1", daemon.port) for _ in range(2)]
        for client in greedy:
            for _ in range(2):
                await client.send_raw(json.dumps({"type": "synthesize", "text": sentences}))
        with pytest.raises(RequestFailed) as exc:  # the per-client limit
            await greedy[0].synthesize("One more.")
        assert exc.value.code == "client_queue_full"
        job = (await speaker.speak("Me first, please.")).job
        await speaker.wait_for(protocol.Started, job, timeout=30)
        # Started while the 160 chunks of the syntheses are far from made.
        status = await speaker.status()
        assert len(status.synthesizing) == 4
        for client in greedy:
            await client.close()


# --- 3. A lone surrogate gets an error with the id at once --------------------------------


async def test_a_lone_surrogate_is_refused_with_the_requests_id(client: Client) -> None:
    reply = await error_reply(client, '{"type": "speak", "id": 77, "text": "abc\\ud800def"}')
    assert reply.id == 77 and reply.code == "bad_request" and "surrogate" in reply.message


async def test_the_cli_decodes_latin1_input_with_replacement_and_says_so(
    daemon: Daemon,
) -> None:
    result = await ttsd("say", "-", port=daemon.port, input=b"caf\xe9 au lait.")
    assert result.code == 0, result.stderr
    assert "not valid utf-8" in result.stderr.lower() and "replaced" in result.stderr


# --- 4. Memory is bounded per engine call --------------------------------------------------


@pytest.mark.piper
async def test_long_numbers_keep_the_daemons_memory_under_its_ceiling(start_daemon) -> None:
    daemon = start_daemon({"engine": "piper"})
    numbers = (
        "My numbers are 12345678901234567890 and 98765432109876543210 and "
        "11223344556677889900 and 55555555555555555555 and 31415926535897932384 okay."
    )
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        for text, options in ((numbers, {}), (("987654321 " * 30).strip(), {"length_scale": 2.0})):
            audio = await client.synthesize(text, options=options, timeout=300)
            assert audio.seconds > 30
    status = Path(f"/proc/{daemon.pid}/status").read_text()
    peak_kib = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    assert peak_kib < 800 * 1024, f"peak RSS {peak_kib // 1024} MiB (docs/benchmarks.md: 800)"


# --- 5. Shutdown details -------------------------------------------------------------------


async def test_a_synthesis_in_progress_at_terminate_gets_shutting_down(start_daemon) -> None:
    daemon = start_daemon({"engine": "tone", "tone": {"ms_per_char": 20.0, "delay_ms": 300.0}})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        synthesis = asyncio.ensure_future(client.synthesize(LONG * 3))

        async def running() -> bool:
            return bool((await client.status()).synthesizing)

        await wait_until(running, what="the synthesis")
        async with await Client.connect("127.0.0.1", daemon.port) as other:
            await other.request("terminate")
        with pytest.raises(RequestFailed) as exc:
            await synthesis
        assert exc.value.code == "shutting_down"
    assert await asyncio.to_thread(daemon.wait, 10) == 0


async def test_speak_after_an_acknowledged_terminate_is_refused(daemon: Daemon) -> None:
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        frames = [
            json.dumps({"type": "terminate", "id": 1}),
            json.dumps({"type": "speak", "id": 2, "text": "Too late."}),
        ]
        for frame in frames:
            await client.send_raw(frame)
        await client.wait_closed(10)
        replies = {m.get("id"): m for _, m in client.messages if m.get("id") is not None}
    assert isinstance(replies[1], protocol.Ok)
    assert isinstance(replies[2], protocol.ErrorReply) and replies[2].code == "shutting_down"


async def test_a_client_that_never_answers_the_close_does_not_delay_shutdown(
    daemon: Daemon,
) -> None:
    # A raw WebSocket client that completes the handshake and then reads nothing.
    mute = socket.create_connection(("127.0.0.1", daemon.port))
    mute.sendall(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert b"101" in mute.recv(4096)
    try:
        async with await Client.connect("127.0.0.1", daemon.port) as client:
            asked = time.monotonic()
            await client.request("terminate")
        assert await asyncio.to_thread(daemon.wait, 15) == 0
        assert time.monotonic() - asked < 4.0, "a mute client held the shutdown up"
    finally:
        mute.close()


async def test_a_second_ctrl_c_while_stopping_is_only_logged(start_daemon) -> None:
    daemon = start_daemon({"engine": "tone", "tone": {"ms_per_char": 20.0, "delay_ms": 800.0}})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        await client.speak(LONG)
    daemon.signal(signal.SIGINT)
    daemon.signal(signal.SIGINT)
    assert await asyncio.to_thread(daemon.wait, 15) == 0
    assert "Traceback" not in daemon.log and "KeyboardInterrupt" not in daemon.log


# --- 6. Audio state is noticed at once -------------------------------------------------------


async def test_pulseaudio_dying_is_announced_at_once_and_its_return_too(
    start_daemon, pulse: PulseServer
) -> None:
    daemon = start_daemon(TONE)
    async with await Client.connect("127.0.0.1", daemon.port) as client:

        async def audio_ok() -> bool:
            return (await client.status()).audio.get("state") == "ok"

        await wait_until(audio_ok, what="audio ok")
        job = (await client.speak(LONG)).job
        await client.wait_for(protocol.Started, job, timeout=30)
        seen = len(client.messages)  # an audio_state "ok" may have come before the stop
        pulse.stop()

        def audio_events_since() -> list[protocol.AudioState]:
            return [m for _, m in client.messages[seen:] if isinstance(m, protocol.AudioState)]

        async def announced() -> bool:
            return bool(audio_events_since())

        await wait_until(announced, timeout=10, what="an audio_state event after the stop")
        down = audio_events_since()[0]
        assert down.info["state"] == "unavailable"
        end = await client.wait_for_job(job, timeout=30)
        assert isinstance(end, protocol.JobError)
        assert end.code in ("audio_unavailable", "playback_failed")
        assert (await client.status()).audio["state"] == "unavailable"
        pulse.start()

        async def back() -> bool:
            states = [m for _, m in client.messages if isinstance(m, protocol.AudioState)]
            return bool(states) and states[-1].info["state"] == "ok"

        await wait_until(back, timeout=20, what="an audio_state ok event")
        job = (await client.speak("Back.")).job
        assert isinstance(await client.wait_for_job(job, timeout=30), protocol.Finished)


# --- 7-12. Wrong or misleading answers ---------------------------------------------------------


async def test_status_counts_chunks_made_not_started(start_daemon) -> None:
    # 300 ms to make each second of speech: playback starts after the first sentence.
    daemon = start_daemon({"engine": "tone", "tone": {"ms_per_char": 20.0, "delay_ms": 300.0}})
    sentences = [f"Sentence {n} lasts for a second with the tone engine." for n in range(4)]
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        job = (await client.speak(" ".join(sentences))).job
        await client.wait_for(protocol.Started, job, timeout=30)
        current = (await client.status()).current
        assert current is not None and current["chunks"] == 4
        # Playing means the first chunk is made; the second is at most in progress.
        assert 1 <= current["generated"] <= 2
        await client.wait_for_job(job, timeout=30)


async def test_clients_find_the_daemon_through_its_config_file(
    start_daemon, unused_port: int
) -> None:
    daemon = start_daemon({**TONE, "port": unused_port})
    env = {k: v for k, v in cli_env(None).items() if k != "TTS_PORT"}
    env["TTS_CONFIG"] = str(daemon.config_path)
    result = await ttsd("status", port=None, env=env)
    assert result.code == 0 and "engine:  tone" in result.stdout, result.stderr
    node = await asyncio.create_subprocess_exec(
        "node",
        "--experimental-websocket",
        "examples/speak.mjs",
        "From Node.",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(node.communicate(), 60)
    assert node.returncode == 0, stderr


async def test_the_daemon_ignores_the_clients_token_variable(start_daemon) -> None:
    daemon = start_daemon(TONE, env={"TTS_TOKEN": "mysecret"})
    async with await Client.connect("127.0.0.1", daemon.port, token="") as client:
        assert client.hello.auth is None


async def test_auth_with_auth_none_authenticates_nothing_and_a_null_id_is_bad(
    client: Client,
) -> None:
    reply = await client.request("auth", token="abc")
    assert isinstance(reply, protocol.Ok) and reply.authenticated is False
    error = await error_reply(client, '{"type": "ping", "id": null}')
    assert error.code == "bad_request" and error.id is None


async def test_a_missing_default_piper_voice_stops_the_daemon_with_one_line(
    start_daemon, tmp_path: Path
) -> None:
    with pytest.raises(DaemonExited) as exc:
        start_daemon({"engine": "piper", "piper": {"voice": str(tmp_path / "nowhere.onnx")}})
    assert exc.value.code == 2
    lines = [line for line in exc.value.lines if line.strip()]
    assert len(lines) == 1 and "nowhere.onnx" in lines[0]


@pytest.mark.piper
async def test_voices_lists_only_voices_that_can_load(start_daemon, tmp_path: Path) -> None:
    voices = tmp_path / "voices"
    voices.mkdir()
    (voices / "broken.onnx").write_bytes(b"not a model, and no config beside it")
    daemon = start_daemon({"engine": "piper", "voices_dir": str(voices)})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        assert await client.voices() == ["joe"]


async def test_auto_without_a_gpu_never_imports_torch_and_says_why(start_daemon) -> None:
    daemon = start_daemon({"engine": "auto"})
    async with await Client.connect("127.0.0.1", daemon.port) as client:

        async def chosen() -> bool:
            return (await client.status()).engine["state"] != "loading"

        await wait_until(chosen, timeout=60, what="the engine chosen and loaded")
        status = await client.status()
    assert status.engine["name"] == "piper"
    assert "auto:" in status.engine["selected"] and "GPU" in status.engine["selected"]
    maps = Path(f"/proc/{daemon.pid}/maps").read_text()
    assert "libtorch" not in maps and "torch/lib" not in maps


# --- 14-15. Logs and small things -------------------------------------------------------------


async def test_a_flood_of_refused_requests_is_logged_once_per_burst(start_daemon) -> None:
    daemon = start_daemon({**TONE, "max_requests_per_second": 5})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        for number in range(200):
            await client.send_raw(json.dumps({"type": "ping", "id": number}))
        while sum(1 for _, m in client.messages if m.get("id") is not None) < 200:
            await asyncio.sleep(0.02)
    refused = [line for line in daemon.lines if "requests per second" in line]
    assert len(refused) == 1, refused


async def test_abort_heavy_work_leaves_no_unknown_child_warnings(client: Client, daemon) -> None:
    for _ in range(5):
        job = (await client.speak(LONG)).job
        await client.wait_for(protocol.Started, job, timeout=30)
        await client.abort(job)
        await client.wait_for_job(job, timeout=10)
    assert not any("Unknown child process" in line for line in daemon.lines)
    aborted = [line for line in daemon.lines if re.search(r"job \d+ aborted", line)]
    assert aborted and all("heard" in line for line in aborted)


async def test_output_to_a_missing_directory_is_one_line_without_a_traceback(
    daemon: Daemon,
) -> None:
    result = await ttsd("say", "--output", "/nonexistent/x.wav", "Hi.", port=daemon.port)
    assert result.code == 1
    assert "Traceback" not in result.stderr and "/nonexistent/x.wav" in result.stderr


async def test_conflicting_options_print_the_subcommands_usage(daemon: Daemon) -> None:
    result = await ttsd("say", "--output", "x.wav", "--no-wait", "Hi.", port=daemon.port)
    assert result.code == 2
    assert result.stderr.startswith("usage: ttsd say"), result.stderr


def test_printing_audio_does_not_dump_its_bytes() -> None:
    text = repr(Audio(b"\x01\x02" * 22050, 22050, job=3))
    assert text == "Audio(1.00 s at 22050 Hz, job=3)"


async def test_the_readme_python_example_runs_as_a_script(daemon: Daemon, tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("### Python") :]
    script = section[section.index("```python\n") + 10 : section.index("```\n", 12)]
    (tmp_path / "example.py").write_text(script)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(tmp_path / "example.py"),
        cwd=tmp_path,
        env={**cli_env(daemon.port)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    assert b"Finished(" in stdout and (tmp_path / "hi.wav").is_file()


async def test_serve_takes_allowed_origins(start_daemon) -> None:
    daemon = start_daemon(TONE, args=("--allowed-origins", "http://app.example:8080"))
    async with await Client.connect(
        "127.0.0.1", daemon.port, origin="http://app.example:8080"
    ) as client:
        assert client.hello.engine["name"] == "tone"


@pytest.mark.piper
async def test_speaker_id_on_a_single_speaker_voice_is_an_error(start_daemon) -> None:
    daemon = start_daemon({"engine": "piper"})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        job = (await client.speak("Hello.", options={"speaker_id": 3})).job
        end = await client.wait_for_job(job, timeout=60)
    assert isinstance(end, protocol.JobError) and end.code == "bad_option"
    assert "speaker" in end.message


def test_bench_plot_has_its_library() -> None:
    import matplotlib  # installed by tests/run.sh (the bench extra), for `bench --plot`

    assert matplotlib.__version__
    assert os.path.isfile(Path(__file__).parent.parent / "bench" / "report.py")
