"""Constants of chatterbox-tts 0.1.7 and the checks of ttsd's Chatterbox settings and options.

Nothing here imports torch or chatterbox: the daemon validates settings and per-job
options on its event loop, long before (or without) loading a model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from ttsd.engines.base import EngineError, OptionError, check_number, reject_unknown

SAMPLE_RATE = 24000  # chatterbox.models.s3gen.S3GEN_SR
TOKENS_PER_SECOND = 25  # S3 speech tokens per second of audio
SAMPLES_PER_TOKEN = SAMPLE_RATE // TOKENS_PER_SECOND  # 960: 2 mel frames of 480 samples
MAX_SPEECH_TOKENS = 1000  # the library's own limit per generate() call (40 s)
SPEECH_VOCAB_SIZE = 6561  # S3Gen's codebook; T3 ids at or above it are not speech
SILENCE_TOKEN = 4299  # chatterbox.models.s3gen.const.S3GEN_SIL: Turbo ends with 3 of them
TURBO_TAIL_TOKENS = 3

DEFAULT_VOICE = "default"
VOICE_SUFFIXES = (".wav", ".flac", ".mp3")
MODELS = ("standard", "turbo", "multilingual")
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("float32", "bfloat16")

#: ``chatterbox.mtl_tts.SUPPORTED_LANGUAGES`` of 0.1.7 (a test checks they agree).
LANGUAGES = (
    "ar", "da", "de", "el", "en", "es", "fi", "fr", "he", "hi", "it", "ja",
    "ko", "ms", "nl", "no", "pl", "pt", "ru", "sv", "sw", "tr", "zh",
)  # fmt: skip

#: Hub repositories that ``from_pretrained`` downloads from.
HUB_REPOS = {
    "standard": "ResembleAI/chatterbox",
    "turbo": "ResembleAI/chatterbox-turbo",
    "multilingual": "ResembleAI/chatterbox",
}

#: The weights file of each model whose identity goes into voice cache keys.
WEIGHTS_FILE = {
    "standard": "t3_cfg.safetensors",
    "turbo": "t3_turbo_v1.safetensors",
    "multilingual": "t3_mtl23ls_v2.safetensors",
}

#: Files ``from_local`` reads from ``model_dir`` that must all be there. ``conds.pt`` (the
#: built-in voice) is optional everywhere; see :data:`LOCAL_ALTERNATIVES` for Turbo's
#: tokenizer and :data:`LOCAL_EXTRAS` for what multilingual uses when present.
LOCAL_FILES = {
    "standard": ("ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors", "tokenizer.json"),
    "turbo": (
        "ve.safetensors",
        "t3_turbo_v1.safetensors",
        "s3gen_meanflow.safetensors",
        "tokenizer_config.json",
    ),
    "multilingual": (
        "ve.pt",
        "t3_mtl23ls_v2.safetensors",
        "s3gen.pt",
        "grapheme_mtl_merged_expanded_v1.json",
    ),
}

#: Turbo's GPT-2 tokenizer (``AutoTokenizer.from_pretrained(model_dir)``) needs one of
#: these sets besides ``tokenizer_config.json``; the hub repository ships the first, and
#: ``added_tokens.json`` plus ``special_tokens_map.json`` (the paralinguistic tags such as
#: ``[laugh]``), which load without complaint when missing but then tokenize differently.
LOCAL_ALTERNATIVES = {"turbo": (("vocab.json", "merges.txt"), ("tokenizer.json",))}

#: Optional files ttsd uses from a multilingual ``model_dir`` instead of the network:
#: the Cangjie table that spells Chinese characters for the tokenizer, and the pkuseg
#: word segmenter's model (the contents of spacy_pkuseg's ``spacy_ontonotes.zip``).
LOCAL_EXTRAS = {
    "multilingual": ("Cangjie5_TC.json", "pkuseg/features.msgpack", "pkuseg/weights.npz"),
}

#: Per-job numeric options ``(low, high, integer)`` for each model, named as the keyword
#: arguments of its ``generate()``; ``seed`` makes a chunk's speech tokens reproducible.
_SEED = (0, 2**32 - 1, True)
RANGES: dict[str, dict[str, tuple[float, float, bool]]] = {
    "standard": {
        "exaggeration": (0.0, 2.0, False),
        "cfg_weight": (0.0, 1.0, False),
        "temperature": (0.05, 2.0, False),
        "repetition_penalty": (1.0, 3.0, False),
        "min_p": (0.0, 1.0, False),
        "top_p": (0.01, 1.0, False),
        "seed": _SEED,
    },
    "turbo": {
        "temperature": (0.05, 2.0, False),
        "repetition_penalty": (1.0, 3.0, False),
        "top_p": (0.01, 1.0, False),
        "top_k": (0, 1000, True),  # 0 turns top-k filtering off
        "seed": _SEED,
    },
}
RANGES["multilingual"] = dict(RANGES["standard"])

#: The library's ``generate()`` defaults for each model (multilingual differs in its
#: repetition penalty; Turbo has no CFG, exaggeration or min_p).
GENERATE_DEFAULTS: dict[str, dict[str, float]] = {
    "standard": {
        "exaggeration": 0.5,
        "cfg_weight": 0.5,
        "temperature": 0.8,
        "repetition_penalty": 1.2,
        "min_p": 0.05,
        "top_p": 1.0,
    },
    "multilingual": {
        "exaggeration": 0.5,
        "cfg_weight": 0.5,
        "temperature": 0.8,
        "repetition_penalty": 2.0,
        "min_p": 0.05,
        "top_p": 1.0,
    },
    "turbo": {"temperature": 0.8, "repetition_penalty": 1.2, "top_p": 0.95, "top_k": 1000},
}

VOICE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]*$")


@dataclasses.dataclass(frozen=True)
class StreamPlan:
    """How a chunk's speech tokens are cut into vocoder calls, and how pieces are joined.

    A vocoder call is made when ``first_block`` tokens exist, then each time the number of
    tokens not yet turned into audio reaches the next block size, which doubles from call
    to call up to ``max_block``. Each call re-runs S3Gen over up to ``context`` tokens
    already spoken (so the new audio continues the old), keeps back the last ``holdback``
    tokens (S3Gen's encoder looks 3 tokens ahead, so their audio changes once the next
    tokens exist), and keeps back ``margin`` further samples whose audio is still
    affected by the missing right context of the vocoder and the watermarker. The
    ``crossfade`` samples at each seam are spoken twice and blended with complementary
    raised-cosine weights. All sample counts are multiples of 240 (10 ms), which the
    watermarker needs to return exactly as many samples as it was given.
    """

    first_block: int = 10
    max_block: int = 80
    context: int = 50
    holdback: int = 3
    crossfade: int = 480
    margin: int = 2400
    watermark_context: int = 4800

    def __post_init__(self) -> None:
        for name in ("crossfade", "margin", "watermark_context"):
            value = getattr(self, name)
            if value < 0 or value % 240:
                raise ValueError(f"{name} must be a multiple of 240 samples, got {value}")
        if self.first_block < self.holdback + 1 or self.max_block < self.first_block:
            raise ValueError("need holdback < first_block <= max_block")

    def block_sizes(self) -> Any:
        """Yield the number of new tokens that triggers each vocoder call, forever."""
        size = self.first_block
        while True:
            yield size
            size = min(self.max_block, size * 2)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The engine settings of the ``[chatterbox]`` table, checked (see ``ChatterboxEngine``)."""

    model: str = "standard"
    language: str = "en"
    device: str = "auto"
    dtype: str = "float32"
    cuda_graphs: bool = False
    streaming: bool = True
    max_speech_tokens: int = MAX_SPEECH_TOKENS
    first_block_tokens: int = 10
    max_block_tokens: int = 80
    watermark: bool = True


def check_settings(raw: Mapping[str, Any]) -> Settings:
    """Return :class:`Settings` from the engine settings, or raise ``EngineError`` naming
    the setting that is wrong (code ``engine_load``)."""

    def fail(message: str) -> EngineError:
        return EngineError(f"chatterbox: {message}", "engine_load")

    values = {**dataclasses.asdict(Settings()), **raw}
    if values["model"] not in MODELS:
        raise fail(f"model must be one of {', '.join(MODELS)}, got {values['model']!r}")
    device = str(values["device"])
    if device not in DEVICES and not re.fullmatch(r"cuda:\d+", device):
        raise fail(f"device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")
    if values["language"] not in LANGUAGES:
        raise fail(f"language must be one of {', '.join(LANGUAGES)}, got {values['language']!r}")
    if values["dtype"] not in DTYPES:
        raise fail(f"dtype must be one of {', '.join(DTYPES)}, got {values['dtype']!r}")
    for flag in ("cuda_graphs", "streaming", "watermark"):
        if not isinstance(values[flag], bool):
            raise fail(f"{flag} must be true or false, got {values[flag]!r}")

    def integer(name: str, low: int, high: int) -> int:
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise fail(f"{name} must be an integer from {low} to {high}, got {value!r}")
        return value

    integer("max_speech_tokens", 1, MAX_SPEECH_TOKENS)
    first = integer("first_block_tokens", 8, 200)
    integer("max_block_tokens", first, MAX_SPEECH_TOKENS)
    values["device"] = device
    return Settings(**values)


def check_options(kind: str, options: Mapping[str, Any], engine: str) -> dict[str, Any]:
    """Check per-job options of model ``kind``; return them normalised or raise ``OptionError``."""
    ranges = RANGES[kind]
    known = set(ranges) | ({"language"} if kind == "multilingual" else set())
    reject_unknown(options, known, f"{engine} ({kind} model)")
    checked: dict[str, Any] = {}
    for key, (low, high, integer) in ranges.items():
        value = check_number(options, key, low, high, integer=integer)
        if value is not None:
            checked[key] = int(value) if integer else float(value)
    if "language" in options:
        language = options["language"]
        if not isinstance(language, str) or language.lower() not in LANGUAGES:
            raise OptionError(
                f"option 'language' must be one of {', '.join(LANGUAGES)}, got {language!r}"
            )
        checked["language"] = language.lower()
    return checked
