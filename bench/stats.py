"""Summaries of repeated measurements: median and spread."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Summary:
    """Median and spread of ``n`` values (seconds unless said otherwise)."""

    n: int
    median: float
    p5: float
    p95: float
    p99: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary | None:
        """Summarise ``values``; None when there are none."""
        if not values:
            return None
        a = np.asarray(values, dtype=float)
        q = np.percentile(a, [50, 5, 95, 99])
        return cls(len(a), *(float(x) for x in q), float(a.min()), float(a.max()))

    def ms(self, field: str = "median") -> float:
        return getattr(self, field) * 1000.0


def fmt_ms(summary: Summary | None, spread: bool = True) -> str:
    """``123 ms (110-140, n=10)``: median, 5th-95th percentile, count."""
    if summary is None:
        return "n/a"
    text = f"{summary.ms():.0f} ms"
    if spread and summary.n > 1:
        text += f" ({summary.ms('p5'):.0f}–{summary.ms('p95'):.0f}, n={summary.n})"
    return text


def ratio(a: Summary | None, b: Summary | None) -> str:
    """Median of ``a`` over median of ``b``, as ``0.25x``."""
    if a is None or b is None or a.median <= 0 or b.median <= 0 or math.isnan(b.median):
        return "n/a"  # a ratio of values at the clock's resolution means nothing
    return f"{a.median / b.median:.2f}x"
