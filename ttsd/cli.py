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
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ttsd import __version__
from ttsd.client import TERMINAL_EVENTS, Client, ClientError, ConnectionLost, RequestFailed

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
    _client_command(subparsers, "terminate", "shut the daemon down")
    voices = _client_command(subparsers, "voices", "list the engine's voices")
    voices.add_argument("--json", action="store_true", help="print a JSON array")

    serve = subparsers.add_parser("serve", help="run the daemon in the foreground")
    # The daemon's flags go through the config's own checks, so a bad value gets the
    # same one-line error whether it comes from a flag, the environment or the file.
    serve.add_argument("--host", default=argparse.SUPPRESS, help="address to bind")
    serve.add_argument("--port", default=argparse.SUPPRESS, help="TCP port (default 11500)")
    serve.add_argument("--engine", help="auto, piper, chatterbox or tone")
    serve.add_argument("--voice", help="default voice of the engine")
    serve.add_argument("--sink", help="PulseAudio sink to play on")
    serve.add_argument("--idle-exit", help="seconds idle before exiting (0: never)")
    serve.add_argument("--log-level", help="debug, info, warning or error")
    return parser


# --- Helpers --------------------------------------------------------------------------


def _error(message: str) -> None:
    print(f"ttsd: {message}", file=sys.stderr, flush=True)


class Progress:
    """A one-line status on stderr, redrawn in place; silent unless stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self._shown = False

    def show(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(f"\r\x1b[K{text}")
            sys.stderr.flush()
            self._shown = True

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


def _read_text(words: list[str]) -> str:
    if words == ["-"]:
        text = sys.stdin.read()
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
    text = _read_text(args.text)
    options = dict(args.option)
    fields: dict[str, Any] = {}
    if args.voice:
        fields["voice"] = args.voice
    if options:
        fields["options"] = options
    if args.output is not None:
        if args.no_wait:
            raise UsageError("--output and --no-wait do not go together")
        if args.volume is not None:
            raise UsageError("--volume applies to playback, not to --output")
        return await _say_to_file(args, text, fields)
    if args.volume is not None:
        fields["volume"] = args.volume

    async with await _connect(args) as client:
        reply = await client.speak(text, **fields)
        job = reply["job"]
        if args.no_wait:
            print(job, flush=True)
            return EXIT_OK
        progress = Progress()
        position = reply.get("position", 1)
        progress.show(f"job {job} queued" + (f", position {position}" if position > 1 else ""))
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
    if end["type"] == "finished":
        progress.done(f"job {job} finished ({end.get('audio_seconds', 0):.1f} s of audio)")
        return EXIT_OK
    progress.done()
    if end["type"] == "aborted":
        _error(f"job {job} aborted ({end.get('reason', 'no reason given')})")
        return EXIT_ABORTED
    _error(f"job {job} failed: {end.get('code')}: {end.get('message')}")
    return EXIT_ERROR


async def _follow(client: Client, job: int, progress: Progress) -> dict[str, Any]:
    """Show ``job``'s progress until its terminal event, which is returned."""
    while True:
        event = await client.next_event()
        if event.get("job") != job:
            continue
        if event["type"] == "started":
            progress.show(f"job {job} speaking…")
        elif event["type"] in TERMINAL_EVENTS:
            return event


async def _say_to_file(args: argparse.Namespace, text: str, fields: dict[str, Any]) -> int:
    async with await _connect(args) as client:
        progress = Progress()
        progress.show("synthesizing…")
        try:
            audio = await _interruptible(client.synthesize(text, **fields))
        except Interrupted:
            progress.done()
            _error("interrupted")
            return EXIT_INTERRUPTED
    if args.output == "-":
        audio.write_wav(sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        try:
            audio.write_wav(args.output)
        except OSError as exc:
            progress.done()
            _error(f"cannot write {args.output}: {exc.strerror or exc}")
            return EXIT_ERROR
    progress.done(f"wrote {audio.seconds:.1f} s of audio at {audio.sample_rate} Hz")
    return EXIT_OK


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


def _describe_job(job: dict[str, Any]) -> str:
    made = f"{job.get('generated', '?')}/{job.get('chunks', '?')} chunks made"
    return f"job {job.get('job')} ({job.get('state')}, {made}): {job.get('text', '')!r}"


def format_status(status: dict[str, Any]) -> str:
    """The ``status`` reply as a few human-readable lines."""
    engine = status.get("engine", {})
    audio = status.get("audio", {})
    rate = f", {engine['sample_rate']} Hz" if "sample_rate" in engine else ""
    lines = [
        f"ttsd {status.get('version', '?')}, {status.get('clients', 0)} client(s) connected",
        f"engine:  {engine.get('name', '?')} ({engine.get('state', '?')}{rate})"
        + (f": {engine['error']}" if engine.get("error") else ""),
        f"audio:   {audio.get('state', '?')}, sink {audio.get('sink') or 'default'}"
        + (f": {audio['error']}" if audio.get("error") else ""),
    ]
    current = status.get("current")
    lines.append("playing: " + (_describe_job(current) if current else "nothing"))
    queue = status.get("queue") or []
    lines.append(f"queued:  {len(queue)} job(s)")
    lines += [f"  {job['position']}. {_describe_job(job)}" for job in queue]
    return "\n".join(lines)


async def cmd_status(args: argparse.Namespace) -> int:
    async with await _connect(args) as client:
        status = await client.status()
    status.pop("id", None)
    print(json.dumps(status, ensure_ascii=False) if args.json else format_status(status))
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
                print(json.dumps(event, ensure_ascii=False), flush=True)

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
    from ttsd.server import daemon

    overrides = {
        key: getattr(args, key, None)
        for key in ("host", "port", "engine", "voice", "sink", "idle_exit", "log_level")
    }
    return daemon.main(overrides)


COMMANDS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "say": cmd_say,
    "abort": cmd_abort,
    "status": cmd_status,
    "voices": cmd_voices,
    "events": cmd_events,
    "terminate": cmd_terminate,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return cmd_serve(args)
    try:
        return asyncio.run(COMMANDS[args.command](args))
    except UsageError as exc:
        parser.print_usage(sys.stderr)
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
