"""The composition root: builds the daemon's parts, runs it, and stops it cleanly.

``main`` is what ``ttsd serve`` calls. It wires config -> engine host -> audio output
-> scheduler -> server, listens on an inherited socket when one is given (systemd
socket activation) or binds ``host:port`` itself, and stops on ``terminate``,
SIGTERM or SIGINT, or after ``idle_exit`` seconds with no clients and no jobs.

Stopping is always clean, whatever the engine is doing: every job ends with one
``aborted`` (reason ``terminate``), ``STOPPING=1`` is sent, every stream is killed,
every connection closed with 1001, and the process exits 0. An engine call in flight
is cancelled and gets :data:`Settings.stop_timeout` seconds to return; if native code
(onnxruntime, torch) does not return in time, the process leaves with ``os._exit(0)``
after flushing its logs, never through a C++ abort at interpreter exit.

The service manager hears ``READY=1`` as soon as connections are served (the model
may still be loading: clients see that in ``hello``/``status`` and their jobs wait),
``STATUS=`` whenever what the daemon is doing changes, and ``STOPPING=1`` first
thing on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from websockets.asyncio.server import Server as WebSocketServer

from ttsd.audio import AudioOutput, PacatOutput
from ttsd.config import Config, ConfigError, load_config
from ttsd.engines import Engine, EngineError, create_engine, resolve_auto
from ttsd.scheduler import EngineHost, Limits, Scheduler, Settings
from ttsd.scheduler.engine_host import EngineFactory
from ttsd.scheduler.events import EngineChanged, Event
from ttsd.server import Server
from ttsd.systemd.activation import ActivationError, inherited_socket
from ttsd.systemd.journal import setup_logging
from ttsd.systemd.notify import SdNotifier

log = logging.getLogger("ttsd")


class Notifier(Protocol):
    """Tells a service manager how the daemon is doing (see ``ttsd.systemd``)."""

    def ready(self) -> None: ...

    def status(self, text: str) -> None: ...

    def stopping(self) -> None: ...


class NullNotifier:
    def ready(self) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def stopping(self) -> None:
        pass


def build_engine(config: Config, name: str) -> Engine:
    """Build (not load) engine ``name`` with its settings; bad settings: ConfigError."""
    try:
        return create_engine(name, config.engine_settings(name))
    except TypeError as exc:  # an unknown key in the engine's table
        raise ConfigError(f"[{name}] settings: {exc}") from None
    except EngineError as exc:
        raise ConfigError(str(exc)) from None


def engine_factory(config: Config) -> EngineFactory:
    """A function that builds the configured engine, resolving ``auto``, and says why."""

    def make() -> tuple[Engine, str]:
        if config.engine == "auto":
            name, reason = resolve_auto()
            return build_engine(config, name), f"auto: {reason}"
        return build_engine(config, config.engine), f"engine = {config.engine} in the settings"

    return make


def settings_of(config: Config) -> Settings:
    return Settings(
        chunk_chars=config.chunk_chars,
        first_chunk_chars=config.first_chunk_chars,
        ahead_seconds=config.ahead_seconds,
        gapless=config.gapless,
        volume=config.volume,
        limits=Limits(
            max_queue=config.max_queue,
            max_queue_per_client=config.max_queue_per_client,
            max_synthesize_per_client=config.max_synthesize_per_client,
        ),
        stall_timeout=config.stall_timeout,
        cache_bytes=int(config.phrase_cache_mb * 2**20),
        text_format=config.text_format,
        code_blocks=config.code_blocks,
        emoji=config.emoji,
    )


def describe_activity(scheduler: Scheduler) -> str:
    """One line for the service manager's STATUS=: what the daemon is doing now."""
    host = scheduler.host
    current = scheduler.queue.playing
    if host.state.value == "loading":
        text = f"loading {host.name} engine"
    elif host.state.value == "failed":
        text = f"engine failed: {host.error}"
    elif current is not None:
        text = f"{'paused in' if scheduler.paused else 'speaking'} job {current.id}"
    elif scheduler.paused:
        text = "paused"
    else:
        text = "idle"
    if scheduler.queue.waiting:
        text += f", {len(scheduler.queue.waiting)} queued"
    if scheduler.queue.making:
        text += f", synthesizing {len(scheduler.queue.making)}"
    return text


#: How often the daemon looks at its state (STATUS= refresh, idle exit).
TICK = 0.25

#: How long a closing listener waits for connections it accepted to show up.
SETTLE = 0.1


async def run(
    config: Config,
    *,
    sock: socket.socket | None = None,
    notifier: Notifier | None = None,
    make_engine: EngineFactory | None = None,
    output: AudioOutput | None = None,
    tick: float = TICK,
) -> int:
    """Serve until stopped; return the process exit status.

    Raises :class:`ConfigError` for bad engine settings (before serving).
    """
    notifier = notifier or NullNotifier()
    loop = asyncio.get_running_loop()
    server: Server | None = None
    last_status = ""
    stopping = False

    def refresh_status() -> None:
        nonlocal last_status
        if stopping:
            return  # "stopping" stays the last word while the jobs are aborted
        text = describe_activity(scheduler)
        if text != last_status:
            last_status = text
            notifier.status(text)

    def emit(event: Event) -> None:
        if server is not None:
            server.emit(event)
        refresh_status()

    factory = make_engine or engine_factory(config)
    engine: Engine | None = None
    selected = ""
    if config.engine != "auto" or make_engine is not None:
        # A named engine is built now, so that bad settings stop the daemon at once.
        engine, selected = factory()
    scheduler = Scheduler(
        settings_of(config),
        EngineHost(
            factory,
            name=config.engine,
            engine=engine,
            selected=selected,
            unload_after=config.engine_unload,
            is_idle=lambda: not scheduler.busy,
            on_change=lambda info: emit(EngineChanged(info)),
        ),
        output
        or PacatOutput(
            media_role=config.media_role, sink=config.sink, latency_ms=config.latency_ms
        ),
        emit,
    )
    server = Server(config, scheduler)
    scheduler.start()
    await server.start(sock)
    notifier.ready()
    refresh_status()
    warming = asyncio.create_task(asyncio.to_thread(_warm_up_text), name="ttsd-warm-text")

    reason: list[str] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, server, signum, reason)
    idle = IdleExit(server, scheduler, config.idle_exit)
    while not server.stop_requested.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.stop_requested.wait(), tick)
        refresh_status()
        if idle.due() and await idle.confirm():
            reason.append("idle")
            break
    # The signal handlers stay: a second Ctrl-C while stopping is only logged.
    stopping = True
    notifier.stopping()
    notifier.status(f"stopping ({reason[0] if reason else 'terminate'})")
    started = time.monotonic()
    warming.cancel()
    _, engine_stopped = await scheduler.close("terminate")
    log.debug("jobs, streams and engine stopped after %.3f s", time.monotonic() - started)
    await server.close()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)
    log.info(
        "stopped in %.2f s%s",
        time.monotonic() - started,
        "" if engine_stopped else " (the engine call in flight did not return in time)",
    )
    return 0


def _warm_up_text() -> None:
    """Import the text library and build its lookup tables before the first request."""
    import ttsd.text

    ttsd.text.warm_up()


def _on_signal(server: Server, signum: int, reason: list[str]) -> None:
    name = signal.Signals(signum).name
    if server.stop_requested.is_set():
        log.info("received %s again; already stopping", name)
        return
    log.info("received %s, shutting down", name)
    reason.append(name)
    server.stop_requested.set()


class IdleExit:
    """Decides that the daemon has been idle long enough, without losing a client.

    A client may connect just as the daemon decides to exit. So exiting goes: stop
    accepting (the listening socket stays open: under systemd, connections that
    arrive now wait in its backlog for the next start), give connections accepted a
    moment earlier time to show up, and look again. If someone did slip in, the
    daemon accepts again and stays. A paused daemon with jobs is busy, not idle.
    """

    def __init__(self, server: Server, scheduler: Scheduler, seconds: float) -> None:
        self.server = server
        self.scheduler = scheduler
        self.seconds = seconds

    def idle_for(self) -> float:
        """Seconds since the last client left or the last job ended (0 while busy)."""
        if self.server.clients or self.server.arriving or self.scheduler.busy:
            return 0.0
        last = max(self.server.last_disconnect, self.scheduler.last_activity)
        return time.monotonic() - last

    def due(self) -> bool:
        return self.seconds > 0 and self.idle_for() >= self.seconds

    def _nobody(self, listener: WebSocketServer) -> bool:
        # The handlers include connections still in their opening handshake;
        # ``arriving``, those whose first request is still being read, and HTTP requests.
        handling = any(not task.done() for task in connection_handlers(listener))
        return (
            not handling
            and not self.server.arriving
            and not self.server.clients
            and not self.scheduler.busy
        )

    async def confirm(self, settle: float = SETTLE) -> bool:
        """Stop accepting and re-check; True if the daemon should exit now.

        After True the daemon accepts nothing more: connections that arrive wait in
        the socket's backlog (under systemd, for the next start).
        """
        listener = self.server.listener
        if listener is None:
            return True
        loop = asyncio.get_running_loop()
        fd = listener.sockets[0].fileno()
        # Stop accepting by removing the loop's accept callback rather than closing
        # the server: a closed server answers handshakes under way with HTTP 503.
        loop.remove_reader(fd)
        await asyncio.sleep(settle)
        if self._nobody(listener):
            log.info("idle for %g s, exiting", self.seconds)
            return True
        log.info("a client connected while exiting idle; staying up")
        await self._accept_again(listener, fd)
        return False

    async def _accept_again(self, listener: WebSocketServer, fd: int) -> None:
        """Accept on ``fd`` again, through the same websockets server."""
        loop = asyncio.get_running_loop()
        spare = socket.socket(fileno=os.dup(fd))
        old = listener.server
        # asyncio.Server keeps its protocol factory only as a private attribute.
        factory = old._protocol_factory  # type: ignore[attr-defined]
        new = await loop.create_server(factory, sock=spare, start_serving=False)
        old.close()  # closes fd; the socket lives on in ``spare``
        listener.server = new
        await new.start_serving()


def connection_handlers(listener: WebSocketServer) -> Iterable[asyncio.Task[None]]:
    """The tasks of the server's connection handlers, handshakes under way included."""
    tasks = getattr(listener, "handler_tasks", None)  # websockets 17 and later
    if tasks is None:  # websockets 14-16 (the newest on Python 3.10): connection -> task
        tasks = listener.handlers.values()  # type: ignore[attr-defined]
    return tasks  # type: ignore[no-any-return]


def main(overrides: dict[str, Any] | None = None) -> int:
    """``ttsd serve``: load the config, set up logging, run; return the exit status.

    Socket-activated, it serves the inherited socket; otherwise it binds ``host:port``.
    """
    try:
        config = load_config(overrides=overrides)
    except ConfigError as exc:
        print(f"ttsd: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    try:
        sock = inherited_socket()
    except ActivationError as exc:
        log.error("cannot serve: %s", exc)
        return 1
    notifier = SdNotifier()
    try:
        code = asyncio.run(run(config, sock=sock, notifier=notifier))
    except ConfigError as exc:
        notifier.status(f"failed: {exc}")
        log.error("%s", exc)
        code = 2
    except OSError as exc:
        notifier.status(f"failed: cannot serve: {exc}")
        log.error("cannot serve: %s", exc)
        code = 1
    finally:
        notifier.close()
    return leave(code)


def leave(code: int, threads: Callable[[], list[threading.Thread]] = threading.enumerate) -> int:
    """Return ``code``, or exit with it at once if a native call still runs.

    Threads still alive here are an engine call that did not return in time, or a
    PulseAudio question to a frozen server. Letting the interpreter finalise under
    them can end in ``std::terminate`` (SIGABRT, a core dump, a failed unit), so the
    process flushes its output and leaves with ``os._exit``.
    """
    others = [t for t in threads() if t is not threading.main_thread() and t.is_alive()]
    if not others:
        return code
    logging.getLogger("ttsd").debug(
        "leaving with os._exit: %s still running", ", ".join(t.name for t in others)
    )
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
