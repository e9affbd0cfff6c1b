"""Cold start: the first connection to a socket-activated daemon, to first audio.

``systemd-socket-activate`` listens on a loopback port and starts ``ttsd serve`` on
the first connection, handing over the listening socket as fd 3, as systemd's
``tts.socket`` does. It strips the environment, so everything the daemon needs is
passed with ``-E``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from pathlib import Path
from typing import Any

from bench.audio import BenchError, BenchRecorder
from bench.systems import EXACT, TTSD_SETTINGS
from tests.support.daemon import write_config
from tests.support.pulse import PulseServer
from ttsd import protocol
from ttsd.client import Client

PASSED = ("PULSE_SERVER", "PULSE_COOKIE", "HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def ttsd_once(
    home: Path,
    pulse: PulseServer,
    recorder: BenchRecorder,
    text: str,
    settings: dict[str, Any] | None = None,
) -> dict[str, float]:
    """One cold start; returns seconds to ``hello`` and to the first audible sample."""
    home.mkdir(parents=True, exist_ok=True)
    config = write_config(home / "config.toml", {**TTSD_SETTINGS, **(settings or {}), "port": 0})
    env = {
        **pulse.env(),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_RUNTIME_DIR": str(home),
        "TTS_CONFIG": str(config),
    }
    port = free_port()
    activator = await asyncio.create_subprocess_exec(
        "systemd-socket-activate",
        "-l",
        f"127.0.0.1:{port}",
        *(f"--setenv={name}={value}" for name, value in env.items()),
        sys.executable,
        "-m",
        "ttsd",
        "serve",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=open(home / "daemon.log", "wb"),  # noqa: SIM115
    )
    try:
        await _wait_listening(port)
        await recorder.quiet()
        first = recorder.now_index()
        sent = time.monotonic()
        try:
            client = await Client.connect("127.0.0.1", port, timeout=30)
        except Exception as exc:
            raise BenchError(f"socket-activated ttsd did not answer: {exc}") from exc
        hello = time.monotonic() - sent
        async with client:
            job = (await client.speak(text, options=EXACT)).job
            heard = await recorder.first_sound(first, timeout=30)
            end = await client.wait_for_job(job, 60)
            if not isinstance(end, protocol.Finished):
                raise BenchError(f"cold-start job ended with {end}")
            with contextlib.suppress(Exception):
                await client.request("terminate")
        return {"hello": hello, "audio": recorder.time_of(heard) - sent}
    finally:
        try:
            await asyncio.wait_for(activator.wait(), 15)
        except asyncio.TimeoutError:
            activator.kill()
            await activator.wait()


async def _wait_listening(port: int, timeout: float = 10.0) -> None:
    """Wait until systemd-socket-activate listens, without connecting (that activates)."""
    deadline = time.monotonic() + timeout
    needle = f"0100007F:{port:04X}".encode()
    while time.monotonic() < deadline:
        table = Path("/proc/net/tcp").read_bytes()
        if any(needle in line and line.split()[3] == b"0A" for line in table.splitlines()):
            return
        await asyncio.sleep(0.01)
    raise BenchError("systemd-socket-activate did not listen")


async def measure_other(start: Any, speak: Any, stop: Any, recorder: BenchRecorder) -> float:
    """Cold start of a baseline: ``start()`` then ``speak()``, to the first audible sample."""
    await recorder.quiet()
    first = recorder.now_index()
    sent = time.monotonic()
    try:
        await start()
        await speak()
        heard = await recorder.first_sound(first, timeout=60)
    finally:
        await stop()
    return recorder.time_of(heard) - sent


def describe(result: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in result.items())
