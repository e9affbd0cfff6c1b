"""The ``ttsd`` command line: the daemon (``serve``) and a client for everything else.

Exit codes: 0 success (``say``: the job finished), 1 error (daemon unreachable, error
reply, the job failed), 2 usage, 3 the job was aborted, 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ttsd import __version__, protocol
from ttsd.client import Client, ClientError, ConnectionLost, RequestFailed

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_INTERRUPTED = 130

T = TypeVar("T")


class UsageError(Exception):
    """Bad arguments found after parsing; exit status 2."""


class Interrupted(Exception):
    """Ctrl-C arrived while waiting."""


# --- Arguments ------------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {port}")
    return port


def _volume(text: str) -> float:
    try:
        volume = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= volume <= 1.0:
        raise argparse.ArgumentTypeError(f"volume must be between 0.0 and 1.0, got {volume}")
    return volume


def _option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``; VALUE is read as JSON when it parses (``0.5``, ``true``), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def _add_address(parser: argparse.ArgumentParser, *, top: bool) -> None:
    # On subcommands the flags are SUPPRESSed so they only override when given:
    # argparse copies a subparser's defaults over the global values otherwise.
    default = None if top else argparse.SUPPRESS
    host_env = "" if not top else " (default: $TTS_HOST or 127.0.0.1)"
    port_env = "" if not top else " (default: $TTS_PORT or 11500)"
    parser.add_argument("--host", default=default, help=f"daemon address{host_env}")
    parser.add_argument("--port", type=_port, default=default, help=f"daemon port{port_env}")


def _client_command(
    subparsers: argparse._SubParsersAction, name: str, help_text: str
) -> argparse.ArgumentParser:
    command = subparsers.add_parser(name, help=help_text, description=help_text)
    _add_address(command, top=False)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ttsd",
        description="Local text-to-speech daemon and its command-line client.",
        epilog="Exit codes: 0 ok, 1 error, 2 usage, 3 job aborted, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"ttsd {__version__}")
    _add_address(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    say = _client_command(subparsers, "say", "speak text (waits until it has been spoken)")
    say.add_argument("text", nargs="*", metavar="TEXT", help="words to speak; '-' reads stdin")
    say.add_argument("--voice", help="voice name (see `ttsd voices`)")
    say.add_argument(
        "-o",
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="engine option, repeatable (e.g. -o length_scale=1.2)",
    )
    say.add_argument("--volume", type=_volume, help="playback volume 0.0-1.0")
    say.add_argument(
        "--priority",
        choices=protocol.PRIORITIES,
        help="Speech Dispatcher's priorities (default: message); see docs/protocol.md",
    )
    say.add_argument(
        "--resume",
        action="store_true",
        help="with --priority important: the job it interrupts resumes afterwards",
    )
    say.add_argument("--key", help="replace a waiting job with the same key")
    say.add_argument(
        "--format",
        choices=protocol.FORMATS,
        help="how to read the text: auto (default: detects markdown), text, markdown",
    )
    say.add_argument(
        "--no-wait", action="store_true", help="return once queued and print the job id"
    )
    say.add_argument(
        "--output", metavar="FILE.wav", help="write the speech to a WAV file ('-': stdout)"
    )

    abort = _client_command(subparsers, "abort", "stop the playing job, one job, or all jobs")
    abort.add_argument("job", nargs="?", type=int, metavar="JOB", help="job id to abort")
    abort.add_argument("--all", action="store_true", help="abort the playing and queued jobs")

    status = _client_command(subparsers, "status", "show the engine, the playing job and queue")
    status.add_argument("--json", action="store_true", help="print the raw status reply")

    _client_command(subparsers, "events", "print every event as a JSON line until Ctrl-C")
    _client_command(subparsers, "pause", "stop the sound now; jobs wait until `ttsd resume`")
    _client_command(subparsers, "resume", "continue speaking where `ttsd pause` stopped")
    _client_command(subparsers, "terminate", "shut the daemon down")
    voices = _client_command(subparsers, "voices", "list the engine's voices")
    voices.add_argument("--json", action="store_true", help="print a JSON array")

    serve = subparsers.add_parser("serve", help="run the daemon in the foreground")
    # The daemon's flags go through the config's own checks, so a bad value gets the
    # same one-line error whether it comes from a flag, the environment or the file.
    serve.add_argument("--host", default=argparse.SUPPRESS, help="address to bind")
    serve.add_argument("--port", default=argparse.SUPPRESS, help="TCP port (default 11500)")
    serve.add_argument("--engine", help="auto, piper, chatterbox, tone or remote")
    serve.add_argument("--voice", help="default voice of the engine")
    serve.add_argument("--sink", help="PulseAudio sink to play on")
    serve.add_argument("--idle-exit", help="seconds idle before exiting (0: never)")
    serve.add_argument(
        "--allowed-origins",
        metavar="ORIGINS",
        help="comma-separated browser origins allowed to connect (https://app.example:8443)",
    )
    serve.add_argument("--log-level", help="debug, info, warning or error")
    return parser


# --- Helpers --------------------------------------------------------------------------


def _error(message: str) -> None:
    print(f"ttsd: {message}", file=sys.stderr, flush=True)


class Progress:
    """A one-line status on stderr, redrawn in place; silent unless stderr is a terminal.

    While a job speaks it shows a bar of the characters spoken so far and the start of
    the sentence being spoken, cut to the terminal's width.
    """

    def __init__(self, text: str = "") -> None:
        self.enabled = sys.stderr.isatty()
        self.text = text
        self._shown = False

    def show(self, text: str) -> None:
        if self.enabled:
            width = shutil.get_terminal_size((80, 24)).columns - 1
            line = text if len(text) <= width else text[: max(0, width - 1)] + "…"
            sys.stderr.write(f"\r\x1b[K{line}")
            sys.stderr.flush()
            self._shown = True

    def sentence(self, start: int, end: int) -> None:
        """The sentence ``text[start:end]`` started playing."""
        total = max(1, len(self.text))
        filled = round(20 * end / total)
        said = " ".join(self.text[start:end].split())
        self.show(f"[{'#' * filled}{'.' * (20 - filled)}] {100 * end // total:3d}% {said}")

    def done(self, text: str | None = None) -> None:
        if text is not None:
            self.show(text)
        if self._shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._shown = False


async def _interruptible(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable``; raise :class:`Interrupted` (cancelling it) on Ctrl-C."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    task = asyncio.ensure_future(awaitable)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        waiter.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise Interrupted


def _read_stdin() -> str:
    """Standard input as text; bytes that are not valid in the locale's encoding are
    replaced (with U+FFFD), with a warning, instead of failing the request."""
    data = sys.stdin.buffer.read()
    encoding = sys.stdin.encoding or "utf-8"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        _error(
            f"warning: stdin is not valid {encoding} (byte {exc.start}: "
            f"{data[exc.start : exc.start + 1]!r}); such bytes were replaced"
        )
        return data.decode(encoding, errors="replace")


def _read_text(words: list[str]) -> str:
    if words == ["-"]:
        text = _read_stdin()
        if not text.strip():
            raise UsageError("nothing to say: stdin was empty")
        return text
    if not words:
        raise UsageError("nothing to say: give TEXT, or '-' to read stdin")
    if "-" in words:
        raise UsageError("'-' (read stdin) must be the only TEXT argument")
    return " ".join(words)


# --- Commands -------------------------------------------------------------------------


async def _connect(args: argparse.Namespace) -> Client:
    return await Client.connect(args.host, args.port)


async def cmd_say(args: argparse.Namespace) -> int:
    if args.resume and args.priority != "important":
        raise UsageError("--resume goes with --priority important")
    text = _read_text(args.text)
    options = dict(args.option)
    fields: dict[str, Any] = {}
    if args.voice:
        fields["voice"] = args.voice
    if options:
        fields["options"] = options
    if args.format:
        fields["format"] = args.format
    if args.output is not None:
        if args.no_wait:
            raise UsageError("--output and --no-wait do not go together")
        for flag, value in (
            ("--volume", args.volume),
            ("--priority", args.priority),
            ("--key", args.key),
        ):
            if value is not None:
                raise UsageError(f"{flag} applies to playback, not to --output")
        return await _say_to_file(args, text, fields)
    if args.volume is not None:
        fields["volume"] = args.volume
    if args.priority:
        fields["priority"] = args.priority
    if args.resume:
        fields["resume"] = True
    if args.key:
        fields["key"] = args.key

    async with await _connect(args) as client:
        reply = await client.speak(text, **fields)
        job = reply.job
        if args.no_wait:
            print(job, flush=True)
            return EXIT_OK
        progress = Progress(text)
        progress.show(
            f"job {job} queued" + (f", position {reply.position}" if reply.position > 1 else "")
        )
        try:
            end = await _interruptible(_follow(client, job, progress))
        except Interrupted:
            progress.done()
            with contextlib.suppress(ClientError):
                await client.abort(job)
            _error(f"interrupted: job {job} aborted")
            return EXIT_INTERRUPTED
        except ConnectionLost as exc:
            progress.done()
            _error(f"the daemon went away before job {job} ended ({exc})")
            return EXIT_ERROR
    if isinstance(end, protocol.Finished):
        progress.done(f"job {job} finished ({end.audio_seconds:.1f} s of audio)")
        return EXIT_OK
    progress.done()
    if isinstance(end, protocol.Aborted):
        by = f" by job {end.by}" if end.by else ""
        _error(f"job {job} aborted ({end.reason or 'no reason given'}{by})")
        return EXIT_ABORTED
    assert isinstance(end, protocol.JobError)
    _error(f"job {job} failed: {end.code}: {end.message}")
    return EXIT_ERROR


async def _follow(
    client: Client, job: int, progress: Progress
) -> protocol.Finished | protocol.Aborted | protocol.JobError:
    """Show ``job``'s progress until its terminal event, which is returned."""
    while True:
        event = await client.next_event()
        if event.get("job") != job:
            continue
        match event:
            case protocol.Started():
                progress.show(f"job {job} speaking…")
            case protocol.Sentence(start=start, end=end):
                progress.sentence(start, end)
            case protocol.Postponed(by=by):
                progress.show(f"job {job} postponed by job {by}; it will resume")
            case protocol.Paused():
                progress.show(f"job {job} paused (`ttsd resume` continues)")
            case protocol.Finished() | protocol.Aborted() | protocol.JobError():
                return event


async def _say_to_file(args: argparse.Namespace, text: str, fields: dict[str, Any]) -> int:
    """Stream the speech into a WAV file as it is made (stdout with '-')."""
    target: Any = None
    try:
        if args.output != "-":
            try:
                target = open(args.output, "wb")  # noqa: SIM115 - closed below
            except OSError as exc:
                _error(f"cannot write {args.output}: {exc.strerror or exc}")
                return EXIT_ERROR
        else:
            target = sys.stdout.buffer
        async with await _connect(args) as client:
            progress = Progress()
            progress.show("synthesizing…")
            try:
                samples, rate = await _interruptible(_stream_to(client, text, fields, target))
            except Interrupted:
                progress.done()
                _error("interrupted")
                return EXIT_INTERRUPTED
            except OSError as exc:
                progress.done()
                _error(f"cannot write {args.output}: {exc.strerror or exc}")
                return EXIT_ERROR
        progress.done(f"wrote {samples / rate:.1f} s of audio at {rate} Hz")
        return EXIT_OK
    finally:
        if target is not None and target is not sys.stdout.buffer:
            target.close()


async def _stream_to(
    client: Client, text: str, fields: dict[str, Any], target: Any
) -> tuple[int, int]:
    """Write a WAV header then the PCM as it comes; fix the header's sizes at the end
    when the target can seek (a pipe gets a header that says "to the end")."""
    stream = await client.stream_audio(text, **fields)
    rate = stream.sample_rate
    target.write(wav_header(rate, None))
    samples = 0
    async for pcm in stream:
        target.write(pcm)
        samples += len(pcm) // 2
    target.flush()
    if target.seekable():
        target.seek(0)
        target.write(wav_header(rate, samples))
        target.flush()
    return samples, rate


def wav_header(rate: int, samples: int | None) -> bytes:
    """A 44-byte header of a mono 16-bit PCM WAV file of ``samples`` samples (None: of
    unknown length, with the sizes set to the maximum, as streaming writers do)."""
    data = 0xFFFFFFFF - 36 if samples is None else samples * 2
    return b"".join(
        [
            b"RIFF",
            (36 + data).to_bytes(4, "little"),
            b"WAVEfmt ",
            (16).to_bytes(4, "little"),
            (1).to_bytes(2, "little"),  # PCM
            (1).to_bytes(2, "little"),  # mono
            rate.to_bytes(4, "little"),
            (rate * 2).to_bytes(4, "little"),
            (2).to_bytes(2, "little"),
            (16).to_bytes(2, "little"),
            b"data",
            data.to_bytes(4, "little"),
        ]
    )


async def cmd_abort(args: argparse.Namespace) -> int:
    if args.all and args.job is not None:
        raise UsageError("give a JOB or --all, not both")
    async with await _connect(args) as client:
        if args.all:
            aborted = await client.abort_all()
        elif args.job is not None:
            aborted = await client.abort(args.job)
        else:
            aborted = await client.abort_current()
    for job in aborted:
        print(job)
    if not aborted:
        _error(f"job {args.job} had already ended" if args.job else "nothing was playing")
    return EXIT_OK


async def cmd_pause(args: argparse.Namespace) -> int:
    async with await _connect(args) as client:
        reply = await client.pause()
    _error(f"paused (job {reply.job})" if reply.job else "paused (nothing was playing)")
    return EXIT_OK


async def cmd_resume(args: argparse.Namespace) -> int:
    async with await _connect(args) as client:
        reply = await client.resume()
    _error(f"resumed (job {reply.job})" if reply.job else "resumed")
    return EXIT_OK


def _describe_job(job: dict[str, Any]) -> str:
    made = f"{job.get('generated', '?')}/{job.get('chunks', '?')} sentences made"
    who = job.get("client", "?")
    return f"job {job.get('job')} ({job.get('state')}, {made}, from {who}): {job.get('text', '')!r}"


def format_status(status: protocol.StatusReply) -> str:
    """The ``status`` reply as a few human-readable lines."""
    engine = status.engine
    audio = status.audio
    rate = f", {engine['sample_rate']} Hz" if "sample_rate" in engine else ""
    lines = [
        f"ttsd {status.version or '?'}, {status.clients} client(s) connected",
        f"engine:  {engine.get('name', '?')} ({engine.get('state', '?')}{rate})"
        + (f": {engine['error']}" if engine.get("error") else ""),
        f"audio:   {audio.get('state', '?')}"
        + (f": {audio['error']}" if audio.get("error") else ""),
    ]
    current = status.current
    state = "paused:  " if status.paused else "playing: "
    lines.append(state + (_describe_job(current) if current else "nothing"))
    lines.append(f"queued:  {len(status.queue)} job(s)")
    lines += [f"  {job['position']}. {_describe_job(job)}" for job in status.queue]
    if status.synthesizing:
        lines.append(f"synthesizing: {len(status.synthesizing)} request(s)")
    return "\n".join(lines)


async def cmd_status(args: argparse.Namespace) -> int:
    async with await _connect(args) as client:
        status = await client.status()
    if args.json:
        data = status.to_json()
        data.pop("id", None)
        print(json.dumps(data, ensure_ascii=False))
    else:
        print(format_status(status))
    return EXIT_OK


async def cmd_voices(args: argparse.Namespace) -> int:
    async with await _connect(args) as client:
        voices = await client.voices()
    print(json.dumps(voices) if args.json else "\n".join(voices))
    return EXIT_OK


async def cmd_events(args: argparse.Namespace) -> int:
    async with await _connect(args) as client:

        async def pump() -> None:
            async for event in client.events():
                print(json.dumps(event.to_json(), ensure_ascii=False), flush=True)

        try:
            await _interruptible(pump())
        except Interrupted:
            return EXIT_OK
    if client.close_code in (1000, 1001):
        return EXIT_OK
    _error(f"the connection closed ({client.close_code} {client.close_reason})".rstrip())
    return EXIT_ERROR


async def cmd_terminate(args: argparse.Namespace) -> int:
    client = await _connect(args)
    try:
        code = await client.terminate(timeout=30)
    finally:
        await client.close()
    if code not in (1000, 1001):
        _error(f"the daemon closed the connection with code {code}")
        return EXIT_ERROR
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from ttsd import daemon

    overrides = {
        key: getattr(args, key, None)
        for key in (
            "host",
            "port",
            "engine",
            "voice",
            "sink",
            "idle_exit",
            "log_level",
            "allowed_origins",
        )
    }
    return daemon.main(overrides)


COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "say": cmd_say,
    "abort": cmd_abort,
    "status": cmd_status,
    "voices": cmd_voices,
    "events": cmd_events,
    "terminate": cmd_terminate,
    "pause": cmd_pause,
    "resume": cmd_resume,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except UsageError as exc:
        # The usage of the subcommand whose options conflict, not the top-level one.
        subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        subparsers.choices[args.command].print_usage(sys.stderr)
        _error(str(exc))
        return EXIT_USAGE
    except RequestFailed as exc:
        _error(f"the daemon refused: {exc.code}: {exc.message}")
        return EXIT_ERROR
    except ClientError as exc:
        _error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`ttsd events | head`): not an error of ours.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
