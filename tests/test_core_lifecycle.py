"""Starting, configuring and stopping the daemon."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from tests.support.daemon import Daemon
from tests.support.pulse import Recorder
from tests.test_core_aborts import LONG, wait_started
from ttsd.client import Client, ClientError


def pacat_children(pid: int) -> list[int]:
    """pacat processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/comm") as comm:
                name = comm.read().strip()
        except OSError:
            continue
        if name == "pacat" and int(fields[1]) == pid:
            found.append(int(entry))
    return found


async def test_terminate_aborts_everything_closes_1001_and_exits_0(
    daemon: Daemon, recorder: Recorder
) -> None:
    async with (
        await Client.connect("127.0.0.1", daemon.port) as client,
        await Client.connect("127.0.0.1", daemon.port) as other,
    ):
        playing = (await client.speak(LONG))["job"]
        queued = (await client.speak(LONG))["job"]
        await wait_started(client, playing)
        assert pacat_children(daemon.pid)
        reply = await client.request("terminate")
        assert reply["type"] == "ok" and sorted(reply["aborted"]) == [playing, queued]
        for job in (playing, queued):
            end = await other.wait_for_job(job, timeout=5)
            assert (end["type"], end["reason"]) == ("aborted", "terminate")
        with pytest.raises(ClientError):
            while True:
                await other.next_event(timeout=5)
        assert other.close_code == 1001
    assert daemon.wait(10) == 0
    recorder.wait_for_silence(0.3, timeout=5)
    assert pacat_children(daemon.pid) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signals_stop_cleanly_with_exit_0(
    daemon: Daemon, recorder: Recorder, signum: int
) -> None:
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        job = (await client.speak(LONG))["job"]
        await wait_started(client, job)
        daemon.signal(signum)
        end = await client.wait_for_job(job, timeout=5)
        assert (end["type"], end["reason"]) == ("aborted", "terminate")
    assert daemon.wait(10) == 0
    assert "Traceback" not in daemon.log


def run_serve(
    tmp_path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TTS_")}
    base.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"))
    return subprocess.run(
        [sys.executable, "-m", "ttsd", "serve", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (("--port", "eighty"), {}, "--port: port must be an integer"),
        ((), {"TTS_PORT": "70000"}, "TTS_PORT: port must be a port number"),
        ((), {"TTS_ENGINE": "espeak"}, "TTS_ENGINE: engine must be one of"),
        (("--log-level", "loud"), {}, "--log-level: log_level must be one of"),
        ((), {"TTS_CONFIG": "/nonexistent/ttsd.toml"}, "TTS_CONFIG: no such file"),
    ],
)
def test_bad_setting_gives_one_clear_line_and_exit_2(tmp_path, args, env, needle) -> None:
    result = run_serve(tmp_path, *args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_bad_config_file_values_are_named(tmp_path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('port = "x"\n')
    result = run_serve(tmp_path, env={"TTS_CONFIG": str(config)})
    assert result.returncode == 2 and f"{config}: port must be an integer" in result.stderr
    config.write_text("volume = 2.0\n")
    assert "volume must be between" in run_serve(tmp_path, env={"TTS_CONFIG": str(config)}).stderr
    config.write_text("[tone]\nloudness = 3\n")
    result = run_serve(tmp_path, env={"TTS_CONFIG": str(config), "TTS_ENGINE": "tone"})
    assert result.returncode == 2 and "[tone] settings" in result.stderr


def test_precedence_flags_over_env_over_file(tmp_path) -> None:
    from ttsd.config import load_config

    config = tmp_path / "c.toml"
    config.write_text('port = 1000\nhost = "127.0.0.2"\nengine = "tone"\n')
    loaded = load_config({"TTS_CONFIG": str(config), "TTS_PORT": "2000"}, {"host": "::1"})
    assert (loaded.port, loaded.host, loaded.engine) == (2000, "::1", "tone")
    assert load_config({"TTS_CONFIG": str(config)}).port == 1000


async def test_default_port_is_11500_and_logged(start_daemon) -> None:
    daemon = start_daemon({"engine": "tone", "port": 11500})
    assert daemon.port == 11500
    assert "listening on port 11500" in daemon.log
    async with await Client.connect() as client:  # the client's defaults find it
        assert client.hello["type"] == "hello"


@pytest.mark.piper
async def test_engine_auto_chooses_piper_without_a_gpu_and_says_so(start_daemon) -> None:
    daemon = start_daemon({"engine": "auto"})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        for _ in range(300):
            engine = (await client.request("status"))["engine"]
            if engine["state"] != "loading":
                break
            await asyncio.sleep(0.05)
        assert engine["name"] == "piper" and engine["state"] == "ready"
        async with await Client.connect("127.0.0.1", daemon.port) as late:
            assert late.hello["engine"]["name"] == "piper"
    assert "engine auto: chose piper" in daemon.log
