"""Measuring on what the private PulseAudio null sink actually played.

The recorder (``tests.support.pulse.Recorder``) maps recorded samples to
``time.monotonic()``; everything here is computed from those samples.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np

from tests.support.pulse import Recorder, audible, find_exact, first_audible, last_audible


class BenchRecorder(Recorder):
    """A recorder that can hand out the recent part of the recording cheaply.

    ``samples()`` copies the whole recording, which costs real CPU on a long run;
    polling loops here read only what they need.
    """

    def segment(self, start: int, stop: int | None = None) -> np.ndarray:
        with self._lock:
            end = len(self._data) // 2 if stop is None else min(stop, len(self._data) // 2)
            start = max(0, min(start, end))
            return np.frombuffer(bytes(self._data[2 * start : 2 * end]), dtype="<i2").copy()

    def length(self) -> int:
        with self._lock:
            return len(self._data) // 2

    async def quiet(self, seconds: float = 0.3, timeout: float = 60.0) -> None:
        """Wait until the last ``seconds`` of the recording are silent."""
        window = int(seconds * self.rate)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.length()
            if n > window and not audible(self.segment(n - window, n)).any():
                return
            await asyncio.sleep(0.05)
        raise BenchError(f"the sink did not fall silent within {timeout} s")

    async def first_sound(self, after: int, timeout: float = 30.0) -> int:
        """Index of the first audible sample at or after ``after``."""
        deadline = time.monotonic() + timeout
        checked = after
        while time.monotonic() < deadline:
            n = self.length()
            found = first_audible(self.segment(checked, n))
            if found is not None:
                return checked + found
            checked = max(after, n - 1)
            await asyncio.sleep(0.005)
        raise BenchError(f"no sound within {timeout} s")

    async def sounding(self, timeout: float = 1.0) -> None:
        """Wait (up to ``timeout``) until the last 10 ms recorded are audible."""
        window = self.rate // 100
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.length()
            if audible(self.segment(n - window, n)).any():
                return
            await asyncio.sleep(0.003)

    def last_sound(self, after: int) -> int | None:
        found = last_audible(self.segment(after))
        return None if found is None else after + found


class BenchError(Exception):
    """A measurement could not be made: the benchmark failed for real."""


def locate(recording: np.ndarray, pieces: list[np.ndarray], block: int = 2048) -> list[int]:
    """Where each of ``pieces`` starts in ``recording`` (searched in order).

    Raise :class:`BenchError` if a piece was not played sample for sample. Gaps
    inside a piece (an underrun) are reported by :func:`inner_gaps`.
    """
    starts = []
    offset = 0
    for number, piece in enumerate(pieces):
        head = piece[: min(len(piece), block)]
        found = find_exact(recording[offset:], head)
        if found is None:
            raise BenchError(f"piece {number + 1}/{len(pieces)} was not recorded sample for sample")
        starts.append(offset + found)
        offset += found + len(head)
    return starts


def inner_gaps(
    recording: np.ndarray, piece: np.ndarray, start: int, probe: int = 256, window: int = 110250
) -> list[int]:
    """Lengths (in samples) of the silences inserted inside ``piece`` played from ``start``.

    The recording is compared with the piece sample by sample; where they first
    differ, the rest of the piece is searched for up to ``window`` samples later, and
    the distance is an inserted gap (an underrun). Raise :class:`BenchError` if the
    rest is not found: samples were dropped or altered, not just delayed.
    """
    inserted: list[int] = []
    r_pos, p_pos = start, 0
    while p_pos < len(piece):
        n = min(len(piece) - p_pos, len(recording) - r_pos)
        differ = np.flatnonzero(recording[r_pos : r_pos + n] != piece[p_pos : p_pos + n])
        if not len(differ):
            if n < len(piece) - p_pos:
                raise BenchError("the recording ends before the chunk does")
            break
        r_pos += int(differ[0])
        p_pos += int(differ[0])
        found = find_exact(recording[r_pos : r_pos + window], piece[p_pos : p_pos + probe])
        if found is None:
            raise BenchError(f"sample {p_pos} of a chunk and what follows were not played exactly")
        if found == 0:  # the probe matches here: a lone altered sample, not a gap
            raise BenchError(f"sample {p_pos} of a chunk was altered")
        inserted.append(found)
        r_pos += found
    return inserted


def gaps(starts: list[int], pieces: list[np.ndarray], rate: int) -> list[float]:
    """Silence inserted between consecutive located pieces, in seconds."""
    return [(starts[i + 1] - (starts[i] + len(pieces[i]))) / rate for i in range(len(pieces) - 1)]


def leading_silence(pcm: np.ndarray, rate: int) -> float:
    """Seconds before the first audible sample of ``pcm``."""
    found = first_audible(pcm)
    return 0.0 if found is None else found / rate


def rss_kib(pid: int) -> int:
    """VmRSS of one process in KiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def tree_rss_kib(pids: list[int]) -> int:
    """Summed VmRSS of ``pids`` and all their descendants."""
    seen: set[int] = set()
    for pid in pids:
        seen.update(descendants(pid))
    return sum(rss_kib(p) for p in seen)
