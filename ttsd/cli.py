"""The ``ttsd`` command line: ``ttsd serve`` runs the daemon in the foreground."""

from __future__ import annotations

import argparse

from ttsd import __version__

EXIT_USAGE = 2


def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", help="TCP port (default 11500)")
    serve.add_argument("--engine", help="auto, piper, chatterbox or tone")
    serve.add_argument("--voice", help="default voice of the engine")
    serve.add_argument("--sink", help="PulseAudio sink to play on")
    serve.add_argument("--idle-exit", help="seconds idle before exiting (0: never)")
    serve.add_argument("--log-level", help="debug, info, warning or error")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttsd", description="Local text-to-speech daemon.")
    parser.add_argument("--version", action="version", version=f"ttsd {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_serve(subparsers)
    return parser


def serve(args: argparse.Namespace) -> int:
    from ttsd.server import daemon

    overrides = {
        key: getattr(args, key)
        for key in ("host", "port", "engine", "voice", "sink", "idle_exit", "log_level")
    }
    return daemon.main(overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return EXIT_USAGE
