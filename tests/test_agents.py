"""Made for agents, on recorded audio: priorities, interrupt-and-resume, pause, progress,
speech-ready text, instant phrases and client names.

The tone engine makes a known tone per sentence (its length follows the sentence's
length, its pitch the job's ``frequency``), so what the sink recorded tells exactly
which sentences of which job were heard, and in which order.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.support.expected import TONE_ENGINE, tone
from tests.support.pulse import Recorder, find_exact
from ttsd import protocol
from ttsd.client import Client, RequestFailed

#: Four sentences of 1.2-1.6 s, of different lengths (the tone of a sentence depends
#: only on its length), long enough to be interrupted in its second one.
REPORT = [
    "The first sentence of the report is about this long.",
    "The second sentence of the report is a little longer than that.",
    "The third sentence of the report is longer again, by a few more words.",
    "The fourth sentence of the report is the longest of them all, as it ought to be.",
]
LONG = " ".join(REPORT)
RATE = 22050

pytestmark = pytest.mark.timeout(120)


def sentence_tone(text: str, frequency: float) -> np.ndarray:
    return TONE_ENGINE.synthesize(text, None, {"frequency": frequency})


def heard(recorder: Recorder, pcm: np.ndarray, after: int = 0) -> int | None:
    """Where ``pcm`` was recorded, sample for sample, or None.

    Digital silence is left out on both sides first (as in ``played_all``): on a loaded
    machine an underrun inserts silence mid-job, which is not what these tests are
    about. Positions (and ``after``) count the samples that are not silence.
    """
    recorded = recorder.samples()
    found = find_exact(recorded[recorded != 0][after:], pcm[pcm != 0])
    return None if found is None else found + after


async def wait_sentence(client: Client, job: int, index: int) -> None:
    """Wait until sentence ``index`` (or a later one) of ``job`` started playing."""
    while not any(
        isinstance(m, protocol.Sentence) and m.index >= index for m in client.job_events(job)
    ):
        await client.next_event(timeout=30)


def kinds(client: Client, job: int) -> list[str]:
    return [m.TYPE for m in client.job_events(job)]


async def test_important_interrupts_a_message_which_is_aborted(
    client: Client, recorder: Recorder
) -> None:
    long = (await client.speak(LONG, options={"frequency": 300})).job
    await wait_sentence(client, long, 1)
    urgent = (await client.speak("Now!", priority="important", options={"frequency": 1200})).job
    end = await client.wait_for_job(long, timeout=30)
    assert isinstance(end, protocol.Aborted) and end.reason == "priority" and end.by == urgent
    assert isinstance(await client.wait_for_job(urgent, timeout=30), protocol.Finished)
    at = heard(recorder, tone("Now!", 1200))
    assert at is not None, "the important message was not played whole"
    assert heard(recorder, sentence_tone(REPORT[3], 300)) is None  # the rest never played


async def test_important_with_resume_replays_the_interrupted_sentence_afterwards(
    client: Client, recorder: Recorder
) -> None:
    long = (await client.speak(LONG, options={"frequency": 300})).job
    await wait_sentence(client, long, 1)
    urgent = (
        await client.speak("Now!", priority="important", resume=True, options={"frequency": 1200})
    ).job
    assert isinstance(await client.wait_for_job(long, timeout=60), protocol.Finished)
    postponed = await client.wait_for(protocol.Postponed, long, timeout=1)
    continued = await client.wait_for(protocol.Continued, long, timeout=1)
    assert postponed.by == urgent and postponed.index == continued.index
    index = postponed.index
    assert index >= 1
    assert postponed.start == LONG.index(REPORT[index])
    # On the recording: the report up to the interrupted sentence, the urgent message,
    # then the report again from the start of that sentence, to its end.
    first = heard(recorder, sentence_tone(REPORT[0], 300))
    interruption = heard(recorder, tone("Now!", 1200))
    rest = np.concatenate([sentence_tone(s, 300) for s in REPORT[index:]])
    resumed = heard(recorder, rest, after=interruption or 0)
    assert first is not None and interruption is not None and resumed is not None
    assert first < interruption < resumed
    sentences = [m.index for m in client.job_events(long) if isinstance(m, protocol.Sentence)]
    assert sentences == [*range(index + 1), *range(index, len(REPORT))]
    order = kinds(client, long)
    assert order.index("postponed") < order.index("continued") < order.index("finished")


async def test_a_message_cancels_a_playing_text_job(client: Client, recorder: Recorder) -> None:
    text_job = (await client.speak(LONG, priority="text", options={"frequency": 500})).job
    await wait_sentence(client, text_job, 0)
    message = (await client.speak("A message.", options={"frequency": 900})).job
    end = await client.wait_for_job(text_job, timeout=30)
    assert isinstance(end, protocol.Aborted) and end.reason == "priority" and end.by == message
    await client.wait_for_job(message, timeout=30)
    assert heard(recorder, tone("A message.", 900)) is not None
    assert heard(recorder, sentence_tone(REPORT[2], 500)) is None


async def test_text_interrupts_an_older_text_job(client: Client, recorder: Recorder) -> None:
    older = (await client.speak(LONG, priority="text", options={"frequency": 500})).job
    await wait_sentence(client, older, 0)
    newer = (await client.speak("Newer text.", priority="text", options={"frequency": 700})).job
    end = await client.wait_for_job(older, timeout=30)
    assert isinstance(end, protocol.Aborted) and end.by == newer
    await client.wait_for_job(newer, timeout=30)
    assert heard(recorder, tone("Newer text.", 700)) is not None


async def test_a_notification_is_dropped_while_a_message_plays(
    client: Client, recorder: Recorder
) -> None:
    message = (await client.speak(REPORT[0], options={"frequency": 400})).job
    await wait_sentence(client, message, 0)
    note = (
        await client.speak("A notification.", priority="notification", options={"frequency": 1500})
    ).job
    end = await client.wait_for_job(note, timeout=10)
    assert isinstance(end, protocol.Aborted) and end.reason == "priority"
    assert kinds(client, note) == ["queued", "aborted"]
    await client.wait_for_job(message, timeout=30)
    recorder.wait_for_silence(0.3)
    assert heard(recorder, tone("A notification.", 1500)[: RATE // 10]) is None


async def test_only_the_latest_progress_report_is_spoken(
    client: Client, recorder: Recorder
) -> None:
    message = (await client.speak(REPORT[0], options={"frequency": 400})).job
    await wait_sentence(client, message, 0)
    reports = [
        (
            await client.speak(
                f"Build {p} percent done.", priority="progress", options={"frequency": f}
            )
        ).job
        for p, f in ((10, 600), (50, 700), (90, 800))
    ]
    for old in reports[:2]:
        end = await client.wait_for_job(old, timeout=10)
        assert isinstance(end, protocol.Aborted) and end.reason == "replaced"
    assert isinstance(await client.wait_for_job(reports[2], timeout=30), protocol.Finished)
    played_at = heard(recorder, tone("Build 90 percent done.", 800))
    message_at = heard(recorder, tone(REPORT[0], 400))
    assert message_at is not None and played_at is not None and message_at < played_at
    assert heard(recorder, tone("Build 10 percent done.", 600)[: RATE // 10]) is None


async def test_a_key_replaces_the_waiting_job_with_that_key(
    client: Client, recorder: Recorder
) -> None:
    playing = (await client.speak(REPORT[0], options={"frequency": 400})).job
    old = (await client.speak("Old status.", key="status", options={"frequency": 600})).job
    new = (await client.speak("New status.", key="status", options={"frequency": 650})).job
    end = await client.wait_for_job(old, timeout=10)
    assert isinstance(end, protocol.Aborted) and end.reason == "replaced" and end.by == new
    await client.wait_for_job(new, timeout=30)
    assert isinstance(await client.wait_for_job(playing, timeout=1), protocol.Finished)
    assert heard(recorder, tone("New status.", 650)) is not None
    assert heard(recorder, tone("Old status.", 600)[: RATE // 10]) is None


async def test_pause_stops_at_once_and_resume_continues_where_the_sound_stopped(
    client: Client, recorder: Recorder
) -> None:
    text = REPORT[0] + " " + REPORT[1]
    expected = tone(text, 347)  # a period of 63.5 samples: no two windows alike
    job = (await client.speak(text, options={"frequency": 347})).job
    await client.wait_for(protocol.Started, job, timeout=30)
    start = recorder.wait_for_sound()
    while recorder.now_index() - start < RATE // 2:  # half a second in
        await asyncio.sleep(0.01)
    reply = await client.pause()
    assert reply.paused and reply.job == job
    paused_at = recorder.now_index()
    silence_from = recorder.wait_for_silence(0.3, timeout=10)
    assert silence_from - paused_at < 0.05 * RATE, "sound went on after pause"
    status = await client.status()
    assert status.paused and status.current["state"] == "paused"
    await client.resume()
    assert isinstance(await client.wait_for_job(job, timeout=60), protocol.Finished)
    assert (await client.wait_for(protocol.Paused, job, timeout=1)).job == job
    assert (await client.wait_for(protocol.Resumed, job, timeout=1)).job == job
    recorded = recorder.samples()
    begin = find_exact(recorded, expected[: RATE // 10])
    assert begin is not None
    first_part = silence_from + 1 - begin
    assert np.array_equal(recorded[begin : begin + first_part], expected[:first_part])
    # The second stream starts where the first stopped: nothing skipped (1 ms for
    # pacat's rounding), and at most what the sink had mixed already repeated (the test
    # sink does not rewind: 5-10 ms when the machine is quiet; on a 2-core machine with
    # two busy loops, pacat can take tens of ms to die after the kill, and what plays
    # meanwhile is heard again. A word lasts hundreds).
    after = recorder.samples()[silence_from + 1 :]
    second = int(np.flatnonzero(np.abs(after.astype(np.int32)) > 300)[0])
    resumed = after[second:]
    offsets = [
        k
        for k in range(max(0, first_part - RATE // 10), first_part + RATE // 10)
        if np.array_equal(resumed[:2205], expected[k : k + 2205])
    ]
    assert len(offsets) == 1, "the resumed audio is not the job's next samples"
    repeated = (first_part - offsets[0]) / RATE
    assert -0.001 <= repeated <= 0.050, f"{repeated * 1000:.1f} ms heard twice"
    assert np.array_equal(resumed[: len(expected) - offsets[0]], expected[offsets[0] :])


async def test_sentence_events_come_as_each_sentence_starts_playing(
    client: Client, recorder: Recorder
) -> None:
    text = "Short one. A somewhat longer second sentence. Third."
    job = (await client.speak(text, options={"frequency": 450})).job
    end = await client.wait_for_job(job, timeout=30)
    assert isinstance(end, protocol.Finished) and end.spoken_chars == len(text)
    events = [
        (t, m) for t, m in client.messages if isinstance(m, protocol.Sentence) and m.job == job
    ]
    assert [(m.index, text[m.start : m.end]) for _, m in events] == [
        (0, "Short one."),
        (1, "A somewhat longer second sentence."),
        (2, "Third."),
    ]
    # A sentence's tone is a prefix of any longer one: locate the whole job, then each
    # sentence at its offset in it.
    where = find_exact(recorder.samples(), tone(text, 450))
    assert where is not None, "not played sample for sample (an underrun?)"
    for at, message in events:
        late = at - recorder.time_of(where)
        assert abs(late) < 0.25, f"sentence {message.index} reported {late:+.3f} s off"
        where += len(sentence_tone(text[message.start : message.end], 450))


async def test_terminal_events_say_how_much_was_spoken(client: Client) -> None:
    job = (await client.speak(LONG, options={"frequency": 300})).job
    await wait_sentence(client, job, 1)
    await client.abort(job)
    end = await client.wait_for_job(job, timeout=10)
    assert isinstance(end, protocol.Aborted)
    assert end.spoken_chars >= len(REPORT[0]) + 1 + len(REPORT[1]) - 1
    assert end.spoken_chars < len(LONG)
    assert end.audio_seconds > 0.9 * len(REPORT[0]) * 0.02  # the first sentence, heard


async def test_markdown_and_control_characters_are_read_not_refused(
    client: Client, recorder: Recorder
) -> None:
    text = "# Done\n\n- **All** tests\x0c pass \x1b[32mgreen\x1b[0m\n"
    normalized = await client.normalize(text)
    said = [s["text"] for s in normalized.sentences]
    assert normalized.format == "markdown" and said == ["Done.", "All tests pass green"]
    job = (await client.speak(text, options={"frequency": 520})).job
    assert isinstance(await client.wait_for_job(job, timeout=30), protocol.Finished)
    expected = np.concatenate([sentence_tone(s, 520) for s in said])
    assert heard(recorder, expected) is not None
    with pytest.raises(RequestFailed) as exc:
        await client.speak("\x1b[31m\x1b[0m")
    assert exc.value.code == "bad_request" and "nothing to say" in exc.value.message


async def test_a_repeated_phrase_comes_from_the_cache(client: Client, recorder: Recorder) -> None:
    for _ in range(2):
        job = (await client.speak("Tests passed.", options={"frequency": 640})).job
        assert isinstance(await client.wait_for_job(job, timeout=30), protocol.Finished)
    cache = (await client.status()).cache
    assert cache is not None and cache["hits"] == 1 and cache["entries"] == 1
    first = heard(recorder, tone("Tests passed.", 640))
    assert first is not None and heard(recorder, tone("Tests passed.", 640), first + 1)


async def test_a_named_client_is_named_in_events_and_can_be_aborted_by_name(
    daemon, client: Client
) -> None:
    async with await Client.connect("127.0.0.1", daemon.port) as agent:
        assert (await agent.identify("build-bot", priority="text")).client == "build-bot"
        job = (await agent.speak(LONG)).job
        queued = await client.wait_for(protocol.Queued, job, timeout=10)
        assert queued.client == "build-bot" and queued.priority == "text"
        with pytest.raises(RequestFailed) as exc:
            await client.identify("build-bot")
        assert exc.value.code == "bad_request"
        assert await client.abort_client("build-bot") == [job]
        end = await client.wait_for_job(job, timeout=10)
        assert end.client == "build-bot"
        status = await client.status()
        assert status.current is None


async def test_a_paused_daemon_with_jobs_never_exits_idle(start_daemon) -> None:
    daemon = start_daemon({"engine": "tone", "idle_exit": 0.3, "tone": {"ms_per_char": 20.0}})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        await client.pause()
        job = (await client.speak("Waiting for resume.")).job
    # No client and no sound for many idle periods: a paused job still keeps it up.
    # (Showing that something does not happen takes waiting; the process is watched.)
    deadline = asyncio.get_running_loop().time() + 2.0
    while asyncio.get_running_loop().time() < deadline:
        assert daemon.process is not None and daemon.process.poll() is None, daemon.log
        await asyncio.sleep(0.05)
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        await client.resume()
        assert isinstance(await client.wait_for_job(job, timeout=30), protocol.Finished)
    # Idle again, now truly: it exits, cleanly.
    assert await asyncio.to_thread(daemon.wait, 10) == 0
