"""Speech reaches the speaker: recorded from a real PulseAudio null sink."""

from __future__ import annotations

import asyncio

import numpy as np

from tests.support.events import job_story, kinds
from tests.support.expected import TONE_ENGINE, tone
from tests.support.pulse import Recorder, find_exact, sound_spans
from ttsd import protocol
from ttsd.client import Client
from ttsd.scheduler.chunking import split_text


async def test_speech_is_recorded_whole_with_events_in_order(
    client: Client, recorder: Recorder
) -> None:
    text = "Hello there. This is the tone engine."
    reply = await client.speak(text)
    assert isinstance(reply, protocol.Queued) and reply.position == 1
    assert reply.client == client.hello.client  # jobs name the client that queued them
    job = reply.job
    end = await client.wait_for_job(job, timeout=10)
    assert isinstance(end, protocol.Finished)
    # One sentence event per sentence, each with its place in the text.
    assert kinds(client, job) == ["queued", "started", "sentence", "sentence", "finished"]
    assert job_story(client, job, text) == end
    said = [m for m in client.job_events(job) if isinstance(m, protocol.Sentence)]
    assert [text[m.start : m.end] for m in said] == ["Hello there.", "This is the tone engine."]

    expected = tone(text)
    recorded = recorder.samples()
    start = find_exact(recorded, expected)
    assert start is not None, f"not recorded sample for sample; {end=}"
    spans = sound_spans(recorded, 0.05, recorder.rate)
    assert len(spans) == 1
    assert abs((spans[0][1] - spans[0][0]) - len(expected)) < 0.01 * recorder.rate
    assert end.audio_seconds == round(len(expected) / 22050, 3)
    assert end.spoken_chars == len(text) and end.client == client.hello.client


async def test_chunks_play_back_to_back_while_later_ones_are_generated(
    start_daemon, recorder: Recorder
) -> None:
    # 150 ms to synthesize each chunk, which holds 0.6-1.2 s of audio: playback must
    # start after the first chunk and never wait for the others.
    daemon = start_daemon(
        {
            "engine": "tone",
            "chunk_chars": 40,
            "first_chunk_chars": 30,
            "tone": {"ms_per_char": 20.0, "delay_ms": 150.0},
        }
    )
    text = " ".join(f"Sentence number {n} is here." for n in range(8))
    chunks = split_text(text, 40, 30)
    assert len(chunks) == 8
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        sent = asyncio.get_running_loop().time()
        job = (await client.speak(text)).job
        await client.wait_for_job(job, timeout=30)
        started_at = next(t for t, m in client.messages if isinstance(m, protocol.Started))
        assert job_story(client, job, text, 40, 30).spoken_chars == len(text)
    # The test daemons' 1 s buffer (latency_ms) starts a stream once ~0.9 s is written:
    # two chunks of synthesis, not eight.
    assert started_at - sent < 0.15 * 3 + 0.3
    expected = np.concatenate([TONE_ENGINE.synthesize(c, None, {}) for c in chunks])
    assert find_exact(recorder.samples(), expected) is not None, "gap or glitch between chunks"


async def test_second_job_plays_after_the_first(client: Client, recorder: Recorder) -> None:
    first = await client.speak("First job, low tone.", options={"frequency": 300})
    second = await client.speak("Second job, high tone.", options={"frequency": 900})
    assert second.position == 2
    await client.wait_for_job(second.job, timeout=10)
    order = [(m.TYPE, m.get("job")) for _, m in client.messages]
    assert order.index(("finished", first.job)) < order.index(("started", second.job))

    recorded = recorder.samples()
    one = find_exact(recorded, tone("First job, low tone.", 300))
    two = find_exact(recorded, tone("Second job, high tone.", 900))
    assert one is not None and two is not None
    assert two >= one + len(tone("First job, low tone.", 300))
