"""The server: WebSocket connections, requests, replies, and events to every client.

One listening socket, one ``websockets`` server; requests that are not WebSocket
upgrades are split off to an HTTP server on the same socket (:mod:`ttsd.server.http`,
with the OpenAI-compatible endpoints of :mod:`ttsd.server.openai`). Each WebSocket
connection gets ``hello``, then
every request it sends gets exactly one reply (echoing its ``id``), and every event
goes to every authenticated connection in the order it happened. Events are written
without waiting for slow readers: a client whose unsent backlog stays over
``send_buffer_limit`` is dropped.

Who may connect is decided in :mod:`ttsd.server.security` on the handshake; per
connection limits (request rate, send backlog) live in :mod:`ttsd.server.limits`;
scheduler events become messages in :mod:`ttsd.server.wire`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import logging
import re
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from ttsd import __version__, protocol
from ttsd.config import Config
from ttsd.engines import EngineError
from ttsd.errors import Code
from ttsd.scheduler import JobKind, Order, Priority, Rejection, Scheduler
from ttsd.scheduler.events import Event, JobQueued
from ttsd.server.http import FirstRequest, HttpFront, Route, home_page, response_headers
from ttsd.server.limits import Backlog, RateLimiter
from ttsd.server.openai import OpenAISpeech
from ttsd.server.security import AccessPolicy
from ttsd.server.wire import message_of

log = logging.getLogger("ttsd.server")

#: Seconds a closing connection waits for the client's close frame (then it is cut).
CLOSE_TIMEOUT = 1.0


@dataclass(eq=False)
class Peer:
    """What the server keeps about one open connection."""

    label: str
    rate: RateLimiter
    backlog: Backlog
    #: The name this client gave itself (``identify``), and its defaults for ``speak``.
    name: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    #: Consecutive requests refused for the rate limit (logged once per burst).
    limited: int = 0
    #: Authenticated and among the clients (until it leaves, or is dropped as too slow).
    joined: bool = False

    @property
    def client(self) -> str:
        """How jobs and events name this client."""
        return self.name or self.label


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
    """Serves the ttsd protocol to WebSocket clients, and HTTP, on one listening socket."""

    def __init__(self, config: Config, scheduler: Scheduler) -> None:
        self.config = config
        self.scheduler = scheduler
        #: Connections that may make requests and receive events.
        self.clients: dict[ServerConnection, Peer] = {}
        #: Every open connection, authenticated or not.
        self.peers: dict[ServerConnection, Peer] = {}
        self.policy = AccessPolicy()
        self.stop_requested = asyncio.Event()
        self.last_disconnect = time.monotonic()
        self._websocket_server: WebSocketServer | None = None
        #: Connections whose first request head is still being read.
        self._arriving: set[FirstRequest] = set()
        self.openai = OpenAISpeech(
            config,
            scheduler,
            stopping=self.stop_requested.is_set,
        )
        self.http = HttpFront(
            config,
            lambda: self.policy,
            [Route(re.compile("/"), {"GET": self._home}), *self.openai.routes()],
            connections=self.connection_count,
            on_request_end=self._http_request_ended,
        )
        self._client_numbers = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        #: The connection whose ``speak`` is being carried out, and its request id:
        #: its ``queued`` goes to it as the reply (see :meth:`emit`).
        self._requester: tuple[ServerConnection, protocol.RequestId] | None = None

    # --- Sending -------------------------------------------------------------------

    def send(
        self, connections: Iterable[ServerConnection], message: protocol.Message | bytes
    ) -> None:
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
        broadcast(keep, message if isinstance(message, bytes) else protocol.encode(message))

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

    def emit(self, event: Event) -> None:
        """Broadcast a scheduler event to every client (the scheduler's ``emit``).

        The ``queued`` of the ``speak`` being carried out goes to its requester as the
        reply, with the request's ``id``, before any event the new job causes.
        """
        message = message_of(event)
        requester = self._requester
        if isinstance(event, JobQueued) and requester is not None:
            connection, request_id = requester
            self._requester = None
            self.send([connection], _with_id(message, request_id))
            self.send((c for c in self.clients if c is not connection), message)
            return
        self.send(self.clients, message)

    def reply(self, connection: ServerConnection, message: protocol.Message) -> None:
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
            "close_timeout": CLOSE_TIMEOUT,
            # websockets builds a connection per accepted socket through this hook;
            # the wrapper reads the first request and hands it on (module docstring).
            "create_connection": self._first_request,
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

    def _first_request(self, *args: Any, **kwargs: Any) -> FirstRequest:
        """Takes websockets' arguments for a ``ServerConnection``; builds that only if
        the first request is a WebSocket upgrade."""
        return FirstRequest(
            lambda: ServerConnection(*args, **kwargs), self.http.protocol, self._arriving
        )

    def connection_count(self) -> int:
        """Open connections: WebSocket peers and HTTP connections (``max_connections``)."""
        return len(self.peers) + self.http.open_connections

    @property
    def arriving(self) -> bool:
        """True while a connection is being read or an HTTP request answered: a client
        is here even if it is not (yet) in :attr:`clients`."""
        return bool(self._arriving) or self.http.active > 0

    def _http_request_ended(self) -> None:
        self.last_disconnect = time.monotonic()

    async def _home(self, request: web.BaseRequest) -> web.Response:
        """``GET /`` without an upgrade: 426, and what this port offers."""
        return web.Response(
            status=426,
            text=home_page(),
            headers={**response_headers(request), "Upgrade": "websocket"},
        )

    @property
    def listener(self) -> WebSocketServer | None:
        """The websockets server accepting connections (None before :meth:`start`)."""
        return self._websocket_server

    async def close(self) -> None:
        """Close every connection with 1001 (going away) and stop listening.

        A client that does not answer the close handshake is cut after
        :data:`CLOSE_TIMEOUT` seconds, so no client can hold up a shutdown.
        """
        for task in list(self._tasks):
            task.cancel()
        for arriving in list(self._arriving):
            arriving.abort()
        await self.http.close(CLOSE_TIMEOUT)
        if self._websocket_server is not None:
            self._websocket_server.close(close_connections=True)
            await self._websocket_server.wait_closed()

    # --- Connections ---------------------------------------------------------------

    def check_handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        """``process_request`` hook: refuse before the upgrade, with an HTTP status."""
        refusal = self.policy.check_handshake(request)
        if refusal is None and self.connection_count() >= self.config.max_connections:
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

    def hello(self, peer: Peer, needs_token: bool) -> protocol.Hello:
        return protocol.Hello(
            version=__version__,
            client=peer.label,
            engine=self.scheduler.host.info(),
            audio=self.scheduler.player.info(),
            paused=self.scheduler.paused,
            auth="required" if needs_token else None,
        )

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
        self.reply(connection, self.hello(peer, needs_token))
        try:
            if needs_token and not await self.authenticate(connection, peer):
                return
            self.clients[connection] = peer
            peer.joined = True
            async for frame in connection:
                self.handle_frame(connection, peer, frame)
        except ConnectionClosed:
            pass
        finally:
            self.peers.pop(connection, None)
            self.clients.pop(connection, None)
            if peer.joined:  # also when drop() took it out of the clients before
                self.last_disconnect = time.monotonic()
                self.scheduler.client_gone(peer.client)
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
            self.reply(connection, protocol.Ok(authenticated=True, id=rid))
            return True
        log.warning("%s refused: %s", peer.label, why, extra={"CLIENT": peer.label})
        self.reply(connection, protocol.ErrorReply(code=Code.UNAUTHORIZED, message=message, id=rid))
        await connection.close(CloseCode.POLICY_VIOLATION, "unauthorized")
        return False

    def handle_frame(self, connection: ServerConnection, peer: Peer, frame: str | bytes) -> None:
        """Answer one frame with exactly one reply."""
        rid: protocol.RequestId = None
        reply: protocol.Message | None
        try:
            if not peer.rate.allow():
                rid = protocol.peek_id(frame)
                peer.limited += 1
                if peer.limited == 1:  # once per burst: a flood must not flood the log
                    log.warning(
                        "%s: over %g requests per second; refusing until it slows down",
                        peer.label,
                        self.config.max_requests_per_second,
                        extra={"CLIENT": peer.label, "EVENT": "rate_limited"},
                    )
                raise protocol.ProtocolError(
                    Code.RATE_LIMITED,
                    f"more than {self.config.max_requests_per_second:g} requests per second",
                    rid,
                )
            if peer.limited:
                log.info(
                    "%s: %d requests were refused for the rate limit", peer.label, peer.limited
                )
                peer.limited = 0
            if isinstance(frame, bytes):
                raise protocol.ProtocolError(
                    Code.BAD_REQUEST, "binary frames are not supported; send JSON text"
                )
            request = protocol.parse_request(
                frame,
                max_text_length=self.config.max_text_length,
                allow_control=True,
            )
            rid = request.id
            reply = self.dispatch(connection, peer, request)
        except protocol.ProtocolError as exc:
            if exc.code is not Code.RATE_LIMITED:
                log.warning(
                    "%s: %s: %s",
                    peer.label,
                    exc.code.value,
                    exc.message,
                    extra={"CLIENT": peer.label, "EVENT": "protocol_error"},
                )
            reply = protocol.ErrorReply(code=exc.code, message=exc.message, id=exc.request_id)
        except Rejection as exc:
            log.info("%s: refused: %s: %s", peer.label, exc.code.value, exc.message)
            reply = protocol.ErrorReply(code=exc.code, message=exc.message, id=rid)
        except Exception as exc:  # a bug must cost one request, not the connection
            log.exception("%s: request failed", peer.label, extra={"CLIENT": peer.label})
            reply = protocol.ErrorReply(
                code=Code.INTERNAL_ERROR, message=f"internal error: {exc!r}", id=rid
            )
        finally:
            self._requester = None
        if reply is not None:
            self.reply(connection, reply)

    def dispatch(
        self, connection: ServerConnection, peer: Peer, request: protocol.Request
    ) -> protocol.Message | None:
        """Carry out ``request``; return the direct reply (events go out meanwhile).

        None means the reply was sent already (``speak``: its ``queued``) or will be
        sent by a task (``synthesize``).
        """
        scheduler = self.scheduler
        rid = request.id
        match request:
            case protocol.Speak():
                if self.stop_requested.is_set():
                    raise Rejection(Code.SHUTTING_DOWN, "the daemon is shutting down")
                self._requester = (connection, rid)
                scheduler.submit(self._order(peer, request))
                return None
            case protocol.Synthesize():
                if self.stop_requested.is_set():
                    raise Rejection(Code.SHUTTING_DOWN, "the daemon is shutting down")
                job = scheduler.submit(self._order(peer, request))
                self._spawn(self._synthesize(connection, peer, request, job))
                return None
            case protocol.AbortCurrent():
                return protocol.Ok(aborted=scheduler.abort_current(), id=rid)
            case protocol.AbortAll():
                return protocol.Ok(aborted=scheduler.abort_all(), id=rid)
            case protocol.Abort(job=job_id, client=client):
                if job_id is not None:
                    return protocol.Ok(aborted=scheduler.abort_job(job_id), id=rid)
                assert client is not None
                return protocol.Ok(aborted=scheduler.abort_client(client), id=rid)
            case protocol.Pause():
                job = scheduler.pause()
                return protocol.Ok(paused=True, job=job.id if job else None, id=rid)
            case protocol.Resume():
                job = scheduler.resume()
                return protocol.Ok(paused=False, job=job.id if job else None, id=rid)
            case protocol.Status():
                return protocol.StatusReply(
                    version=__version__, **scheduler.status(), clients=len(self.clients), id=rid
                )
            case protocol.Voices():
                return protocol.VoicesReply(voices=scheduler.voices(), id=rid)
            case protocol.Ping():
                return protocol.Pong(id=rid)
            case protocol.Normalize(text=text, format=format):
                speech = scheduler.speech(text, format)
                return protocol.NormalizeReply(
                    format=speech.format,
                    sentences=[
                        {"index": i, "text": s.text, "start": s.start, "end": s.end}
                        for i, s in enumerate(speech.sentences)
                    ],
                    id=rid,
                )
            case protocol.Identify():
                return self._identify(peer, request)
            case protocol.Auth(token=token):
                if self.policy.token is not None and not self.policy.token_matches(token):
                    raise protocol.ProtocolError(Code.UNAUTHORIZED, "wrong token", rid)
                # With auth = none there is nothing to authenticate against.
                return protocol.Ok(authenticated=self.policy.token is not None, id=rid)
            case protocol.Terminate():
                log.info("terminate requested by %s", peer.label)
                self.stop_requested.set()
                return protocol.Ok(aborted=scheduler.abort_all("terminate"), id=rid)
        raise protocol.ProtocolError(Code.UNKNOWN_TYPE, f"unhandled {request!r}", rid)

    def _order(self, peer: Peer, request: protocol.Speak | protocol.Synthesize) -> Order:
        defaults = peer.defaults
        if isinstance(request, protocol.Synthesize):
            return Order(
                text=request.text,
                client=peer.client,
                kind=JobKind.SYNTHESIZE,
                voice=request.voice or defaults.get("voice"),
                options=request.options or {},
                format=request.format,
            )
        priority = request.priority or defaults.get("priority") or Priority.MESSAGE.value
        volume = request.volume if request.volume is not None else defaults.get("volume")
        return Order(
            text=request.text,
            client=peer.client,
            voice=request.voice or defaults.get("voice"),
            options=request.options or {},
            volume=volume,
            priority=Priority(priority),
            key=request.key,
            resume_interrupted=bool(request.resume),
            cancel_on_disconnect=bool(request.cancel_on_disconnect),
            format=request.format,
        )

    def _identify(self, peer: Peer, request: protocol.Identify) -> protocol.Message:
        taken = {p.name for p in self.clients.values() if p is not peer}
        if request.name in taken:
            raise protocol.ProtocolError(
                Code.BAD_REQUEST,
                f"another connection is already named {request.name!r}",
                request.id,
            )
        if request.voice is not None:
            self.scheduler.host.check(request.voice, {})
        peer.name = request.name
        peer.defaults = {
            key: value
            for key, value in (
                ("voice", request.voice),
                ("priority", request.priority),
                ("volume", request.volume),
            )
            if value is not None
        }
        log.info("%s is %s", peer.label, peer.name, extra={"CLIENT": peer.label})
        return protocol.Ok(client=peer.name, id=request.id)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _synthesize(
        self,
        connection: ServerConnection,
        peer: Peer,
        request: protocol.Synthesize,
        job: Any,
    ) -> None:
        """Send a synthesis job's audio: one ``audio`` reply, or streamed frames."""
        rid = request.id
        parts: list[bytes] = []
        samples = 0
        header_sent = False
        try:
            async with contextlib.aclosing(self.scheduler.audio(job)) as audio:
                async for pcm in audio:
                    data = pcm.astype("<i2", copy=False).tobytes()
                    samples += len(pcm)
                    if request.stream:
                        if not header_sent:
                            self.reply(connection, self._audio_start(job, rid))
                            header_sent = True
                        self.send([connection], struct.pack("<I", job.id) + data)
                    else:
                        parts.append(data)
        except Rejection as exc:
            self._end_synthesis(
                connection, request, job, samples, header_sent, exc.code, exc.message
            )
            return
        except EngineError as exc:
            code = Code(exc.code)
            log.warning("%s: synthesize failed: %s", peer.label, exc, extra={"CLIENT": peer.label})
            self._end_synthesis(connection, request, job, samples, header_sent, code, str(exc))
            return
        except Exception as exc:  # a bug: still one reply, and the job ends
            log.exception("%s: synthesize failed unexpectedly", peer.label)
            self.scheduler.abort_job(job.id, reason="internal_error")
            self._end_synthesis(
                connection, request, job, samples, header_sent, Code.INTERNAL_ERROR, repr(exc)
            )
            return
        if request.stream:
            if not header_sent:
                self.reply(connection, self._audio_start(job, rid))
            self.reply(
                connection,
                protocol.AudioEnd(job=job.id, outcome="finished", samples=samples, id=rid),
            )
            return
        pcm = b"".join(parts)
        self.reply(
            connection,
            protocol.AudioReply(
                sample_rate=self.scheduler.sample_rate,
                samples=len(pcm) // 2,
                data=base64.b64encode(pcm).decode("ascii"),
                job=job.id,
                id=rid,
            ),
        )

    def _audio_start(self, job: Any, rid: protocol.RequestId) -> protocol.AudioStart:
        return protocol.AudioStart(job=job.id, sample_rate=self.scheduler.sample_rate, id=rid)

    def _end_synthesis(
        self,
        connection: ServerConnection,
        request: protocol.Synthesize,
        job: Any,
        samples: int,
        header_sent: bool,
        code: Code,
        message: str,
    ) -> None:
        rid = request.id
        if request.stream and header_sent:
            outcome = "aborted" if code in (Code.ABORTED, Code.SHUTTING_DOWN) else "error"
            self.reply(
                connection,
                protocol.AudioEnd(
                    job=job.id,
                    outcome=outcome,
                    samples=samples,
                    code=code.value,
                    message=message,
                    id=rid,
                ),
            )
        else:
            self.reply(connection, protocol.ErrorReply(code=code, message=message, id=rid))


def _with_id(message: protocol.Message, request_id: protocol.RequestId) -> protocol.Message:
    if request_id is None:
        return message
    return dataclasses.replace(message, id=request_id)  # type: ignore[call-arg]
