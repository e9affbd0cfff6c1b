"""WebSocket connections: parse requests, call the scheduler, reply, broadcast events.

Sending is synchronous (``websockets``' :func:`broadcast` writes to the transport at
once), so a reply and the events it causes reach every client in the order they
happened: a client always sees ``queued`` before its job's ``started``. Because nothing
waits for a client to read, a client that stops reading only grows its own send
buffer; once that stays over ``send_buffer_limit`` the client is dropped.

Who may connect is decided in :mod:`ttsd.server.security` on the handshake; per
connection limits (request rate, send backlog) live in :mod:`ttsd.server.limits`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from ttsd import __version__, protocol
from ttsd.config import Config
from ttsd.scheduler import Scheduler
from ttsd.server.limits import Backlog, RateLimiter
from ttsd.server.security import AccessPolicy

log = logging.getLogger("ttsd.server")


@dataclass(eq=False)
class Peer:
    """What the server keeps about one open connection."""

    label: str
    rate: RateLimiter
    backlog: Backlog


def limit_kernel_buffer(connection: ServerConnection, size: int) -> None:
    """Cap the kernel's send buffer of ``connection`` at about ``size`` bytes.

    Left alone, Linux grows it up to ``tcp_wmem`` (4 MiB) per connection, unseen by
    :func:`unsent_bytes`; capped, what a non-reading client can pin stays bounded.
    """
    sock = connection.transport.get_extra_info("socket") if connection.transport else None
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def unsent_bytes(connection: ServerConnection) -> int:
    """Bytes written to ``connection`` that the kernel has not taken yet."""
    transport = connection.transport
    return 0 if transport is None else transport.get_write_buffer_size()


class Server:
    """Serves the ttsd protocol to WebSocket clients on one listening socket."""

    def __init__(self, config: Config, scheduler: Scheduler) -> None:
        self.config = config
        self.scheduler = scheduler
        #: Connections that may make requests and receive events, with their labels.
        self.clients: dict[ServerConnection, str] = {}
        #: Every open connection, authenticated or not.
        self.peers: dict[ServerConnection, Peer] = {}
        self.policy = AccessPolicy()
        self.stop_requested = asyncio.Event()
        self.last_disconnect = time.monotonic()
        self._websocket_server: WebSocketServer | None = None
        self._client_numbers = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    # --- Sending -------------------------------------------------------------------

    def send(self, connections: Iterable[ServerConnection], message: dict[str, Any]) -> None:
        """Write ``message`` to ``connections`` now, without waiting for them to read it.

        A connection that has been too far behind for too long is dropped instead.
        """
        keep = []
        for connection in list(connections):  # drop() shrinks self.clients
            peer = self.peers.get(connection)
            if peer is not None and peer.backlog.too_slow(unsent_bytes(connection)):
                self.drop(connection, peer)
            else:
                keep.append(connection)
        broadcast(keep, protocol.encode(message))

    def drop(self, connection: ServerConnection, peer: Peer) -> None:
        """Cut off a client that does not read its events (no closing handshake)."""
        log.warning(
            "%s dropped: it is not reading (%d bytes unsent, limit %d)",
            peer.label,
            unsent_bytes(connection),
            self.config.send_buffer_limit,
            extra={"CLIENT": peer.label, "EVENT": "slow_client"},
        )
        self.clients.pop(connection, None)
        if connection.transport is not None:
            connection.transport.abort()

    def emit(self, event: dict[str, Any]) -> None:
        """Broadcast an event to every connected client (the scheduler's ``emit``)."""
        self.send(self.clients, event)

    def reply(self, connection: ServerConnection, message: dict[str, Any]) -> None:
        self.send([connection], message)

    # --- Listening -----------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None) -> int:
        """Listen on ``sock`` (inherited from systemd) or bind host:port; return the port.

        Raises :class:`ConfigError` before listening if the address is beyond loopback
        and no token is configured.
        """
        bound = [str(sock.getsockname()[0])] if sock is not None else [self.config.host]
        self.policy = AccessPolicy.from_config(self.config, bound)
        options: dict[str, Any] = {
            "compression": None,  # events are tiny; deflate only costs latency
            "max_size": self.config.max_message_bytes,
            "server_header": f"ttsd/{__version__}",
            "process_request": self.check_handshake,
        }
        if sock is not None:
            server = await serve(self.handle, sock=sock, **options)
        else:
            server = await serve(self.handle, self.config.host, self.config.port, **options)
        self._websocket_server = server
        port = server.sockets[0].getsockname()[1]
        if self.policy.token is not None:
            log.info("clients must present the token (auth = token)")
        log.info("listening on port %d", port)
        return int(port)

    @property
    def listener(self) -> WebSocketServer | None:
        """The websockets server accepting connections (None before :meth:`start`)."""
        return self._websocket_server

    async def close(self) -> None:
        """Close every connection with 1001 (going away) and stop listening."""
        if self._websocket_server is not None:
            self._websocket_server.close(close_connections=True)
            await self._websocket_server.wait_closed()

    # --- Connections ---------------------------------------------------------------

    def check_handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        """``process_request`` hook: refuse before the upgrade, with an HTTP status."""
        refusal = self.policy.check_handshake(request)
        if refusal is None and len(self.peers) >= self.config.max_connections:
            refusal_status, reason = 503, "too many connections; try again later"
        elif refusal is not None:
            refusal_status, reason = refusal.status, refusal.reason
        else:
            return None
        log.warning(
            "refused a handshake from %s: HTTP %d %s",
            connection.remote_address,
            refusal_status,
            reason,
            extra={"EVENT": "refused"},
        )
        return connection.respond(refusal_status, reason + "\n")

    async def handle(self, connection: ServerConnection) -> None:
        host, port, *_ = connection.remote_address or ("?", 0)
        label = f"client-{next(self._client_numbers)}@{host}:{port}"
        if len(self.peers) >= self.config.max_connections:  # handshakes that raced
            await connection.close(CloseCode.TRY_AGAIN_LATER, "too many connections")
            return
        peer = self.peers[connection] = Peer(
            label,
            RateLimiter(self.config.max_requests_per_second),
            Backlog(self.config.send_buffer_limit),
        )
        limit_kernel_buffer(connection, self.config.send_buffer_limit)
        log.debug("%s connected", label, extra={"CLIENT": label, "EVENT": "connect"})
        needs_token = self.policy.token is not None and not self.policy.header_token(
            connection.request  # type: ignore[arg-type]
        )
        hello = protocol.hello(
            __version__,
            client=label,
            engine=self.scheduler.engine_info(),
            audio=self.scheduler.audio_info(),
        )
        self.reply(connection, {**hello, "auth": "required"} if needs_token else hello)
        try:
            if needs_token and not await self.authenticate(connection, peer):
                return
            self.clients[connection] = label
            async for frame in connection:
                self.handle_frame(connection, label, frame)
        except ConnectionClosed:
            pass
        finally:
            self.peers.pop(connection, None)
            if self.clients.pop(connection, None) is not None:
                self.last_disconnect = time.monotonic()
                self.scheduler.abort_client_jobs(label)
            log.debug("%s disconnected", label, extra={"CLIENT": label, "EVENT": "disconnect"})

    async def authenticate(self, connection: ServerConnection, peer: Peer) -> bool:
        """Wait for an ``auth`` request with the right token; close the connection if not."""
        request: protocol.Request | None = None
        rid: protocol.RequestId = None
        why = "no valid token"
        message = 'send {"type": "auth", "token": ...} first, with the right token'
        try:
            frame = await asyncio.wait_for(connection.recv(), self.config.auth_timeout)
            if isinstance(frame, str):
                request = protocol.parse_request(frame, max_text_length=1)
                rid = request.id
        except protocol.ProtocolError as exc:
            rid = exc.request_id
        except asyncio.TimeoutError:
            why = f"no token within {self.config.auth_timeout:g} s"
            message = f"{why}: {message}"
        if isinstance(request, protocol.Auth) and self.policy.token_matches(request.token):
            self.reply(connection, protocol.ok_reply(rid, authenticated=True))
            return True
        log.warning("%s refused: %s", peer.label, why, extra={"CLIENT": peer.label})
        self.reply(connection, protocol.error_reply(protocol.UNAUTHORIZED, message, rid))
        await connection.close(CloseCode.POLICY_VIOLATION, "unauthorized")
        return False

    def handle_frame(self, connection: ServerConnection, label: str, frame: str | bytes) -> None:
        """Answer one frame with exactly one reply."""
        request: protocol.Request | None = None
        try:
            peer = self.peers.get(connection)
            if peer is not None and not peer.rate.allow():
                raise protocol.ProtocolError(
                    protocol.RATE_LIMITED,
                    f"more than {self.config.max_requests_per_second:g} requests per second",
                    protocol.peek_id(frame),
                )
            if isinstance(frame, bytes):
                raise protocol.ProtocolError(
                    protocol.BAD_REQUEST, "binary frames are not supported; send JSON text"
                )
            request = protocol.parse_request(frame, max_text_length=self.config.max_text_length)
            reply = self.dispatch(connection, label, request)
        except protocol.ProtocolError as exc:
            log.warning(
                "%s: %s: %s",
                label,
                exc.code,
                exc.message,
                extra={"CLIENT": label, "EVENT": "protocol_error"},
            )
            # Errors raised past parsing (unknown_job, shutting_down) may not carry the
            # id; the reply must still echo it or the client never matches it.
            rid = exc.request_id if exc.request_id is not None or request is None else request.id
            reply = protocol.error_reply(exc.code, exc.message, rid)
        except Exception as exc:  # a bug must cost one request, not the connection
            log.exception("%s: request failed", label, extra={"CLIENT": label})
            reply = protocol.error_reply(protocol.INTERNAL_ERROR, f"internal error: {exc!r}")
        if reply is not None:
            self.reply(connection, reply)

    async def _synthesize(
        self, connection: ServerConnection, label: str, request: protocol.Synthesize
    ) -> None:
        try:
            pcm, rate = await self.scheduler.synthesize(request)
        except protocol.ProtocolError as exc:
            log.warning("%s: synthesize failed: %s", label, exc.message, extra={"CLIENT": label})
            self.reply(connection, protocol.error_reply(exc.code, exc.message, request.id))
            return
        self.reply(connection, protocol.audio_reply(pcm.tobytes(), rate, request.id))

    def dispatch(
        self, connection: ServerConnection, label: str, request: protocol.Request
    ) -> dict[str, Any] | None:
        """Carry out ``request``; return the direct reply (events go out meanwhile).

        None means the reply will be sent later, by a task (``synthesize``).
        """
        scheduler = self.scheduler
        rid = request.id
        match request:
            case protocol.Speak():
                job = scheduler.submit(request, label)
                event = protocol.queued_event(job.id, scheduler.position(job))
                self.send((c for c in self.clients if c is not connection), event)
                return protocol.with_id(event, rid)
            case protocol.Synthesize():
                task = asyncio.create_task(self._synthesize(connection, label, request))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return None
            case protocol.AbortCurrent():
                return protocol.ok_reply(rid, aborted=scheduler.abort_current())
            case protocol.AbortAll():
                return protocol.ok_reply(rid, aborted=scheduler.abort_all())
            case protocol.AbortJob(job=job_id):
                return protocol.ok_reply(rid, aborted=scheduler.abort_job(job_id))
            case protocol.Status():
                return protocol.with_id(
                    {
                        "type": "status",
                        "version": __version__,
                        **scheduler.status(),
                        "clients": len(self.clients),
                    },
                    rid,
                )
            case protocol.Voices():
                return protocol.with_id({"type": "voices", "voices": scheduler.voices()}, rid)
            case protocol.Ping():
                return protocol.with_id({"type": "pong"}, rid)
            case protocol.Auth(token=token):
                if not self.policy.token_matches(token):
                    raise protocol.ProtocolError(protocol.UNAUTHORIZED, "wrong token", rid)
                return protocol.ok_reply(rid, authenticated=True)
            case protocol.Terminate():
                log.info("terminate requested by %s", label)
                aborted = scheduler.abort_all("terminate")
                self.stop_requested.set()
                return protocol.ok_reply(rid, aborted=aborted)
        raise protocol.ProtocolError(protocol.UNKNOWN_TYPE, f"unhandled {request!r}", rid)
