"""Stopping is always clean, with a real engine busy: issue 10's shutdown paths.

The daemon runs as systemd would start it (``systemd-socket-activate``, sd_notify to a
socket the test binds) with Piper making a long text, and is stopped by ``terminate``,
SIGTERM, SIGINT or idle exit while the engine is inside onnxruntime, while playing, or
with jobs queued. Each time: exit status 0 (never a signal: the old daemon died of
SIGABRT here), ``STOPPING=1``, no pacat left, exactly one terminal event per job, and a
stop within 2 s of the request.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.support.daemon import Daemon
from tests.support.events import job_story, poll
from tests.support.process import pacats_of
from ttsd import protocol
from ttsd.client import Client

#: About 900 characters in 10 sentences: a minute of speech, seconds of synthesis.
LONG = "The quick brown fox jumps over the lazy dog near the riverbank while the sun sets. " * 10

PIPER = {"engine": "piper", "idle_exit": 0}

pytestmark = [pytest.mark.piper, pytest.mark.timeout(180)]


def engine_ready(client: Client):  # type: ignore[no-untyped-def]
    async def ready() -> bool:
        return (await client.status()).engine.get("state") == "ready"

    return ready


async def stop(daemon: Daemon, client: Client, how: str) -> float:
    """Ask ``daemon`` to stop by ``how``; return when it was asked."""
    asked = time.monotonic()
    if how == "terminate":
        await client.request("terminate")
    else:
        daemon.signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
    return asked


def check_clean_exit(daemon: Daemon, asked: float) -> None:
    code = daemon.wait(timeout=20)
    stopped = time.monotonic() - asked
    assert code == 0, f"exit status {code}:\n{daemon.log}"
    assert "terminate called" not in daemon.log and "Traceback" not in daemon.log
    assert stopped < 2.0 + 1.0, f"stopped {stopped:.2f} s after being asked"  # +1: reaping
    assert daemon.notify is not None
    lines = daemon.notify.lines()
    assert lines.count("STOPPING=1") == 1 and lines.index("READY=1") < lines.index("STOPPING=1")
    left = {pid: state for pid, state in pacats_of(daemon.home).items() if state != "Z"}
    assert left == {}, f"pacat left running: {left}"


@pytest.mark.parametrize("how", ["terminate", "sigterm", "sigint"])
@pytest.mark.parametrize("when", ["synthesizing", "playing", "queued"])
async def test_stopping_with_piper_busy_exits_0_at_once(start_daemon, how: str, when: str) -> None:
    daemon = start_daemon(PIPER, activate="127.0.0.1", notify=True)
    async with await Client.connect("127.0.0.1", daemon.port, retry_for=10) as client:
        await poll(engine_ready(client), timeout=60, what="Piper loaded")
        jobs = [(await client.speak(LONG)).job]
        if when == "queued":
            jobs += [(await client.speak(LONG)).job for _ in range(2)]
        if when in ("playing", "queued"):
            await client.wait_for(protocol.Started, jobs[0], timeout=60)
            await client.wait_for(protocol.Sentence, jobs[0], timeout=60)
        # "synthesizing": the first sentence is being made by onnxruntime right now.
        asked = await stop(daemon, client, how)
        for job in jobs:
            end = await client.wait_for_job(job, timeout=20)
            assert isinstance(end, protocol.Aborted) and end.reason == "terminate"
            assert job_story(client, job, LONG) == end
    check_clean_exit(daemon, asked)


async def test_idle_exit_after_piper_spoke_is_clean(start_daemon) -> None:
    daemon = start_daemon({**PIPER, "idle_exit": 0.5}, activate="127.0.0.1", notify=True)
    async with await Client.connect("127.0.0.1", daemon.port, retry_for=10) as client:
        job = (await client.speak("Short and done.")).job
        assert isinstance(await client.wait_for_job(job, timeout=60), protocol.Finished)
    asked = time.monotonic()
    await asyncio.to_thread(daemon.wait, 30)
    # Idle exit takes idle_exit seconds by design; the rest must be quick.
    check_clean_exit(daemon, asked + 0.5)
    assert "idle for" in daemon.log
