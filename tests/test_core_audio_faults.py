"""Playback failures: a pacat killed from outside, PulseAudio down and back."""

from __future__ import annotations

import asyncio
import os
import signal

from tests.support.expected import tone
from tests.support.pulse import PulseServer, Recorder, find_exact
from tests.test_core_aborts import LONG, NEXT, wait_started
from ttsd.client import Client


async def test_pacat_killed_from_outside_fails_only_its_job(
    daemon, client: Client, recorder: Recorder
) -> None:
    victim = (await client.speak(LONG))["job"]
    survivor = (await client.speak(NEXT, options={"frequency": 1000}))["job"]
    await wait_started(client, victim)
    status = await client.request("status")
    assert status["current"]["job"] == victim
    os.kill(status["current"]["pid"], signal.SIGKILL)

    end = await client.wait_for_job(victim, timeout=5)
    assert end["type"] == "error" and end["code"] == "playback_failed"
    assert "killed" in end["message"]
    assert (await client.wait_for_job(survivor, timeout=10))["type"] == "finished"
    assert find_exact(recorder.samples(), tone(NEXT, 1000)) is not None
    assert "Traceback" not in daemon.log and "BrokenPipeError" not in daemon.log


async def test_pulseaudio_down_gives_errors_and_playback_recovers(
    daemon, client: Client, pulse: PulseServer
) -> None:
    pulse.stop()
    failed = (await client.speak(NEXT))["job"]
    end = await client.wait_for_job(failed, timeout=10)
    assert end["type"] == "error" and end["code"] == "audio_unavailable"
    status = await client.request("status")
    assert status["audio"]["state"] == "unavailable"
    # Still down: every job says so, and the daemon keeps serving.
    again = (await client.speak(NEXT))["job"]
    assert (await client.wait_for_job(again, timeout=10))["code"] == "audio_unavailable"

    pulse.start()
    recorder = Recorder(pulse)
    recorder.start()
    try:
        job = (await client.speak(NEXT, options={"frequency": 800}))["job"]
        assert (await client.wait_for_job(job, timeout=10))["type"] == "finished"
        assert find_exact(recorder.samples(), tone(NEXT, 800)) is not None
    finally:
        recorder.stop()
    assert (await client.request("status"))["audio"]["state"] == "ok"


async def test_daemon_started_without_pulseaudio_serves_and_reports_it(
    start_daemon, pulse: PulseServer
) -> None:
    pulse.stop()
    daemon = start_daemon()
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        await asyncio.sleep(0.3)  # let the startup check finish
        status = await client.request("status")
        assert status["audio"]["state"] == "unavailable"
        assert "PulseAudio" in status["audio"]["error"]
        job = (await client.speak(NEXT))["job"]
        end = await client.wait_for_job(job, timeout=10)
        assert end["type"] == "error" and end["code"] == "audio_unavailable"
        pulse.start()
        recorder = Recorder(pulse)
        recorder.start()
        try:
            job = (await client.speak(NEXT))["job"]
            assert (await client.wait_for_job(job, timeout=10))["type"] == "finished"
            assert find_exact(recorder.samples(), tone(NEXT)) is not None
        finally:
            recorder.stop()
    assert "PulseAudio" in daemon.log
