"""Baseline (a): the same Piper engine without streaming, as a script would use it.

A long-lived process (so the voice is warm) that reads one JSON command per line on
stdin: ``{"speak": TEXT, "options": {...}}`` synthesizes the whole text, then starts a
plain ``pacat`` and writes it all; ``{"abort": true}`` kills the playing pacat.
Requests play one after another. It prints ``{"done": N}`` (or ``{"aborted": N}``)
per request and ``{"ready": true}`` once the voice is loaded.

Run by ``bench.run``; ``python -m bench.nonstreaming`` by hand also works.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from typing import Any

from ttsd.engines.piper import PiperEngine

PACAT = ["pacat", "--playback", "--raw", "--format=s16le", "--channels=1"]


def say(message: dict[str, Any]) -> None:
    print(json.dumps(message), flush=True)


class Player:
    def __init__(self, engine: PiperEngine) -> None:
        self.engine = engine
        self.requests: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()
        self.pacat: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        number = 0
        while (request := self.requests.get()) is not None:
            number += 1
            started = time.perf_counter()
            pcm = self.engine.synthesize(request["speak"], None, request.get("options", {}))
            synth = time.perf_counter() - started
            with self.lock:
                self.pacat = subprocess.Popen(
                    [*PACAT, f"--rate={self.engine.sample_rate}"], stdin=subprocess.PIPE
                )
            assert self.pacat.stdin is not None
            try:
                self.pacat.stdin.write(pcm.tobytes())
                self.pacat.stdin.close()
            except BrokenPipeError:
                pass
            code = self.pacat.wait()
            outcome = "done" if code == 0 else "aborted"
            say({outcome: number, "synth_s": round(synth, 4)})

    def abort(self) -> None:
        with self.lock:
            if self.pacat is not None and self.pacat.poll() is None:
                self.pacat.kill()


def main() -> None:
    engine = PiperEngine()
    engine.load()
    engine.synthesize("Warm up.", None, {})
    player = Player(engine)
    say({"ready": True})
    for line in sys.stdin:
        command = json.loads(line)
        if "speak" in command:
            player.requests.put(command)
        elif command.get("abort"):
            player.abort()
    player.requests.put(None)
    player.thread.join()


if __name__ == "__main__":
    main()
