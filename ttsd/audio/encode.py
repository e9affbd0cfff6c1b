"""Audio formats for clients that take files rather than raw PCM: streaming encoders.

An :class:`Encoder` turns mono int16 PCM, piece by piece as the engine makes it, into
the bytes of one file that can be sent while it is written: :meth:`Encoder.begin`,
then :meth:`Encoder.encode` per piece, then :meth:`Encoder.end`. Each returns the
bytes that are ready; what it returns is never changed later.

* ``pcm``: the samples as s16le, nothing else.
* ``wav``: a 44-byte RIFF header whose sizes say "unknown" (0xFFFFFFFF, as streamed
  WAV from ffmpeg and OpenAI has), then s16le. The header is the one thing written
  here by hand: a file-writing library puts placeholder sizes first and seeks back to
  fix them, which a stream cannot do, and readers take the sizes of a streamed WAV
  as zero samples.
* ``mp3``, ``flac``, ``opus`` (Ogg): libsndfile (through ``soundfile``), with LAME,
  libFLAC and libopus. libsndfile writes to :class:`_Outbox`, which passes on what is
  written in order; at the end libsndfile seeks back to fill in totals (FLAC's
  STREAMINFO sample count and MD5, MP3's LAME tag): those late rewrites of bytes
  already sent are dropped, and the stream keeps the "unknown" values its header
  started with, which decoders accept (the MP3 then decodes with the encoder's delay
  and padding untrimmed: ~1100 extra samples at the start, up to a frame at the end).

Sample rates: the output rate may differ from the engine's (OpenAI's ``pcm`` is 24 kHz;
Opus only codes 8, 12, 16, 24 and 48 kHz); the audio is then resampled on the way by
libsoxr (``soxr.ResampleStream``), which carries its filter state across pieces so the
joins are seamless.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

#: Media types of the formats.
MEDIA_TYPES = {
    "pcm": "audio/pcm",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "opus": "audio/ogg",
}

#: Sample rates the Opus codec takes.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)

#: libsndfile's format and subtype for each compressed format.
_SOUNDFILE_FORMATS = {
    "mp3": ("MP3", "MPEG_LAYER_III"),
    "flac": ("FLAC", "PCM_16"),
    "opus": ("OGG", "OPUS"),
}

#: Sample rates MPEG audio (LAME) codes.
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)

#: The rate each format uses when the client names none (None: the engine's own).
DEFAULT_RATES: dict[str, int | None] = {
    "pcm": 24000,  # OpenAI: "raw samples in 24kHz (16-bit signed, low-endian)"
    "opus": 48000,
    "wav": None,
    "mp3": None,
    "flac": None,
}


class FormatError(ValueError):
    """The format cannot be made (at this sample rate, or without its library)."""


class _Resampler:
    """Streaming int16 resampling from ``source`` to ``target`` Hz (identity if equal)."""

    def __init__(self, source: int, target: int) -> None:
        self._stream: Any = None
        if source != target:
            try:
                import soxr
            except ImportError as exc:
                raise FormatError(
                    f"resampling {source} Hz to {target} Hz needs the soxr package"
                ) from exc
            self._stream = soxr.ResampleStream(source, target, 1, dtype="int16", quality="HQ")

    def __call__(self, pcm: np.ndarray, last: bool = False) -> np.ndarray:
        pcm = np.ascontiguousarray(pcm, dtype=np.int16).reshape(-1)
        if self._stream is None:
            return pcm
        return np.asarray(self._stream.resample_chunk(pcm, last=last), dtype=np.int16)


class Encoder(ABC):
    """Encodes one stream of mono int16 PCM at ``source_rate`` into one file."""

    #: The response's ``Content-Type``.
    media_type: str = "application/octet-stream"
    #: True when encoding takes long enough (tens of ms per second of audio) that a
    #: server should run it off its event loop.
    costly: bool = False

    def __init__(self, source_rate: int, rate: int) -> None:
        self.source_rate = source_rate
        #: The sample rate of the encoded audio.
        self.rate = rate
        self._resample = _Resampler(source_rate, rate)

    def begin(self) -> bytes:
        """The bytes that come before any audio (a header)."""
        return b""

    def encode(self, pcm: np.ndarray) -> bytes:
        """Add ``pcm``; return the bytes ready to send now (maybe none)."""
        return self._write(self._resample(pcm))

    def end(self) -> bytes:
        """Finish the file; return its last bytes."""
        return self._write(self._resample(np.zeros(0, np.int16), last=True)) + self._close()

    @abstractmethod
    def _write(self, pcm: np.ndarray) -> bytes: ...

    def _close(self) -> bytes:
        return b""


class PcmEncoder(Encoder):
    """Raw s16le samples."""

    media_type = MEDIA_TYPES["pcm"]

    def _write(self, pcm: np.ndarray) -> bytes:
        return pcm.astype("<i2", copy=False).tobytes()


#: The "unknown" size of a streamed RIFF chunk.
_UNKNOWN = 0xFFFFFFFF


class WavEncoder(PcmEncoder):
    """A WAV header with unknown sizes, then raw s16le samples."""

    media_type = MEDIA_TYPES["wav"]

    def begin(self) -> bytes:
        block_align = 2  # mono, 16-bit
        return (
            b"RIFF"
            + struct.pack("<I", _UNKNOWN)
            + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, self.rate, self.rate * block_align, block_align, 16)
            + b"data"
            + struct.pack("<I", _UNKNOWN)
        )


class _Outbox:
    """The file libsndfile writes to: hands on bytes in order, drops late rewrites.

    libsndfile's virtual I/O needs ``seek``, ``tell``, ``read`` and ``write``. Bytes
    at or past what was handed on are kept until :meth:`take`; a write before that
    point (a header fixed up at the end) can no longer reach the client and is
    dropped.
    """

    def __init__(self) -> None:
        self._sent = 0
        self._pending = bytearray()
        self._position = 0
        #: Bytes of late rewrites that were dropped.
        self.dropped = 0

    def _length(self) -> int:
        return self._sent + len(self._pending)

    def write(self, data: Any) -> int:
        data = bytes(data)
        size = len(data)
        start = self._position
        self._position += size
        if start < self._sent:  # a rewrite of bytes already handed on
            skip = min(size, self._sent - start)
            self.dropped += skip
            data, start = data[skip:], start + skip
        if data:
            offset = start - self._sent
            if offset > len(self._pending):
                self._pending.extend(bytes(offset - len(self._pending)))
            self._pending[offset : offset + len(data)] = data
        return size

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: self._length()}[whence]
        self._position = base + offset
        return self._position

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        # libsndfile only reads when it opens a file for reading or appending.
        return b""

    def take(self) -> bytes:
        """The bytes written since the last call, in file order."""
        data = bytes(self._pending)
        self._sent += len(data)
        self._pending.clear()
        return data


class SoundFileEncoder(Encoder):
    """MP3, FLAC or Ogg Opus through libsndfile."""

    costly = True  # LAME and libopus: ~40 ms per second of audio on a busy 2-core CPU

    def __init__(self, fmt: str, source_rate: int, rate: int) -> None:
        super().__init__(source_rate, rate)
        self.media_type = MEDIA_TYPES[fmt]
        try:
            import soundfile
        except ImportError as exc:  # pragma: no cover - a dependency of ttsd
            raise FormatError(f"{fmt} needs the soundfile package") from exc
        major, subtype = _SOUNDFILE_FORMATS[fmt]
        extra: dict[str, Any] = {}
        if fmt == "mp3":
            # Constant bit rate: with no LAME tag (see the module docstring) a reader can
            # only tell the length of a CBR stream. 0.6 is 64 kbit/s below 32 kHz.
            extra = {"bitrate_mode": "CONSTANT", "compression_level": 0.6}
        self._box = _Outbox()
        try:
            self._file = soundfile.SoundFile(
                self._box, "w", samplerate=rate, channels=1, subtype=subtype, format=major, **extra
            )
        except (soundfile.LibsndfileError, TypeError, ValueError) as exc:
            raise FormatError(f"libsndfile cannot write {fmt} at {rate} Hz: {exc}") from exc

    def begin(self) -> bytes:
        return self._box.take()

    def _write(self, pcm: np.ndarray) -> bytes:
        if len(pcm):
            self._file.write(pcm)
        return self._box.take()

    def _close(self) -> bytes:
        self._file.close()
        return self._box.take()


def output_rate(fmt: str, source_rate: int, requested: int | None) -> int:
    """The sample rate ``fmt`` is sent at; raise :class:`FormatError` if it cannot be."""
    rate = requested or DEFAULT_RATES[fmt] or source_rate
    if fmt == "opus" and rate not in OPUS_RATES:
        raise FormatError(
            f"opus takes sample rates {', '.join(map(str, OPUS_RATES))} Hz, not {rate}"
        )
    if fmt == "mp3" and rate not in MP3_RATES:
        raise FormatError(f"mp3 takes sample rates {', '.join(map(str, MP3_RATES))} Hz, not {rate}")
    return rate


def make_encoder(fmt: str, source_rate: int, requested_rate: int | None = None) -> Encoder:
    """An encoder of ``fmt`` for PCM at ``source_rate``; raise :class:`FormatError`."""
    if fmt not in MEDIA_TYPES:
        raise FormatError(f"unknown format {fmt!r}")
    rate = output_rate(fmt, source_rate, requested_rate)
    if fmt == "pcm":
        return PcmEncoder(source_rate, rate)
    if fmt == "wav":
        return WavEncoder(source_rate, rate)
    return SoundFileEncoder(fmt, source_rate, rate)
