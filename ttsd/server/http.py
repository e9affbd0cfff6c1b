"""One port, two protocols: WebSocket upgrades go to websockets, other requests to HTTP.

websockets' own HTTP parser serves only the opening handshake (``GET`` with
``Upgrade: websocket``), so the split happens before it. ``websockets.serve`` lets the
daemon wrap the object it builds per connection (its documented ``create_connection``
hook); the wrapper, :class:`FirstRequest`, is what asyncio sees first. It reads the
head of the connection's first request (at most :data:`HEAD_LIMIT` bytes within
:data:`HEAD_TIMEOUT` seconds), then hands the transport and the bytes read so far to

* the websockets connection (``ServerConnection``) when the head asks for
  ``Upgrade: websocket``: from then on websockets serves it exactly as if it had
  accepted it, ``process_request`` checks and all; or
* an aiohttp low-level server's protocol (:class:`aiohttp.web.Server`), which parses
  HTTP/1.1 (any method, keep-alive, request bodies) and streams responses with
  chunked encoding.

:class:`HttpFront` is that HTTP server: the same access checks as the WebSocket
handshake (:class:`~ttsd.server.security.AccessPolicy`: Origin, Host, token), the
connection cap, a request rate limit per client address, CORS for allowed origins,
routing, and errors in OpenAI's JSON shape. The endpoints themselves are in
:mod:`ttsd.server.openai`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ttsd import __version__
from ttsd.config import Config
from ttsd.protocol.openai import OpenAIError
from ttsd.server.limits import RateLimiter
from ttsd.server.security import AccessPolicy

log = logging.getLogger("ttsd.server.http")

#: Longest request head (request line and headers) read before choosing a protocol.
HEAD_LIMIT = 32 * 1024

#: Seconds a new connection has to send the head of its first request.
HEAD_TIMEOUT = 10.0

#: Seconds an idle keep-alive HTTP connection stays open.
KEEPALIVE_TIMEOUT = 15.0

#: Client addresses whose request rate is remembered (then the oldest are forgotten).
RATE_MEMORY = 1024

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]

#: The ``Server`` header, as on the WebSocket handshake.
SERVER_HEADER = f"ttsd/{__version__}"

#: Response headers a page from an allowed origin may read.
_EXPOSED = "X-Sample-Rate, X-Ttsd-Job"


def is_websocket_upgrade(head: bytes) -> bool:
    """True if a request head asks for ``Upgrade: websocket`` (RFC 6455 4.2.1)."""
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"upgrade":
            tokens = (token.strip().lower() for token in value.split(b","))
            if b"websocket" in tokens:
                return True
    return False


def _raw_response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 response for a connection that never reached a server."""
    body = OpenAIError(status, message).to_json().encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


class FirstRequest(asyncio.Protocol):
    """Reads the head of a connection's first request, then hands the connection on.

    ``websocket()`` and ``http()`` build the protocol that takes over. ``live`` holds
    every connection still being read here (the idle exit counts them as clients
    arriving).
    """

    def __init__(
        self,
        websocket: Callable[[], asyncio.Protocol],
        http: Callable[[], asyncio.Protocol],
        live: set[FirstRequest],
        *,
        limit: int = HEAD_LIMIT,
        timeout: float = HEAD_TIMEOUT,
    ) -> None:
        self._websocket = websocket
        self._http = http
        self._live = live
        self._limit = limit
        self._timeout = timeout
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._live.add(self)
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0 or end > self._limit:
            if len(self._buffer) > self._limit:
                self._refuse(431, "Request Header Fields Too Large", "the request head is too long")
            return
        head = bytes(self._buffer[:end])
        self._hand_over(self._websocket() if is_websocket_upgrade(head) else self._http())

    def eof_received(self) -> bool:
        self._finish()
        return False  # nothing was asked: close

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def abort(self) -> None:
        """Cut the connection (the daemon is stopping)."""
        self._finish()
        if self._transport is not None:
            self._transport.abort()

    def _finish(self) -> None:
        self._live.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _hand_over(self, protocol: asyncio.Protocol) -> None:
        transport = self._transport
        assert transport is not None
        self._finish()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(bytes(self._buffer))
        self._buffer.clear()

    def _refuse(self, status: int, reason: str, message: str) -> None:
        self._finish()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(_raw_response(status, reason, message))
            self._transport.close()

    def _expire(self) -> None:
        self._timer = None
        self._refuse(408, "Request Timeout", f"no request within {self._timeout:g} s")


class AiohttpHeaders:
    """aiohttp's headers as :class:`~ttsd.server.security.HeaderView`."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = headers

    def get_all(self, key: str) -> list[str]:
        return list(self._headers.getall(key, []))  # type: ignore[attr-defined]

    def get(self, key: str, default: str | None = None) -> str | None:
        return self._headers.get(key, default)


@dataclass(frozen=True)
class Route:
    """A path pattern (a regular expression, matched whole) and its handlers by method."""

    pattern: re.Pattern[str]
    methods: Mapping[str, Handler]


def json_response(
    request: web.BaseRequest, body: Any, status: int = 200, headers: Mapping[str, str] = {}
) -> web.Response:
    """A JSON response carrying the request's CORS headers."""
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/json",
        headers={**response_headers(request), **headers},
    )


def error_response(
    request: web.BaseRequest, error: OpenAIError, headers: Mapping[str, str] = {}
) -> web.Response:
    """``error`` in OpenAI's JSON shape, with its HTTP status."""
    if error.status == 401:
        headers = {**headers, "WWW-Authenticate": 'Bearer realm="ttsd"'}
    return json_response(request, error.body(), error.status, headers)


def response_headers(request: web.BaseRequest) -> dict[str, str]:
    """Headers every response to ``request`` carries (CORS for an allowed origin)."""
    return {"Server": SERVER_HEADER, **request.get("ttsd.headers", {})}


class HttpFront:
    """Serves HTTP requests that arrive on the WebSocket port.

    ``policy()`` is the access policy in force; ``connections()`` counts the open
    connections of both kinds, for ``max_connections``; ``on_request_end()`` is told
    when a request ends (the idle exit counts HTTP clients as activity).
    """

    def __init__(
        self,
        config: Config,
        policy: Callable[[], AccessPolicy],
        routes: list[Route],
        *,
        connections: Callable[[], int],
        on_request_end: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self._policy = policy
        self._routes = routes
        self._connections = connections
        self._on_request_end = on_request_end
        self._rates: dict[str, RateLimiter] = {}
        #: Requests being answered now.
        self.active = 0
        self.server = web.Server(
            self._handle,
            handler_cancellation=True,  # a client that goes away cancels its request
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            access_log=None,
        )

    def protocol(self) -> asyncio.Protocol:
        """A protocol for one HTTP connection (what :class:`FirstRequest` hands over to)."""
        return self.server()

    @property
    def open_connections(self) -> int:
        return len(self.server.connections)

    async def close(self, timeout: float = 1.0) -> None:
        """Close idle keep-alive connections; give requests in progress ``timeout`` s."""
        await self.server.shutdown(timeout)

    # --- Requests ------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.active += 1
        started = time.monotonic()
        response: web.StreamResponse | None = None
        try:
            response = await self._answer(request)
            return response
        finally:
            self.active -= 1
            self._on_request_end()
            log.debug(
                "%s %s %s -> %s in %.3f s",
                request.remote,
                request.method,
                request.path,
                response.status if response is not None else "cut",
                time.monotonic() - started,
            )

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            self._admit(request)
            if request.method == "OPTIONS":
                return self._preflight(request)
            handler = self._route(request)
            return await handler(request)
        except OpenAIError as exc:
            if exc.status >= 500 or exc.status in (401, 403):
                log.warning(
                    "HTTP %s %s from %s: %d %s",
                    request.method,
                    request.path[:200],
                    request.remote,
                    exc.status,
                    exc.message,
                    extra={"EVENT": "refused" if exc.status < 500 else "http_error"},
                )
            allow = {"Allow": ", ".join(exc.allowed)} if isinstance(exc, _MethodNotAllowed) else {}
            return error_response(request, exc, allow)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must cost one request, not the connection
            log.exception("HTTP %s %s failed", request.method, request.path[:200])
            return error_response(
                request, OpenAIError(500, f"internal error: {exc!r}", code="internal_error")
            )

    def _admit(self, request: web.BaseRequest) -> None:
        """The WebSocket handshake's checks, then the connection cap and the rate limit."""
        policy = self._policy()
        headers = AiohttpHeaders(request.headers)
        refusal = policy.check_headers(headers)
        if refusal is None and policy.token is not None and policy.token_in(headers) is None:
            refusal_status, reason = 401, "missing token: send Authorization: Bearer <token>"
        elif refusal is not None:
            refusal_status, reason = refusal.status, refusal.reason
        else:
            refusal_status, reason = 0, ""
        if refusal_status:
            code = "invalid_api_key" if refusal_status == 401 else "forbidden"
            raise OpenAIError(refusal_status, reason, code=code)
        origin = request.headers.get("Origin")
        if origin is not None:  # allowed, or the check above had refused it
            request["ttsd.headers"] = {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Expose-Headers": _EXPOSED,
                "Vary": "Origin",
            }
        if self._connections() > self.config.max_connections:
            raise OpenAIError(
                503, "too many connections; try again later", code="too_many_connections"
            )
        if not self._rate_of(request.remote or "?").allow():
            raise OpenAIError(
                429,
                f"more than {self.config.max_requests_per_second:g} requests per second",
                code="rate_limited",
            )

    def _rate_of(self, address: str) -> RateLimiter:
        """The rate limiter of a client address. HTTP clients open a connection per
        request or few, so the limit is per address, not per connection as on the
        WebSocket (every local program shares 127.0.0.1's)."""
        rate = self._rates.pop(address, None)
        if rate is None:
            rate = RateLimiter(self.config.max_requests_per_second)
            if len(self._rates) >= RATE_MEMORY:
                del self._rates[next(iter(self._rates))]  # the least recently seen
        self._rates[address] = rate
        return rate

    def _route(self, request: web.BaseRequest) -> Handler:
        for route in self._routes:
            if route.pattern.fullmatch(request.path):
                handler = route.methods.get(request.method)
                if handler is None:
                    raise _MethodNotAllowed(request.method, request.path, sorted(route.methods))
                return handler
        raise OpenAIError(
            404, f"no such endpoint: {request.method} {request.path[:200]}", code="not_found"
        )

    def _preflight(self, request: web.BaseRequest) -> web.Response:
        """A CORS preflight (the origin was already allowed by :meth:`_admit`)."""
        methods = next(
            (sorted(r.methods) for r in self._routes if r.pattern.fullmatch(request.path)), None
        )
        if methods is None:
            raise OpenAIError(404, f"no such endpoint: {request.path[:200]}", code="not_found")
        headers = {
            "Access-Control-Allow-Methods": ", ".join(methods),
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "600",
        }
        return web.Response(status=204, headers={**response_headers(request), **headers})


class _MethodNotAllowed(OpenAIError):
    def __init__(self, method: str, path: str, allowed: list[str]) -> None:
        super().__init__(
            405,
            f"{method} is not allowed on {path[:200]}; use {', '.join(allowed)}",
            code="method_not_allowed",
        )
        self.allowed = allowed


def home_page() -> str:
    """What ``GET /`` without an upgrade answers (426): how to use this port."""
    return (
        f"ttsd {__version__}: a text-to-speech daemon.\n\n"
        "This port speaks two protocols:\n"
        "  WebSocket, ttsd's protocol (docs/protocol.md): connect to ws://HOST:PORT/\n"
        "  HTTP, OpenAI-compatible speech (docs/openai.md):\n"
        "    POST /v1/audio/speech   {model, input, voice, response_format, speed}\n"
        "    GET  /v1/models\n"
        "    GET  /v1/audio/voices\n"
    )
