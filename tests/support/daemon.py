"""Run the real daemon (``python -m ttsd serve``) as a child process: the one harness
for every test that starts a daemon.

A :class:`Daemon` gets its own home (config file, runtime directory, token file) and
is started in one of these ways:

* binding its own port (the default): its config says ``port = 0`` (see
  :data:`DEFAULTS`) and the port is read from the ``listening on port N`` line;
* socket-activated (``activate="127.0.0.1"``): ``systemd-socket-activate`` holds the
  listening socket on a free port and execs the daemon on the first connection, so
  the child's pid is the daemon's;
* on a listening socket the test holds (``inherit=sock``), passed as fd 3 with
  ``LISTEN_FDS``/``LISTEN_PID`` as systemd does, so that several daemons can be
  started one after the other on the same socket;
* inside another command (``wrap=[...]``, e.g. a private mount namespace).

``notify=True`` binds a :class:`NotifyListener` as ``NOTIFY_SOCKET``;
``journal_stream=True`` makes stderr a pipe named by ``JOURNAL_STREAM``, as systemd
does for a service whose stderr is the journal. Started by a service manager (the
last three ways), the daemon gets a small environment like systemd's, not the test's.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.support.net import free_port
from tests.support.notify import NotifyListener
from tests.support.pulse import PulseServer

_LISTENING = re.compile(r"listening on port (\d+)")

#: Variables a test's environment may hold that would point the daemon elsewhere.
_FOREIGN = ("TTS_PORT", "TTS_HOST", "TTS_ENGINE", "TTS_VOICE", "TTS_TOKEN", "NOTIFY_SOCKET")


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


#: Settings every test daemon gets unless the test gives its own. ``latency_ms`` is the
#: audio pacat keeps in the sound server: the daemon's default (250 ms) is less than a
#: busy 2-core machine can keep pacat off the CPU, and the silence that such an underrun
#: inserts would fail the exact recording checks for a reason that is not the daemon's.
DEFAULTS: dict[str, Any] = {"port": 0, "latency_ms": 1000}


class DaemonExited(RuntimeError):
    """The daemon exited before it served (bad settings, a refused address...)."""

    def __init__(self, code: int, lines: list[str]) -> None:
        super().__init__(f"daemon exited {code}:\n" + "\n".join(lines))
        self.code = code
        self.lines = lines


class Daemon:
    """A ttsd daemon child process with its own config and home directory."""

    def __init__(
        self,
        home: Path,
        pulse: PulseServer | None,
        settings: dict[str, Any],
        env: dict[str, str] | None = None,
        *,
        activate: str | None = None,
        inherit: Any = None,
        wrap: Sequence[str] = (),
        notify: bool = False,
        journal_stream: bool = False,
    ) -> None:
        self.home = home
        self.pulse = pulse
        self.settings = settings
        self.extra_env = env or {}
        self.activate = activate
        self.inherit = inherit
        self.wrap = list(wrap)
        self.journal_stream = journal_stream
        self.notify: NotifyListener | None = None
        self._want_notify = notify
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.lines: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def managed(self) -> bool:
        """Started the way a service manager starts it (small environment)."""
        return bool(self.activate or self.inherit is not None or self.wrap)

    @property
    def config_path(self) -> Path:
        return self.home / "config.toml"

    def env(self) -> dict[str, str]:
        self.home.mkdir(parents=True, exist_ok=True)
        config = write_config(self.config_path, {**DEFAULTS, **self.settings})
        own = {
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / "config"),
            "XDG_CACHE_HOME": str(self.home / "cache"),
            "XDG_RUNTIME_DIR": str(self.home),
            "TTS_CONFIG": str(config),
            **(self.pulse.env() if self.pulse else {"PULSE_SERVER": "unix:/nonexistent"}),
        }
        if self.notify is not None:
            own["NOTIFY_SOCKET"] = str(self.notify.path)
        if self.managed:
            return {"PATH": os.environ["PATH"], **own, **self.extra_env}
        env = {**os.environ, **own, **self.extra_env}
        for name in _FOREIGN:
            if name not in self.extra_env and name not in own:
                env.pop(name, None)
        return env

    def command(self, env: dict[str, str], args: Sequence[str]) -> list[str]:
        serve = [sys.executable, "-m", "ttsd", "serve", *args]
        if self.activate:
            command = ["systemd-socket-activate", "-l", f"{self.activate}:{self.port}"]
            for name, value in env.items():  # it passes nothing else on
                command += ["-E", f"{name}={value}"]
            return command + serve
        if self.inherit is not None:
            # LISTEN_PID must be the daemon's own pid: set it in the process that execs it.
            fd = self.inherit.fileno()
            exec_daemon = (
                f"import os, sys; os.dup2({fd}, 3); os.environ['LISTEN_FDS'] = '1'; "
                "os.environ['LISTEN_PID'] = str(os.getpid()); "
                f"os.execv(sys.executable, {serve!r})"
            )
            return [sys.executable, "-c", exec_daemon]
        return [*self.wrap, *serve]

    def start(self, timeout: float = 30.0, args: Sequence[str] = (), wait: bool = True) -> Daemon:
        """Start it; with ``wait``, return once it serves (or the activator listens).

        Raises :class:`DaemonExited` if it exits first.
        """
        if self._want_notify and self.notify is None:
            self.home.mkdir(parents=True, exist_ok=True)
            self.notify = NotifyListener(self.home / "notify")
        for _ in range(5):  # a free port can be taken before the activator binds it
            if self.activate:
                self.port = free_port(self.activate)
            elif self.inherit is not None:
                self.port = int(self.inherit.getsockname()[1])
            self._spawn(args)
            if not wait:
                return self
            try:
                return self._wait_serving(timeout)
            except DaemonExited:
                if self.activate and "in use" in self.log:
                    self.lines.clear()
                    continue
                raise
        raise RuntimeError(f"no free port for the activator:\n{self.log}")

    def _spawn(self, args: Sequence[str]) -> None:
        env = self.env()
        stderr: int = subprocess.PIPE
        read_end = None
        if self.journal_stream:
            read_end, stderr = os.pipe()
            st = os.fstat(stderr)
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        self.process = subprocess.Popen(
            self.command(env, args),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            pass_fds=(self.inherit.fileno(),) if self.inherit is not None else (),
        )
        if read_end is not None:
            os.close(stderr)
            stream = os.fdopen(read_end, "rb")
        else:
            assert self.process.stderr is not None
            stream = self.process.stderr
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _wait_serving(self, timeout: float) -> Daemon:
        if self.activate:
            where = re.escape(f"{self.activate}:{self.port}")
            self.wait_for_line(re.compile(rf"Listening on \[?{where}\]? as 3"), timeout)
            return self
        match = self.wait_for_line(_LISTENING, timeout)
        self.port = int(match.group(1))
        return self

    def _read(self, stream: Any) -> None:
        with stream:
            for line in stream:
                self.lines.append(line.decode(errors="replace").rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: re.Pattern[str] | str, timeout: float = 15.0) -> re.Match[str]:
        """Wait for a line of its stderr matching ``pattern``; raise :class:`DaemonExited`
        if it exits first."""
        assert self.process is not None
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := regex.search(line):
                    return match
            if self.process.poll() is not None:
                if self._reader is not None:
                    self._reader.join(2)
                for line in list(self.lines):
                    if match := regex.search(line):
                        return match
                raise DaemonExited(self.process.returncode, list(self.lines))
            time.sleep(0.01)
        raise AssertionError(f"no line matching {regex.pattern!r} within {timeout} s:\n{self.log}")

    def started(self) -> bool:
        """Socket-activated: True once the activator has started the daemon."""
        return any("Execing" in line for line in self.lines)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for it to exit; return its exit status."""
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
        if self._reader is not None:
            self._reader.join(5)
        if self.notify is not None:
            self.notify.close()
