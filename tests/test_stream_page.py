"""examples/stream.html in headless Chromium: streamed synthesis played with Web Audio.

The page and its script are served from a local origin that the daemon allows; the
page connects to the daemon's WebSocket, asks for a streamed ``synthesize`` and
schedules each binary frame on an AudioContext as it arrives, then posts what it
received and, later, that the context played it all.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.conftest import TONE
from tests.support.browser import CHROMIUM, chromium
from tests.support.expected import tone
from ttsd.scheduler.chunking import split_text

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs chromium")

TEXT = "A web page plays this. It arrives in pieces. Each is scheduled as it comes."


class ExampleServer:
    """Serves examples/ over HTTP and collects the JSON reports the page posts."""

    def __init__(self) -> None:
        self.reports: list[dict] = []
        self.reported = threading.Condition()
        owner = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(EXAMPLES), **kwargs)  # type: ignore[arg-type]

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with owner.reported:
                    owner.reports.append(json.loads(body))
                    owner.reported.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        Handler.extensions_map = {**Handler.extensions_map, ".js": "text/javascript"}
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, kind: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self.reported:
            while True:
                for report in self.reports:
                    if report["kind"] in (kind, "error"):
                        return report
                left = deadline - time.monotonic()
                assert left > 0, f"no {kind!r} report; got {self.reports}"
                self.reported.wait(left)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def examples() -> Iterator[ExampleServer]:
    server = ExampleServer()
    yield server
    server.close()


def test_the_page_plays_streamed_frames_with_web_audio(
    start_daemon, examples: ExampleServer, tmp_path: Path
) -> None:
    daemon = start_daemon({**TONE, "allowed_origins": examples.origin})
    query = urlencode({"port": daemon.port, "text": TEXT, "autoplay": 1, "report": "/report"})
    with chromium(
        f"{examples.origin}/stream.html?{query}",
        tmp_path / "profile",
        ["--autoplay-policy=no-user-gesture-required"],
    ):
        received = examples.wait_for("received", timeout=40)
        assert received["kind"] == "received", received
        expected = tone(TEXT)
        assert received["outcome"] == "finished"
        assert received["sampleRate"] == 22050
        # One binary frame per piece the engine made (the tone engine: one per chunk).
        assert received["frames"] == len(split_text(TEXT, 300, 120))
        assert received["samples"] == received["announcedSamples"] == len(expected)
        # Every frame was handed to Web Audio, on a running context.
        assert received["scheduled"] == received["frames"]
        assert received["scheduledSamples"] == len(expected)
        assert received["contextState"] == "running"
        played = examples.wait_for("played", timeout=20)
        assert played["ended"] == received["frames"]
        assert played["contextTime"] >= len(expected) / 22050
    assert "synthesizing" in daemon.log
    assert "HTTP 403" not in daemon.log
