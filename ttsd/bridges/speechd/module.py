"""``sd_ttsd``: a Speech Dispatcher output module that speaks through ttsd.

Speech Dispatcher starts the module with the path of its configuration file and talks
to it over stdin/stdout (its manual, "Communication Protocol for Output Modules";
``src/modules/module_process.c`` is the reference implementation). Every command gets
its reply at once: nothing here waits for the daemon while Speech Dispatcher waits
for a reply, except ``LIST VOICES``, which asks the daemon with a short timeout.

* ``SPEAK``/``CHAR``/``KEY``: the text (SSML stripped, marks remembered) becomes one
  ttsd ``speak`` job (several for a text over ``TtsdMaxChars``). Events follow
  asynchronously: ``701 BEGIN`` when ttsd starts playing, ``700`` index marks as the
  sentences after them start, then exactly one of ``702 END``, ``703 STOP`` or
  ``704 PAUSE``.
* ``STOP``: aborts the job (ttsd kills the stream: silence within milliseconds), then
  ``703 STOP``.
* ``PAUSE``: the same at once, then ``704 PAUSE``. Speech Dispatcher keeps the
  message and, on ``RESUME``, sends the rest again from the last index mark reported,
  which is the start of the sentence that was interrupted: nothing is lost, that
  sentence is heard again from its start. ttsd's own ``pause`` is not used: it holds
  the whole speaker, every client's speech, for as long as the SSIP client stays
  paused.
* ``SET``: remembered for the next message (see :mod:`.settings` for the mapping).
* ``AUDIO``: the module plays through ttsd, so it refuses ``server`` audio (Speech
  Dispatcher then sends the local audio settings, which are accepted and unused).

The daemon's address comes from the module config, else ttsd's client defaults. The
connection is opened on first use, reopened after the daemon restarted (socket
activation starts it again on connect), and closed after ``TtsdIdleDisconnect``
seconds without speech so an idle daemon may exit. Jobs are queued with
``cancel_on_disconnect``: if the module dies, its speech stops. When the daemon cannot
be reached a message ends with ``701 BEGIN`` and ``703 STOP`` and the reason goes to
the module's log (stderr, which Speech Dispatcher writes to ``ttsd.log`` in its log
directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ttsd import __version__, protocol
from ttsd.bridges.speechd.settings import (
    ConfigError,
    ModuleConfig,
    SpeechSettings,
    speak_fields,
    voice_lines,
)
from ttsd.bridges.speechd.text import char_text, key_text, spell, strip_ssml
from ttsd.client import Client, ClientError, RequestFailed, default_address

log = logging.getLogger("sd_ttsd")

#: Name the module gives its connection (events and ttsd's log carry it).
CLIENT_NAME = "speech-dispatcher"
#: Longest line accepted from Speech Dispatcher (a whole message may be one line).
MAX_LINE = 2**24
#: Seconds ``LIST VOICES`` waits for the daemon before answering from what it knows.
VOICES_TIMEOUT = 3.0
#: How long a request refused for ttsd's request-rate limit is retried (seconds).
RATE_RETRY_FOR = 2.0

# Replies of the module protocol (as module_process.c words them).
BAD_SYNTAX = "302 ERROR BAD SYNTAX"
BAD_PARAM = "303 ERROR INVALID PARAMETER OR VALUE"


class LinkError(Exception):
    """The daemon cannot be reached or refused the connection."""


# --- Output ---------------------------------------------------------------------------


class Output:
    """Writes protocol lines to Speech Dispatcher: the only writer of that pipe.

    Each call writes whole lines at once, so a multi-line reply is never split by an
    event (the rule "an event must never get between a command and its reply" holds
    because replies are written before any event of the command they answer).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, *lines: str) -> None:
        data = "".join(f"{line}\n" for line in lines).encode()
        log.debug("-> %s", " | ".join(lines))
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]


# --- The connection to ttsd -----------------------------------------------------------


class TtsdLink:
    """The connection to the daemon: opened on demand, reopened after it closed."""

    def __init__(
        self,
        config: ModuleConfig,
        on_event: Callable[[protocol.Message], None],
        on_lost: Callable[[], None],
    ) -> None:
        """``on_event`` gets every event of the connection; ``on_lost`` is called when
        the connection closes without :meth:`close`."""
        self.config = config
        self._on_event = on_event
        self._on_lost = on_lost
        self._client: Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        #: The engine ttsd runs (``piper``...), from hello and ``engine`` events.
        self.engine = "unknown"
        #: The daemon's voices as last listed (empty until the daemon answered).
        self.voices: list[str] = []
        self._closing = False

    @property
    def address(self) -> str:
        try:
            host, port = default_address(self.config.host, self.config.port)
        except ClientError as exc:
            return f"(bad address: {exc})"
        return f"{host}:{port}"

    @property
    def open_client(self) -> Client | None:
        """The connection if it is open, without connecting."""
        client = self._client
        return client if client is not None and not client.closed else None

    async def client(self, timeout: float | None = None, retry: bool = True) -> Client:
        """The open connection, connecting first if needed; raise :class:`LinkError`.

        ``retry`` keeps trying a refused connection for up to a second (a daemon being
        restarted); ``LIST VOICES`` does not, since Speech Dispatcher waits for it.
        """
        async with self._lock:
            if self._client is not None and not self._client.closed:
                return self._client
            await self._drop()
            wait = self.config.connect_timeout if timeout is None else timeout
            try:
                client = await asyncio.wait_for(
                    Client.connect(
                        self.config.host,
                        self.config.port,
                        timeout=wait,
                        # A daemon being restarted refuses for a moment: keep trying.
                        retry_for=min(1.0, wait) if retry else 0.0,
                        token=self.config.token,
                    ),
                    wait + 1.0,
                )
            except ClientError as exc:
                raise LinkError(f"cannot reach ttsd at {self.address}: {exc}") from None
            except (asyncio.TimeoutError, OSError) as exc:
                why = str(exc) or exc.__class__.__name__
                raise LinkError(f"cannot reach ttsd at {self.address}: {why}") from None
            self.engine = str(client.hello.engine.get("name", "unknown"))
            await self._identify(client)
            self._client = client
            self._closing = False
            self._reader = asyncio.create_task(self._read(client), name="sd_ttsd-events")
            log.info(
                "connected to ttsd %s at %s (engine %s)",
                client.hello.version,
                self.address,
                self.engine,
            )
            # The voices decide which voice a message gets; the daemon may have new
            # ones since it restarted.
            try:
                self.voices = await asyncio.wait_for(client.voices(), wait)
            except (ClientError, asyncio.TimeoutError) as exc:
                log.warning("cannot list ttsd's voices: %s", exc)
            return client

    async def _identify(self, client: Client) -> None:
        """Name the connection; a second module on the same daemon adds its pid."""
        for name in (CLIENT_NAME, f"{CLIENT_NAME}-{os.getpid()}"):
            try:
                await client.identify(name)
                return
            except RequestFailed as exc:
                log.debug("identify as %s refused: %s", name, exc)
            except ClientError as exc:
                raise LinkError(f"ttsd at {self.address} closed the connection: {exc}") from None

    async def _read(self, client: Client) -> None:
        async for event in client.events():
            if isinstance(event, protocol.EngineState):
                self.engine = str(event.info.get("name", self.engine))
            self._on_event(event)
        if not self._closing:
            reason = client.close_reason or f"code {client.close_code}"
            log.warning("the connection to ttsd at %s closed (%s)", self.address, reason)
            self._on_lost()

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            self._closing = True
            with contextlib.suppress(Exception):
                await client.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def close(self) -> None:
        """Close the connection on purpose (no "lost" report)."""
        async with self._lock:
            if self._client is not None:
                log.info("closing the connection to ttsd")
            await self._drop()

    async def list_voices(self, timeout: float) -> list[str]:
        """The daemon's voices; the last list known (maybe empty) if it does not answer."""
        try:
            client = await self.client(timeout, retry=False)
            self.voices = await asyncio.wait_for(client.voices(), timeout)
        except (LinkError, ClientError, asyncio.TimeoutError) as exc:
            log.error("cannot list ttsd's voices: %s", exc)
        return self.voices


# --- Messages -------------------------------------------------------------------------


@dataclass(eq=False)
class Utterance:
    """One message from Speech Dispatcher, from ``SPEAK`` to its final event."""

    number: int
    text: str
    marks: list[tuple[int, str]]
    #: ``(offset in text, piece)``: the jobs to queue, in order.
    pieces: list[tuple[int, str]]
    #: Job id -> offset of its piece in ``text``.
    jobs: dict[int, int] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)
    #: Every piece was queued (or the attempt ended).
    submitted: bool = False
    began: bool = False
    ended: bool = False
    #: ``"stop"`` or ``"pause"`` once Speech Dispatcher asked for it.
    stop: str | None = None
    marks_sent: int = 0
    received: float = field(default_factory=time.monotonic)


def split_long(text: str, limit: int) -> list[tuple[int, str]]:
    """``text`` cut into ``(offset, piece)`` of at most ``limit`` characters, at a
    sentence end, else a line break or space, else anywhere."""
    pieces: list[tuple[int, str]] = []
    start = 0
    while len(text) - start > limit:
        window = text[start : start + limit]
        cut = max(window.rfind(". "), window.rfind("? "), window.rfind("! "), window.rfind("\n"))
        if cut > limit // 4:
            cut += 1
        else:
            cut = window.rfind(" ")
            if cut <= limit // 4:
                cut = limit
        pieces.append((start, text[start : start + cut]))
        start += cut
    pieces.append((start, text[start:]))
    return [(offset, piece) for offset, piece in pieces if piece.strip()]


class SpeechdModule:
    """The module: reads commands, answers them, reports events."""

    def __init__(self, config: ModuleConfig, output: Output) -> None:
        self.config = config
        self.out = output
        self.settings = SpeechSettings()
        self.link = TtsdLink(config, self._on_event, self._on_lost)
        self.current: Utterance | None = None
        self._by_job: dict[int, Utterance] = {}
        # Events of jobs whose ``queued`` reply is still on its way: a job's first
        # events can be read before the request that made it returns.
        self._claiming = 0
        self._early: dict[int, list[protocol.Message]] = {}
        self._numbers = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._noted: set[str] = set()
        self._idle: asyncio.TimerHandle | None = None
        self._debug_handler: logging.Handler | None = None
        self.log_level = logging.INFO

    # --- The command loop -------------------------------------------------------------

    async def run(self, reader: asyncio.StreamReader, config_error: str | None = None) -> int:
        """Serve until ``QUIT`` or end of input; return the exit status."""
        first = await self._line(reader)
        if first != "INIT":
            log.error("Speech Dispatcher did not start with INIT (got %r)", first)
            return 3
        if config_error is not None:
            log.error("%s", config_error)
            self.out.send(f"399-{config_error}", "399 ERR CANT INIT MODULE")
            return 1
        for warning in self.config.warnings:
            log.warning("%s", warning)
        self.out.send(
            f"299-ttsd module {__version__}: speaks through ttsd at {self.link.address}",
            "299 OK LOADED SUCCESSFULLY",
        )
        try:
            while True:
                line = await self._line(reader)
                if line is None:
                    log.info("Speech Dispatcher closed the pipe; exiting")
                    return 0
                if line == "QUIT":
                    await self._quit()
                    self.out.send("210 OK QUIT")
                    return 0
                await self._command(line, reader)
        finally:
            await self._shutdown()

    async def _line(self, reader: asyncio.StreamReader) -> str | None:
        """The next line without its newline; None at end of input."""
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            raw = exc.partial
            if not raw:
                return None
        except asyncio.LimitOverrunError:
            # Far beyond any message: drop it rather than stop serving.
            await reader.readexactly(MAX_LINE)
            log.error("a line over %d bytes was dropped", MAX_LINE)
            return ""
        line = raw.decode("utf-8", errors="replace")
        return line[:-1] if line.endswith("\n") else line

    async def _block(self, reader: asyncio.StreamReader) -> list[str] | None:
        """Lines up to the closing ``.`` (a leading ``..`` is an escaped dot)."""
        lines = []
        while True:
            line = await self._line(reader)
            if line is None:
                return None
            if line == ".":
                return lines
            lines.append(line[1:] if line.startswith(".") else line)

    async def _command(self, line: str, reader: asyncio.StreamReader) -> None:
        received = time.monotonic()
        log.debug("<- %s (at monotonic %.6f)", line, received)
        kinds = {"SPEAK": "text", "CHAR": "char", "KEY": "key", "SOUND_ICON": "icon"}
        if line in kinds:
            self.out.send("202 OK RECEIVING MESSAGE")
            lines = await self._block(reader)
            if lines is not None:
                self._speak(kinds[line], lines, received)
        elif line == "STOP":
            self._stop("stop")
        elif line == "PAUSE":
            self._stop("pause")
        elif line == "SET":
            self.out.send("203 OK RECEIVING SETTINGS")
            values = await self._values(reader)
            if values is not None:
                # Like module_process.c: the valid lines apply, the reply tells the rest.
                bad = self.settings.update(values[0])
                self.out.send(
                    BAD_SYNTAX if values[1] else BAD_PARAM if bad else "203 OK SETTINGS RECEIVED"
                )
        elif line == "AUDIO":
            self.out.send("207 OK RECEIVING AUDIO SETTINGS")
            values = await self._values(reader)
            if values is not None:
                if values[0].get("audio_output_method") == "server":
                    # ttsd plays the audio itself: decline, and Speech Dispatcher sends
                    # its local audio settings next, which need nothing from us.
                    self.out.send(BAD_PARAM)
                else:
                    self.out.send("203 OK AUDIO INITIALIZED")
        elif line == "LOGLEVEL":
            self.out.send("207 OK RECEIVING LOGLEVEL SETTINGS")
            values = await self._values(reader)
            if values is not None:
                self._set_log_level(values[0].get("log_level", ""))
                self.out.send("203 OK LOGLEVEL SET")
        elif line.startswith("LIST VOICES"):
            await self._list_voices(line.split()[2:])
        elif line.startswith("DEBUG"):
            self._debug(line.split()[1:])
        else:
            log.warning("unknown command %r", line)
            self.out.send("300 ERR UNKNOWN COMMAND")

    async def _values(self, reader: asyncio.StreamReader) -> tuple[dict[str, str], bool] | None:
        """``name=value`` lines up to ``.``, and whether any line was malformed."""
        lines = await self._block(reader)
        if lines is None:
            return None
        values: dict[str, str] = {}
        malformed = False
        for line in lines:
            name, equals, value = line.partition("=")
            if not equals or not name:
                malformed = True
                continue
            values[name.strip()] = value.strip()
        return values, malformed

    # --- Speaking ---------------------------------------------------------------------

    def _speak(self, kind: str, lines: list[str], received: float) -> None:
        """Answer ``SPEAK`` at once and start the message in the background."""
        raw = "\n".join(lines)
        if kind != "text" and len(lines) > 1:
            self.out.send("305 DATA MORE THAN ONE LINE")
            return
        if kind == "text":
            stripped = strip_ssml(raw)
            text, marks = stripped.text, stripped.marks
            if self.settings.spelling:
                text, marks = spell(text), []
        elif kind == "char":
            text, marks = char_text(raw), []
        elif kind == "key":
            text, marks = key_text(raw), []
        else:
            # A sound icon is a sound file Speech Dispatcher plays with server audio;
            # ttsd has nothing to play for it: an empty message.
            log.info("sound icon %r: not supported, nothing played", raw)
            text, marks = "", []
        previous = self.current
        if previous is not None and not previous.ended:
            # Speech Dispatcher waits for the end of a message before sending another;
            # if it did not, it no longer expects events of the old one.
            log.warning("SPEAK while message %d still plays: abandoning it", previous.number)
            previous.ended = True
            for job in previous.jobs:
                self._by_job.pop(job, None)
            self._spawn(self._abort_jobs(previous))
        self._numbers += 1
        utterance = Utterance(
            self._numbers, text, marks, split_long(text, self.config.max_chars), received=received
        )
        self.current = utterance
        self.out.send("200 OK SPEAKING")
        self._cancel_idle()
        self._spawn(self._play(utterance))

    async def _play(self, u: Utterance) -> None:
        """Queue the message's jobs; events then end it (or an error here does)."""
        if not u.pieces:
            self._begin(u)
            self._end(u, "702 END")
            return
        try:
            await self._submit(u)
        except LinkError as exc:
            log.error("message %d not spoken: %s", u.number, exc)
            self._end(u, "703 STOP")
        except RequestFailed as exc:
            log.error("message %d not spoken: ttsd refused it: %s", u.number, exc)
            if exc.code == protocol.Code.TEXT_TOO_LONG.value:
                log.error("lower TtsdMaxChars in the module config below the daemon's limit")
            self._end(u, "703 STOP")
        except ClientError as exc:
            log.error("message %d not spoken: %s", u.number, exc)
            self._end(u, "703 STOP")
        finally:
            u.submitted = True
        if u.ended:
            await self._abort_jobs(u)  # an error ended it with pieces still queued
        elif u.jobs and u.finished >= set(u.jobs):
            self._end(u, "702 END")  # every job finished while the last was queued
        elif u.stop is not None:
            if u.jobs:
                await self._abort_jobs(u)
            else:
                self._end(u, self._stop_event(u))  # stopped before any job existed

    async def _submit(self, u: Utterance) -> None:
        client = await self.link.client()
        fields, notes = speak_fields(self.config, self.settings, self.link.engine, self.link.voices)
        for note in notes:
            self._note(note)
        for offset, piece in u.pieces:
            if u.stop is not None or u.ended:
                return
            try:
                job = await self._queue(client, u, piece, offset, fields)
            except RequestFailed as exc:
                if exc.code != protocol.Code.BAD_OPTION.value or not (
                    "options" in fields or "voice" in fields
                ):
                    raise
                # A voice or option the daemon's engine does not take (the config was
                # written for another engine): speak with the daemon's defaults.
                log.warning("ttsd refused the voice or options (%s): using its defaults", exc)
                fields = {k: v for k, v in fields.items() if k not in ("options", "voice")}
                job = await self._queue(client, u, piece, offset, fields)
            if job is not None:
                log.debug("message %d: job %d queued", u.number, job)

    async def _queue(
        self, client: Client, u: Utterance, piece: str, offset: int, fields: dict[str, Any]
    ) -> int | None:
        """Queue one job of ``u``; None if it was stopped before the daemon took it."""
        deadline = time.monotonic() + RATE_RETRY_FOR
        self._claiming += 1
        try:
            while True:
                try:
                    reply = await client.speak(
                        piece, cancel_on_disconnect=True, format="text", **fields
                    )
                    break
                except RequestFailed as exc:
                    # A burst of messages (a key held down) can exceed the daemon's
                    # request rate for a moment: wait for the next token.
                    if exc.code != protocol.Code.RATE_LIMITED.value:
                        raise
                    if u.stop is not None or u.ended:
                        log.debug("message %d was stopped before ttsd took it", u.number)
                        return None
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.02)
        finally:
            self._claiming -= 1
        u.jobs[reply.job] = offset
        self._by_job[reply.job] = u
        for event in self._early.pop(reply.job, []):
            self._job_event(u, event)
        if not self._claiming:
            self._early.clear()
        if u.ended or u.stop is not None:
            await self._abort_jobs(u)
        return reply.job

    def _on_event(self, event: protocol.Message) -> None:
        job = event.get("job")
        if not isinstance(job, int):
            return
        u = self._by_job.get(job)
        if u is not None:
            self._job_event(u, event)
        elif self._claiming:
            self._early.setdefault(job, []).append(event)

    def _job_event(self, u: Utterance, event: protocol.Message) -> None:
        if u.ended:
            return
        job = event.get("job")
        match event:
            case protocol.Started():
                if not u.began:
                    log.debug(
                        "message %d: sound after %.1f ms",
                        u.number,
                        1000 * (time.monotonic() - u.received),
                    )
                self._begin(u)
            case protocol.Sentence(start=start):
                self._begin(u)
                self._marks_until(u, u.jobs[job] + start)
            case protocol.Finished():
                u.finished.add(job)
                if u.submitted and u.finished >= set(u.jobs):
                    self._end(u, "702 END")
            case protocol.Aborted(reason=reason):
                if u.stop is None:
                    log.info("ttsd aborted message %d (%s)", u.number, reason or "no reason")
                self._end(u, self._stop_event(u))
                self._spawn(self._abort_jobs(u))
            case protocol.JobError(code=code, message=message):
                log.error("ttsd failed message %d: %s: %s", u.number, code, message)
                self._end(u, "703 STOP")
                self._spawn(self._abort_jobs(u))

    def _on_lost(self) -> None:
        u = self.current
        if u is not None and not u.ended and u.jobs:
            log.error("message %d stopped: the connection to ttsd was lost", u.number)
            self._end(u, "703 STOP")

    @staticmethod
    def _stop_event(u: Utterance) -> str:
        return "704 PAUSE" if u.stop == "pause" else "703 STOP"

    def _begin(self, u: Utterance) -> None:
        if not u.began and not u.ended:
            u.began = True
            self.out.send("701 BEGIN")

    def _marks_until(self, u: Utterance, offset: int) -> None:
        """Report the marks at or before ``offset``: the audio has passed them."""
        while u.marks_sent < len(u.marks) and u.marks[u.marks_sent][0] <= offset:
            self.out.send(f"700-{u.marks[u.marks_sent][1]}", "700 INDEX MARK")
            u.marks_sent += 1

    def _end(self, u: Utterance, event: str) -> None:
        """Send the message's one final event (``BEGIN`` first if it never began)."""
        if u.ended:
            return
        self._begin(u)
        if event == "702 END":
            self._marks_until(u, len(u.text))
        u.ended = True
        self.out.send(event)
        if event != "702 END":
            log.debug(
                "message %d: %s %.1f ms after it was received",
                u.number,
                event,
                1000 * (time.monotonic() - u.received),
            )
        for job in u.jobs:
            self._by_job.pop(job, None)
        if self.current is u:
            self._schedule_idle()

    # --- Stopping ---------------------------------------------------------------------

    def _stop(self, kind: str) -> None:
        u = self.current
        if u is None or u.ended:
            return  # nothing playing: not an error (the protocol says so)
        if u.stop is None:
            u.stop = kind
        if u.jobs:
            self._spawn(self._abort_jobs(u))
        # Otherwise the job is still being queued: _queue aborts it on arrival, and
        # _play ends a message that had no job yet.

    async def _abort_jobs(self, u: Utterance) -> None:
        """Abort every job of ``u`` that has not ended (retried if rate-limited)."""
        client = self.link.open_client
        if client is None:
            return
        for job in [j for j in u.jobs if j not in u.finished]:
            deadline = time.monotonic() + RATE_RETRY_FOR
            while True:
                try:
                    await client.abort(job)
                    break
                except RequestFailed as exc:
                    if exc.code != protocol.Code.RATE_LIMITED.value or time.monotonic() > deadline:
                        log.warning("abort of job %d refused: %s", job, exc)
                        break
                    await asyncio.sleep(0.02)
                except ClientError as exc:
                    log.warning("abort of job %d failed: %s", job, exc)
                    return

    async def _quit(self) -> None:
        u = self.current
        if u is not None and not u.ended:
            u.stop = u.stop or "stop"
            await self._abort_jobs(u)

    async def _shutdown(self) -> None:
        self._cancel_idle()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.link.close()

    # --- Voices, logging --------------------------------------------------------------

    async def _list_voices(self, args: list[str]) -> None:
        voices = await self.link.list_voices(VOICES_TIMEOUT)
        if not voices:
            # Speech Dispatcher gives up on a module that lists no voice; the voices
            # the config names (or "default": ttsd's default voice) keep it usable
            # until the daemon answers.
            named = {v for _, _, v in self.config.voices}
            voices = sorted(named | {self.config.voice or "default"})
        rows = voice_lines(self.config, voices, *(args[:2]))
        if not rows:
            self.out.send("304 CANT LIST VOICES")
            return
        self.out.send(
            *(f"200-{n}\t{lang}\t{variant}" for n, lang, variant in rows), "200 OK VOICE LIST SENT"
        )

    def _set_log_level(self, raw: str) -> None:
        """Speech Dispatcher's log level (0-5) as a logging level; ``Debug 1`` in the
        module config keeps debugging on."""
        try:
            level = int(raw)
        except ValueError:
            return
        self.log_level = (
            logging.DEBUG
            if level >= 4
            else logging.INFO
            if level == 3
            else logging.WARNING
            if level == 2
            else logging.ERROR
        )
        if not self.config.debug:
            log.setLevel(self.log_level)

    def _debug(self, args: list[str]) -> None:
        if args[:1] == ["ON"] and len(args) >= 2:
            try:
                handler = logging.FileHandler(args[1])
            except OSError as exc:
                log.error("cannot open the debug file %s: %s", args[1], exc)
                self.out.send("303 CANT OPEN CUSTOM DEBUG FILE")
                return
            handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE))
            self._remove_debug_handler()
            self._debug_handler = handler
            log.addHandler(handler)
            log.setLevel(logging.DEBUG)
            self.out.send("200 OK DEBUGGING ON")
        elif args[:1] == ["OFF"]:
            self._remove_debug_handler()
            if not self.config.debug:
                log.setLevel(self.log_level)
            self.out.send("200 OK DEBUGGING OFF")
        else:
            self.out.send(BAD_SYNTAX)

    def _remove_debug_handler(self) -> None:
        if self._debug_handler is not None:
            log.removeHandler(self._debug_handler)
            self._debug_handler.close()
            self._debug_handler = None

    def _note(self, note: str) -> None:
        """Log ``note`` once per run (a setting the engine ignores, every message)."""
        if note not in self._noted:
            self._noted.add(note)
            log.info("%s", note)

    # --- Idle connection, tasks ----------------------------------------------------------

    def _schedule_idle(self) -> None:
        self._cancel_idle()
        if self.config.idle_disconnect > 0:
            loop = asyncio.get_running_loop()
            self._idle = loop.call_later(self.config.idle_disconnect, self._idle_close)

    def _cancel_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def _idle_close(self) -> None:
        self._idle = None
        if self.current is None or self.current.ended:
            self._spawn(self.link.close())

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("internal error", exc_info=task.exception())


# --- Entry point ----------------------------------------------------------------------

LOG_FORMAT = "%(asctime)s.%(msecs)03d sd_ttsd[%(process)d] %(levelname)s: %(message)s"
LOG_DATE = "%Y-%m-%d %H:%M:%S"


async def _serve(module: SpeechdModule, config_error: str | None) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return await module.run(reader, config_error)


def main(argv: list[str] | None = None) -> int:
    """Run the module: ``sd_ttsd [CONFIG_FILE]`` with the protocol on stdin/stdout."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help", "--version"):
        print(
            f"sd_ttsd {__version__}: Speech Dispatcher output module for ttsd.\n"
            'Speech Dispatcher starts it (AddModule "ttsd" "sd_ttsd" "ttsd.conf");'
            " see docs/speechd.md."
        )
        return 0
    # The protocol owns stdout: keep a private copy of it and point fd 1 at stderr, so
    # a stray print in any library lands in the log instead of corrupting the protocol.
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE))
    log.addHandler(handler)
    log.propagate = False
    config_error = None
    try:
        config = ModuleConfig.load(args[0] if args else None)
    except ConfigError as exc:
        config, config_error = ModuleConfig(), str(exc)
    log.setLevel(logging.DEBUG if config.debug else logging.INFO)
    module = SpeechdModule(config, Output(protocol_fd))
    try:
        return asyncio.run(_serve(module, config_error))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
