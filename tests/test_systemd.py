"""The daemon as systemd runs it: socket activation, sd_notify, idle exit, the units.

The daemon runs under ``systemd-socket-activate``, which holds the listening socket
and execs the daemon on the first connection (so its pid is the daemon's). The test
binds the ``NOTIFY_SOCKET`` datagram socket itself and reads what the daemon tells
the service manager. No systemd manager is involved or started.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon
from tests.support.events import poll
from tests.support.notify import NotifyListener
from tests.support.pulse import PulseServer, Recorder, audible, find_exact
from ttsd import protocol
from ttsd.audio import PacatOutput
from ttsd.client import Client, ClientError
from ttsd.config import Config
from ttsd.daemon import IdleExit, connection_handlers, engine_factory, settings_of
from ttsd.engines.tone import ToneEngine
from ttsd.scheduler import EngineHost, Scheduler
from ttsd.scheduler.events import Event
from ttsd.server import Server
from ttsd.systemd.activation import listen_fds
from ttsd.systemd.notify import SdNotifier

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "systemd"
TTSD = Path(sys.executable).parent / "ttsd"

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate"
)


@pytest.fixture
def activate(start_daemon: Callable[..., Daemon]) -> Callable[..., Daemon]:
    """``activate(listen="127.0.0.1", **settings)``: the daemon behind
    ``systemd-socket-activate -l LISTEN:PORT``, which holds the socket and execs it on
    the first connection; its ``notify`` listener is the ``NOTIFY_SOCKET``."""

    def start(listen: str = "127.0.0.1", **settings: Any) -> Daemon:
        settings = {"engine": "tone", "tone": {"ms_per_char": 20.0}, **settings}
        return start_daemon(settings, activate=listen, notify=True)

    return start


def notified(daemon: Daemon) -> NotifyListener:
    assert daemon.notify is not None
    return daemon.notify


async def test_first_connection_starts_it_ready_status_while_speaking_stopping_on_terminate(
    activate: Callable[..., Daemon], recorder: Recorder
) -> None:
    daemon = activate()
    await asyncio.sleep(0.5)  # time for a wrong start to show (nothing else to wait for)
    assert not daemon.started() and notified(daemon).lines() == [], "started before a connection"

    async with await Client.connect("127.0.0.1", daemon.port) as client:
        ready_at = notified(daemon).wait_for(lambda line: line == "READY=1")
        match = daemon.wait_for_line(re.compile(r"listening on port (\d+)"))
        assert int(match.group(1)) == daemon.port  # the inherited socket, not a new one

        text = "Speaking through the socket unit."
        job = (await client.speak(text)).job
        notified(daemon).wait_for(lambda line: line == f"STATUS=speaking job {job}")
        end = await client.wait_for_job(job, timeout=15)
        assert isinstance(end, protocol.Finished)
        notified(daemon).wait_for(lambda line: line == "STATUS=idle" and _after(daemon, job))

        # The job was heard: its tone, sample for sample at the start, and all of it
        # (a loaded machine may underrun, which inserts gaps but loses nothing).
        expected = ToneEngine(ms_per_char=20.0).synthesize(text, None, {})
        recorder.wait_for_silence(0.3)
        recorded = recorder.samples()
        assert find_exact(recorded, expected[:2205]) is not None, "the job was not heard"
        heard = int(audible(recorded).sum())
        assert abs(heard - int(audible(expected).sum())) < 0.02 * len(expected)

        assert isinstance(await client.request("terminate"), protocol.Ok)
        stopping_at = notified(daemon).wait_for(lambda line: line == "STOPPING=1")
    assert daemon.wait() == 0
    assert stopping_at > ready_at
    lines = notified(daemon).lines()
    assert lines.count("READY=1") == 1 and lines.count("STOPPING=1") == 1
    assert lines.index("READY=1") < lines.index(f"STATUS=speaking job {job}")
    assert lines.index("STOPPING=1") > lines.index(f"STATUS=speaking job {job}")
    assert lines[-1] == "STATUS=stopping (terminate)"


def _after(daemon: Daemon, job: int) -> bool:
    """True once an ``idle`` status has been sent after ``speaking job N``."""
    statuses = notified(daemon).statuses()
    speaking = f"speaking job {job}"
    return speaking in statuses and "idle" in statuses[statuses.index(speaking) :]


async def test_queue_length_shows_in_status(activate: Callable[..., Daemon]) -> None:
    daemon = activate()
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        first = (await client.speak("one two three four five six seven eight nine ten.")).job
        await client.speak("Second.")
        await client.speak("Third.")
        notified(daemon).wait_for(lambda line: line == f"STATUS=speaking job {first}, 2 queued")
        await client.abort_all()
        notified(daemon).wait_for(lambda line: line == "STATUS=idle")
        await client.terminate()
    assert daemon.wait() == 0


async def test_sigterm_is_a_clean_stop(activate: Callable[..., Daemon]) -> None:
    daemon = activate()
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        notified(daemon).wait_for(lambda line: line == "READY=1")
        await client.speak("A long sentence that is still playing when the signal comes.")
        notified(daemon).wait_for(lambda line: line.startswith("STATUS=speaking job"))
        daemon.signal(signal.SIGTERM)
        notified(daemon).wait_for(lambda line: line == "STOPPING=1")
        # Not blocking the loop: the client must answer the daemon's closing handshake.
        assert await asyncio.to_thread(daemon.wait) == 0
        assert client.closed and client.close_code == 1001
    assert notified(daemon).lines()[-1] == "STATUS=stopping (SIGTERM)"
    assert "received SIGTERM" in daemon.log


async def test_activated_beyond_loopback_without_a_token_exits_2_before_serving(
    activate: Callable[..., Daemon],
) -> None:
    daemon = activate(listen="0.0.0.0")
    # The connection that starts it is never answered: the daemon refuses the socket.
    with pytest.raises(ClientError):
        await Client.connect("127.0.0.1", daemon.port, timeout=15)
    assert await asyncio.to_thread(daemon.wait) == 2
    assert daemon.started(), "the refusal must come from the daemon, not the activator"
    refusals = [line for line in daemon.lines if "beyond loopback" in line]
    assert len(refusals) == 1, daemon.log
    assert "refusing to listen on 0.0.0.0 (beyond loopback) without a token" in refusals[0]
    assert 'set auth = "token"' in refusals[0]
    assert "Traceback" not in daemon.log
    assert "listening on port" not in daemon.log
    assert "READY=1" not in notified(daemon).lines()
    status = notified(daemon).statuses()[-1]
    assert status.startswith("failed: refusing to listen on 0.0.0.0"), status


async def test_activated_beyond_loopback_with_a_token_serves_only_with_it(
    activate: Callable[..., Daemon],
) -> None:
    secret = "an-activation-token-0123456789"
    daemon = activate(listen="0.0.0.0", auth="token", token=secret)
    with pytest.raises(ClientError, match="requires its token"):
        await Client.connect("127.0.0.1", daemon.port, timeout=15)
    notified(daemon).wait_for(lambda line: line == "READY=1")
    match = daemon.wait_for_line(re.compile(r"listening on port (\d+)"))
    assert int(match.group(1)) == daemon.port  # the inherited 0.0.0.0 socket
    async with await Client.connect("127.0.0.1", daemon.port, token=secret) as client:
        job = (await client.speak("Served beyond loopback.")).job
        assert isinstance(await client.wait_for_job(job, timeout=15), protocol.Finished)
        assert isinstance(await client.request("terminate"), protocol.Ok)
    assert await asyncio.to_thread(daemon.wait) == 0
    assert "beyond loopback" not in daemon.log


async def test_idle_exit_waits_for_clients_then_exits_cleanly(
    activate: Callable[..., Daemon],
) -> None:
    daemon = activate(idle_exit=1.0)
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        notified(daemon).wait_for(lambda line: line == "READY=1")
        # Well past idle_exit, with a client connected: nothing must happen, and only
        # time shows it.
        await asyncio.sleep(2.5)
        assert daemon.process is not None and daemon.process.poll() is None, "exited"
        assert "STOPPING=1" not in notified(daemon).lines()
        assert isinstance(await client.ping(), protocol.Pong)
    left = time.monotonic()
    stopping_at = notified(daemon).wait_for(lambda line: line == "STOPPING=1", timeout=10)
    assert daemon.wait() == 0
    assert 0.9 <= stopping_at - left < 6.0
    assert notified(daemon).lines()[-1] == "STATUS=stopping (idle)"
    assert "idle for 1 s, exiting" in daemon.log


async def test_idle_exit_zero_never_exits(activate: Callable[..., Daemon]) -> None:
    daemon = activate(idle_exit=0)
    async with await Client.connect("127.0.0.1", daemon.port):
        notified(daemon).wait_for(lambda line: line == "READY=1")
    await asyncio.sleep(2.5)  # nothing must happen: only time shows it
    assert daemon.process is not None and daemon.process.poll() is None
    assert "STOPPING=1" not in notified(daemon).lines()


async def test_connection_waiting_in_the_backlog_is_served_by_the_next_start(
    start_daemon: Callable[..., Daemon],
) -> None:
    """What systemd does after an idle exit: the socket stays open, a client connects
    while no daemon runs, and the next daemon started on that socket serves it."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    settings = {"engine": "tone", "idle_exit": 0.5}
    try:
        first = start_daemon(settings, inherit=listener, notify=True)
        assert first.port == port
        async with await Client.connect("127.0.0.1", port):
            pass
        assert first.wait(15) == 0
        assert notified(first).lines().count("STOPPING=1") == 1

        # Nobody is accepting now: the connection waits in the backlog.
        connecting = asyncio.create_task(Client.connect("127.0.0.1", port, timeout=20))
        await asyncio.sleep(0.5)  # it must not be answered: only time shows it
        assert not connecting.done()
        second = await asyncio.to_thread(
            start_daemon, settings, inherit=listener, notify=True, wait=False
        )
        client = await asyncio.wait_for(connecting, 15)
        async with client:
            assert isinstance(await client.ping(), protocol.Pong)
        assert second.wait(15) == 0
        assert notified(first).lines().count("READY=1") == 1
        assert notified(second).lines().count("READY=1") == 1
    finally:
        listener.close()


def test_self_bound_path_logs_its_port_and_notifies(start_daemon: Callable[..., Any]) -> None:
    daemon = start_daemon(notify=True)
    assert re.search(rf"listening on port {daemon.port}\b", daemon.log)
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=5):
        pass
    notified(daemon).wait_for(lambda line: line == "READY=1")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    notified(daemon).wait_for(lambda line: line == "STOPPING=1")


def render_units(directory: Path, exec_path: Path) -> list[Path]:
    """Copy the units into ``directory`` with ``ExecStart`` pointing at ``exec_path``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tts.socket").write_text((UNITS / "tts.socket").read_text())
    service = (UNITS / "tts.service").read_text()
    service, count = re.subn(r"(?m)^ExecStart=\S+", f"ExecStart={exec_path}", service)
    assert count == 1
    (directory / "tts.service").write_text(service)
    return [directory / "tts.socket", directory / "tts.service"]


def verify_units(units: list[Path], runtime: Path) -> subprocess.CompletedProcess[str]:
    runtime.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(runtime),
        "XDG_RUNTIME_DIR": str(runtime),
        "SYSTEMD_LOG_LEVEL": "info",
    }
    return subprocess.run(
        ["systemd-analyze", "--user", "verify", *map(str, units)],
        env=env,
        cwd=units[0].parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_units_pass_systemd_analyze_verify_without_warnings(tmp_path: Path) -> None:
    assert TTSD.exists(), f"{TTSD} missing: install the package into this environment"
    units = render_units(tmp_path / "units", TTSD)
    result = verify_units(units, tmp_path / "runtime")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr

    # The check can fail: a unit with a typo is reported.
    service = units[1].read_text().replace("Type=notify", "Type=notify\nRestartt=always")
    units[1].write_text(service)
    broken = verify_units(units, tmp_path / "runtime")
    assert "Restartt" in broken.stderr


def test_units_say_what_the_issue_asks() -> None:
    socket_unit = (UNITS / "tts.socket").read_text()
    service = (UNITS / "tts.service").read_text()
    assert re.search(r"(?m)^ListenStream=127\.0\.0\.1:11500$", socket_unit)
    assert re.search(r"(?m)^WantedBy=sockets\.target$", socket_unit)
    for line in ("Type=notify", "Restart=on-failure", "ExecStart=%h/.local/bin/ttsd serve"):
        assert re.search(rf"(?m)^{re.escape(line)}$", service), line
    # Sandboxing that hides $XDG_RUNTIME_DIR or /dev would cut off audio or the GPU.
    for breaks_audio in ("PrivateDevices=", "ProtectHome=", "PrivateUsers=", "DevicePolicy="):
        assert breaks_audio not in service


async def test_idle_exit_is_called_off_when_a_client_slips_in(
    pulse: PulseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the exit sequence closes: a connection accepted just before the
    listener stopped accepting, still in its handshake, is not yet a client."""
    for name, value in pulse.env().items():
        monkeypatch.setenv(name, value)
    config = Config(engine="tone", port=0, idle_exit=1.0)
    server: Server | None = None

    def emit(event: Event) -> None:
        if server is not None:
            server.emit(event)

    factory = engine_factory(config)
    engine, selected = factory()
    assert isinstance(engine, ToneEngine)
    scheduler = Scheduler(
        settings_of(config),
        EngineHost(factory, name=config.engine, engine=engine, selected=selected),
        PacatOutput(media_role=config.media_role, sink=config.sink, latency_ms=config.latency_ms),
        emit,
    )
    server = Server(config, scheduler)
    scheduler.start()
    port = await server.start()
    idle = IdleExit(server, scheduler, config.idle_exit)
    listener = server.listener
    assert listener is not None
    try:
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setblocking(False)
        # Accepted by the loop, its first request (the handshake) not read yet.
        await poll(lambda: server.arriving, what="the connection accepted")
        assert not server.clients
        # Its handshake runs while the exit is being decided.
        late_task = asyncio.create_task(Client.connect("127.0.0.1", port, sock=raw))
        assert await idle.confirm() is False

        # The connection that slipped in is served, and new ones are accepted again.
        async with await late_task as late:
            assert isinstance(await late.ping(), protocol.Pong)
        async with await Client.connect("127.0.0.1", port) as fresh:
            assert isinstance(await fresh.ping(), protocol.Pong)

        # With nobody left, the same sequence decides to exit.
        await poll(
            lambda: (
                not server.clients
                and not server.arriving
                and all(t.done() for t in connection_handlers(listener))
            ),
            what="both connections closed on the daemon's side",
        )
        assert await idle.confirm() is True
    finally:
        await scheduler.close()
        await server.close()


def test_listen_fds_only_for_this_process_and_cleared() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert listen_fds(env) == [3, 4]
    assert env == {}, "children (pacat) must not inherit the sockets' description"
    assert listen_fds({"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}) == []
    assert listen_fds({"LISTEN_PID": "x", "LISTEN_FDS": "1"}) == []
    assert listen_fds({}) == []


def test_notifier_never_fails(tmp_path: Path) -> None:
    silent = SdNotifier({})
    assert not silent.enabled and silent.send("READY=1") is False
    silent.ready()
    silent.status("idle")
    silent.stopping()

    nobody = tmp_path / "nobody"  # exists, but nobody listens: sd_notify's refusal case
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    bound.bind(str(nobody))
    bound.close()
    orphan = SdNotifier({"NOTIFY_SOCKET": str(nobody)})
    assert orphan.send("READY=1") is False
    orphan.ready()
    orphan.status("speaking job 1")
    orphan.stopping()

    listener = NotifyListener(tmp_path / "notify")
    try:
        notifier = SdNotifier({"NOTIFY_SOCKET": str(listener.path)})
        notifier.status("two\nlines")
        listener.wait_for(lambda line: line == "STATUS=two lines")
    finally:
        listener.close()
