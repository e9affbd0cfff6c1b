"""Socket activation: take over the listening socket systemd passed in.

systemd (or ``systemd-socket-activate``) starts the daemon with the listening socket
open as fd 3 and ``LISTEN_FDS``/``LISTEN_PID`` naming it. The socket belongs to the
socket unit: connections that arrive while the daemon is not running wait in its
backlog, which is what lets the daemon exit when idle and start again on demand.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger("ttsd.systemd")

#: The first inherited file descriptor (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START = 3


class ActivationError(Exception):
    """An inherited file descriptor is not a listening stream socket."""


def listen_fds(env: MutableMapping[str, str] | None = None) -> list[int]:
    """The file descriptors passed by socket activation, or [] if none were.

    Uses ``systemd.daemon.listen_fds`` when systemd-python is installed, and reads
    ``LISTEN_PID``/``LISTEN_FDS`` itself otherwise. Either way the variables are
    removed from the environment, so child processes (pacat) do not think the
    sockets are theirs.
    """
    environ = os.environ if env is None else env
    if env is None:
        try:
            from systemd import daemon
        except ImportError:
            pass
        else:
            return list(daemon.listen_fds(unset_environment=True))
    try:
        pid = int(environ.get("LISTEN_PID", ""))
        count = int(environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    finally:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            environ.pop(name, None)
    if pid != os.getpid() or count < 1:
        return []
    return list(range(LISTEN_FDS_START, LISTEN_FDS_START + count))


def inherited_socket(env: MutableMapping[str, str] | None = None) -> socket.socket | None:
    """The listening socket handed over by systemd, or None when not socket-activated.

    ttsd serves one socket; extra ones (say, an IPv6 ``ListenStream=`` added by the
    user) are reported and left alone.
    """
    fds = listen_fds(env)
    if not fds:
        return None
    if len(fds) > 1:
        log.warning("systemd passed %d sockets; serving only the first (fd %d)", len(fds), fds[0])
    try:
        sock = socket.socket(fileno=fds[0])
    except OSError as exc:
        raise ActivationError(f"inherited fd {fds[0]} is not a socket: {exc}") from None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise ActivationError(
            f"inherited fd {fds[0]} is not a listening stream socket; "
            "the socket unit needs ListenStream= and Accept=no"
        )
    return sock
