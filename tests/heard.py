"""Was this audio played? A check that tolerates underruns on a loaded machine.

``find_exact`` wants every sample; on a busy 2-core machine a late write can leave a
gap (an underrun) mid-job, which changes nothing about what these tests check (that
a job did or did not play). So: the first 0.2 s must be recorded sample for sample
(that identifies the job: its text length, frequency and volume), and sound must then
go on for at least ``fraction`` of the expected length.
"""

from __future__ import annotations

import numpy as np

from tests.support.pulse import audible, find_exact


def played(recorded: np.ndarray, expected: np.ndarray, rate: int, fraction: float = 0.95) -> bool:
    prefix = expected[: min(len(expected), rate // 5)]
    start = find_exact(recorded, prefix)
    if start is None:
        return False
    # count audible 10 ms blocks, so an underrun's silence does not count as sound
    block = rate // 100
    window = recorded[start : start + 2 * len(expected)]
    blocks = len(window) // block
    loud = audible(window[: blocks * block]).reshape(blocks, block).any(axis=1)
    return int(loud.sum()) * block >= fraction * len(expected)
