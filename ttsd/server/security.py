"""Who may connect: checks on the WebSocket handshake, and the daemon's token.

A daemon on ``127.0.0.1`` is reachable by every program of every local user and by
every web page open in a browser. The checks here, run on each handshake before any
request is read (``docs/security.md`` has the threat model):

* **Origin**: browsers always send it on a WebSocket handshake and page scripts cannot
  forge it. Every origin not in ``allowed_origins`` (empty by default) gets HTTP 403.
  Handshakes without it (command-line and script clients) pass.
* **Host**: a DNS-rebinding page reaches 127.0.0.1 under its own host name; that name is
  in the ``Host`` header, so only loopback names, the bound address, ``allowed_hosts``
  and (on a wildcard bind) IP literals are accepted.
* **Token**: with ``auth = "token"`` a client must present the token, in an
  ``Authorization: Bearer <token>`` header or as the first request
  (``{"type": "auth", "token": ...}``) within ``auth_timeout`` seconds. Listening
  beyond loopback requires it.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from websockets.http11 import Request

from ttsd.config import Config, ConfigError

#: Host names that always mean this machine (RFC 6761 reserves ``localhost``).
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})


class HeaderView(Protocol):
    """The request headers as both HTTP servers show them (websockets' ``Headers``;
    aiohttp's through :class:`ttsd.server.http.AiohttpHeaders`)."""

    def get_all(self, key: str) -> list[str]: ...

    def get(self, key: str, default: str | None = None) -> str | None: ...


@dataclass(frozen=True)
class Refusal:
    """Why a handshake is refused: the HTTP status and a one-line reason."""

    status: int
    reason: str


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None


def is_loopback_name(host: str) -> bool:
    """True for ``localhost`` and for loopback IP literals."""
    address = _ip(host)
    return host.lower() in LOOPBACK_NAMES if address is None else address.is_loopback


def resolves_to_loopback(host: str) -> bool:
    """True if every address ``host`` stands for is a loopback address."""
    if _ip(host) is not None:
        return is_loopback_name(host)
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(is_loopback_name(str(info[4][0])) for info in infos)


def host_of(header: str) -> str:
    """The host part of a ``Host`` header: no port, no IPv6 brackets, lower case."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


def normalize_origin(origin: str) -> str:
    return origin.strip().lower().rstrip("/")


def token_path() -> Path:
    """``$XDG_RUNTIME_DIR/ttsd/token``: private to the user, gone at logout."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime:
        raise ConfigError('auth = "token" needs XDG_RUNTIME_DIR (or set token in the config)')
    return Path(runtime) / "ttsd" / "token"


def load_or_create_token(path: Path) -> str:
    """Read the token at ``path``, creating it (mode 0600, 256 random bits) if missing.

    A token file that other users could read is refused rather than used.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path}: the token file must be owned by you with mode 0600")
    token = path.read_text().strip()
    if len(token) < 16:
        raise ConfigError(f"{path}: the token must be at least 16 characters")
    return token


class AccessPolicy:
    """Decides, per handshake, whether a connection may proceed."""

    def __init__(
        self,
        *,
        allowed_origins: Iterable[str] = (),
        allowed_hosts: Iterable[str] = (),
        bound_addresses: Iterable[str] = ("127.0.0.1",),
        token: str | None = None,
    ) -> None:
        self.allowed_origins = frozenset(normalize_origin(o) for o in allowed_origins)
        bound = [a.lower() for a in bound_addresses]
        wildcard = [a for a in bound if (ip := _ip(a)) is not None and ip.is_unspecified]
        self.any_ip_literal = bool(wildcard)
        self.allowed_hosts = frozenset(
            {*(h.lower() for h in allowed_hosts), *(a for a in bound if a not in wildcard)}
        )
        self.token = token

    @classmethod
    def from_config(cls, config: Config, bound_addresses: list[str]) -> AccessPolicy:
        """Build the policy; raise :class:`ConfigError` for a non-loopback bind without a token."""
        token = None
        if config.auth == "token":
            token = config.token or load_or_create_token(token_path())
        exposed = [a for a in bound_addresses if not resolves_to_loopback(a)]
        if exposed and token is None:
            raise ConfigError(
                f"refusing to listen on {', '.join(exposed)} (beyond loopback) without a token: "
                'set auth = "token" (see docs/security.md)'
            )
        return cls(
            allowed_origins=config.allowed_origins,
            allowed_hosts=config.allowed_hosts,
            bound_addresses=bound_addresses,
            token=token,
        )

    # --- Handshake -----------------------------------------------------------------

    def check_handshake(self, request: Request) -> Refusal | None:
        """None if the handshake may go on, else why it is refused."""
        return self.check_headers(request.headers)

    def check_headers(self, headers: HeaderView) -> Refusal | None:
        """None if a request with ``headers`` may go on, else why it is refused.

        A missing token is not a refusal here: a WebSocket client may still send it
        as its first request (HTTP requests check :meth:`token_in` themselves).
        """
        origins = headers.get_all("Origin")
        if len(origins) > 1:
            return Refusal(403, "more than one Origin header")
        if origins and normalize_origin(origins[0]) not in self.allowed_origins:
            return Refusal(403, f"origin {origins[0][:200]!r} is not allowed")
        hosts = headers.get_all("Host")
        if len(hosts) > 1:
            return Refusal(400, "more than one Host header")
        if hosts and not self.host_allowed(host_of(hosts[0])):
            return Refusal(403, f"host {hosts[0][:200]!r} is not allowed")
        if self.token is not None and self.token_in(headers) is False:
            return Refusal(401, "wrong token")
        return None

    def host_allowed(self, host: str) -> bool:
        if is_loopback_name(host) or host in self.allowed_hosts:
            return True
        # DNS rebinding needs a name the attacker controls; an IP literal is not one.
        return self.any_ip_literal and _ip(host) is not None

    # --- Token ---------------------------------------------------------------------

    def header_token(self, request: Request) -> bool | None:
        """True: the right token in ``Authorization: Bearer``; False: a wrong one; None: none."""
        return self.token_in(request.headers)

    def token_in(self, headers: HeaderView) -> bool | None:
        """:meth:`header_token` for any request's headers."""
        value = headers.get("Authorization")
        if value is None:
            return None
        scheme, _, token = value.strip().partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(token.strip())

    def token_matches(self, token: str) -> bool:
        if self.token is None:
            return True
        return hmac.compare_digest(token.encode("utf-8", "replace"), self.token.encode())
