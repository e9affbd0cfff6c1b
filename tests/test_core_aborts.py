"""abort_current and abort_all: silence within 50 ms, the queue moves on or empties."""

from __future__ import annotations

import time

from tests.support.events import job_story, kinds
from tests.support.expected import tone
from tests.support.pulse import Recorder, find_exact, first_audible, last_audible
from ttsd import protocol
from ttsd.client import Client

LONG = "This tone goes on for a good while, long enough to be cut short. " * 3  # ~4 s
NEXT = "The next job."
TONE_ONLY = {"tone": {"ms_per_char": 20.0}}


async def wait_started(client: Client, job: int, timeout: float = 10) -> protocol.Started:
    return await client.wait_for(protocol.Started, job, timeout=timeout)


async def test_abort_current_silences_within_50ms_and_next_job_plays(
    client: Client, recorder: Recorder
) -> None:
    first = (await client.speak(LONG, options={"frequency": 300})).job
    second = (await client.speak(NEXT, options={"frequency": 1200})).job
    await wait_started(client, first)
    recorder.wait_for_sound_length(0.8)  # it played a while

    sent = time.monotonic()
    reply = await client.request("abort_current")
    assert reply.to_json() == {"type": "ok", "aborted": [first], "id": reply.get("id")}
    aborted = await client.wait_for_job(first, timeout=5)
    assert isinstance(aborted, protocol.Aborted) and aborted.reason == "abort_current"
    assert 0.7 < aborted.audio_seconds < 2.5
    assert isinstance(await client.wait_for_job(second, timeout=10), protocol.Finished)

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
    # queued, started, a sentence event per sentence begun, aborted (spoken_chars agreeing):
    # it was cut in its first or second sentence of three.
    job_story(client, first, LONG)
    assert kinds(client, first).count("sentence") in (1, 2)
    assert isinstance(job_story(client, second, NEXT), protocol.Finished)


async def test_abort_current_with_nothing_playing_aborts_nothing(client: Client) -> None:
    assert await client.abort_current() == []
    assert await client.abort_all() == []


async def test_abort_all_empties_the_queue_with_one_aborted_event_per_job(
    daemon, client: Client, recorder: Recorder
) -> None:
    async with await Client.connect("127.0.0.1", daemon.port) as watcher:
        jobs = [(await client.speak(LONG)).job for _ in range(4)]
        await wait_started(client, jobs[0])
        sent = time.monotonic()
        assert sorted(await client.abort_all()) == jobs
        for job in jobs:
            await watcher.wait_for_job(job, timeout=5)
        last = recorder.wait_for_silence(0.3, timeout=5)
        assert recorder.time_of(last) - sent < 0.050
        status = await client.status()
        assert status.current is None and status.queue == []
        for observer in (client, watcher):
            ends = [
                (m.job, m.reason) for _, m in observer.messages if isinstance(m, protocol.Aborted)
            ]
            assert sorted(ends) == [(j, "abort_all") for j in jobs]
    # The daemon still speaks afterwards.
    job = (await client.speak(NEXT)).job
    assert isinstance(await client.wait_for_job(job, timeout=10), protocol.Finished)


async def test_abort_by_job_id_removes_a_queued_job(client: Client, recorder: Recorder) -> None:
    first = (await client.speak(NEXT, options={"frequency": 500})).job
    doomed = (await client.speak(LONG, options={"frequency": 700})).job
    last = (await client.speak(NEXT, options={"frequency": 900})).job
    assert await client.abort(doomed) == [doomed]
    assert await client.abort(doomed) == []  # already ended
    await client.wait_for_job(last, timeout=10)
    assert kinds(client, doomed) == ["queued", "aborted"]
    end = client.job_events(doomed)[-1]
    assert isinstance(end, protocol.Aborted) and (end.spoken_chars, end.audio_seconds) == (0, 0)
    recorded = recorder.samples()
    assert find_exact(recorded, tone(NEXT, 500)) is not None
    assert find_exact(recorded, tone(NEXT, 900)) is not None
    assert isinstance(await client.wait_for_job(first, timeout=1), protocol.Finished)


async def test_abort_while_the_stream_drains_is_clean(start_daemon, recorder: Recorder) -> None:
    # One 5 s chunk: it is all handed to pacat at once, so an abort 2.5 s in finds the
    # player waiting for pacat to drain, with audio still queued in the pipe.
    daemon = start_daemon(
        {"engine": "tone", "chunk_chars": 300, "first_chunk_chars": 300, **TONE_ONLY}
    )
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        job = (await client.speak("x" * 250)).job
        await wait_started(client, job)
        recorder.wait_for_sound_length(2.5)
        sent = time.monotonic()
        assert await client.abort_current() == [job]
        last = recorder.wait_for_silence(0.3, timeout=5)
        assert recorder.time_of(last) - sent < 0.050
        after = (await client.speak("Still here.")).job
        assert isinstance(await client.wait_for_job(after, timeout=10), protocol.Finished)
    assert "Traceback" not in daemon.log and "InvalidStateError" not in daemon.log
