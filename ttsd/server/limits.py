"""Per-connection limits: a request rate limiter and the slow-reader check."""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """A token bucket: ``rate`` requests per second, bursts of up to ``rate`` requests."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self._tokens = self.capacity
        self._clock = clock
        self._last = clock()

    def allow(self) -> bool:
        """Take one token if there is one; False means the request is over the limit."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class Backlog:
    """Tells when a connection has fallen too far behind on reading what it is sent.

    A client is behind when more than ``limit`` bytes wait unsent. One large reply (a
    ``synthesize`` result) can do that to a client that reads fine, so it is only
    *too slow* once it has stayed behind for ``grace`` seconds, or is ``hard_factor``
    times over the limit.
    """

    def __init__(
        self,
        limit: int,
        grace: float = 1.0,
        hard_factor: int = 16,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.grace = grace
        self.hard_limit = limit * hard_factor
        self._clock = clock
        self._behind_since: float | None = None

    def too_slow(self, unsent: int) -> bool:
        """Record the current number of ``unsent`` bytes; True if the client must go."""
        if unsent <= self.limit:
            self._behind_since = None
            return False
        now = self._clock()
        if self._behind_since is None:
            self._behind_since = now
        return unsent > self.hard_limit or now - self._behind_since >= self.grace
