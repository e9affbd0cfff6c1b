"""Datagram sockets that tests bind in place of a service manager's or journald's."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path


class DatagramListener:
    """An ``AF_UNIX`` datagram socket bound at ``path``, read by a thread.

    Subclasses keep what they need of each datagram in :meth:`received`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._socket.bind(str(path))
        self._socket.settimeout(0.2)
        self._running = True
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while self._running:
            try:
                data = self._socket.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received(data, time.monotonic())

    def received(self, data: bytes, moment: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._running = False
        self._socket.close()
        self._thread.join(2)


class NotifyListener(DatagramListener):
    """The service manager's end of sd_notify: bind it as ``NOTIFY_SOCKET``.

    Every line received is kept with the (monotonic) time it arrived.
    """

    def __init__(self, path: Path) -> None:
        self.messages: list[tuple[float, str]] = []
        super().__init__(path)

    def received(self, data: bytes, moment: float) -> None:
        self.messages += [(moment, line) for line in data.decode().splitlines()]

    def lines(self) -> list[str]:
        return [line for _, line in self.messages]

    def statuses(self) -> list[str]:
        return [line.removeprefix("STATUS=") for line in self.lines() if line.startswith("STATUS=")]

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 10.0) -> float:
        """Wait for a line matching ``predicate``; return when it arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for moment, line in list(self.messages):
                if predicate(line):
                    return moment
            time.sleep(0.01)
        raise AssertionError(f"no such notification within {timeout} s; got {self.lines()}")
