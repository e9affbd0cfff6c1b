"""WebSocket connections: parse requests, call the scheduler, reply, broadcast events.

Sending is synchronous (``websockets``' :func:`broadcast` writes to the transport at
once), so a reply and the events it causes reach every client in the order they
happened: a client always sees ``queued`` before its job's ``started``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import Iterable
from typing import Any

from websockets.asyncio.server import Server as WebSocketServer
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from ttsd import __version__, protocol
from ttsd.config import Config
from ttsd.scheduler import Scheduler

log = logging.getLogger("ttsd.server")


class Server:
    """Serves the ttsd protocol to WebSocket clients on one listening socket."""

    def __init__(self, config: Config, scheduler: Scheduler) -> None:
        self.config = config
        self.scheduler = scheduler
        self.clients: dict[ServerConnection, str] = {}
        self.stop_requested = asyncio.Event()
        self.last_disconnect = time.monotonic()
        self._websocket_server: WebSocketServer | None = None
        self._client_numbers = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    # --- Sending -------------------------------------------------------------------

    def send(self, connections: Iterable[ServerConnection], message: dict[str, Any]) -> None:
        """Write ``message`` to ``connections`` now, without waiting for them to read it."""
        broadcast(connections, protocol.encode(message))

    def emit(self, event: dict[str, Any]) -> None:
        """Broadcast an event to every connected client (the scheduler's ``emit``)."""
        self.send(self.clients, event)

    def reply(self, connection: ServerConnection, message: dict[str, Any]) -> None:
        self.send([connection], message)

    # --- Listening -----------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None) -> int:
        """Listen on ``sock`` (inherited from systemd) or bind host:port; return the port."""
        options: dict[str, Any] = {
            "compression": None,  # events are tiny; deflate only costs latency
            "max_size": 2**20,
            "server_header": f"ttsd/{__version__}",
        }
        if sock is not None:
            server = await serve(self.handle, sock=sock, **options)
        else:
            server = await serve(self.handle, self.config.host, self.config.port, **options)
        self._websocket_server = server
        port = server.sockets[0].getsockname()[1]
        log.info("listening on port %d", port)
        return int(port)

    async def close(self) -> None:
        """Close every connection with 1001 (going away) and stop listening."""
        if self._websocket_server is not None:
            self._websocket_server.close(close_connections=True)
            await self._websocket_server.wait_closed()

    # --- Connections ---------------------------------------------------------------

    async def handle(self, connection: ServerConnection) -> None:
        host, port, *_ = connection.remote_address or ("?", 0)
        label = f"client-{next(self._client_numbers)}@{host}:{port}"
        self.clients[connection] = label
        log.debug("%s connected", label, extra={"CLIENT": label, "EVENT": "connect"})
        self.reply(
            connection,
            protocol.hello(
                __version__,
                client=label,
                engine=self.scheduler.engine_info(),
                audio=self.scheduler.audio_info(),
            ),
        )
        try:
            async for frame in connection:
                self.handle_frame(connection, label, frame)
        except ConnectionClosed:
            pass
        finally:
            del self.clients[connection]
            self.last_disconnect = time.monotonic()
            self.scheduler.abort_client_jobs(label)
            log.debug("%s disconnected", label, extra={"CLIENT": label, "EVENT": "disconnect"})

    def handle_frame(self, connection: ServerConnection, label: str, frame: str | bytes) -> None:
        """Answer one frame with exactly one reply."""
        try:
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
            reply = protocol.error_reply(exc.code, exc.message, exc.request_id)
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
            case protocol.Terminate():
                log.info("terminate requested by %s", label)
                aborted = scheduler.abort_all("terminate")
                self.stop_requested.set()
                return protocol.ok_reply(rid, aborted=aborted)
        raise protocol.ProtocolError(protocol.UNKNOWN_TYPE, f"unhandled {request!r}", rid)
