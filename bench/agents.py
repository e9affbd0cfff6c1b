"""Benchmarks of what agents lean on: instant phrases, and gapless speech under load.

    python -m bench.agents                 # about 2 minutes here
    python -m bench.agents --quick         # smoke run: a few reps
    python -m bench.agents --json bench/results/agents.json

* **Instant phrases** (issue 13): time from ``speak`` to the first audible sample at
  the sink for a phrase already in ttsd's cache, against the same phrase the first time
  (Piper synthesizes it), and against Speech Dispatcher with espeak-ng (a robotic voice
  made in a few milliseconds). Goal: a cache hit within 30 ms. Piper's voice begins
  with 30-60 ms of its own quiet breath, so for ttsd the time to the phrase's first
  sample at the sink is measured too (found sample for sample in the recording): that
  is the audio path's own latency.
* **Gapless under load** (issue 12): "Okay." followed by a long sentence, with two
  busy-loop processes beside the daemon on this 2-core machine. Measured: the longest
  silence inserted inside the job (goal: none over 50 ms), ``underruns`` from the
  ``finished`` event, and the time to first audio this costs (against "Okay." alone).

Everything is read off a private PulseAudio null sink's recording (``bench.audio``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.audio import BenchRecorder, gaps, inner_gaps, locate
from bench.stats import Summary
from bench.systems import EXACT, SpeechDispatcher, Ttsd
from tests.support.pulse import PulseServer, audible
from ttsd.engines.piper import PiperEngine
from ttsd.scheduler.chunking import split_text

PHRASES = ("Done.", "Tests passed.", "I need your input.", "Build finished.")
OKAY = "Okay."
#: Different every rep, so that no part of it comes from the phrase cache.
FOLLOW = (
    "I have looked at the {n} failing tests in the scheduler and the player, and the fix "
    "is to wait for the stream to drain before job number {n} ends."
)


def summary(values: list[float]) -> dict[str, Any] | None:
    found = Summary.of(values)
    return None if found is None else dataclasses.asdict(found)


def busy_loops(count: int = 2) -> list[subprocess.Popen[bytes]]:
    """Processes that keep ``count`` cores busy (the load of a loaded CI machine)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGKILL)
        process.wait()


def inserted_silence(recording: np.ndarray, pieces: list[np.ndarray], rate: int) -> float:
    """The longest silence the player inserted inside a job (seconds): between its
    chunks, and inside them (underruns), found by locating the engine's exact samples.
    Pauses the voice makes itself (after "Okay.") are part of the chunks, not gaps."""
    starts = locate(recording, pieces)
    between = gaps(starts, pieces, rate)
    inside = [
        n / rate
        for piece, start in zip(pieces, starts, strict=True)
        for n in inner_gaps(recording, piece, start)
    ]
    return max([0.0, *between, *inside])


async def first_audio(recorder: BenchRecorder, system: Any, text: str) -> float:
    """Seconds from asking ``system`` to speak ``text`` to its first audible sample."""
    return (await first_sample(recorder, system, text, None))[0]


async def first_sample(
    recorder: BenchRecorder, system: Any, text: str, opening: np.ndarray | None
) -> tuple[float, float]:
    """Seconds from asking ``system`` to speak ``text`` to its first audible sample,
    and to the first sample of ``opening`` (the engine's exact audio that should play
    first; nan without it), found in the recording."""
    await recorder.quiet()
    mark = recorder.now_index()
    sent = time.monotonic()
    await system.speak(text)
    heard = await recorder.first_sound(mark, timeout=60)
    await system.wait_done()
    begun = float("nan")
    if opening is not None:
        await recorder.quiet()
        begun = recorder.time_of(mark + locate(recorder.segment(mark), [opening])[0]) - sent
    return recorder.time_of(heard) - sent, begun


async def instant_phrases(
    root: Path, pulse: PulseServer, recorder: BenchRecorder, reps: int
) -> dict[str, Any]:
    ttsd = Ttsd(root / "ttsd", pulse)
    await ttsd.start()
    engine = PiperEngine()
    engine.load()
    result: dict[str, list[float]] = {
        "first": [],
        "cached": [],
        "first_sample_first": [],
        "first_sample_cached": [],
        "speechd": [],
    }
    try:
        for rep in range(reps):
            # One sentence, new every rep: the first time really is the first time.
            phrase = f"{PHRASES[rep % len(PHRASES)][:-1]}, number {rep}."
            opening = engine.synthesize(split_text(phrase, 300, 120)[0], None, EXACT)
            for kind in ("first", "cached"):
                audible_at, begun = await first_sample(recorder, ttsd, phrase, opening)
                result[kind].append(audible_at)
                result[f"first_sample_{kind}"].append(begun)
        assert ttsd.client is not None
        cache = (await ttsd.client.status()).cache
    finally:
        await ttsd.stop()
    speechd = SpeechDispatcher(root / "speechd", {**os.environ, **pulse.env()})
    await speechd.start()
    try:
        for rep in range(reps):
            result["speechd"].append(
                await first_audio(recorder, speechd, PHRASES[rep % len(PHRASES)])
            )
    finally:
        await speechd.stop()
    return {**{k: summary(v) for k, v in result.items()}, "raw": result, "cache": cache}


async def gapless(
    root: Path, pulse: PulseServer, recorder: BenchRecorder, reps: int
) -> dict[str, Any]:
    ttsd = Ttsd(root / "ttsd-load", pulse)
    await ttsd.start()
    engine = PiperEngine()
    engine.load()
    loops = busy_loops()
    found_gaps: list[float] = []
    underruns: list[int] = []
    with_follow: list[float] = []
    alone: list[float] = []
    try:
        assert ttsd.client is not None
        for rep in range(reps):
            alone.append(await first_audio(recorder, ttsd, f"{OKAY} {rep}."))
            await recorder.quiet()
            mark = recorder.now_index()
            sent = time.monotonic()
            text = f"{OKAY} {FOLLOW.format(n=rep + 2)}"
            reply = await ttsd.client.speak(text, options=EXACT)
            end = await ttsd.client.wait_for_job(reply.job, 120)
            await recorder.quiet()
            recording = recorder.segment(mark)
            first = int(np.flatnonzero(audible(recording))[0])
            with_follow.append(recorder.time_of(mark + first) - sent)
            pieces = [
                # A chunk's trailing digital silence may outlast the recording's window.
                np.trim_zeros(engine.synthesize(chunk, None, EXACT), "b")
                for chunk in split_text(text, 300, 120)
            ]
            found_gaps.append(inserted_silence(recording, pieces, recorder.rate))
            underruns.append(int(end.get("underruns", 0)))
    finally:
        stop(loops)
        await ttsd.stop()
    return {
        "inserted_silence": summary(found_gaps),
        "over_50ms": sum(g > 0.050 for g in found_gaps),
        "underruns": sum(underruns),
        "ttfa_with_follow": summary(with_follow),
        "ttfa_alone": summary(alone),
        "raw": {"gaps": found_gaps, "with_follow": with_follow, "alone": alone},
        "reps": reps,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ttsd-bench-agents-") as tmp:
        root = Path(tmp)
        pulse = PulseServer(root / "pulse")
        pulse.start()
        recorder = BenchRecorder(pulse)
        recorder.start()
        try:
            return {
                "machine": os.uname().machine,
                "cpus": os.cpu_count(),
                "instant_phrases": await instant_phrases(root, pulse, recorder, args.reps),
                "gapless_under_load": await gapless(root, pulse, recorder, args.reps),
            }
        finally:
            recorder.stop()
            pulse.stop()


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 reps")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if args.quick:
        args.reps = 3
    results = asyncio.run(main(args))
    text = json.dumps(results, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    print(json.dumps({k: v for k, v in results.items()}, indent=2, default=str)[:4000])
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
