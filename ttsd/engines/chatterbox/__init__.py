"""Chatterbox (Resemble AI): expressive neural speech and voice cloning, best on a GPU.

Built on chatterbox-tts 0.1.7: ``ChatterboxTTS`` (``model = "standard"``),
``ChatterboxTurboTTS`` (``"turbo"``) and ``ChatterboxMultilingualTTS``
(``"multilingual"``, with ``language``). The library loads the weights and provides the
networks; ttsd runs the token loop and the vocoder itself so that speech streams out
while it is generated. The modules, one job each:

- ``settings``: constants, the checks of settings and per-job options, the stream plan;
- ``loading``: weights from a local directory or the hub (offline-safe), device, dtype,
  keeping the library's prints and progress bars out of the log;
- ``voices``: voice clips and their conditioning, cached in memory and on disk;
- ``tokens``: T3's token loop, step by step (and the multilingual alignment guard);
- ``graphs``: T3 on a static KV cache with its decoding step as a CUDA graph;
- ``vocoder``: incremental S3Gen with hold-back, crossfades and watermarking;
- ``chunk``: one chunk's prompt and the loop from tokens to pieces;
- ``engine``: ``ChatterboxEngine``, which puts them together.

torch and chatterbox are imported inside functions: importing this package is cheap.
"""

from __future__ import annotations

from ttsd.engines.chatterbox.chunk import ChunkStats
from ttsd.engines.chatterbox.engine import ChatterboxEngine
from ttsd.engines.chatterbox.loading import model_class as _model_class
from ttsd.engines.chatterbox.loading import resolve_device as _resolve_device
from ttsd.engines.chatterbox.settings import (
    DEFAULT_VOICE,
    DEVICES,
    DTYPES,
    HUB_REPOS,
    LANGUAGES,
    LOCAL_ALTERNATIVES,
    LOCAL_EXTRAS,
    LOCAL_FILES,
    MAX_SPEECH_TOKENS,
    MODELS,
    SAMPLE_RATE,
    SAMPLES_PER_TOKEN,
    TOKENS_PER_SECOND,
    VOICE_SUFFIXES,
    StreamPlan,
)

__all__ = [
    "DEFAULT_VOICE",
    "DEVICES",
    "DTYPES",
    "HUB_REPOS",
    "LANGUAGES",
    "LOCAL_ALTERNATIVES",
    "LOCAL_EXTRAS",
    "LOCAL_FILES",
    "MAX_SPEECH_TOKENS",
    "MODELS",
    "SAMPLES_PER_TOKEN",
    "SAMPLE_RATE",
    "TOKENS_PER_SECOND",
    "VOICE_SUFFIXES",
    "ChatterboxEngine",
    "ChunkStats",
    "StreamPlan",
    "_model_class",
    "_resolve_device",
]
