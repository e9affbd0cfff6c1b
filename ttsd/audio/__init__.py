"""Audio output: the interface the player uses, and its PulseAudio implementation.

:mod:`.output` is the small interface (open a stream at a rate with a name and a
volume; write; finish; kill); :mod:`.pacat` implements it with one ``pacat`` process
per stream; :mod:`.pulse` asks the PulseAudio server questions through ``pulsectl``,
every one of them bounded by a timeout.
"""

from ttsd.audio.output import (
    AudioOutput,
    AudioStream,
    AudioUnavailable,
    PlaybackError,
    ServerInfo,
    StreamInfo,
)
from ttsd.audio.pacat import PacatOutput, PacatStream
from ttsd.audio.pulse import PulseMonitor

__all__ = [
    "AudioOutput",
    "AudioStream",
    "AudioUnavailable",
    "PacatOutput",
    "PacatStream",
    "PlaybackError",
    "PulseMonitor",
    "ServerInfo",
    "StreamInfo",
]
