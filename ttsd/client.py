"""An asyncio client for the ttsd daemon, on ``websockets``, with typed messages.

>>> async with await Client.connect() as client:
...     queued = await client.speak("Hello there.")
...     end = await client.wait_for_job(queued.job)   # Finished, Aborted or JobError

Every message is a class of :mod:`ttsd.protocol` (``Queued``, ``Finished``...). Each
message the server sends is kept in :attr:`Client.messages` with the time it arrived;
events (messages that answer no request) also go to :meth:`Client.next_event`.

Errors are all :class:`ClientError`: :class:`DaemonNotRunning` when nothing accepts the
connection, :class:`RequestFailed` (with the server's ``code``) for an ``error`` reply,
:class:`ConnectionLost` when the connection closes under a call, and
:class:`RequestTimeout` (also a :class:`TimeoutError`) when no reply comes in time.
After the daemon went away, :meth:`Client.reconnect` opens a new connection to the
same address; jobs live in the daemon, so their later events arrive on the new one.

The daemon's address is ``host``/``port`` if given, else ``TTS_HOST``/``TTS_PORT``,
else ``host``/``port`` of the daemon's own config file, else 127.0.0.1:11500.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import os
import struct
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ttsd import protocol
from ttsd.config import ConfigError, load_config

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11500

START_HINT = "start it with `ttsd serve` (or `systemctl --user start tts.socket`)"

# Backoff between connection attempts while retrying (seconds).
_RETRY_FIRST = 0.05
_RETRY_MAX = 0.5

M = TypeVar("M", bound=protocol.Message)


class ClientError(Exception):
    """Base of the client's errors."""


class DaemonNotRunning(ClientError):
    """Nothing accepted the connection."""


class ConnectionLost(ClientError):
    """The connection closed while a request or an event was awaited."""

    def __init__(self, close_code: int | None, reason: str = "") -> None:
        detail = f"code {close_code}" + (f", {reason}" if reason else "")
        super().__init__(f"connection to the daemon closed ({detail})")
        self.close_code = close_code
        self.reason = reason


class RequestTimeout(ClientError, TimeoutError):
    """No reply (or event) arrived within the timeout."""


class RequestFailed(ClientError):
    """The server answered a request with an ``error`` reply."""

    def __init__(self, reply: protocol.ErrorReply) -> None:
        super().__init__(f"{reply.code}: {reply.message}")
        self.reply = reply
        self.code = reply.code
        self.message = reply.message


def default_address(host: str | None = None, port: int | None = None) -> tuple[str, int]:
    """Where the daemon is: arguments, else the environment, else its config file."""
    configured: tuple[str, int] | None = None

    def from_config() -> tuple[str, int]:
        nonlocal configured
        if configured is None:
            try:
                config = load_config(env={k: v for k, v in os.environ.items() if k == "TTS_CONFIG"})
                configured = (config.host, config.port)
            except ConfigError:
                configured = (DEFAULT_HOST, DEFAULT_PORT)
        return configured

    host = host or os.environ.get("TTS_HOST") or from_config()[0]
    if host in ("0.0.0.0", "::", ""):  # the daemon binds every address: reach it locally
        host = DEFAULT_HOST
    if port is None:
        raw = os.environ.get("TTS_PORT")
        if raw:
            try:
                port = int(raw)
            except ValueError:
                raise ClientError(f"TTS_PORT must be a port number, got {raw!r}") from None
        else:
            port = from_config()[1] or DEFAULT_PORT
    return host, port


def default_token() -> str | None:
    """``TTS_TOKEN``, else the daemon's token file ``$XDG_RUNTIME_DIR/ttsd/token``, else None.

    Only needed when the daemon runs with ``auth = "token"`` (see docs/security.md).
    """
    token = os.environ.get("TTS_TOKEN")
    if token:
        return token.strip()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            return (Path(runtime) / "ttsd" / "token").read_text().strip() or None
    return None


def url_of(host: str, port: int) -> str:
    """The WebSocket URL of a daemon at ``host:port`` (IPv6 addresses bracketed)."""
    bracketed = f"[{host}]" if ":" in host else host
    return f"ws://{bracketed}:{port}"


def _reason(exc: BaseException) -> str:
    """A short cause for a failed connection attempt."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "timed out"
    return str(exc) or exc.__class__.__name__


@dataclass(frozen=True)
class Audio:
    """Synthesized speech: mono signed 16-bit little-endian PCM."""

    pcm: bytes = dataclasses.field(repr=False)
    sample_rate: int
    job: int | None = None

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2

    @property
    def seconds(self) -> float:
        return self.samples / self.sample_rate

    def __repr__(self) -> str:
        return f"Audio({self.seconds:.2f} s at {self.sample_rate} Hz, job={self.job})"

    @classmethod
    def from_reply(cls, reply: protocol.AudioReply) -> Audio:
        """Decode an ``audio`` reply, checking it says what the data holds."""
        if reply.format != "s16le" or reply.channels != 1:
            raise ClientError(f"unsupported audio format in reply: {reply.format!r}")
        try:
            pcm = base64.b64decode(reply.data, validate=True)
        except (TypeError, ValueError) as exc:
            raise ClientError(f"malformed audio reply: {exc}") from None
        if len(pcm) != 2 * reply.samples:
            raise ClientError("audio reply: 'samples' does not match the data")
        return cls(pcm, int(reply.sample_rate), reply.job)

    def write_wav(self, target: str | Path | BinaryIO) -> None:
        """Write a 16-bit mono WAV file (to a path or a binary file object)."""
        with wave.open(target if not isinstance(target, Path) else str(target), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(self.sample_rate)
            # Declaring the length first lets the header be written once, so the
            # target need not be seekable (a pipe works).
            out.setnframes(self.samples)
            out.writeframes(self.pcm)


@dataclass
class AudioStream:
    """A streamed synthesis: its header, then its PCM as it arrives (see
    :meth:`Client.stream_audio`)."""

    start: protocol.AudioStart
    _queue: asyncio.Queue[bytes | protocol.Message | None]
    #: The end frame once it came: ``outcome`` is ``finished``, ``aborted`` or ``error``.
    end: protocol.AudioEnd | None = None

    @property
    def job(self) -> int:
        return self.start.job

    @property
    def sample_rate(self) -> int:
        return self.start.sample_rate

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[bytes]:
        """Each piece of PCM as it arrives; raises :class:`RequestFailed` if the
        synthesis ends in ``error`` or ``aborted``."""
        while True:
            item = await self._queue.get()
            if isinstance(item, bytes):
                yield item
                continue
            if isinstance(item, protocol.AudioEnd):
                self.end = item
                if item.outcome != "finished":
                    raise RequestFailed(
                        protocol.ErrorReply(
                            code=item.code or item.outcome, message=item.message or item.outcome
                        )
                    )
                return
            raise ConnectionLost(None, "closed during a streamed synthesis")


class Client:
    """One WebSocket connection to the daemon, with replies matched to requests by ``id``."""

    def __init__(
        self,
        connection: ClientConnection,
        url: str,
        *,
        timeout: float = 5.0,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.connection = connection
        self.url = url
        self._timeout = timeout
        self._options = dict(options or {})
        self._token: str | None = None
        self.hello = protocol.Hello()
        #: Every message received, as (monotonic time, message), across reconnects.
        self.messages: list[tuple[float, protocol.Message]] = []
        #: How many times :meth:`reconnect` opened a new connection.
        self.reconnects = 0
        self._events: asyncio.Queue[protocol.Message | None] = asyncio.Queue()
        self._pending: dict[int, asyncio.Future[protocol.Message]] = {}
        self._streams: dict[int, asyncio.Queue[bytes | protocol.Message | None]] = {}
        #: Streams whose header came, not yet handed to stream_audio's caller.
        self._opened: dict[int, asyncio.Queue[bytes | protocol.Message | None]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None
        # Index in ``messages`` of the current connection's hello: job ids are per
        # daemon run, so after a reconnect older messages may name other jobs.
        self._first_message = 0
        self.close_code: int | None = None
        self.close_reason = ""

    # --- Connecting ------------------------------------------------------------------

    @staticmethod
    async def _open(
        url: str, timeout: float, retry_for: float, options: dict[str, Any], token: str | None
    ) -> tuple[ClientConnection, protocol.Hello]:
        """Connect to ``url`` and read its hello, retrying refused connections."""
        if token:
            options = {**options, "additional_headers": {"Authorization": f"Bearer {token}"}}
        deadline = time.monotonic() + retry_for
        delay = _RETRY_FIRST
        while True:
            try:
                connection = await asyncio.wait_for(
                    connect(url, compression=None, max_size=2**26, open_timeout=None, **options),
                    timeout,
                )
                break
            except (OSError, asyncio.TimeoutError) as exc:
                if time.monotonic() + delay > deadline:
                    why = _reason(exc)
                    raise DaemonNotRunning(
                        f"no ttsd daemon answers at {url} ({why}); {START_HINT}"
                    ) from None
            except InvalidStatus as exc:
                if exc.response.status_code == 401:
                    raise ClientError(
                        f"the daemon at {url} refused our token (HTTP 401): check TTS_TOKEN"
                    ) from None
                raise ClientError(f"{url} refused the connection: {exc}") from None
            except InvalidHandshake as exc:
                raise ClientError(f"{url} is not a ttsd daemon: {exc}") from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)
        try:
            hello = protocol.decode(await asyncio.wait_for(connection.recv(), timeout))
            if not isinstance(hello, protocol.Hello):
                raise ValueError(f"first message is not a hello: {hello!r:.100}")
        except (ConnectionClosed, asyncio.TimeoutError, ValueError) as exc:
            await connection.close()
            raise ClientError(f"{url} sent no hello: {exc or exc.__class__.__name__}") from None
        if hello.auth == "required":
            # The Authorization header was missing or wrong: the daemon waits for ``auth``.
            await connection.close()
            raise ClientError(
                f"the daemon at {url} requires its token: set TTS_TOKEN (see docs/security.md)"
            )
        return connection, hello

    @classmethod
    async def connect(
        cls,
        host: str | None = None,
        port: int | None = None,
        *,
        timeout: float = 5.0,
        retry_for: float = 0.0,
        token: str | None = None,
        **options: Any,
    ) -> Client:
        """Connect and wait for the server's ``hello``.

        ``retry_for`` > 0 keeps retrying a refused connection for that many seconds
        (for a daemon that is still starting). ``token`` (default: :func:`default_token`)
        is sent as ``Authorization: Bearer``. ``options`` go to ``websockets``' connect.
        """
        host, port = default_address(host, port)
        url = url_of(host, port)
        token = token or default_token()
        connection, hello = await cls._open(url, timeout, retry_for, options, token)
        client = cls(connection, url, timeout=timeout, options=options)
        client._token = token
        client._start(hello)
        return client

    def _start(self, hello: protocol.Hello) -> None:
        self.hello = hello
        self.close_code, self.close_reason = None, ""
        self._first_message = len(self.messages)
        self.messages.append((time.monotonic(), hello))
        self._reader = asyncio.create_task(self._read(self.connection))

    async def reconnect(self, *, retry_for: float = 10.0) -> None:
        """Open a new connection to the same daemon address (closing the old one).

        Requests in flight on the old connection fail with :class:`ConnectionLost`.
        Events sent while disconnected are lost (ask for ``status`` to catch up), and
        unread events of the old connection are dropped: a restarted daemon numbers
        its jobs from 1 again, so they could be mistaken for new ones. For the same
        reason :meth:`wait_for_job` and :meth:`job_events` look only at messages of
        the current connection; :attr:`messages` keeps everything.
        """
        await self.close()
        connection, hello = await self._open(
            self.url, self._timeout, retry_for, self._options, self._token
        )
        self.connection = connection
        self.reconnects += 1
        self._events = asyncio.Queue()
        self._start(hello)

    def _current_messages(self) -> list[protocol.Message]:
        return [m for _, m in self.messages[self._first_message :]]

    @property
    def closed(self) -> bool:
        """True once the current connection has closed (for any reason)."""
        return self._reader is None or self._reader.done()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.connection.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def wait_closed(self, timeout: float | None = None) -> int | None:
        """Wait until the server closes the connection; return the close code."""
        if self._reader is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._reader), timeout)
            except asyncio.TimeoutError:
                raise RequestTimeout(f"the connection stayed open for {timeout} s") from None
        return self.close_code

    # --- Receiving -------------------------------------------------------------------

    async def _read(self, connection: ClientConnection) -> None:
        try:
            async for frame in connection:
                if isinstance(frame, bytes):
                    self._audio_frame(frame)
                    continue
                try:
                    message = protocol.decode(frame)
                except ValueError as exc:
                    # A peer that breaks the protocol cannot be trusted with more requests.
                    self.close_reason = f"the server sent an invalid message ({exc})"
                    await connection.close(1002, "invalid message")
                    break
                self.messages.append((time.monotonic(), message))
                if isinstance(message, protocol.AudioStart):
                    # Route the stream's binary frames from now on: they can arrive
                    # before the caller of stream_audio runs again.
                    queue: asyncio.Queue[bytes | protocol.Message | None] = asyncio.Queue()
                    self._streams[message.job] = self._opened[message.job] = queue
                if isinstance(message, protocol.AudioEnd) and message.job in self._streams:
                    self._streams.pop(message.job).put_nowait(message)
                request_id = message.get("id")
                future = self._pending.pop(request_id, None) if request_id is not None else None
                if future is not None and not future.done():
                    future.set_result(message)
                elif request_id is None:
                    self._events.put_nowait(message)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = connection.close_code
            if not self.close_reason:
                self.close_reason = connection.close_reason or ""
            for request_id, future in list(self._pending.items()):
                if not future.done():
                    future.set_exception(ConnectionLost(self.close_code, self.close_reason))
                self._pending.pop(request_id, None)
            for queue in self._streams.values():
                queue.put_nowait(None)
            self._streams.clear()
            self._events.put_nowait(None)

    def _audio_frame(self, frame: bytes) -> None:
        """A binary frame of a streamed synthesis: a 4-byte job id, then PCM."""
        if len(frame) < 4:
            return
        (job,) = struct.unpack_from("<I", frame)
        queue = self._streams.get(job)
        if queue is not None:
            queue.put_nowait(frame[4:])

    async def next_event(self, timeout: float | None = None) -> protocol.Message:
        """The next event; raise :class:`ConnectionLost` once the connection is closed."""
        try:
            event = await asyncio.wait_for(self._events.get(), timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"no event within {timeout} s") from None
        if event is None:
            self._events.put_nowait(None)  # stay closed for later callers
            raise ConnectionLost(self.close_code, self.close_reason)
        return event

    async def events(self) -> AsyncIterator[protocol.Message]:
        """Every event until the connection closes."""
        while True:
            try:
                yield await self.next_event()
            except ConnectionLost:
                return

    async def wait_for(
        self, kind: type[M], job: int | None = None, timeout: float | None = None
    ) -> M:
        """Wait for an event of class ``kind`` (about ``job`` if given); one that came
        already on this connection counts."""
        for message in self._current_messages():
            if isinstance(message, kind) and (job is None or message.get("job") == job):
                return message

        async def wait() -> M:
            while True:
                event = await self.next_event()
                if isinstance(event, kind) and (job is None or event.get("job") == job):
                    return event

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            what = kind.TYPE + (f" of job {job}" if job is not None else "")
            raise RequestTimeout(f"no {what} within {timeout} s") from None

    async def wait_for_job(
        self, job: int, timeout: float | None = None
    ) -> protocol.Finished | protocol.Aborted | protocol.JobError:
        """Wait for ``job``'s terminal event (``finished``, ``aborted`` or ``error``)."""
        for message in self._current_messages():
            if isinstance(message, protocol.TERMINAL) and message.job == job:
                return message

        async def wait() -> protocol.Finished | protocol.Aborted | protocol.JobError:
            while True:
                event = await self.next_event()
                if isinstance(event, protocol.TERMINAL) and event.job == job:
                    return event

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"job {job} did not end within {timeout} s") from None

    def job_events(self, job: int) -> list[protocol.Message]:
        """Every message received so far about ``job`` on this connection, in order."""
        return [m for m in self._current_messages() if m.get("job") == job]

    # --- Requests --------------------------------------------------------------------

    async def send_raw(self, frame: str | bytes) -> None:
        """Send a frame as is (for tests of bad input)."""
        await self.connection.send(frame)

    async def send(
        self, request: protocol.Request, *, timeout: float | None = 10.0
    ) -> protocol.Message:
        """Send ``request`` (its ``id`` is set here) and return the reply; raise
        :class:`RequestFailed` on an ``error`` reply."""
        if self.closed:
            raise ConnectionLost(self.close_code, self.close_reason)
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        frame = protocol.encode(dataclasses.replace(request, id=request_id))
        try:
            await self.connection.send(frame)
        except ConnectionClosed as exc:
            self._pending.pop(request_id, None)
            raise ConnectionLost(exc.rcvd.code if exc.rcvd else None) from None
        try:
            reply = await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"no reply to {request.TYPE} within {timeout} s") from None
        finally:
            self._pending.pop(request_id, None)
        if isinstance(reply, protocol.ErrorReply):
            raise RequestFailed(reply)
        return reply

    async def request(
        self, kind: str, *, timeout: float | None = 10.0, **fields: Any
    ) -> protocol.Message:
        """Send a request of type ``kind`` with ``fields``; return its reply."""
        cls = protocol.REQUEST_CLASSES.get(kind)
        if cls is None:
            raise ClientError(f"unknown request type {kind!r}")
        return await self.send(cls(**fields), timeout=timeout)

    async def _expect(self, cls: type[M], request: protocol.Request, **kwargs: Any) -> M:
        reply = await self.send(request, **kwargs)
        if not isinstance(reply, cls):
            raise ClientError(f"expected a {cls.TYPE} reply to {request.TYPE}, got {reply.TYPE}")
        return reply

    async def speak(self, text: str, **fields: Any) -> protocol.Queued:
        """Queue ``text``; return the ``queued`` reply (with ``job`` and ``position``).

        ``fields``: ``voice``, ``volume`` (0.0-1.0), ``options`` (a dict), ``priority``,
        ``key``, ``resume``, ``format``, ``cancel_on_disconnect``.
        """
        return await self._expect(protocol.Queued, protocol.Speak(text=text, **fields))

    async def synthesize(self, text: str, *, timeout: float | None = None, **fields: Any) -> Audio:
        """Have the daemon make the audio for ``text`` and send it back (nothing plays)."""
        reply = await self._expect(
            protocol.AudioReply, protocol.Synthesize(text=text, **fields), timeout=timeout
        )
        return Audio.from_reply(reply)

    async def stream_audio(self, text: str, **fields: Any) -> AudioStream:
        """Start a streamed synthesis; iterate over the result for PCM as it is made.

        >>> stream = await client.stream_audio("Hello there.")
        >>> async for pcm in stream: ...   # bytes of s16le at stream.sample_rate
        """
        start = await self._expect(
            protocol.AudioStart, protocol.Synthesize(text=text, stream=True, **fields), timeout=None
        )
        # The reader made the stream's queue when the header came, so every frame and
        # the end that followed it are in there, however soon they came.
        return AudioStream(start, self._opened.pop(start.job))

    async def abort_current(self) -> list[int]:
        """Abort the playing job; return the ids aborted ([] if nothing was playing)."""
        return list((await self._expect(protocol.Ok, protocol.AbortCurrent())).aborted or [])

    async def abort_all(self) -> list[int]:
        """Abort every job (playing, queued, synthesizing); return their ids."""
        return list((await self._expect(protocol.Ok, protocol.AbortAll())).aborted or [])

    async def abort(self, job: int) -> list[int]:
        """Abort one job; [] if it had already ended (``unknown_job`` if it never existed)."""
        return list((await self._expect(protocol.Ok, protocol.Abort(job=job))).aborted or [])

    async def abort_client(self, client: str) -> list[int]:
        """Abort every job of the client named ``client``."""
        return list((await self._expect(protocol.Ok, protocol.Abort(client=client))).aborted or [])

    async def pause(self) -> protocol.Ok:
        """Stop the sound at once; jobs wait until :meth:`resume`."""
        return await self._expect(protocol.Ok, protocol.Pause())

    async def resume(self) -> protocol.Ok:
        return await self._expect(protocol.Ok, protocol.Resume())

    async def identify(self, name: str, **defaults: Any) -> protocol.Ok:
        """Name this client; ``defaults`` (``voice``, ``priority``, ``volume``) apply to
        its later ``speak`` requests."""
        return await self._expect(protocol.Ok, protocol.Identify(name=name, **defaults))

    async def normalize(self, text: str, **fields: Any) -> protocol.NormalizeReply:
        """What ``speak`` would say for ``text``, sentence by sentence."""
        return await self._expect(protocol.NormalizeReply, protocol.Normalize(text=text, **fields))

    async def status(self) -> protocol.StatusReply:
        return await self._expect(protocol.StatusReply, protocol.Status())

    async def voices(self) -> list[str]:
        return list((await self._expect(protocol.VoicesReply, protocol.Voices())).voices)

    async def ping(self) -> protocol.Pong:
        return await self._expect(protocol.Pong, protocol.Ping())

    async def terminate(self, timeout: float | None = 15.0) -> int | None:
        """Ask the daemon to shut down; return the close code once it has closed."""
        await self._expect(protocol.Ok, protocol.Terminate())
        return await self.wait_closed(timeout)
