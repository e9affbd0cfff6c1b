"""Fixtures with real parts: a private PulseAudio, a recorder on its null sink's
monitor, and the daemon as a child process."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon
from tests.support.net import free_port
from tests.support.pulse import PulseServer, Recorder
from ttsd.client import Client

#: The tone engine as most tests use it: 20 ms of tone per character, instant synthesis.
TONE = {"engine": "tone", "tone": {"ms_per_char": 20.0}}


@pytest.fixture
def pulse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PulseServer]:
    server = PulseServer(tmp_path_factory.mktemp("pulse"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def recorder(pulse: PulseServer) -> Iterator[Recorder]:
    rec = Recorder(pulse)
    rec.start()
    yield rec
    rec.stop()


@pytest.fixture
def start_daemon(tmp_path: Path, pulse: PulseServer) -> Iterator[Callable[..., Daemon]]:
    """Start a daemon: ``start_daemon(settings=None, env=None, args=(), pulse=..., **how)``.

    ``settings`` default to :data:`TONE`; ``pulse`` to the test's own PulseAudio (the
    ``pulse`` fixture; ``None``: no sound server).
    ``how`` are :class:`Daemon`'s ways to start (``activate``, ``inherit``, ``wrap``,
    ``notify``, ``journal_stream``) and ``wait=False`` (return without waiting until
    it serves). Every daemon is stopped after the test.
    """
    daemons: list[Daemon] = []

    def start(
        settings: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        pulse: PulseServer | None = pulse,
        wait: bool = True,
        **how: Any,
    ) -> Daemon:
        home = tmp_path / f"daemon{len(daemons)}"
        daemon = Daemon(home, pulse, TONE if settings is None else settings, env, **how)
        daemons.append(daemon)
        return daemon.start(args=args, wait=wait)

    yield start
    for daemon in daemons:
        daemon.stop()


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    """A daemon with the tone engine."""
    return start_daemon()


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[Client]:
    async with await Client.connect("127.0.0.1", daemon.port) as c:
        yield c


@pytest.fixture
def unused_port() -> int:
    """A port where no daemon answers."""
    return free_port()


def pytest_configure(config: pytest.Config) -> None:
    # Never let a test talk to a desktop's sound server by accident.
    os.environ.pop("PULSE_SERVER", None)
