"""Playback failures: a pacat killed from outside, PulseAudio down and back."""

from __future__ import annotations

import os
import signal

from tests.support.events import wait_for_event
from tests.support.expected import tone
from tests.support.pulse import PulseServer, Recorder, find_exact
from tests.test_core_aborts import LONG, NEXT, wait_started
from ttsd import protocol
from ttsd.client import Client


async def test_pacat_killed_from_outside_fails_only_its_job(
    daemon, client: Client, recorder: Recorder
) -> None:
    victim = (await client.speak(LONG)).job
    survivor = (await client.speak(NEXT, options={"frequency": 1000})).job
    await wait_started(client, victim)
    status = await client.status()
    assert status.current is not None and status.current["job"] == victim
    os.kill(status.current["pid"], signal.SIGKILL)

    end = await client.wait_for_job(victim, timeout=5)
    assert isinstance(end, protocol.JobError) and end.code == "playback_failed"
    assert "killed" in end.message
    assert isinstance(await client.wait_for_job(survivor, timeout=10), protocol.Finished)
    assert find_exact(recorder.samples(), tone(NEXT, 1000)) is not None
    assert "Traceback" not in daemon.log and "BrokenPipeError" not in daemon.log


async def test_pulseaudio_down_gives_errors_and_playback_recovers(
    daemon, client: Client, pulse: PulseServer
) -> None:
    pulse.stop()
    failed = (await client.speak(NEXT)).job
    end = await client.wait_for_job(failed, timeout=10)
    assert isinstance(end, protocol.JobError) and end.code == "audio_unavailable"
    assert (await client.status()).audio["state"] == "unavailable"
    # Every client heard of it: an audio_state event, before the job's error.
    lost = await wait_for_event(client, protocol.AudioState, lambda m: m.info["state"] != "ok")
    assert lost.to_json() == {
        "type": "audio_state",
        "state": "unavailable",
        "error": lost.info["error"],
    }
    # Still down: every job says so, and the daemon keeps serving.
    again = (await client.speak(NEXT)).job
    end = await client.wait_for_job(again, timeout=10)
    assert isinstance(end, protocol.JobError) and end.code == "audio_unavailable"

    pulse.start()
    recorder = Recorder(pulse)
    recorder.start()
    try:
        job = (await client.speak(NEXT, options={"frequency": 800})).job
        assert isinstance(await client.wait_for_job(job, timeout=10), protocol.Finished)
        assert find_exact(recorder.samples(), tone(NEXT, 800)) is not None
    finally:
        recorder.stop()
    assert (await client.status()).audio["state"] == "ok"
    back = await wait_for_event(client, protocol.AudioState, lambda m: m.info["state"] == "ok")
    assert back.to_json() == {"type": "audio_state", "state": "ok"}


async def test_daemon_started_without_pulseaudio_serves_and_reports_it(
    start_daemon, pulse: PulseServer
) -> None:
    pulse.stop()
    daemon = start_daemon()
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        if client.hello.audio["state"] == "unknown":  # the startup check is still going
            await client.wait_for(protocol.AudioState, timeout=10)
        status = await client.status()
        assert status.audio["state"] == "unavailable"
        assert "PulseAudio" in status.audio["error"]
        job = (await client.speak(NEXT)).job
        end = await client.wait_for_job(job, timeout=10)
        assert isinstance(end, protocol.JobError) and end.code == "audio_unavailable"
        pulse.start()
        recorder = Recorder(pulse)
        recorder.start()
        try:
            job = (await client.speak(NEXT)).job
            assert isinstance(await client.wait_for_job(job, timeout=10), protocol.Finished)
            assert find_exact(recorder.samples(), tone(NEXT)) is not None
        finally:
            recorder.stop()
    assert "PulseAudio" in daemon.log
