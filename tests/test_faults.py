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
from tests.support.expected import TONE_ENGINE, tone
from tests.support.expected import played_start as played
from tests.support.notify import NotifyListener
from tests.support.pulse import Recorder, find_exact, last_audible
from ttsd.client import Client
from ttsd.scheduler.chunking import split_text


def pacats_of(home: Path) -> dict[int, str]:
    """pacat processes started by the daemon living in ``home`` (found by their
    environment, so they are found even after the daemon died): pid -> state."""
    found = {}
    marker = f"XDG_RUNTIME_DIR={home}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "pacat":
                continue
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
        except OSError:  # it exited while we looked
            continue
        found[int(entry.name)] = stat.rsplit(")", 1)[1].split()[0]
    return found


def children_named(pid: int, name: str) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if comm == name and ppid == pid:
            kids.append(int(entry.name))
    return kids


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
        first = (await client.speak(bad))["job"]
        second = (await client.speak(good))["job"]
        end = await client.wait_for_job(first, timeout=10)
        assert end["type"] == "error" and end["code"] == "engine_failed"
        assert "BOOM" in end["message"]
        assert (await client.wait_for_job(second, timeout=10))["type"] == "finished"
        assert [m["type"] for m in client.job_events(first)].count("error") == 1
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
        job = (await client.speak("Anyone there?"))["job"]
        end = await client.wait_for_job(job, timeout=10)
        assert end["type"] == "error" and end["code"] == "engine_unavailable"
        assert "fail_load" in end["message"]
        status = await client.request("status")
        assert status["engine"]["state"] == "failed"
        assert (await client.request("ping"))["type"] == "pong"
        job = (await client.speak("Still nobody?"))["job"]
        assert (await client.wait_for_job(job, timeout=10))["type"] == "error"


async def test_job_keeps_playing_after_its_client_disconnects(daemon, recorder: Recorder) -> None:
    text = "This job outlives the client that asked for it."
    async with await Client.connect("127.0.0.1", daemon.port) as observer:
        speaker = await Client.connect("127.0.0.1", daemon.port)
        job = (await speaker.speak(text))["job"]
        await speaker.next_event(timeout=5)  # started
        await speaker.close()
        end = await observer.wait_for_job(job, timeout=10)
    assert end["type"] == "finished"
    recorder.wait_for_silence(0.2)
    assert played(recorder.samples(), tone(text), recorder.rate)


async def test_cancel_on_disconnect_aborts_the_job_when_its_client_leaves(
    daemon, recorder: Recorder
) -> None:
    text = "This job asked to die with its client, so it is cut short right away. " * 2
    async with await Client.connect("127.0.0.1", daemon.port) as observer:
        speaker = await Client.connect("127.0.0.1", daemon.port)
        job = (await speaker.speak(text, cancel_on_disconnect=True))["job"]
        queued_too = (await speaker.speak("Queued behind.", cancel_on_disconnect=True))["job"]
        kept = (await speaker.speak("Kept after all.", options={"frequency": 880}))["job"]
        assert (await speaker.next_event(timeout=5))["type"] == "started"
        await asyncio.sleep(0.3)
        left = time.monotonic()
        await speaker.close()
        end = await observer.wait_for_job(job, timeout=5)
        assert end == {**end, "type": "aborted", "reason": "client_disconnected"}
        assert (await observer.wait_for_job(queued_too, timeout=5))["type"] == "aborted"
        assert (await observer.wait_for_job(kept, timeout=10))["type"] == "finished"
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
        status = await clients[0].request("status")
        assert status["clients"] == 200
        jobs = [(await clients[i].speak(f"Message number {i}."))["job"] for i in (0, 99, 199)]
        ends = await asyncio.gather(*(c.wait_for_job(jobs[-1], timeout=30) for c in clients))
        assert all(e["type"] == "finished" for e in ends)
        for client in clients:
            seen = [(m["type"], m["job"]) for _, m in client.messages if "job" in m]
            expected = [(k, j) for j in jobs for k in ("queued",)]
            assert [s for s in seen if s[0] == "queued"] == expected
            for job in jobs:
                kinds = [m["type"] for m in client.job_events(job)]
                assert kinds == ["queued", "started", "finished"], kinds
    finally:
        await asyncio.gather(*(c.close() for c in clients))


@pytest.mark.parametrize("how", ["terminate", "sigterm"])
@pytest.mark.parametrize("phase", ["generation", "playback"])
async def test_stopping_mid_job_exits_0_sends_stopping_and_leaves_no_pacat(
    start_daemon, recorder: Recorder, tmp_path: Path, how: str, phase: str
) -> None:
    delay = 4000.0 if phase == "generation" else 0.0
    notify = NotifyListener(tmp_path / "notify")
    try:
        daemon = start_daemon(
            {"engine": "tone", "tone": {"ms_per_char": 20.0, "delay_ms": delay}},
            env={"NOTIFY_SOCKET": str(notify.path)},
        )
        await _stop_mid_job(daemon, recorder, how, phase)
        # The service manager heard the stop, and after it nothing but why.
        notify.wait_for(lambda line: line.startswith("STATUS=stopping"))
    finally:
        notify.close()
    lines = notify.lines()
    assert lines.count("READY=1") == 1 and lines.count("STOPPING=1") == 1, lines
    assert lines.index("READY=1") < lines.index("STOPPING=1")
    reason = "terminate" if how == "terminate" else "SIGTERM"
    assert lines[-2:] == ["STOPPING=1", f"STATUS=stopping ({reason})"], lines


async def _stop_mid_job(daemon: Daemon, recorder: Recorder, how: str, phase: str) -> None:
    """Stop ``daemon`` by ``how`` while a job is in ``phase``; check the exit and pacats."""
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        job = (await client.speak("A long job that will not get to finish. " * 5))["job"]
        if phase == "playback":
            assert (await client.next_event(timeout=5))["type"] == "started"
            recorder.wait_for_sound(timeout=5)
        else:
            await asyncio.sleep(0.5)  # the engine is still on the first chunk
            assert not client.job_events(job)[1:], "it should still be generating"
        deadline = time.monotonic() + 5
        while not children_named(daemon.pid, "pacat") and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        pacats = children_named(daemon.pid, "pacat")
        assert pacats, "the job's pacat stream should be open by now"
        assert set(pacats) <= set(pacats_of(daemon.home))
        if how == "terminate":
            assert (await client.request("terminate"))["aborted"] == [job]
        else:
            daemon.signal(signal.SIGTERM)
        end = await client.wait_for_job(job, timeout=10)
        assert end == {**end, "type": "aborted", "reason": "terminate"}
        assert await client.wait_closed(timeout=10) == 1001
    assert daemon.wait(timeout=15) == 0
    left = {pid: state for pid, state in pacats_of(daemon.home).items() if state != "Z"}
    assert left == {}, f"pacat left running: {left}"
    for pid in pacats:
        assert not os.path.exists(f"/proc/{pid}") or pacats_of(daemon.home).get(pid) == "Z"
    assert "Traceback" not in daemon.log
