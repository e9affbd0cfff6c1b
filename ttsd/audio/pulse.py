"""Questions to the PulseAudio server through pulsectl, each bounded by a timeout.

pulsectl blocks, and a frozen server (SIGSTOP, a hung PipeWire) blocks it forever
once connected. So every call runs on a daemon thread of its own, with its own
connection, and the caller stops waiting after ``timeout`` seconds: a stuck thread is
left behind (it holds no lock and nothing joins it), and neither a job nor shutdown
ever waits on the server. A separate watcher thread keeps one connection open to
notice the server going away at once, and coming back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pulsectl

from ttsd.audio.output import AudioUnavailable, ServerInfo, StreamInfo

log = logging.getLogger("ttsd.audio")

T = TypeVar("T")

#: Seconds a question to the server may take.
TIMEOUT = 2.0
#: Seconds between reconnection attempts of the watcher while the server is away.
RETRY = 1.0


async def in_daemon_thread(function: Callable[[], T], timeout: float, what: str) -> T:
    """Run ``function`` on a new daemon thread; raise :class:`AudioUnavailable` if it
    takes longer than ``timeout`` (the thread is then abandoned, never joined)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():
            setter(value)

    def run() -> None:
        try:
            result = function()
        except BaseException as exc:
            post(loop, deliver, future.set_exception, exc)
        else:
            post(loop, deliver, future.set_result, result)

    threading.Thread(target=run, name=f"ttsd-pulse-{what}", daemon=True).start()
    try:
        return await asyncio.wait_for(future, timeout)
    except asyncio.TimeoutError:
        raise AudioUnavailable(f"PulseAudio did not answer within {timeout:g} s ({what})") from None


def post(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    """``call_soon_threadsafe`` that tolerates a loop closed meanwhile."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop closed: the daemon is gone, nobody waits
        return


class PulseMonitor:
    """Server checks, stream lookups and loss detection; see the module docstring."""

    def __init__(self, client_name: str = "ttsd-monitor", timeout: float = TIMEOUT) -> None:
        self.client_name = client_name
        self.timeout = timeout
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self._listening: pulsectl.Pulse | None = None

    def _connect(self, name: str | None = None) -> pulsectl.Pulse:
        # No timeout here: pulsectl's connect(timeout=...) always waits the whole timeout
        # (pulsectl 24.12). The callers bound the time from outside this thread instead.
        try:
            pulse = pulsectl.Pulse(name or self.client_name)
        except pulsectl.PulseError as exc:
            raise AudioUnavailable(f"cannot connect to PulseAudio: {exc}") from None
        return pulse

    # --- Questions (blocking bodies; the async wrappers bound them) -------------------

    def _server_info(self) -> ServerInfo:
        with self._connect() as pulse:
            try:
                info = pulse.server_info()
            except pulsectl.PulseError as exc:
                raise AudioUnavailable(f"PulseAudio did not answer: {exc}") from None
            return ServerInfo(info.server_name, info.server_version, info.default_sink_name)

    def _find(self, pulse: pulsectl.Pulse, pid: int) -> Any:
        for stream in pulse.sink_input_list():
            if stream.proplist.get("application.process.id") == str(pid):
                return stream
        return None

    def _stream_info(self, pid: int) -> StreamInfo | None:
        with self._connect() as pulse:
            stream = self._find(pulse, pid)
            if stream is None:
                return None
            sink = pulse.sink_info(stream.sink)
            return StreamInfo(
                index=stream.index,
                sink=sink.name,
                volume=round(stream.volume.value_flat, 4),
                mute=bool(stream.mute),
                properties=dict(stream.proplist),
            )

    def _set_volume(self, pid: int, volume: float) -> bool:
        with self._connect() as pulse:
            stream = self._find(pulse, pid)
            if stream is None:
                return False
            pulse.volume_set_all_chans(stream, volume)
            return True

    async def check(self) -> ServerInfo:
        """The server's facts, or :class:`AudioUnavailable` (within about ``timeout``)."""
        return await in_daemon_thread(self._server_info, self.timeout, "check")

    async def stream_info(self, pid: int) -> StreamInfo | None:
        """The sink-input that process ``pid`` plays to, if any."""
        return await in_daemon_thread(lambda: self._stream_info(pid), self.timeout, "find")

    async def set_volume(self, pid: int, volume: float) -> bool:
        """Set the volume of ``pid``'s sink-input; False if it has none."""
        return await in_daemon_thread(lambda: self._set_volume(pid, volume), self.timeout, "volume")

    # --- Watching -------------------------------------------------------------------

    def watch(self, on_change: Callable[[bool, str], None]) -> None:
        """Call ``on_change(reachable, why)`` (on the watcher thread) whenever the
        server goes away or comes back; the first call reports the initial state."""
        if self._watcher is not None:
            return
        self._watcher = threading.Thread(
            target=self._watch, args=(on_change,), name="ttsd-pulse-watch", daemon=True
        )
        self._watcher.start()

    def _watch(self, on_change: Callable[[bool, str], None]) -> None:
        reachable: bool | None = None
        while not self._stop.is_set():
            try:
                pulse = self._connect(f"{self.client_name}-watch")
            except AudioUnavailable as exc:
                if reachable is not False:
                    reachable = False
                    on_change(False, str(exc))
                self._stop.wait(RETRY)
                continue
            try:
                if reachable is not True:
                    reachable = True
                    on_change(True, "")
                self._listening = pulse
                pulse.event_mask_set("server")
                pulse.event_callback_set(lambda event: None)
                if not self._stop.is_set():
                    pulse.event_listen()  # returns only when the connection drops
            except pulsectl.PulseDisconnected:
                reachable = False
                on_change(False, "the PulseAudio server went away")
            except pulsectl.PulseError as exc:
                reachable = False
                on_change(False, f"PulseAudio connection failed: {exc}")
            finally:
                self._listening = None
                pulse.close()
            self._stop.wait(RETRY)

    def close(self) -> None:
        """Stop the watcher (without waiting for it)."""
        self._stop.set()
        listening = self._listening
        if listening is not None:
            listening.event_listen_stop()
