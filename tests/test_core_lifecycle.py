"""Starting, configuring and stopping the daemon."""

from __future__ import annotations

import os

import pytest

from tests.support.daemon import Daemon, DaemonExited
from tests.support.events import wait_for_event
from tests.support.pulse import Recorder
from tests.test_core_aborts import LONG, wait_started
from ttsd import protocol
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
        playing = (await client.speak(LONG)).job
        queued = (await client.speak(LONG)).job
        await wait_started(client, playing)
        assert pacat_children(daemon.pid)
        reply = await client.request("terminate")
        assert isinstance(reply, protocol.Ok) and sorted(reply.aborted or []) == [playing, queued]
        for job in (playing, queued):
            end = await other.wait_for_job(job, timeout=5)
            assert isinstance(end, protocol.Aborted) and end.reason == "terminate"
        with pytest.raises(ClientError):
            while True:
                await other.next_event(timeout=5)
        assert other.close_code == 1001
    assert daemon.wait(10) == 0
    recorder.wait_for_silence(0.3, timeout=5)
    assert pacat_children(daemon.pid) == []


def refused(start_daemon, settings=None, args=(), env=None) -> DaemonExited:
    """Start a daemon that must refuse to start; return how it exited."""
    with pytest.raises(DaemonExited) as exited:
        start_daemon(settings, env=env, args=args, pulse=None)
    return exited.value


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
def test_bad_setting_gives_one_clear_line_and_exit_2(start_daemon, args, env, needle) -> None:
    exited = refused(start_daemon, args=args, env=env)
    assert exited.code == 2
    assert len(exited.lines) == 1 and needle in exited.lines[0], exited.lines


def test_bad_config_file_values_are_named(start_daemon) -> None:
    exited = refused(start_daemon, {"port": "x"})
    assert exited.code == 2 and ": port must be an integer" in exited.lines[0]
    assert "config.toml: port" in exited.lines[0]  # the file is named
    assert "volume must be between" in refused(start_daemon, {"volume": 2.0}).lines[0]
    exited = refused(start_daemon, {"tone": {"loudness": 3}}, env={"TTS_ENGINE": "tone"})
    assert exited.code == 2 and "[tone] settings" in exited.lines[0]


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
        assert isinstance(client.hello, protocol.Hello) and client.hello.protocol == 1


@pytest.mark.piper
async def test_engine_auto_chooses_piper_without_a_gpu_and_says_so(start_daemon) -> None:
    daemon = start_daemon({"engine": "auto"})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        if client.hello.engine["state"] == "loading":
            await wait_for_event(
                client, protocol.EngineState, lambda m: m.info["state"] != "loading", timeout=15
            )
        engine = (await client.status()).engine
        assert engine["name"] == "piper" and engine["state"] == "ready"
        # Why: the choice of auto, said in hello and status (the reason depends on the
        # machine: no GPU, or Chatterbox not installed).
        assert engine["selected"].startswith("auto: ")
        async with await Client.connect("127.0.0.1", daemon.port) as late:
            assert late.hello.engine["name"] == "piper"
            assert late.hello.engine["selected"] == engine["selected"]
    assert f"engine piper selected: {engine['selected']}" in daemon.log
