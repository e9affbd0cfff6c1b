"""abort_current and abort_all: silence within 50 ms, the queue moves on or empties."""

from __future__ import annotations

import asyncio
import time

from tests.support.expected import tone
from tests.support.pulse import Recorder, find_exact, first_audible, last_audible
from ttsd.client import Client

LONG = "This tone goes on for a good while, long enough to be cut short. " * 3  # ~4 s
NEXT = "The next job."
TONE_ONLY = {"tone": {"ms_per_char": 20.0}}


async def wait_started(client: Client, job: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not any(m["type"] == "started" for m in client.job_events(job)):
        assert time.monotonic() < deadline, f"job {job} never started"
        await asyncio.sleep(0.01)


async def test_abort_current_silences_within_50ms_and_next_job_plays(
    client: Client, recorder: Recorder
) -> None:
    first = (await client.speak(LONG, options={"frequency": 300}))["job"]
    second = (await client.speak(NEXT, options={"frequency": 1200}))["job"]
    await wait_started(client, first)
    await asyncio.sleep(0.8)

    sent = time.monotonic()
    reply = await client.request("abort_current")
    assert reply == {"type": "ok", "id": reply["id"], "aborted": [first]}
    aborted = await client.wait_for_job(first, timeout=5)
    assert aborted["type"] == "aborted" and aborted["reason"] == "abort_current"
    assert (await client.wait_for_job(second, timeout=10))["type"] == "finished"

    recorded = recorder.samples()
    next_start = find_exact(recorded, tone(NEXT, 1200))
    assert next_start is not None, "the next job was not played whole"
    last_of_first = last_audible(recorded, before=next_start)
    assert last_of_first is not None
    cut = recorder.time_of(last_of_first) - sent
    assert cut < 0.050, f"sound went on {cut * 1000:.0f} ms after abort_current"
    # It really was cut: far less than the whole first job was played.
    first_start = first_audible(recorded)
    assert first_start is not None
    assert last_of_first - first_start < 0.6 * len(tone(LONG, 300))
    assert [m["type"] for m in client.job_events(first)] == ["queued", "started", "aborted"]


async def test_abort_current_with_nothing_playing_aborts_nothing(client: Client) -> None:
    assert (await client.request("abort_current"))["aborted"] == []
    assert (await client.request("abort_all"))["aborted"] == []


async def test_abort_all_empties_the_queue_with_one_aborted_event_per_job(
    daemon, client: Client, recorder: Recorder
) -> None:
    async with await Client.connect("127.0.0.1", daemon.port) as watcher:
        jobs = [(await client.speak(LONG))["job"] for _ in range(4)]
        await wait_started(client, jobs[0])
        sent = time.monotonic()
        reply = await client.request("abort_all")
        assert sorted(reply["aborted"]) == jobs
        for job in jobs:
            await watcher.wait_for_job(job, timeout=5)
        last = recorder.wait_for_silence(0.3, timeout=5)
        assert recorder.time_of(last) - sent < 0.050
        status = await client.request("status")
        assert status["current"] is None and status["queue"] == []
        for observer in (client, watcher):
            ends = [
                (m["job"], m["reason"]) for _, m in observer.messages if m.get("type") == "aborted"
            ]
            assert sorted(ends) == [(j, "abort_all") for j in jobs]
    # The daemon still speaks afterwards.
    job = (await client.speak(NEXT))["job"]
    assert (await client.wait_for_job(job, timeout=10))["type"] == "finished"


async def test_abort_by_job_id_removes_a_queued_job(client: Client, recorder: Recorder) -> None:
    first = (await client.speak(NEXT, options={"frequency": 500}))["job"]
    doomed = (await client.speak(LONG, options={"frequency": 700}))["job"]
    last = (await client.speak(NEXT, options={"frequency": 900}))["job"]
    assert (await client.request("abort", job=doomed))["aborted"] == [doomed]
    assert (await client.request("abort", job=doomed))["aborted"] == []  # already ended
    await client.wait_for_job(last, timeout=10)
    assert [m["type"] for m in client.job_events(doomed)] == ["queued", "aborted"]
    recorded = recorder.samples()
    assert find_exact(recorded, tone(NEXT, 500)) is not None
    assert find_exact(recorded, tone(NEXT, 900)) is not None
    assert (await client.wait_for_job(first, timeout=1))["type"] == "finished"


async def test_abort_while_the_stream_drains_is_clean(start_daemon, recorder: Recorder) -> None:
    # One 5 s chunk: it is all handed to pacat at once, so an abort 2.5 s in finds the
    # player waiting for pacat to drain, with audio still queued in the pipe.
    daemon = start_daemon(
        {"engine": "tone", "chunk_chars": 300, "first_chunk_chars": 300, **TONE_ONLY}
    )
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        job = (await client.speak("x" * 250))["job"]
        await wait_started(client, job)
        await asyncio.sleep(2.5)
        sent = time.monotonic()
        assert (await client.request("abort_current"))["aborted"] == [job]
        last = recorder.wait_for_silence(0.3, timeout=5)
        assert recorder.time_of(last) - sent < 0.050
        after = (await client.speak("Still here."))["job"]
        assert (await client.wait_for_job(after, timeout=10))["type"] == "finished"
    assert "Traceback" not in daemon.log and "InvalidStateError" not in daemon.log
