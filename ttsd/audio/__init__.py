"""Audio output: playback streams through pacat and PulseAudio server checks."""

from ttsd.audio.pacat import PacatStream, PlaybackError
from ttsd.audio.pulse import AudioUnavailable, PulseMonitor

__all__ = ["AudioUnavailable", "PacatStream", "PlaybackError", "PulseMonitor"]
