"""PulseAudio server checks through pulsectl (blocking: call from a thread).

Playback itself goes through pacat; this module answers "is the server there?", and
finds a playing stream's sink-input so it can be inspected and adjusted.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import pulsectl


class AudioUnavailable(Exception):
    """The PulseAudio server cannot be reached."""


@dataclass(frozen=True)
class ServerInfo:
    name: str
    version: str
    default_sink: str


class PulseMonitor:
    """Checks on the PulseAudio server; every method blocks, so run them in a thread."""

    def __init__(self, client_name: str = "ttsd-monitor") -> None:
        self.client_name = client_name
        self._lock = threading.Lock()  # pulsectl connections are not thread-safe

    def _connect(self) -> pulsectl.Pulse:
        try:
            return pulsectl.Pulse(self.client_name, connect=True, threading_lock=False)
        except pulsectl.PulseError as exc:
            raise AudioUnavailable(f"cannot connect to PulseAudio: {exc}") from None

    def check(self) -> ServerInfo:
        """Return the server's facts or raise :class:`AudioUnavailable`."""
        with self._lock, self._connect() as pulse:
            try:
                info = pulse.server_info()
            except pulsectl.PulseError as exc:
                raise AudioUnavailable(f"PulseAudio did not answer: {exc}") from None
            return ServerInfo(info.server_name, info.server_version, info.default_sink_name)

    def sink_input(self, pid: int) -> dict[str, Any] | None:
        """Describe the sink-input that process ``pid`` plays to, if any."""
        with self._lock, self._connect() as pulse:
            for stream in pulse.sink_input_list():
                if stream.proplist.get("application.process.id") == str(pid):
                    sink = pulse.sink_info(stream.sink)
                    return {
                        "index": stream.index,
                        "sink": sink.name,
                        "volume": round(stream.volume.value_flat, 4),
                        "mute": bool(stream.mute),
                        "properties": dict(stream.proplist),
                    }
        return None

    def set_volume(self, pid: int, volume: float) -> bool:
        """Set the volume of ``pid``'s sink-input; False if it has none."""
        with self._lock, self._connect() as pulse:
            for stream in pulse.sink_input_list():
                if stream.proplist.get("application.process.id") == str(pid):
                    pulse.volume_set_all_chans(stream, volume)
                    return True
        return False
