"""The engine host and the scheduler's wiring, with a fake engine and a fake output.

Logic only (what plays, in which order, how each job ends, what an abort stops): the
recorded-audio tests with Piper and pacat check the real parts. Tests wait on state,
never on fixed sleeps; the fake output "plays" 20 times faster than real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from tests.support.fakes import RATE, FakeEngine, FakeOutput, pcm_of
from ttsd.engines import CancelToken, EngineError
from ttsd.errors import Code
from ttsd.scheduler import EngineHost, Order, Priority, Rejection, Scheduler, Settings
from ttsd.scheduler.chunking import split_text
from ttsd.scheduler.events import (
    EngineChanged,
    Event,
    JobContinued,
    JobEnded,
    JobPostponed,
    JobQueued,
    JobStarted,
    Outcome,
    SentenceStarted,
    SpeakerPaused,
)
from ttsd.scheduler.jobs import JobKind

pytestmark = pytest.mark.timeout(30)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


class World:
    """A scheduler on fakes, with every event it emitted."""

    def __init__(self, engine: FakeEngine, output: FakeOutput, **settings: Any) -> None:
        self.engine = engine
        self.output = output
        self.events: list[Event] = []
        unload_after = settings.pop("unload_after", 0.0)
        self.host = EngineHost(
            lambda: (engine, "test"),
            name="fake",
            engine=engine,
            selected="test",
            unload_after=unload_after,
            is_idle=lambda: not self.scheduler.busy,
            on_change=lambda info: self.events.append(EngineChanged(info)),
        )
        self.scheduler = Scheduler(Settings(**settings), self.host, output, self.events.append)

    def say(self, text: str, **fields: Any) -> int:
        return self.scheduler.submit(Order(text=text, client="tester", **fields)).id

    def ends(self, job: int | None = None) -> list[JobEnded]:
        return [e for e in self.events if isinstance(e, JobEnded) and job in (None, e.job.id)]

    def end_of(self, job: int) -> JobEnded:
        (end,) = self.ends(job)
        return end

    async def ended(self, *jobs: int) -> None:
        await until(lambda: all(self.ends(job) for job in jobs))


@pytest.fixture
async def world() -> AsyncIterator[World]:
    w = World(FakeEngine(), FakeOutput())
    w.scheduler.start()
    yield w
    await w.scheduler.close()


async def make_world(**kwargs: Any) -> World:
    engine = kwargs.pop("engine", None) or FakeEngine()
    w = World(engine, kwargs.pop("output", None) or FakeOutput(), **kwargs)
    w.scheduler.start()
    return w


# --- The engine host ----------------------------------------------------------------------


async def test_host_streams_pieces_on_one_thread_and_counts_the_call_in_flight() -> None:
    engine = FakeEngine(pieces=3)
    host = EngineHost(lambda: (engine, ""), name="fake", engine=engine)
    host.start()
    assert await host.ensure_ready()
    seen = []
    async with contextlib.aclosing(host.stream("Hello there.", None, {}, CancelToken())) as it:
        async for pcm in it:
            assert host.in_flight == 1
            seen.append(pcm)
    assert host.in_flight == 0
    assert np.array_equal(np.concatenate(seen), pcm_of("Hello there."))
    assert engine.max_active == 1
    assert await host.close(1.0)


async def test_host_cancel_stops_the_call_within_one_piece() -> None:
    engine = FakeEngine(pieces=50)
    engine.gate = threading.Event()
    host = EngineHost(lambda: (engine, ""), name="fake", engine=engine)
    host.start()
    await host.ensure_ready()
    token = CancelToken()
    got = []

    async def consume() -> None:
        async for pcm in host.stream("x" * 500, None, {}, token):
            got.append(pcm)

    task = asyncio.create_task(consume())
    engine.gate.set()
    await until(lambda: len(got) >= 3)
    made_at_cancel = len(engine.made)
    token.cancel()
    await asyncio.wait_for(task, 5)
    # At most the piece that was being made when the token was set.
    assert len(engine.made) <= made_at_cancel + 1
    assert len(engine.made) < 50
    assert host.in_flight == 0
    assert await host.close(1.0)


async def test_host_failed_load_gives_engine_unavailable() -> None:
    engine = FakeEngine(load_fails=True)
    changes: list[dict[str, Any]] = []
    host = EngineHost(lambda: (engine, ""), name="fake", engine=engine, on_change=changes.append)
    host.start()
    assert not await host.ensure_ready()
    assert changes[-1]["state"] == "failed" and "told to fail" in changes[-1]["error"]
    with pytest.raises(EngineError) as exc:
        async for _ in host.stream("Hi.", None, {}, CancelToken()):
            pass
    assert exc.value.code == Code.ENGINE_UNAVAILABLE
    assert await host.close(1.0)


async def test_host_never_unloads_while_a_call_runs_or_the_scheduler_has_work() -> None:
    # The race of issue 10: unload between two chunks of a synthesize request.
    engine = FakeEngine(pieces=2)
    engine.gate = threading.Event()
    busy = True
    host = EngineHost(
        lambda: (engine, ""),
        name="fake",
        engine=engine,
        unload_after=0.05,
        is_idle=lambda: not busy,
    )
    host.start()
    await host.ensure_ready()
    for _ in range(3):  # chunk after chunk with gaps longer than unload_after between
        engine.gate.set()
        async for _ in host.stream("Chunk.", None, {}, CancelToken()):
            engine.gate.clear()
            await asyncio.sleep(0.1)  # a slow call: longer than unload_after
            engine.gate.set()
        await asyncio.sleep(0.1)  # between chunks, while the scheduler still has work
    assert engine.unloads == 0
    busy = False
    await until(lambda: engine.unloads == 1)
    assert host.state.value == "unloaded"
    # The next call loads it again.
    out = [p async for p in host.stream("Again.", None, {}, CancelToken())]
    assert np.array_equal(np.concatenate(out), pcm_of("Again.")) and engine.loads == 2
    assert await host.close(1.0)


# --- Playing -----------------------------------------------------------------------------


async def test_a_job_plays_all_its_audio_in_order_with_events_in_order(world: World) -> None:
    text = "First sentence. Second one here. And the third."
    job = world.say(text)
    await world.ended(job)
    end = world.end_of(job)
    assert end.outcome is Outcome.FINISHED and end.spoken_chars == len(text)
    expected = np.concatenate(
        [pcm_of(s) for s in ("First sentence.", "Second one here.", "And the third.")]
    )
    assert np.array_equal(world.output.heard(), expected)
    kinds = [type(e).__name__ for e in world.events if getattr(e, "job", None) and e.job.id == job]
    assert kinds == [
        "JobQueued",
        "JobStarted",
        "SentenceStarted",
        "SentenceStarted",
        "SentenceStarted",
        "JobEnded",
    ]
    starts = [(e.index, e.start, e.end) for e in world.events if isinstance(e, SentenceStarted)]
    assert starts == [(0, 0, 15), (1, 16, 32), (2, 33, 47)]


async def test_jobs_play_one_after_another_in_order(world: World) -> None:
    jobs = [world.say(f"Job number {n}.") for n in range(4)]
    await world.ended(*jobs)
    assert [s.name for s in world.output.opened] == [f"ttsd job {j}" for j in jobs]
    heard = world.output.heard()
    assert np.array_equal(heard, np.concatenate([pcm_of(f"Job number {n}.") for n in range(4)]))


async def test_abort_current_ends_it_once_and_the_next_job_plays() -> None:
    w = await make_world(output=FakeOutput(speed=2.0))
    long = w.say("A long sentence that takes a while to play out. " * 3)
    after = w.say("After.")
    await until(lambda: w.output.opened and w.output.opened[0].played() > 0)
    assert w.scheduler.abort_current() == [long]
    assert w.scheduler.abort_current() in ([], [after])  # never the same job twice
    await w.ended(long)
    assert w.end_of(long).outcome is Outcome.ABORTED and w.end_of(long).reason == "abort_current"
    assert w.output.opened[0].killed
    await w.scheduler.close()
    assert len(w.ends(long)) == 1


async def test_abort_during_generation_cancels_the_engine_and_the_next_job_starts() -> None:
    engine = FakeEngine(pieces=100)
    engine.gate = threading.Event()
    w = await make_world(engine=engine)
    slow = w.say("x" * 400)
    nxt = w.say("Next.")
    engine.gate.set()
    await until(lambda: len(engine.made) >= 5)
    engine.gate.clear()  # hold the engine inside a call (one piece may be past the gate)
    held = len(engine.made)
    w.scheduler.abort_job(slow)
    engine.gate.set()
    await w.ended(slow, nxt)
    made_for_slow = sum(1 for text, _ in engine.made if text.startswith("x"))
    assert made_for_slow <= held + 1  # stopped within a piece of the abort, not after 100
    assert w.end_of(nxt).outcome is Outcome.FINISHED
    await w.scheduler.close()


async def test_abort_all_ends_every_job_exactly_once_including_synthesis(world: World) -> None:
    world.output.speed = 1.0
    jobs = [world.say("Some words to say here.") for _ in range(3)]
    synthesis = world.scheduler.submit(
        Order(text="Made, not played.", client="x", kind=JobKind.SYNTHESIZE)
    )
    aborted = world.scheduler.abort_all()
    assert sorted(aborted) == sorted([*jobs, synthesis.id])
    assert world.scheduler.abort_all() == []
    await world.ended(*jobs)
    assert all(len(world.ends(j)) == 1 for j in jobs)
    with pytest.raises(Rejection) as exc:
        async for _ in world.scheduler.audio(synthesis):
            pass
    assert exc.value.code is Code.ABORTED


async def test_unknown_job_ids_are_refused_and_ended_ones_are_not_errors(world: World) -> None:
    job = world.say("Short.")
    await world.ended(job)
    assert world.scheduler.abort_job(job) == []
    with pytest.raises(Rejection) as exc:
        world.scheduler.abort_job(999)
    assert exc.value.code is Code.UNKNOWN_JOB


async def test_an_engine_failure_plays_what_was_made_then_fails_the_job() -> None:
    w = await make_world(engine=FakeEngine(pieces=2, fail_on="BROKEN"))
    job = w.say("Fine first sentence. This one is BROKEN. Never reached.")
    other = w.say("The next job still plays.")
    await w.ended(job, other)
    end = w.end_of(job)
    assert end.outcome is Outcome.FAILED and end.code == Code.ENGINE_FAILED
    heard = w.output.opened[0].heard()
    first = pcm_of("Fine first sentence.")
    assert np.array_equal(heard[: len(first)], first)
    # The failed chunk's first piece was made, and plays; nothing after the hole does.
    assert len(heard) == len(first) + len(pcm_of("This one is BROKEN.")) // 2
    assert not any(text == "Never reached." for text, _ in w.engine.made)
    assert w.end_of(other).outcome is Outcome.FINISHED
    await w.scheduler.close()


async def test_a_dead_stream_fails_only_its_job() -> None:
    output = FakeOutput()
    output.fail_after = 100
    w = await make_world(output=output)
    job = w.say("This stream dies early on.")
    await w.ended(job)
    assert w.end_of(job).code == Code.PLAYBACK_FAILED
    output.fail_after = None
    after = w.say("Fine again.")
    await w.ended(after)
    assert w.end_of(after).outcome is Outcome.FINISHED
    await w.scheduler.close()


async def test_a_stalled_stream_fails_with_playback_stalled_instead_of_hanging() -> None:
    output = FakeOutput()
    output.stall = True
    w = await make_world(output=output, stall_timeout=0.2)
    job = w.say("The server froze.")
    await w.ended(job)
    assert w.end_of(job).code == Code.PLAYBACK_STALLED
    await w.scheduler.close()


async def test_audio_unavailable_fails_jobs_and_recovers() -> None:
    output = FakeOutput()
    output.unavailable = True
    w = await make_world(output=output)
    job = w.say("Nobody hears this.")
    await w.ended(job)
    assert w.end_of(job).code == Code.AUDIO_UNAVAILABLE
    assert w.scheduler.player.state.value == "unavailable"
    output.unavailable = False
    after = w.say("Back again.")
    await w.ended(after)
    assert w.end_of(after).outcome is Outcome.FINISHED
    assert w.scheduler.player.state.value == "ok"
    await w.scheduler.close()


async def test_close_ends_every_job_once_stops_the_engine_call_and_the_worker() -> None:
    engine = FakeEngine(pieces=1000)
    engine.gate = threading.Event()
    engine.gate.set()
    w = await make_world(engine=engine)
    jobs = [w.say("y" * 300), w.say("Queued one."), w.say("Queued two.")]
    await until(lambda: len(engine.made) >= 3)
    aborted, stopped = await w.scheduler.close()
    assert sorted(aborted) == sorted(jobs) and stopped
    assert all(len(w.ends(j)) == 1 and w.end_of(j).reason == "terminate" for j in jobs)
    assert engine.active == 0
    assert not w.host.worker.alive
    with pytest.raises(Rejection) as exc:
        w.say("Too late.")
    assert exc.value.code is Code.SHUTTING_DOWN


async def test_options_checked_late_fail_the_job_with_bad_option() -> None:
    class Picky(FakeEngine):
        def validate_options(self, options: Any) -> dict[str, Any]:
            from ttsd.engines import OptionError

            if options:
                raise OptionError("no options here")
            return {}

    w = await make_world(engine=Picky())
    with pytest.raises(Rejection) as exc:
        w.say("Hi.", options={"speed": 2})
    assert exc.value.code is Code.BAD_OPTION
    await w.scheduler.close()


# --- Pause, priorities, pacing, synthesis --------------------------------------------------


async def test_pause_stops_at_once_and_resume_continues_at_the_next_sample() -> None:
    output = FakeOutput(speed=1.0)
    w = await make_world(output=output, engine=FakeEngine(pieces=4))
    text = "This sentence plays for a while. And then this one follows it."
    job = w.say(text)
    await until(lambda: output.opened and output.opened[0].played() > 200)
    assert w.scheduler.pause().id == job
    assert output.opened[0].killed
    assert any(isinstance(e, SpeakerPaused) for e in w.events)
    before = output.opened[0].played()
    w.scheduler.resume()
    await w.ended(job)
    heard = output.heard()
    expected = np.concatenate(
        [pcm_of("This sentence plays for a while."), pcm_of("And then this one follows it.")]
    )
    assert before > 0 and len(output.opened) == 2
    assert np.array_equal(heard, expected)  # nothing lost, nothing repeated
    await w.scheduler.close()


async def test_jobs_queued_while_paused_wait() -> None:
    w = await make_world()
    w.scheduler.pause()
    job = w.say("Waiting for resume.")
    await asyncio.sleep(0.05)  # would be long enough to play it whole at 20x
    assert w.output.opened == [] or not w.output.opened[0].written
    assert w.scheduler.busy
    w.scheduler.resume()
    await w.ended(job)
    assert w.end_of(job).outcome is Outcome.FINISHED
    await w.scheduler.close()


async def test_important_with_resume_replays_the_interrupted_sentence_afterwards() -> None:
    output = FakeOutput(speed=1.0)  # real time, as the sentence events are timed
    w = await make_world(output=output)
    long = w.say("First sentence of the long one. Second sentence of it. Third one.")
    await until(lambda: any(isinstance(e, SentenceStarted) and e.index == 1 for e in w.events))
    urgent = w.say("Urgent!", priority=Priority.IMPORTANT, resume_interrupted=True)
    await w.ended(urgent, long)
    assert w.end_of(long).outcome is Outcome.FINISHED
    postponed = [e for e in w.events if isinstance(e, JobPostponed)]
    continued = [e for e in w.events if isinstance(e, JobContinued)]
    assert [(p.job.id, p.by, p.chunk) for p in postponed] == [(long, urgent, 1)]
    assert [(c.job.id, c.chunk) for c in continued] == [(long, 1)]
    # What the last stream played: the sentence it was in, then the rest.
    tail = np.concatenate([pcm_of("Second sentence of it."), pcm_of("Third one.")])
    assert np.array_equal(output.opened[-1].heard(), tail)
    assert np.array_equal(output.opened[1].heard(), pcm_of("Urgent!"))
    await w.scheduler.close()


async def test_important_without_resume_aborts_the_interrupted_job() -> None:
    w = await make_world(output=FakeOutput(speed=2.0))
    long = w.say("A message that will be cut. " * 3)
    await until(lambda: any(isinstance(e, JobStarted) for e in w.events))
    urgent = w.say("Now!", priority=Priority.IMPORTANT)
    await w.ended(long, urgent)
    end = w.end_of(long)
    assert end.outcome is Outcome.ABORTED and end.reason == "priority" and end.by == urgent
    await w.scheduler.close()


async def test_the_queued_event_comes_before_the_aborts_it_causes(world: World) -> None:
    world.scheduler.pause()
    first = world.say("Replace me.", key="k")
    second = world.say("Me instead.", key="k")
    kinds = [
        (type(e).__name__, e.job.id) for e in world.events if isinstance(e, JobQueued | JobEnded)
    ]
    assert kinds == [("JobQueued", first), ("JobQueued", second), ("JobEnded", first)]
    assert world.end_of(first).reason == "replaced" and world.end_of(first).by == second
    world.scheduler.resume()
    await world.ended(second)


async def test_synthesis_yields_the_audio_of_every_sentence(world: World) -> None:
    job = world.scheduler.submit(Order(text="One. Two two.", client="x", kind=JobKind.SYNTHESIZE))
    got = [pcm async for pcm in world.scheduler.audio(job)]
    assert np.array_equal(np.concatenate(got), np.concatenate([pcm_of("One."), pcm_of("Two two.")]))
    assert world.scheduler.queue.find(job.id) is None  # ended
    assert world.ends(job.id) == []  # a synthesis ends in its reply, not in events


async def test_a_client_leaving_aborts_its_synthesis_and_opted_in_jobs(world: World) -> None:
    world.output.speed = 1.0
    synthesis = world.scheduler.submit(
        Order(text="Slow. " * 50, client="c", kind=JobKind.SYNTHESIZE)
    )
    kept = world.scheduler.submit(Order(text="Outlives its client.", client="c")).id
    gone = world.scheduler.submit(
        Order(text="Goes with it.", client="c", cancel_on_disconnect=True)
    ).id
    aborted = world.scheduler.client_gone("c")
    assert sorted(aborted) == sorted([synthesis.id, gone])
    assert kept not in aborted


async def test_pacing_waits_for_the_next_sentence_when_it_would_outrun_the_first() -> None:
    # A fast "Okay." then a long sentence from a slow engine: playback may not start
    # with "Okay." alone, or the listener hears a gap after it.
    engine = FakeEngine(pieces=1)
    engine.gate = threading.Event()
    w = await make_world(engine=engine)
    w.scheduler.generator.pacing.rtf = 0.5  # measured: half a second of work per second of audio
    w.scheduler.generator.pacing.seconds_per_char = 10 / RATE
    job = w.say("Okay. " + "This sentence is very much longer than the first one. " * 2)
    engine.gate.set()
    await until(lambda: len(engine.made) >= 1)
    engine.gate.clear()
    await asyncio.sleep(0.05)
    stream = w.output.opened[0] if w.output.opened else None
    assert stream is None or stream.written == 0, "started with the first sentence alone"
    engine.gate.set()
    await w.ended(job)
    assert w.end_of(job).outcome is Outcome.FINISHED
    await w.scheduler.close()


async def test_a_slow_engine_with_little_ahead_still_starts() -> None:
    # The pacing wants more audio than ahead_seconds allows before it starts: the
    # generator must keep making the job that waits to start, or both wait forever.
    w = await make_world(ahead_seconds=0.5)
    w.scheduler.generator.pacing.rtf = 2.0  # two seconds of work per second of audio
    job = w.say("One sentence here. " * 6)
    await w.ended(job)
    assert w.end_of(job).outcome is Outcome.FINISHED
    await w.scheduler.close()


async def test_a_repeated_phrase_plays_from_the_cache_without_the_engine(world: World) -> None:
    first = world.say("Tests passed.")
    await world.ended(first)
    calls = world.engine.calls
    again = world.say("Tests  passed.")  # whitespace does not matter
    other_voice = world.say("Tests passed.", voice="other")
    await world.ended(again, other_voice)
    assert world.engine.calls == calls + 1  # only the other voice was made again
    heard = [stream.heard() for stream in world.output.opened]
    assert np.array_equal(heard[0], heard[1])
    info = world.scheduler.status()["cache"]
    assert info["hits"] == 1 and info["misses"] == 2 and info["entries"] == 2


def test_the_cache_forgets_the_least_recently_used_to_stay_within_its_bytes() -> None:
    from ttsd.scheduler.cache import PhraseCache, cache_key

    cache = PhraseCache(max_bytes=3000)
    keys = [cache_key("e", None, {}, f"phrase {n}") for n in range(3)]
    for key in keys:
        cache.put(key, [np.zeros(500, np.int16)])  # 1000 bytes each
    assert cache.get(keys[0]) is not None  # now the most recently used
    cache.put(cache_key("e", None, {}, "one more"), [np.zeros(500, np.int16)])
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is not None
    assert cache.bytes <= 3000
    cache.put(cache_key("e", None, {}, "too big"), [np.zeros(5000, np.int16)])
    assert cache.get(cache_key("e", None, {}, "too big")) is None
    cached = cache.get(keys[2])
    assert cached is not None and not cached[0].flags.writeable


async def test_an_urgent_job_preempts_the_making_of_a_later_job() -> None:
    engine = FakeEngine(pieces=200)
    engine.gate = threading.Event()
    engine.gate.set()
    w = await make_world(engine=engine, output=FakeOutput(speed=2.0))
    playing = w.say("First, a sentence that plays for a while.")
    later = w.say("z" * 280)  # one long chunk, made ahead while the first one plays
    await until(lambda: sum(text.startswith("z") for text, _ in engine.made) >= 3)
    engine.gate.clear()  # hold the engine inside the long chunk
    urgent = w.say("Urgent.", priority=Priority.IMPORTANT, resume_interrupted=True)
    engine.gate.set()
    await until(lambda: all(w.ends(j) for j in (playing, urgent, later)), timeout=20)
    order = [text for text, _ in engine.made]
    first_urgent = order.index("Urgent.")
    # The long chunk was stopped for the urgent one and made again afterwards, whole.
    assert any(t.startswith("z") for t in order[first_urgent:])
    assert sum(1 for t in order[:first_urgent] if t.startswith("z")) < 200
    assert w.end_of(later).outcome is Outcome.FINISHED
    heard_later = w.output.opened[-1].heard()
    chunks = split_text("z" * 280, 300, 120)  # a long word: cut at the first chunk's limit
    assert np.array_equal(heard_later, np.concatenate([pcm_of(c) for c in chunks]))
    await w.scheduler.close()


class RateEngine(FakeEngine):
    """A fake engine whose sample rate can change between loads (as a remote one's)."""

    rate = RATE

    @property
    def sample_rate(self) -> int:
        return self.rate


async def test_a_phrase_cached_at_one_rate_is_made_again_at_another() -> None:
    engine = RateEngine()
    w = await make_world(engine=engine)
    first = w.say("Tests passed.")
    await w.ended(first)
    calls = engine.calls
    engine.rate = RATE * 2  # say, the engine came back from an unload at another rate
    again = w.say("Tests passed.")
    await w.ended(again)
    assert engine.calls == calls + 1
    await w.scheduler.close()


async def test_an_aborted_synthesis_hands_out_no_more_audio(world: World) -> None:
    job = world.scheduler.submit(
        Order(text="One. Two. Three. Four.", client="x", kind=JobKind.SYNTHESIZE)
    )
    audio = world.scheduler.audio(job)
    await anext(audio)
    await until(lambda: job.generation_done)  # the rest is made and waiting
    world.scheduler.abort_job(job.id)
    with pytest.raises(Rejection) as caught:
        await anext(audio)
    assert caught.value.code is Code.ABORTED
