"""A real headless Chromium page on another origin cannot make the daemon speak.

Needs Debian's ``chromium`` (/usr/bin/chromium). The page is served by a local HTTP
server; its script opens ``ws://127.0.0.1:PORT``, sends ``speak`` and posts what
happened back to that server.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TONE
from tests.support.browser import chromium
from tests.support.expected import played_start as played
from tests.support.pulse import Recorder
from ttsd.engines.tone import ToneEngine

PAGE = """<!doctype html><title>not ttsd</title><script>
function report(text) { fetch("/result", {method: "POST", body: text}); }
const ws = new WebSocket("ws://127.0.0.1:%(port)d");
ws.onopen = () => ws.send(JSON.stringify(
  {type: "speak", id: "from-page", text: "Spoken by a web page.", options: {frequency: 700}}));
ws.onmessage = (e) => { if (JSON.parse(e.data).id === "from-page") report("reply " + e.data); };
ws.onclose = (e) => report("closed " + e.code);
</script>"""


class PageServer:
    """Serves the attack page and collects what its script reports."""

    def __init__(self) -> None:
        self.results: list[str] = []
        self.got_result = threading.Event()
        self.page = b""
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                self.wfile.write(owner.page)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                owner.results.append(body)
                owner.got_result.set()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def serve_page_for(self, daemon_port: int) -> str:
        """Serve the page that talks to the daemon on ``daemon_port``; return its URL."""
        self.page = (PAGE % {"port": daemon_port}).encode()
        return f"{self.origin}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def run_page(url: str, profile: Path, server: PageServer, timeout: float = 40.0) -> list[str]:
    """Open ``url`` in headless Chromium until the page reports; return its reports."""
    with chromium(url, profile):
        assert server.got_result.wait(timeout), "the page reported nothing"
        server.got_result.clear()
        # a refused socket reports once; a served one reports the reply, then is left open
        return list(server.results)


@pytest.fixture
def page_server() -> Iterator[PageServer]:
    server = PageServer()
    yield server
    server.close()


def test_a_page_on_another_origin_cannot_speak(
    start_daemon, recorder: Recorder, page_server: PageServer, tmp_path: Path
) -> None:
    daemon = start_daemon()
    url = page_server.serve_page_for(daemon.port)
    results = run_page(url, tmp_path / "profile", page_server)
    assert results == ["closed 1006"]  # the handshake failed: no WebSocket was opened
    assert f"origin '{page_server.origin}' is not allowed" in daemon.log
    assert "HTTP 403" in daemon.log
    assert "queued" not in daemon.log
    samples = recorder.samples()
    assert not (np.abs(samples.astype(np.int32)) > 300).any(), "something was played"


def test_an_allowlisted_origin_can_speak(
    start_daemon, recorder: Recorder, page_server: PageServer, tmp_path: Path
) -> None:
    # The control: the same page, with its origin allowed, is heard.
    daemon = start_daemon({**TONE, "allowed_origins": page_server.origin})
    url = page_server.serve_page_for(daemon.port)
    results = run_page(url, tmp_path / "profile", page_server)
    assert len(results) == 1 and results[0].startswith("reply "), results
    assert '"type":"queued"' in results[0]
    recorder.wait_for_sound(timeout=10)
    recorder.wait_for_silence(0.2)
    expected = ToneEngine(ms_per_char=20.0).synthesize(
        "Spoken by a web page.", None, {"frequency": 700}
    )
    assert played(recorder.samples(), expected, recorder.rate)
