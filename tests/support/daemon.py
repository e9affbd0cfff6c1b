"""Run the real daemon (``python -m ttsd serve``) as a child process for tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.pulse import PulseServer

_LISTENING = re.compile(r"listening on port (\d+)")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    """Write a config.toml; nested dicts become tables."""
    lines = [f"{k} = {toml_value(v)}" for k, v in settings.items() if not isinstance(v, dict)]
    for table, values in settings.items():
        if isinstance(values, dict):
            lines.append(f"[{table}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon:
    """A ttsd daemon child process with its own config and home directory."""

    def __init__(
        self,
        home: Path,
        pulse: PulseServer | None,
        settings: dict[str, Any],
        env: dict[str, str] | None = None,
    ) -> None:
        self.home = home
        self.pulse = pulse
        self.settings = settings
        self.extra_env = env or {}
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    def env(self) -> dict[str, str]:
        self.home.mkdir(parents=True, exist_ok=True)
        config = write_config(self.home / "config.toml", {"port": 0, **self.settings})
        env = {
            **os.environ,
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / "config"),
            "XDG_CACHE_HOME": str(self.home / "cache"),
            "XDG_RUNTIME_DIR": str(self.home),
            "TTS_CONFIG": str(config),
            **(self.pulse.env() if self.pulse else {"PULSE_SERVER": "unix:/nonexistent"}),
            **self.extra_env,
        }
        for name in ("TTS_PORT", "TTS_HOST", "TTS_ENGINE", "TTS_VOICE", "NOTIFY_SOCKET"):
            if name not in self.extra_env:
                env.pop(name, None)
        return env

    def start(self, timeout: float = 30.0, args: tuple[str, ...] = ()) -> Daemon:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ttsd", "serve", *args],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := _LISTENING.search(line):
                    self.port = int(match.group(1))
                    return self
            if self.process.poll() is not None:
                self._reader.join(2)
                raise RuntimeError(f"daemon exited {self.process.returncode}:\n{self.log}")
            time.sleep(0.02)
        raise RuntimeError(f"daemon did not listen within {timeout} s:\n{self.log}")

    def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def wait(self, timeout: float = 15.0) -> int:
        assert self.process is not None
        code = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(5)
        return code

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
