"""The daemon: builds the scheduler and the server, runs until told to stop.

``run`` is what ``ttsd serve`` calls. It listens on an inherited socket when one is
given (systemd socket activation) or binds ``host:port`` itself, and stops cleanly on
``terminate``, SIGTERM or SIGINT: every job is aborted with reason ``terminate``,
every connection is closed with 1001, no pacat is left behind, and it returns 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

from ttsd.config import Config, ConfigError, load_config
from ttsd.engines import Engine, create_engine, resolve_auto
from ttsd.scheduler import Scheduler
from ttsd.server.server import Server

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


def engine_factory(config: Config) -> Callable[[], Engine]:
    """Return a function that builds the configured engine (resolving ``auto``)."""

    def make() -> Engine:
        name = config.engine
        if name == "auto":
            name, reason = resolve_auto()
            log.info("engine auto: chose %s (%s)", name, reason)
        try:
            return create_engine(name, config.engine_settings(name))
        except TypeError as exc:  # an unknown key in the engine's table
            raise ConfigError(f"[{name}] settings: {exc}") from None

    return make


def describe_activity(scheduler: Scheduler) -> str:
    """One line for the service manager's STATUS=: what the daemon is doing now."""
    if scheduler.engine_state == "loading":
        text = f"loading {scheduler.engine_info()['name']} engine"
    elif scheduler.engine_state == "failed":
        text = f"engine failed: {scheduler.engine_error}"
    elif scheduler.current is not None:
        text = f"speaking job {scheduler.current.id}"
    else:
        text = "idle"
    if scheduler.queue:
        text += f", {len(scheduler.queue)} queued"
    return text


async def run(
    config: Config,
    *,
    sock: socket.socket | None = None,
    notifier: Notifier | None = None,
    make_engine: Callable[[], Engine] | None = None,
    idle_check_interval: float = 1.0,
) -> int:
    """Serve until stopped; return the process exit status."""
    notifier = notifier or NullNotifier()
    loop = asyncio.get_running_loop()
    server: Server | None = None
    last_status = ""

    def emit(event: dict[str, Any]) -> None:
        nonlocal last_status
        if server is not None:
            server.emit(event)
        text = describe_activity(scheduler)
        if text != last_status:
            last_status = text
            notifier.status(text)

    scheduler = Scheduler(config, make_engine or engine_factory(config), emit)
    server = Server(config, scheduler)
    await scheduler.start()
    await server.start(sock)
    notifier.ready()
    notifier.status(describe_activity(scheduler))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, server, signum)
    try:
        await _wait_for_stop(config, server, scheduler, idle_check_interval)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    notifier.stopping()
    notifier.status("stopping")
    await scheduler.close("terminate")
    await server.close()
    log.info("stopped")
    return 0


def _on_signal(server: Server, signum: int) -> None:
    log.info("received %s, shutting down", signal.Signals(signum).name)
    server.stop_requested.set()


async def _wait_for_stop(
    config: Config, server: Server, scheduler: Scheduler, interval: float
) -> None:
    """Return when a stop is requested, or when idle exit is due."""
    while True:
        try:
            await asyncio.wait_for(server.stop_requested.wait(), interval)
            return
        except asyncio.TimeoutError:
            pass
        if config.idle_exit > 0 and _idle_for(server, scheduler) >= config.idle_exit:
            log.info("idle for %.0f s, exiting", config.idle_exit)
            return


def _idle_for(server: Server, scheduler: Scheduler) -> float:
    if server.clients or scheduler.busy:
        return 0.0
    return time.monotonic() - max(server.last_disconnect, scheduler.last_activity)


def setup_logging(config: Config) -> None:
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(overrides: dict[str, Any] | None = None) -> int:
    """``ttsd serve``: load the config, set up logging, run; return the exit status."""
    try:
        config = load_config(overrides=overrides)
    except ConfigError as exc:
        print(f"ttsd: {exc}", file=sys.stderr)
        return 2
    setup_logging(config)
    try:
        return asyncio.run(run(config))
    except ConfigError as exc:
        print(f"ttsd: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        log.error("cannot serve: %s", exc)
        return 1
