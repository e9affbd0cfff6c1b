"""Benchmark ttsd against the alternatives on recorded audio.

    python -m bench.run                 # full run (about 8 minutes here)
    python -m bench.run --quick         # CI smoke run: 2 reps, no targets enforced
    python -m bench.run --reps 20 --docs docs/benchmarks.md --plot docs/benchmarks.png

A private PulseAudio with a null sink is started and its monitor recorded for the
whole run; every latency is read off that recording (see ``bench.audio``). The
systems are measured one after another, never at the same time. Exit status: 0 when
every measurement could be made (targets missed are reported, not failed), 1 when
one could not (no sound, audio not played sample for sample, a system failed), 2 on
bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import broadcast, coldstart, report
from bench.audio import (
    BenchError,
    BenchRecorder,
    gaps,
    inner_gaps,
    leading_silence,
    locate,
    tree_rss_kib,
)
from bench.systems import (
    EXACT,
    NonStreaming,
    PiperCli,
    SpeechDispatcher,
    System,
    Ttsd,
)
from tests.support.pulse import PulseServer, audible
from ttsd.config import Config
from ttsd.engines.piper import PiperEngine
from ttsd.scheduler.chunking import split_text

SHORT = "Hello, this is a short test of the speech daemon."
LONG = (
    "The quick brown fox jumps over the lazy dog near the quiet river bank. "
    "Meanwhile, the old farmer counts his sheep and wonders why the weather turned so cold "
    "this week. His daughter reads a long letter from a friend who lives across the sea. "
    "Tomorrow they will all travel to the market in town to sell their apples."
)
QUEUED = ("The first job ends here.", "The second job starts now.")
SYSTEMS = ("ttsd", "nonstreaming", "piper-cli", "speechd")
#: Seconds of speech before an abort is sent.
ABORT_AFTER = 0.8


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.pulse = PulseServer(root / "pulse")
        self.recorder = BenchRecorder(self.pulse)
        self.results: dict[str, dict[str, Any]] = {name: {} for name in args.systems}
        self.reference: dict[str, Any] = {}
        self.engine = PiperEngine()
        self.env = {**os.environ, **self.pulse.env()}
        # The benchmarked daemon's settings, so that references cut the same chunks.
        known = {f.name for f in dataclasses.fields(Config)}
        self.config = dataclasses.replace(
            Config(), **{k: v for k, v in args.settings.items() if k in known}
        )

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def put(self, system: str, metric: str, value: Any) -> None:
        self.results[system].setdefault(metric, []).append(value)

    # --- References from the engine itself ------------------------------------------

    def expected(self, text: str, config: Config) -> list[np.ndarray]:
        """The daemon's chunks of ``text`` as the engine makes them."""
        chunks = split_text(text, config.chunk_chars, config.first_chunk_chars)
        return [self.engine.synthesize(chunk, None, EXACT) for chunk in chunks]

    def sentences(self, text: str) -> list[np.ndarray]:
        """Piper's own per-sentence output for ``text`` (what its CLI writes)."""
        from piper import SynthesisConfig

        voice = self.engine._voice(None)
        return [c.audio_int16_array for c in voice.synthesize(text, SynthesisConfig(**EXACT))]

    def load_engine(self) -> None:
        """Load and warm the benchmark's own copy of the engine (for references)."""
        self.engine.load()
        self.engine.synthesize("Warm up.", None, {})

    async def reference_once(self, kind: str) -> None:
        """One sample of the TTFA reference for ``kind`` ("short" or "long").

        Synthesis time of the text's first chunk, and the time from starting ttsd's own
        ``PacatStream`` with that chunk in hand to its first audible sample; for the
        long text also the synthesis time of the whole text (what a non-streaming
        player waits for). Taken between ttsd's own repetitions, so that both see the
        same load on a shared machine.
        """
        from ttsd.audio.pacat import PacatStream

        config = self.config
        text = SHORT if kind == "short" else LONG
        first = split_text(text, config.chunk_chars, config.first_chunk_chars)[0]
        ref = self.reference.setdefault(
            kind, {"first_chunk_chars": len(first), "synth": [], "pacat_to_first_audible": []}
        )
        started = time.perf_counter()
        pcm = self.engine.synthesize(first, None, EXACT)
        ref["synth"].append(time.perf_counter() - started)
        ref["lead_silence"] = leading_silence(pcm, self.engine.sample_rate)
        if kind == "long":
            started = time.perf_counter()
            self.engine.synthesize(text, None, EXACT)
            ref.setdefault("whole_synth", []).append(time.perf_counter() - started)
        await self.recorder.quiet(0.2)
        mark = self.recorder.now_index()
        sent = time.monotonic()
        stream = PacatStream(
            self.engine.sample_rate, stream_name="bench", latency_ms=config.latency_ms
        )
        await stream.start()
        await stream.write(pcm.tobytes())
        heard = await self.recorder.first_sound(mark)
        ref["pacat_to_first_audible"].append(self.recorder.time_of(heard) - sent)
        stream.kill()
        await stream.wait_closed()

    # --- One system ------------------------------------------------------------------

    async def ttfa(
        self,
        system: System,
        text: str,
        abort_after: float | None,
        expected: np.ndarray | None = None,
    ) -> None:
        """Speak ``text``; record time to first audio and (if asked) abort to silence.

        With the ``expected`` audio, the abort is also timed to the exact sample where
        the recording stops following it (``abort_cut``): unlike the last audible
        sample, that cannot be hidden by a pause between words.
        """
        rec = self.recorder
        await rec.quiet()
        mark = rec.now_index()
        sent = time.monotonic()
        await system.speak(text)
        heard = await rec.first_sound(mark, timeout=60)
        kind = "short" if text == SHORT else "long"
        self.put(system.name, f"ttfa_{kind}", rec.time_of(heard) - sent)
        if abort_after is None:
            await system.wait_done()
            return
        await asyncio.sleep(max(0.0, rec.time_of(heard) + abort_after - time.monotonic()))
        await rec.sounding()
        aborted = time.monotonic()
        await system.abort()
        await rec.quiet(0.5)
        last = rec.last_sound(mark)
        if last is None:
            raise BenchError(f"{system.name}: nothing audible was recorded before the abort")
        self.put(system.name, "abort", rec.time_of(last + 1) - aborted)
        if expected is not None:
            recording = rec.segment(mark)
            start = locate(recording, [expected])[0]
            played = recording[start : start + len(expected)]
            differ = np.flatnonzero(played != expected[: len(played)])
            if not len(differ):
                raise BenchError(f"{system.name}: the whole text played despite the abort")
            self.put(system.name, "abort_cut", rec.time_of(mark + start + int(differ[0])) - aborted)

    async def gap_in_job(self, system: System, pieces: list[np.ndarray]) -> None:
        """Play LONG whole and find each piece's exact samples in the recording."""
        rec = self.recorder
        await rec.quiet()
        mark = rec.now_index()
        await system.speak(LONG)
        await system.wait_done()
        await rec.quiet()
        recording = rec.segment(mark)
        self.put_gaps(system.name, "gap_in_job", recording, pieces)

    def put_gaps(
        self, system: str, metric: str, recording: np.ndarray, pieces: list[np.ndarray]
    ) -> int:
        """Record the largest silence inserted between or inside ``pieces``.

        Between two pieces the gap is what lies between the end of one and the start
        of the next, less the gaps already found inside the first; for ``gap_in_job``
        the gaps inside pieces (underruns) count too. Returns where the second piece
        starts.
        """
        rate = self.recorder.rate
        starts = locate(recording, pieces)
        inside = [inner_gaps(recording, p, s) for p, s in zip(pieces, starts, strict=True)]
        between = [
            gap - sum(inner) / rate
            for gap, inner in zip(gaps(starts, pieces, rate), inside, strict=False)
        ]
        flat = [g / rate for inner in inside for g in inner]
        within = [*between, *flat] if metric == "gap_in_job" else between
        self.put(system, metric, max(within, default=0.0))
        self.put(system, "gap_inside_chunk", max(flat, default=0.0))
        self.put(system, "underruns", len(flat))
        return starts[1] if len(starts) > 1 else starts[0]

    async def gap_between_jobs(self, system: System, pieces: list[np.ndarray] | None) -> None:
        """Queue two jobs; measure the silence between them."""
        rec = self.recorder
        await rec.quiet()
        mark = rec.now_index()
        await system.speak_queue(list(QUEUED))
        await system.wait_done()
        await rec.quiet()
        recording = rec.segment(mark)
        hits = np.flatnonzero(audible(recording))
        if len(hits) < 2:
            raise BenchError(f"{system.name}: the two queued jobs made no sound")
        if pieces is None:  # no exact reference: the longest silence is the one between jobs
            self.put(system.name, "silence_between_jobs", float(np.diff(hits).max()) / rec.rate)
            return
        second = self.put_gaps(system.name, "gap_between_jobs", recording, pieces)
        end_first = second - round(self.results[system.name]["gap_between_jobs"][-1] * rec.rate)
        before = hits[hits < end_first]
        after = hits[hits >= second]
        self.put(system.name, "silence_between_jobs", (after[0] - before[-1]) / rec.rate)

    async def measure_system(self, system: System, exact: dict[str, Any]) -> None:
        reps = self.args.reps
        self.log(f"{system.label}: starting")
        await system.start()
        try:
            await asyncio.sleep(1.0)
            self.put(system.name, "rss_idle_kib", tree_rss_kib(system.pids()))
            for _ in range(reps):
                await self.ttfa(system, SHORT, None)
                if isinstance(system, Ttsd):
                    await self.reference_once("short")
            self.log(f"{system.label}: time to first audio, one sentence: done")
            peak = [0]
            sampler = asyncio.create_task(self._sample_rss(system, peak))
            try:
                whole = exact.get("in_job")
                expected = np.concatenate(whole) if whole is not None else None
                for _ in range(reps):
                    await self.ttfa(system, LONG, ABORT_AFTER, expected)
                    if isinstance(system, Ttsd):
                        await self.reference_once("long")
            finally:
                sampler.cancel()
            self.put(system.name, "rss_speaking_kib", peak[0])
            self.log(f"{system.label}: four sentences and abort: done")
            for _ in range(self.args.gap_reps):
                if exact.get("in_job") is not None:
                    await self.gap_in_job(system, exact["in_job"])
                await self.gap_between_jobs(system, exact.get("between"))
            self.log(f"{system.label}: gaps: done")
            if isinstance(system, Ttsd):
                self.results["ttsd"]["queued"] = list(system.queued_latency)
                await self.measure_broadcast(system)
        finally:
            await system.stop()

    async def _sample_rss(self, system: System, peak: list[int]) -> None:
        while True:
            peak[0] = max(peak[0], tree_rss_kib(system.pids()))
            await asyncio.sleep(0.05)

    async def measure_broadcast(self, system: Ttsd) -> None:
        found = await asyncio.to_thread(
            broadcast.measure, system.daemon.port, self.args.clients, self.args.reps
        )
        self.results["ttsd"]["broadcast"] = found["broadcast"]
        self.results["ttsd"]["queued_200"] = found["queued"]
        self.log(f"ttsd: broadcast to {self.args.clients} clients: done")

    # --- Cold start --------------------------------------------------------------------

    async def measure_cold(self) -> None:
        for rep in range(self.args.cold_reps):
            for name in self.args.systems:
                value = await self._cold_once(name, rep)
                if value is not None:
                    self.put(name, "cold", value)
        self.log("cold start: done")

    async def _cold_once(self, name: str, rep: int) -> float | None:
        rec = self.recorder
        if name == "ttsd":
            found = await coldstart.ttsd_once(
                self.root / f"cold{rep}", self.pulse, rec, SHORT, self.args.settings
            )
            self.put("ttsd", "cold_hello", found["hello"])
            return found["audio"]
        if name == "piper-cli":
            return None  # started per request: its time to first audio is a cold start
        system: System
        if name == "nonstreaming":
            system = NonStreaming(self.env)
        else:
            system = SpeechDispatcher(self.root / f"speechd-cold{rep}", self.env)
        launch: Callable[[], Awaitable[None]] = (
            system.launch if isinstance(system, SpeechDispatcher) else system.start
        )
        return await coldstart.measure_other(launch, lambda: system.speak(SHORT), system.stop, rec)

    # --- Everything ----------------------------------------------------------------------

    def make(self, name: str) -> System:
        if name == "ttsd":
            return Ttsd(self.root / "ttsd", self.pulse, self.args.settings)
        if name == "nonstreaming":
            return NonStreaming(self.env)
        if name == "piper-cli":
            return PiperCli(self.env)
        return SpeechDispatcher(self.root / "speechd", self.env)

    async def run(self) -> None:
        self.pulse.start()
        # Every pacat this process starts (the reference measurement) plays here too.
        os.environ.update(self.pulse.env())
        self.recorder.start()
        try:
            self.load_engine()
            config = self.config
            exact: dict[str, dict[str, Any]] = {
                "ttsd": {
                    "in_job": self.expected(LONG, config),
                    "between": [np.concatenate(self.expected(t, config)) for t in QUEUED],
                },
                "nonstreaming": {
                    "in_job": [self.engine.synthesize(LONG, None, EXACT)],
                    "between": [self.engine.synthesize(t, None, EXACT) for t in QUEUED],
                },
                "piper-cli": {
                    "in_job": self.sentences(LONG),
                    "between": [np.concatenate(self.sentences(t)) for t in QUEUED],
                },
                "speechd": {},
            }
            for name in self.args.systems:
                await self.measure_system(self.make(name), exact[name])
            if self.args.cold_reps:
                await self.measure_cold()
        finally:
            self.recorder.stop()
            self.pulse.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 reps, 1 cold start")
    parser.add_argument("--reps", type=int, default=10, help="repetitions per latency (10)")
    parser.add_argument("--gap-reps", type=int, help="full playbacks for gaps (reps/3)")
    parser.add_argument("--cold-reps", type=int, help="cold starts per system (reps/2)")
    parser.add_argument("--clients", type=int, default=200, help="clients for the broadcast")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated subset of {','.join(SYSTEMS)} (ttsd must be first if present)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a ttsd setting for the benchmarked daemon (e.g. latency_ms=300); repeatable",
    )
    parser.add_argument("--json", type=Path, help="write every raw measurement here")
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="measure nothing: report (tables, --docs, --plot) on a --json file of a past run",
    )
    parser.add_argument("--docs", type=Path, help="rewrite the results section of this file")
    parser.add_argument("--plot", type=Path, help="write the latency plot here (PNG)")
    args = parser.parse_args(argv)
    args.systems = [s for s in args.systems.split(",") if s]
    args.settings = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set needs KEY=VALUE, got {item!r}")
        args.settings[key] = int(value) if value.isdigit() else value
    args.settings.setdefault("max_connections", max(100, args.clients + 10))
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown or not args.systems:
        parser.error(f"unknown system(s): {', '.join(sorted(unknown)) or 'none given'}")
    if args.quick:
        args.reps = min(args.reps, 2)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    if args.gap_reps is None:
        args.gap_reps = 1 if args.quick else max(1, args.reps // 3)
    if args.cold_reps is None:
        args.cold_reps = 1 if args.quick else max(1, args.reps // 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        payload = json.loads(args.from_json.read_text())
        return publish(args, payload["results"], payload["reference"], payload["meta"])
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ttsd-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            asyncio.run(bench.run())
        except (BenchError, OSError, RuntimeError, TimeoutError, asyncio.TimeoutError) as exc:
            print(f"bench: FAILED: {exc.__class__.__name__}: {exc}", file=sys.stderr)
            return 1
    elapsed = time.monotonic() - started
    meta = {
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}",
        "load": os.getloadavg(),
        "reps": args.reps,
        "clients": args.clients,
        "seconds": round(elapsed, 1),
    }
    if args.json:
        payload = {"meta": meta, "reference": bench.reference, "results": bench.results}
        args.json.write_text(json.dumps(payload, indent=1))
    return publish(args, bench.results, bench.reference, meta)


def publish(
    args: argparse.Namespace,
    results: dict[str, dict[str, Any]],
    reference: dict[str, Any],
    meta: dict[str, Any],
) -> int:
    """Print the tables; update the docs and draw the plot if asked."""
    tables = report.tables(results, reference, args, meta)
    print(tables)
    if args.docs:
        report.update_docs(args.docs, tables)
    if args.plot:
        try:
            report.plot(results, args.plot)
        except ImportError:
            print("bench: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
