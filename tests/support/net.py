"""The one free-port helper of the tests."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now (the kernel's pick).

    The port is free when this returns, not reserved: use it at once, for a daemon that
    must be started on a known port (socket activation, a restart on the same port) or
    as an address where no daemon answers.
    """
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
