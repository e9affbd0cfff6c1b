"""Time to first audio through the remote engine, against the same engine locally.

    python -m bench.remote                      # Piper; RTT 0 (loopback), 20, 50 ms; 10 reps
    python -m bench.remote --engine tone        # instant synthesis: the path's own cost
    python -m bench.remote --reps 20 --rtt 0 20 50 --json remote.json

Everything runs on this machine. Daemon A serves the OpenAI-compatible endpoint with
Piper (or the tone engine) and plays nothing; daemon L speaks with the same engine
itself; daemon B speaks with ``engine = "remote"`` through A. L and B play on a
private PulseAudio null sink whose monitor is recorded, and time to first audio is
the time from sending ``speak`` to the first audible sample recorded, as in
``bench.run``. L and B take turns, one job at a time, with one-sentence texts that
differ every time (phrase caches off), so load drifts hit both. With the tone engine,
synthesis takes no time, so what is left is the path: the daemons, the HTTP request
and its answer, and PulseAudio.

Network delay: this machine's kernel has no ``sch_netem`` (``tc qdisc ... netem``:
"Specified qdisc kind is unknown"), so B reaches A through :class:`DelayProxy`, a TCP
proxy on loopback in its own thread that holds every byte for half the RTT in each
direction, and the first bytes of each new connection for one RTT more (the TCP
handshake a real network costs). B keeps its connection to A alive between requests,
as it does in use, so a request costs one RTT. RTT 0 is B talking to A directly.

Goal (issue 15): median overhead over local <= 1 RTT + 20 ms. The table gives the
difference of the medians; the median of the paired differences (each remote job
against the local one next to it); the overhead less synthesis (the median of TTFA
minus the first chunk's synthesis time, read from the debug log of the daemon that
made it, A for B and L for itself; remote minus local), which takes out the synthesis
time that varies a lot from job to job on a loaded machine, and which "met" compares
with the goal; and how many connections B opened through the proxy (1: the
connection was kept).
Exit status 0 when every measurement could be made (a missed goal is reported, not
failed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.audio import BenchError, BenchRecorder
from bench.stats import Summary, fmt_ms
from tests.support.daemon import Daemon
from tests.support.pulse import PulseServer
from ttsd.client import Client

#: Piper made deterministic: A's and L's audio for a text are the same.
EXACT = {"noise_scale": 0.0, "noise_w_scale": 0.0}
#: The engines benchmarked: daemon settings, and the options of each job.
ENGINES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "piper": ({"engine": "piper"}, EXACT),
    "tone": ({"engine": "tone", "tone": {"ms_per_char": 20.0}}, {}),
}
#: Daemon settings shared by A, L and B: no phrase cache, so every job is synthesized;
#: debug logs, which say how long each chunk took to make.
COMMON: dict[str, Any] = {"idle_exit": 0, "phrase_cache_mb": 0, "log_level": "debug"}
#: The scheduler's debug line for a chunk made: its synthesis time.
CHUNK_MADE = re.compile(r"job \d+ chunk 1/\d+: [\d.]+ s of audio in ([\d.]+) s")
#: Goal: overhead over local at most one round trip plus this.
SLACK = 0.020


def text_for(n: int) -> str:
    """A different sentence every time, of the same length."""
    return f"Notice number {n:03d}: the build on the big machine has finished its work."


class DelayProxy:
    """A TCP proxy on 127.0.0.1 that adds ``rtt`` seconds of round trip to a target.

    Every chunk read is written on after ``rtt / 2`` (in order, each direction), and
    the first bytes a new connection sends wait one ``rtt`` more, the cost of a TCP
    handshake. It runs its own event loop in a thread, so the measuring loop's work
    never delays it.
    """

    def __init__(self, target_port: int, rtt: float) -> None:
        self.target_port = target_port
        self.rtt = rtt
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> DelayProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer, handshake=self.rtt),
            self._pipe(up_reader, writer, handshake=0.0),
            return_exceptions=True,
        )

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, handshake: float
    ) -> None:
        loop = asyncio.get_running_loop()
        due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                at, data = await due.get()
                wait = at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    sink.close()
                    return
                sink.write(data)
                await sink.drain()

        sender = loop.create_task(send())
        extra = handshake
        try:
            while data := await source.read(65536):
                due.put_nowait((loop.time() + self.rtt / 2 + extra, data))
                extra = 0.0
        except OSError:
            pass
        due.put_nowait((loop.time() + self.rtt / 2, b""))
        await sender


async def engine_ready(port: int, timeout: float = 120.0) -> dict[str, Any]:
    """Wait until the daemon's engine is loaded; return its facts."""
    deadline = time.monotonic() + timeout
    async with await Client.connect("127.0.0.1", port, retry_for=10) as client:
        while time.monotonic() < deadline:
            info = (await client.status()).engine
            if info.get("state") == "ready":
                return info
            if info.get("state") == "failed":
                raise BenchError(f"engine failed on port {port}: {info.get('error')}")
            await asyncio.sleep(0.05)
    raise BenchError(f"engine on port {port} not ready within {timeout} s")


class Speaker:
    """A daemon that plays on the recorded sink, driven by its client.

    ``maker`` is the daemon whose engine makes the audio (itself, or A for B): its log
    says how long the first chunk took to make.
    """

    def __init__(
        self, label: str, daemon: Daemon, options: dict[str, Any], maker: Daemon | None = None
    ) -> None:
        self.label = label
        self.daemon = daemon
        self.options = options
        self.maker = maker or daemon
        self.client: Client | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.daemon.start, 60.0)
        await engine_ready(self.daemon.port)
        self.client = await Client.connect("127.0.0.1", self.daemon.port)
        await self.say("Warming up, this is a first sentence.")  # loads and connects all

    async def say(self, text: str) -> None:
        assert self.client is not None
        queued = await self.client.speak(text, options=self.options)
        end = await self.client.wait_for_job(queued.job, 120)
        if end.TYPE != "finished":
            raise BenchError(f"{self.label}: job ended with {end}")

    async def ttfa(self, recorder: BenchRecorder, text: str) -> tuple[float, float]:
        """Seconds from sending ``speak`` to the first audible sample recorded, and
        seconds the engine took to make the first chunk."""
        assert self.client is not None
        await recorder.quiet(0.2)
        lines = len(self.maker.lines)
        mark = recorder.now_index()
        sent = time.monotonic()
        queued = await self.client.speak(text, options=self.options)
        heard = await recorder.first_sound(mark, timeout=60)
        seconds = recorder.time_of(heard) - sent
        end = await self.client.wait_for_job(queued.job, 120)
        if end.TYPE != "finished":
            raise BenchError(f"{self.label}: job ended with {end}")
        made = [m for line in self.maker.lines[lines:] if (m := CHUNK_MADE.search(line))]
        if not made:
            raise BenchError(f"{self.label}: no chunk line in {self.maker.home}'s log")
        return seconds, float(made[0].group(1))

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        await asyncio.to_thread(self.daemon.stop)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    pulse = PulseServer(root / "pulse")
    pulse.start()
    recorder = BenchRecorder(pulse)
    recorder.start()
    engine, options = ENGINES[args.engine]
    a = Daemon(root / "a", None, {**COMMON, **engine})
    local = Speaker("local", Daemon(root / "local", pulse, {**COMMON, **engine}), options)
    results: dict[str, Any] = {
        "engine": args.engine,
        "machine": machine(),
        "load_before": os.getloadavg(),
        "reps": args.reps,
        "runs": [],
    }
    counter = iter(range(1000))
    try:
        await asyncio.to_thread(a.start, 60.0)
        await engine_ready(a.port)
        await local.start()
        for rtt_ms in args.rtt:
            rtt = rtt_ms / 1000
            proxy = DelayProxy(a.port, rtt).start() if rtt > 0 else None
            port = proxy.port if proxy else a.port
            remote = Speaker(
                f"remote, RTT {rtt_ms:g} ms",
                Daemon(
                    root / f"b{rtt_ms:g}",
                    pulse,
                    {
                        **COMMON,
                        "engine": "remote",
                        "remote": {"url": f"http://127.0.0.1:{port}/v1", "timeout": 30},
                    },
                ),
                options,
                maker=a,
            )
            await remote.start()
            times: dict[str, list[float]] = {"local": [], "remote": []}
            synth: dict[str, list[float]] = {"local": [], "remote": []}
            for _ in range(args.reps):
                # Alternate who goes first, so that neither always follows the other.
                order = [("local", local), ("remote", remote)]
                for name, speaker in order if len(times["local"]) % 2 == 0 else order[::-1]:
                    ttfa, made = await speaker.ttfa(recorder, text_for(next(counter)))
                    times[name].append(ttfa)
                    synth[name].append(made)
            await remote.stop()
            connections = proxy.connections if proxy else None
            if proxy:
                proxy.stop()
            run = {
                "rtt_ms": rtt_ms,
                "local": times["local"],
                "remote": times["remote"],
                "local_synthesis": synth["local"],
                "remote_synthesis": synth["remote"],
                "proxy_connections": connections,
            }
            results["runs"].append(run)
            print(row(run), flush=True)
    finally:
        await local.stop()
        await asyncio.to_thread(a.stop)
        recorder.stop()
        pulse.stop()
    results["load_after"] = os.getloadavg()
    return results


def row(run: dict[str, Any]) -> str:
    """One line of the results table (markdown)."""
    local, remote = Summary.of(run["local"]), Summary.of(run["remote"])
    assert local is not None and remote is not None
    overhead = remote.median - local.median
    # Each remote job ran next to a local one: the median of their differences is
    # less sensitive to load drifts than the difference of the medians.
    paired = float(np.median(np.subtract(run["remote"], run["local"])))
    # TTFA less the first chunk's synthesis time, job by job: what the path adds. The
    # synthesis time varies a lot on a loaded machine, and this takes it out.
    path = float(
        np.median(np.subtract(run["remote"], run["remote_synthesis"]))
        - np.median(np.subtract(run["local"], run["local_synthesis"]))
    )
    goal = run["rtt_ms"] / 1000 + SLACK
    met = "yes" if path <= goal else "NO"
    way = "loopback, direct" if run["rtt_ms"] == 0 else f"proxy, RTT {run['rtt_ms']:g} ms"
    connections = run["proxy_connections"]
    return (
        f"| {way} | {fmt_ms(local)} | {fmt_ms(remote)} | {overhead * 1000:+.0f} ms "
        f"| {paired * 1000:+.0f} ms | {path * 1000:+.0f} ms | <= {goal * 1000:.0f} ms | {met} "
        f"| {'-' if connections is None else connections} |"
    )


HEADER = (
    "| B reaches A by | local TTFA | remote TTFA | overhead (medians) | overhead (paired) "
    "| overhead less synthesis | goal | met | connections |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=sorted(ENGINES), default="piper")
    parser.add_argument("--reps", type=int, default=10, help="jobs per system and RTT")
    parser.add_argument(
        "--rtt", type=float, nargs="+", default=[0.0, 20.0, 50.0], help="round trips (ms)"
    )
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args(argv)
    if args.reps < 1 or any(r < 0 for r in args.rtt):
        parser.error("--reps must be at least 1 and --rtt values not negative")
    info = machine()
    print(
        f"engine: {args.engine}; machine: {info['cpu']}, {info['cores']} cores, "
        f"{info['system']}; "
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    print(HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="ttsd-bench-remote-") as tmp:
        try:
            results = asyncio.run(run(args, Path(tmp)))
        except BenchError as exc:
            print(f"bench.remote: {exc}", file=sys.stderr)
            return 1
    print(
        "load average after: " + " ".join(f"{x:.2f}" for x in results["load_after"]),
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
