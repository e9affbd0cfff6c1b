"""Faults the daemon survives, each provoked with real processes.

(pacat killed mid-job and PulseAudio restarts are in tests/test_core*.py.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import TONE
from tests.support.daemon import Daemon
from tests.support.events import job_story, kinds, poll
from tests.support.expected import TONE_ENGINE, tone
from tests.support.expected import played_start as played
from tests.support.process import children_named, pacats_of
from tests.support.pulse import Recorder, find_exact, last_audible
from ttsd import protocol
from ttsd.client import Client
from ttsd.scheduler.chunking import split_text


async def test_engine_raising_on_one_chunk_fails_only_that_job(
    start_daemon, recorder: Recorder
) -> None:
    settings = {
        "engine": "tone",
        "chunk_chars": 40,
        "first_chunk_chars": 30,
        "tone": {"ms_per_char": 20.0, "fail_marker": "BOOM"},
    }
    daemon = start_daemon(settings)
    bad = "First part is fine. Then BOOM goes the second part. A third part."
    good = "The next job plays."
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        first = (await client.speak(bad)).job
        second = (await client.speak(good)).job
        end = await client.wait_for_job(first, timeout=10)
        assert isinstance(end, protocol.JobError) and end.code == "engine_failed"
        assert "BOOM" in end.message
        assert isinstance(await client.wait_for_job(second, timeout=10), protocol.Finished)
        # Its first sentence played, then the error: one terminal event, nothing after it.
        assert job_story(client, first, bad, 40, 30) == end
        assert kinds(client, first) == ["queued", "started", "sentence", "error"]
        assert end.spoken_chars == len("First part is fine.")
    recorder.wait_for_silence(0.2)
    recorded = recorder.samples()
    assert played(recorded, tone(good, chunk_chars=40, first_chunk_chars=30), recorder.rate)
    # the chunk before the failure played; nothing of the failed one did
    chunks = split_text(bad, 40, 30)
    assert played(recorded, TONE_ENGINE.synthesize(chunks[0], None, {}), recorder.rate)
    assert daemon.process is not None and daemon.process.poll() is None


async def test_engine_that_fails_to_load_fails_jobs_not_the_daemon(start_daemon) -> None:
    daemon = start_daemon({"engine": "tone", "tone": {"fail_load": True}})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        job = (await client.speak("Anyone there?")).job
        end = await client.wait_for_job(job, timeout=10)
        assert isinstance(end, protocol.JobError) and end.code == "engine_unavailable"
        assert "fail_load" in end.message
        assert kinds(client, job) == ["queued", "error"]
        assert (await client.status()).engine["state"] == "failed"
        assert isinstance(await client.ping(), protocol.Pong)
        job = (await client.speak("Still nobody?")).job
        end = await client.wait_for_job(job, timeout=10)
        assert isinstance(end, protocol.JobError) and end.code == "engine_unavailable"


async def test_job_keeps_playing_after_its_client_disconnects(daemon, recorder: Recorder) -> None:
    text = "This job outlives the client that asked for it."
    async with await Client.connect("127.0.0.1", daemon.port) as observer:
        speaker = await Client.connect("127.0.0.1", daemon.port)
        job = (await speaker.speak(text)).job
        await speaker.wait_for(protocol.Started, job, timeout=5)
        await speaker.close()
        end = await observer.wait_for_job(job, timeout=10)
    assert isinstance(end, protocol.Finished)
    recorder.wait_for_silence(0.2)
    assert played(recorder.samples(), tone(text), recorder.rate)


async def test_cancel_on_disconnect_aborts_the_job_when_its_client_leaves(
    daemon, recorder: Recorder
) -> None:
    text = "This job asked to die with its client, so it is cut short right away. " * 2
    async with await Client.connect("127.0.0.1", daemon.port) as observer:
        speaker = await Client.connect("127.0.0.1", daemon.port)
        job = (await speaker.speak(text, cancel_on_disconnect=True)).job
        queued_too = (await speaker.speak("Queued behind.", cancel_on_disconnect=True)).job
        kept = (await speaker.speak("Kept after all.", options={"frequency": 880})).job
        await speaker.wait_for(protocol.Started, job, timeout=5)
        recorder.wait_for_sound_length(0.3)
        left = time.monotonic()
        await speaker.close()
        end = await observer.wait_for_job(job, timeout=5)
        assert isinstance(end, protocol.Aborted) and end.reason == "client_disconnected"
        queued_end = await observer.wait_for_job(queued_too, timeout=5)
        assert isinstance(queued_end, protocol.Aborted)
        assert queued_end.reason == "client_disconnected"
        assert isinstance(await observer.wait_for_job(kept, timeout=10), protocol.Finished)
    recorder.wait_for_silence(0.2)
    recorded = recorder.samples()
    start = find_exact(recorded, tone(text)[:2205])
    assert start is not None
    kept_tone = TONE_ENGINE.synthesize("Kept after all.", None, {"frequency": 880})
    cut = last_audible(recorded, find_exact(recorded, kept_tone[:2205]))
    assert cut is not None
    assert recorder.time_of(cut) - left < 0.3  # silence came right after the disconnect
    assert (cut - start) / recorder.rate < len(tone(text)) / recorder.rate / 2


async def test_two_hundred_clients_all_receive_every_event(start_daemon) -> None:
    daemon = start_daemon({**TONE, "max_connections": 250})
    clients = await asyncio.gather(
        *(Client.connect("127.0.0.1", daemon.port, timeout=30) for _ in range(200))
    )
    try:
        assert (await clients[0].status()).clients == 200
        texts = {i: f"Message number {i}." for i in (0, 99, 199)}
        jobs = {(await clients[i].speak(text)).job: text for i, text in texts.items()}
        last = list(jobs)[-1]
        ends = await asyncio.gather(*(c.wait_for_job(last, timeout=30) for c in clients))
        assert all(isinstance(e, protocol.Finished) for e in ends)
        for client in clients:
            queued = [m.job for _, m in client.messages if isinstance(m, protocol.Queued)]
            assert queued == list(jobs)
            for job, text in jobs.items():
                assert kinds(client, job) == ["queued", "started", "sentence", "finished"]
                job_story(client, job, text)
                # The same wire objects everywhere (the speaker's queued had an id).
                wire = [
                    {k: v for k, v in m.to_json().items() if k != "id"}
                    for m in client.job_events(job)
                ]
                expected = [
                    {k: v for k, v in m.to_json().items() if k != "id"}
                    for m in clients[0].job_events(job)
                ]
                assert wire == expected
    finally:
        await asyncio.gather(*(c.close() for c in clients))


@pytest.mark.parametrize("how", ["terminate", "sigterm", "sigint"])
@pytest.mark.parametrize("phase", ["generation", "playback"])
async def test_stopping_mid_job_exits_0_sends_stopping_and_leaves_no_pacat(
    start_daemon, recorder: Recorder, tmp_path: Path, how: str, phase: str
) -> None:
    delay = 4000.0 if phase == "generation" else 0.0
    daemon = start_daemon(
        {"engine": "tone", "tone": {"ms_per_char": 20.0, "delay_ms": delay}}, notify=True
    )
    await _stop_mid_job(daemon, recorder, how, phase)
    # The service manager heard the stop, and after it nothing but why.
    assert daemon.notify is not None
    daemon.notify.wait_for(lambda line: line.startswith("STATUS=stopping"))
    lines = daemon.notify.lines()
    assert lines.count("READY=1") == 1 and lines.count("STOPPING=1") == 1, lines
    assert lines.index("READY=1") < lines.index("STOPPING=1")
    reason = "terminate" if how == "terminate" else how.upper()
    assert lines[-2:] == ["STOPPING=1", f"STATUS=stopping ({reason})"], lines


async def _stop_mid_job(daemon: Daemon, recorder: Recorder, how: str, phase: str) -> None:
    """Stop ``daemon`` by ``how`` while a job is in ``phase``; check the exit and pacats."""
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        text = "A long job that will not get to finish. " * 5
        job = (await client.speak(text)).job
        if phase == "playback":
            await client.wait_for(protocol.Started, job, timeout=5)
            recorder.wait_for_sound(timeout=5)
        # The job's stream opens while its first sentence is still being made.
        await poll(lambda: children_named(daemon.pid, "pacat"), timeout=5, what="pacat started")
        if phase == "generation":
            assert kinds(client, job) == ["queued"], "it should still be generating"
        pacats = children_named(daemon.pid, "pacat")
        assert pacats, "the job's pacat stream should be open by now"
        assert set(pacats) <= set(pacats_of(daemon.home))
        if how == "terminate":
            reply = await client.request("terminate")
            assert isinstance(reply, protocol.Ok) and reply.aborted == [job]
        else:
            daemon.signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
        end = await client.wait_for_job(job, timeout=10)
        assert isinstance(end, protocol.Aborted) and end.reason == "terminate"
        assert job_story(client, job, text) == end
        assert await client.wait_closed(timeout=10) == 1001
    assert daemon.wait(timeout=15) == 0
    left = {pid: state for pid, state in pacats_of(daemon.home).items() if state != "Z"}
    assert left == {}, f"pacat left running: {left}"
    for pid in pacats:
        assert not os.path.exists(f"/proc/{pid}") or pacats_of(daemon.home).get(pid) == "Z"
    assert "Traceback" not in daemon.log
