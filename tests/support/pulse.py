"""A private PulseAudio server with a null sink, and a recorder of what it plays.

The server runs as the current user (root here) with its own runtime directory, so it
never touches a desktop's sound. ``norewinds=1`` on the null sink matters: without it
the monitor's recording is corrupted in many runs; with it, it is bit-identical to
what the clients played (when rates match and volume is 100%).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

#: Samples quieter than this count as silence (int16 full scale is 32767).
AUDIBLE = 300


class PulseServer:
    def __init__(self, directory: Path, rate: int = 22050) -> None:
        self.directory = directory
        self.rate = rate
        self.socket = directory / "native"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"unix:{self.socket}"

    def env(self) -> dict[str, str]:
        """Environment for a client of this server."""
        return {"PULSE_SERVER": self.address, "PULSE_COOKIE": str(self.directory / "cookie")}

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self.directory),
            "PULSE_RUNTIME_PATH": str(self.directory),
            "HOME": str(self.directory),
        }
        env.pop("PULSE_SERVER", None)
        self.process = subprocess.Popen(
            [
                "pulseaudio",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--system=false",
                "-n",
                "--disallow-exit",
                "--disable-shm=yes",
                f"--load=module-null-sink sink_name=null rate={self.rate} channels=1 "
                "format=s16le norewinds=1",
                f"--load=module-native-protocol-unix auth-anonymous=1 socket={self.socket}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.directory / "pulseaudio.log", "ab"),  # noqa: SIM115
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pulseaudio exited: see {self.directory}/pulseaudio.log")
            probe = subprocess.run(
                ["pactl", "info"], env={**os.environ, **self.env()}, capture_output=True
            )
            if probe.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("pulseaudio did not come up")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        self.socket.unlink(missing_ok=True)

    def pactl(self, *args: str) -> str:
        return subprocess.run(
            ["pactl", *args],
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            check=True,
        ).stdout


class Recorder:
    """Records the null sink's monitor with ``parec`` and maps samples to wall time."""

    def __init__(self, pulse: PulseServer, device: str = "null.monitor") -> None:
        self.pulse = pulse
        self.device = device
        self.rate = pulse.rate
        self._data = bytearray()
        self._anchor = float("inf")  # monotonic time of sample 0, best estimate
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if shutil.which("parec") is None:
            raise RuntimeError("parec is missing: install pulseaudio-utils")
        self._process = subprocess.Popen(
            [
                "parec",
                f"--device={self.device}",
                "--raw",
                "--format=s16le",
                "--channels=1",
                f"--rate={self.rate}",
                "--latency-msec=5",
            ],
            env={**os.environ, **self.pulse.env()},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 5
        while not self._data and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._data:
            raise RuntimeError("parec recorded nothing")

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        fd = self._process.stdout.fileno()
        while True:
            block = os.read(fd, 4096)
            now = time.monotonic()
            if not block:
                return
            with self._lock:
                self._data += block
                # Delivery can only be late, never early: the earliest estimate of
                # "time of sample 0" over all reads is the most accurate one.
                self._anchor = min(self._anchor, now - (len(self._data) // 2) / self.rate)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(5)
        if self._thread is not None:
            self._thread.join(5)

    def samples(self) -> np.ndarray:
        with self._lock:
            usable = len(self._data) - len(self._data) % 2
            return np.frombuffer(bytes(self._data[:usable]), dtype="<i2").copy()

    def now_index(self) -> int:
        """Index of the sample being recorded at this moment."""
        return self.index_at(time.monotonic())

    def index_at(self, moment: float) -> int:
        return max(0, round((moment - self._anchor) * self.rate))

    def time_of(self, index: int) -> float:
        return self._anchor + index / self.rate

    def wait_for_sound(self, after: int = 0, timeout: float = 10.0) -> int:
        """Wait until something audible is recorded after sample ``after``; return its index."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = first_audible(self.samples(), after)
            if found is not None:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no sound recorded within {timeout} s")

    def wait_for_samples(self, count: int, timeout: float = 10.0) -> None:
        """Wait until the recording holds ``count`` samples (silent or not): time as the
        sound server counts it, however late parec delivers."""
        deadline = time.monotonic() + timeout
        while len(self.samples()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {count} samples recorded in {timeout} s")
            time.sleep(0.01)

    def wait_for_sound_length(self, seconds: float, after: int = 0, timeout: float = 15.0) -> int:
        """Wait until ``seconds`` of sound have been recorded after sample ``after``
        (counted in 10 ms blocks, so gaps do not count); return the index reached."""
        deadline = time.monotonic() + timeout
        block = self.rate // 100
        needed = max(1, round(seconds * 100))
        while time.monotonic() < deadline:
            samples = self.samples()[after:]
            blocks = len(samples) // block
            loud = audible(samples[: blocks * block]).reshape(blocks, block).any(axis=1)
            hits = np.flatnonzero(loud)
            if len(hits) >= needed:
                return after + int(hits[needed - 1] + 1) * block
            time.sleep(0.01)
        raise AssertionError(f"less than {seconds} s of sound recorded within {timeout} s")

    def wait_for_silence(self, seconds: float, timeout: float = 30.0) -> int:
        """Wait until the last ``seconds`` recorded are silent; return the last audible index."""
        deadline = time.monotonic() + timeout
        window = int(seconds * self.rate)
        while time.monotonic() < deadline:
            samples = self.samples()
            if len(samples) > window and not audible(samples[-window:]).any():
                last = last_audible(samples)
                return -1 if last is None else last
            time.sleep(0.05)
        raise AssertionError(f"sound did not stop within {timeout} s")


def audible(samples: np.ndarray) -> np.ndarray:
    return np.abs(samples.astype(np.int32)) > AUDIBLE


def first_audible(samples: np.ndarray, after: int = 0) -> int | None:
    hits = np.flatnonzero(audible(samples[after:]))
    return int(hits[0]) + after if len(hits) else None


def last_audible(samples: np.ndarray, before: int | None = None) -> int | None:
    hits = np.flatnonzero(audible(samples[:before]))
    return int(hits[-1]) if len(hits) else None


def sound_spans(samples: np.ndarray, min_gap: float, rate: int) -> list[tuple[int, int]]:
    """(start, end) sample ranges of sound separated by at least ``min_gap`` s of silence."""
    hits = np.flatnonzero(audible(samples))
    if not len(hits):
        return []
    breaks = np.flatnonzero(np.diff(hits) > min_gap * rate)
    starts = [hits[0], *hits[breaks + 1]]
    ends = [*hits[breaks], hits[-1]]
    return [(int(s), int(e) + 1) for s, e in zip(starts, ends, strict=True)]


def find_exact(recording: np.ndarray, pcm: np.ndarray) -> int | None:
    """Index where ``pcm`` appears sample-for-sample in ``recording``, or None."""
    needle = pcm.astype("<i2").tobytes()
    haystack = recording.astype("<i2").tobytes()
    start = 0
    while (found := haystack.find(needle, start)) != -1:
        if found % 2 == 0:
            return found // 2
        start = found + 1
    return None
