"""An asyncio client for the ttsd daemon, on ``websockets``.

>>> async with await Client.connect() as client:
...     reply = await client.speak("Hello there.")
...     end = await client.wait_for_job(reply["job"])

Every message the server sends is kept in :attr:`Client.messages` with the time it
arrived; events (messages that answer no request) also go to :meth:`Client.next_event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11500

TERMINAL_EVENTS = frozenset({"finished", "aborted", "error"})


class ClientError(Exception):
    """Base of the client's errors."""


class DaemonNotRunning(ClientError):
    """Nothing accepted the connection."""


class RequestFailed(ClientError):
    """The server answered a request with an ``error`` reply."""

    def __init__(self, reply: dict[str, Any]) -> None:
        super().__init__(f"{reply.get('code')}: {reply.get('message')}")
        self.reply = reply
        self.code = reply.get("code")


def default_address(host: str | None = None, port: int | None = None) -> tuple[str, int]:
    """``host``/``port``, else ``TTS_HOST``/``TTS_PORT``, else 127.0.0.1:11500."""
    host = host or os.environ.get("TTS_HOST") or DEFAULT_HOST
    if port is None:
        port = int(os.environ.get("TTS_PORT") or DEFAULT_PORT)
    return host, port


class Client:
    def __init__(self, connection: ClientConnection, url: str) -> None:
        self.connection = connection
        self.url = url
        self.hello: dict[str, Any] = {}
        #: Every message received, as (monotonic time, message).
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None
        self.close_code: int | None = None

    @classmethod
    async def connect(
        cls,
        host: str | None = None,
        port: int | None = None,
        *,
        timeout: float = 5.0,
        **options: Any,
    ) -> Client:
        """Connect and wait for the server's ``hello``."""
        host, port = default_address(host, port)
        bracketed = f"[{host}]" if ":" in host else host
        url = f"ws://{bracketed}:{port}"
        try:
            connection = await asyncio.wait_for(
                connect(url, compression=None, max_size=2**26, **options), timeout
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise DaemonNotRunning(
                f"no ttsd daemon answers at {url} ({exc.__class__.__name__}: {exc}); "
                "start it with `ttsd serve` or `systemctl --user start tts.socket`"
            ) from None
        except InvalidStatus as exc:
            raise ClientError(f"{url} refused the connection: {exc}") from None
        except InvalidHandshake as exc:
            raise ClientError(f"{url} is not a ttsd daemon: {exc}") from None
        client = cls(connection, url)
        try:
            client.hello = json.loads(await asyncio.wait_for(connection.recv(), timeout))
        except (ConnectionClosed, asyncio.TimeoutError, ValueError) as exc:
            await connection.close()
            raise ClientError(f"{url} sent no hello: {exc}") from None
        client.messages.append((time.monotonic(), client.hello))
        client._reader = asyncio.create_task(client._read())
        return client

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.connection.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self) -> None:
        try:
            async for frame in self.connection:
                message = json.loads(frame)
                self.messages.append((time.monotonic(), message))
                future = self._pending.pop(message.get("id"), None)  # type: ignore[arg-type]
                if future is not None and not future.done():
                    future.set_result(message)
                else:
                    self._events.put_nowait(message)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.connection.close_code
            closed = ClientError(f"connection closed ({self.close_code})")
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(closed)
            self._events.put_nowait(None)

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a frame as is (for tests of bad input)."""
        await self.connection.send(frame)

    async def request(self, kind: str, *, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Send a request, return its reply; raise :class:`RequestFailed` on ``error``."""
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self.connection.send(json.dumps({"type": kind, "id": request_id, **fields}))
        except ConnectionClosed as exc:
            self._pending.pop(request_id, None)
            raise ClientError(f"connection closed ({exc})") from None
        reply = await asyncio.wait_for(future, timeout)
        if reply.get("type") == "error":
            raise RequestFailed(reply)
        return reply

    async def speak(self, text: str, **fields: Any) -> dict[str, Any]:
        """Queue ``text``; return the ``queued`` reply (with ``job``)."""
        return await self.request("speak", text=text, **fields)

    async def next_event(self, timeout: float | None = None) -> dict[str, Any]:
        """The next event; raise :class:`ClientError` once the connection is closed."""
        event = await asyncio.wait_for(self._events.get(), timeout)
        if event is None:
            self._events.put_nowait(None)  # stay closed for later callers
            raise ClientError(f"connection closed ({self.close_code})")
        return event

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every event until the connection closes."""
        while True:
            try:
                yield await self.next_event()
            except ClientError:
                return

    async def wait_for_job(self, job: int, timeout: float | None = None) -> dict[str, Any]:
        """Wait for ``job``'s terminal event (``finished``, ``aborted`` or ``error``)."""
        for _, message in self.messages:
            terminal = message.get("type") in TERMINAL_EVENTS and "id" not in message
            if terminal and message.get("job") == job:
                return message

        async def wait() -> dict[str, Any]:
            while True:
                event = await self.next_event()
                if event.get("job") == job and event.get("type") in TERMINAL_EVENTS:
                    return event

        return await asyncio.wait_for(wait(), timeout)

    def job_events(self, job: int) -> list[dict[str, Any]]:
        """Every message received so far about ``job``, in order."""
        return [m for _, m in self.messages if m.get("job") == job]
