"""A private Speech Dispatcher with the ttsd module, ``spd-say`` against it, an SSIP
client for what ``spd-say`` cannot send, and the module alone on pipes.

The server runs with its own config directory, socket, log directory and pid file
(``-C``/``-S``/``-L``/``-P``), no D-Bus and no autospawn. Its config loads one
module, ``ttsd``, through a small wrapper that runs ``python -m
ttsd.bridges.speechd`` from this checkout (the console script ``sd_ttsd`` is the same
entry point once installed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nothing listens on (for a daemon started later, or never)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def speechd_available() -> bool:
    return bool(shutil.which("speech-dispatcher") and shutil.which("spd-say"))


def module_config(settings: dict[str, Any]) -> str:
    """``ttsd.conf`` text: ``{"TtsdPort": 1234, "TtsdOption": [("noise_scale", 0)]}``."""
    lines = []
    for name, value in settings.items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            words = item if isinstance(item, tuple) else (item,)
            lines.append(name + " " + " ".join(f'"{w}"' for w in words))
    return "\n".join(lines) + "\n"


def write_wrapper(path: Path) -> Path:
    """An executable that runs this checkout's module with the test's Python."""
    path.write_text(
        "#!/bin/sh\n"
        f'PYTHONPATH="{REPO}${{PYTHONPATH:+:$PYTHONPATH}}" '
        f'exec "{sys.executable}" -m ttsd.bridges.speechd "$@"\n'
    )
    path.chmod(0o755)
    return path


class SpeechDispatcher:
    """``speech-dispatcher`` as a child process, with the ttsd module as default."""

    def __init__(
        self,
        directory: Path,
        module: dict[str, Any] | None,
        *,
        home: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``module``: the settings of ``ttsd.conf`` in a config directory of its own;
        None: no config is written and the server reads ``home``'s user config (what
        ``install.sh --speechd`` set up), discovering its modules as it would."""
        self.directory = directory
        self.conf = directory / "conf"
        self.logs = directory / "log"
        self.socket = directory / "speechd.sock"
        self.module = module
        self.home = home or directory
        self.extra_env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("XDG_", "PULSE_SERVER", "TTS_"))  # ttsd plays, not speechd
        }
        env.update(
            SPEECHD_ADDRESS=f"unix_socket:{self.socket}",
            HOME=str(self.home),
            XDG_RUNTIME_DIR=str(self.directory),
            **self.extra_env,
        )
        return env

    def start(self, timeout: float = 30.0) -> SpeechDispatcher:
        self.logs.mkdir(parents=True, exist_ok=True)
        config: list[str] = []
        if self.module is not None:
            (self.conf / "modules").mkdir(parents=True, exist_ok=True)
            wrapper = write_wrapper(self.directory / "sd_ttsd")
            (self.conf / "speechd.conf").write_text(
                "LogLevel 3\n"
                'AudioOutputMethod "pulse"\n'
                f'AddModule "ttsd" "{wrapper}" "ttsd.conf"\n'
                'DefaultModule "ttsd"\n'
            )
            (self.conf / "modules" / "ttsd.conf").write_text(module_config(self.module))
            config = ["-C", str(self.conf)]
        self.process = subprocess.Popen(
            [
                "speech-dispatcher",
                "-s",
                "-t",
                "0",
                *config,
                "-c",
                "unix_socket",
                "-S",
                str(self.socket),
                "-L",
                str(self.logs),
                "-P",
                str(self.directory / "speechd.pid"),
            ],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.directory / "speechd.err", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"speech-dispatcher exited:\n{self.server_log}")
            if self.socket.exists():
                listed = self.say("-O", check=False)
                if listed.returncode == 0 and "ttsd" in listed.stdout.split():
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"speech-dispatcher did not load the module:\n{self.server_log}")

    def say(
        self, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess:
        """Run ``spd-say`` against this server."""
        result = subprocess.run(
            ["spd-say", *args], env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    @property
    def module_log(self) -> str:
        path = self.logs / "ttsd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def server_log(self) -> str:
        text = ""
        for path in (self.logs / "speech-dispatcher.log", self.directory / "speechd.err"):
            if path.exists():
                text += path.read_text(errors="replace")
        return text

    def wait_log(self, needle: str, timeout: float = 15.0, after: int = 0) -> int:
        """Wait until the module log holds ``needle`` after offset ``after``; return
        where it ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.module_log
            found = log.find(needle, after)
            if found != -1:
                return found + len(needle)
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not in the module log:\n{self.module_log[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class SSIP:
    """A bare SSIP connection (for ``PAUSE``/``RESUME``, which ``spd-say`` lacks)."""

    def __init__(self, path: Path, name: str = "test") -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rb")
        self.command(f"SET self CLIENT_NAME user:{name}:main")

    def command(self, line: str) -> list[str]:
        """Send one command; return its reply lines (the last one has ``NNN `` form)."""
        self.sock.sendall(line.encode() + b"\r\n")
        return self._reply()

    def _reply(self) -> list[str]:
        lines = []
        while True:
            line = self.file.readline().decode().rstrip("\r\n")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                break
        assert lines[-1][:1] == "2", lines
        return lines

    def speak(self, text: str) -> list[str]:
        self.command("SPEAK")
        body = "\r\n".join(".." + x if x.startswith(".") else x for x in text.split("\n"))
        self.sock.sendall(body.encode() + b"\r\n.\r\n")
        return self._reply()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"QUIT\r\n")
        self.file.close()
        self.sock.close()


class ModuleProcess:
    """The module alone, its stdin/stdout in the test's hands (as Speech Dispatcher)."""

    def __init__(self, directory: Path, module: dict[str, Any], env: dict[str, str] | None = None):
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "ttsd.conf"
        self.config.write_text(module_config(module))
        self.stderr_path = directory / "module.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ttsd.bridges.speechd", str(self.config)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.stderr_path, "wb"),  # noqa: SIM115
        )
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._read_from = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            with self._cond:
                self.lines.append((time.monotonic(), raw.decode().rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def send(self, *lines: str) -> float:
        """Write lines; return the monotonic time they were written."""
        assert self.process.stdin is not None
        self.process.stdin.write("".join(f"{line}\n" for line in lines).encode())
        self.process.stdin.flush()
        return time.monotonic()

    def read(self, timeout: float = 10.0) -> str:
        """The next line from the module (in order, each returned once)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._read_from >= len(self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or (
                    self.process.poll() is not None and self._read_from >= len(self.lines)
                ):
                    raise AssertionError(
                        f"no line from the module within {timeout} s; log:\n{self.log[-2000:]}"
                    )
                self._cond.wait(min(left, 0.1))
            line = self.lines[self._read_from][1]
            self._read_from += 1
            return line

    def read_timed(self, timeout: float = 10.0) -> tuple[float, str]:
        line = self.read(timeout)
        return self.lines[self._read_from - 1][0], line

    def expect(self, *lines: str, timeout: float = 10.0) -> None:
        got = [self.read(timeout) for _ in lines]
        assert got == list(lines), f"{got} != {list(lines)}; log:\n{self.log[-2000:]}"

    def init(self) -> None:
        """The start-up dialogue Speech Dispatcher 0.11 has with a module."""
        self.send("INIT")
        first = self.read()
        assert first.startswith("299-"), first
        self.expect("299 OK LOADED SUCCESSFULLY")
        self.send("AUDIO", "audio_output_method=server", ".")
        self.expect("207 OK RECEIVING AUDIO SETTINGS", "303 ERROR INVALID PARAMETER OR VALUE")
        self.send("AUDIO", "audio_output_method=pulse", "audio_pulse_device=default", ".")
        self.expect("207 OK RECEIVING AUDIO SETTINGS", "203 OK AUDIO INITIALIZED")
        self.send("LOGLEVEL", "log_level=5", ".")
        self.expect("207 OK RECEIVING LOGLEVEL SETTINGS", "203 OK LOGLEVEL SET")

    def speak(self, text: str, command: str = "SPEAK") -> float:
        """Send a message as Speech Dispatcher does; return when it was sent."""
        sent = self.send(command)
        self.expect("202 OK RECEIVING MESSAGE")
        body = [".." + x if x.startswith(".") else x for x in text.split("\n")]
        self.send(*body, ".")
        self.expect("200 OK SPEAKING")
        return sent

    def set(self, **values: Any) -> None:
        self.send("SET", *(f"{k}={v}" for k, v in values.items()), ".")
        self.expect("203 OK RECEIVING SETTINGS", "203 OK SETTINGS RECEIVED")

    @property
    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def quit(self) -> int:
        self.send("QUIT")
        self.expect("210 OK QUIT")
        return self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
                self.process.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


class SocketActivated:
    """``systemd-socket-activate`` holding a port and starting ``python -m ttsd serve``
    from this checkout on the first connection, as ``tts.socket`` does. It execs the
    daemon, so once the daemon exits nothing listens until a new one is started."""

    def __init__(self, home: Path, port: int, env: dict[str, str]) -> None:
        home.mkdir(parents=True, exist_ok=True)
        command = ["systemd-socket-activate", "-l", f"127.0.0.1:{port}"]
        # It passes on only PATH, HOME, TERM, USER and LISTEN_*: the rest goes by -E.
        for name, value in {"PYTHONPATH": str(REPO), "XDG_RUNTIME_DIR": str(home), **env}.items():
            command += ["-E", f"{name}={value}"]
        command += [sys.executable, "-m", "ttsd", "serve"]
        self.log_path = home / "activate.log"
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, "HOME": str(home)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_path, "wb"),  # noqa: SIM115
        )
        deadline = time.monotonic() + 10
        while "Listening on" not in self.log:
            assert time.monotonic() < deadline and self.process.poll() is None, self.log
            time.sleep(0.02)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def started(self) -> bool:
        return "Execing" in self.log

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
