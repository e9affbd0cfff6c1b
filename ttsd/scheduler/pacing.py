"""When playback may start without running dry: a model of the engine's speed.

Audio is made piece by piece while it plays. If playback starts too early, the
stream runs dry before the next piece is ready and the listener hears a gap; if it
starts too late, the first word comes late. With the engine making ``r`` seconds of
compute per second of audio (its real-time factor, measured), and the pieces still to
make lasting ``a1, a2, ...`` seconds (estimated from their text), piece ``k`` is ready
after ``r * (a1 + ... + ak)`` seconds while playback reaches it after
``B + a1 + ... + a(k-1)`` seconds, ``B`` being the audio already buffered. So playback
runs without a gap when

    B >= max over k of ( r * S(k) - S(k-1) ),   S(k) = a1 + ... + ak

which this module computes, with a safety margin on ``r`` for a machine whose load
changes. On a fast engine (``r`` well below 1) this is about ``r`` times the next
piece: a lone "Okay." waits for the next sentence only if that sentence would outrun
it. Pure arithmetic: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Multiplies the measured real-time factor: a safety margin against load changes.
MARGIN = 1.3
#: Seconds added to the requirement: scheduling jitter, the stream's own start-up.
SLACK = 0.1
#: Seconds of audio per character before anything was measured (Piper speaks about
#: 14 characters per second at its default speed).
DEFAULT_SECONDS_PER_CHAR = 0.07
#: How much each new measurement moves the averages.
WEIGHT = 0.3


class Pacing:
    """Running estimates of the engine's speed and of audio length per character."""

    def __init__(self) -> None:
        #: Compute seconds per second of audio (None until measured).
        self.rtf: float | None = None
        self.seconds_per_char = DEFAULT_SECONDS_PER_CHAR

    def observe_speed(self, compute_seconds: float, audio_seconds: float) -> None:
        """Record that ``audio_seconds`` of audio took ``compute_seconds`` to make."""
        if audio_seconds <= 0:
            return
        rtf = compute_seconds / audio_seconds
        self.rtf = rtf if self.rtf is None else (1 - WEIGHT) * self.rtf + WEIGHT * rtf

    def observe_length(self, chars: int, audio_seconds: float) -> None:
        """Record that ``chars`` characters of text made ``audio_seconds`` of audio."""
        if chars <= 0 or audio_seconds <= 0:
            return
        spc = audio_seconds / chars
        self.seconds_per_char = (1 - WEIGHT) * self.seconds_per_char + WEIGHT * spc

    def estimate(self, chars: int) -> float:
        """Seconds of audio expected from ``chars`` characters of text."""
        return chars * self.seconds_per_char

    def needed(self, remaining: Sequence[float]) -> float:
        """Seconds of audio to buffer before starting, given the audio still to make
        (in order, in seconds); 0 when nothing remains. See the module docstring."""
        if not remaining:
            return 0.0
        rate = (self.rtf if self.rtf is not None else 1.0) * MARGIN
        made_by = 0.0  # r * S(k)
        heard_by = 0.0  # S(k-1)
        worst = 0.0
        for seconds in remaining:
            made_by += rate * seconds
            worst = max(worst, made_by - heard_by)
            heard_by += seconds
        return worst + SLACK
