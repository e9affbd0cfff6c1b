"""sd_notify: tell the service manager that the daemon is ready, busy or stopping.

The protocol is one datagram of ``KEY=value`` lines to the ``AF_UNIX`` socket named
by ``NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). It is written
here directly rather than through ``systemd.daemon.notify``, which raises when the
socket exists but nobody listens: notifications are advice, and a failure to deliver
one must never disturb the daemon.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("ttsd.systemd")


class SdNotifier:
    """Sends sd_notify messages; every method is a no-op without ``NOTIFY_SOCKET``.

    Implements the ``Notifier`` protocol of :mod:`ttsd.server.daemon`.
    """

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        path = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        self._socket: socket.socket | None = None
        self._warned = False
        if self.address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)  # a full receive queue must not stall the loop

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def send(self, *lines: str) -> bool:
        """Send one notification; return whether it was delivered."""
        if self._socket is None:
            return False
        message = "\n".join(lines).encode()
        try:
            self._socket.sendto(message, self.address)
        except OSError as exc:
            if not self._warned:  # once: a missing listener would repeat on every status
                log.warning("cannot notify the service manager at %s: %s", self.address, exc)
                self._warned = True
            return False
        return True

    def ready(self) -> None:
        self.send("READY=1")

    def status(self, text: str) -> None:
        self.send("STATUS=" + " ".join(text.split()))  # one line, whatever the text holds

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
