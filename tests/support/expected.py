"""What the daemon should have played, and checks that it was.

``tone`` computes the tone engine's exact output for a text, split the way the daemon
splits it. ``find_exact`` (in ``pulse``) demands every sample in order and no gap; the two
looser checks here are for tests whose question is *whether* a job played, on a machine
so loaded that pacat may underrun (the sink then inserts silence mid-job).
"""

from __future__ import annotations

import numpy as np

from tests.support.pulse import audible, find_exact
from ttsd.engines.tone import ToneEngine
from ttsd.scheduler.chunking import split_text

#: The tone engine as the tests configure it (``tests.conftest.TONE``).
TONE_ENGINE = ToneEngine(ms_per_char=20.0)


def tone(
    text: str,
    frequency: float = 440.0,
    chunk_chars: int = 300,
    first_chunk_chars: int | None = 120,
) -> np.ndarray:
    """The tone engine's audio for ``text``: all its chunks, back to back."""
    chunks = split_text(text, chunk_chars, first_chunk_chars)
    return np.concatenate(
        [TONE_ENGINE.synthesize(c, None, {"frequency": frequency}) for c in chunks]
    )


def played_all(recording: np.ndarray, pcm: np.ndarray) -> bool:
    """True if every sample of ``pcm`` was recorded, in order, gaps allowed.

    Digital silence is left out on both sides first, so an underrun's inserted silence
    does not count against it, while any lost or changed sample does.
    """
    return find_exact(recording[recording != 0], pcm[pcm != 0]) is not None


def played_start(
    recorded: np.ndarray, expected: np.ndarray, rate: int, fraction: float = 0.95
) -> bool:
    """True if the first 0.2 s of ``expected`` was recorded exactly and sound went on.

    The exact prefix identifies the job (text length, frequency, volume); then at least
    ``fraction`` of the expected length must be audible, counted in 10 ms blocks so an
    underrun's silence does not count as sound.
    """
    prefix = expected[: min(len(expected), rate // 5)]
    start = find_exact(recorded, prefix)
    if start is None:
        return False
    block = rate // 100
    window = recorded[start : start + 2 * len(expected)]
    blocks = len(window) // block
    loud = audible(window[: blocks * block]).reshape(blocks, block).any(axis=1)
    return int(loud.sum()) * block >= fraction * len(expected)
