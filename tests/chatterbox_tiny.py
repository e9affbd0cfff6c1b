"""Build a tiny, randomly initialised Chatterbox model that runs through the real library.

The real checkpoints are gigabytes and come from the Hugging Face hub, which tests
cannot reach. What runs here is the genuine ``chatterbox-tts`` code path: a ``T3``
text-to-token transformer with a 2-layer Llama backbone (registered under a new name in
``LLAMA_CONFIGS``), the real but randomly initialised ``S3Gen`` and ``VoiceEncoder``, a
character-level tokenizer and a synthetic reference clip. Random weights rarely emit the
stop token, so callers cap the number of generated speech tokens.

Importing this module imports torch; call these builders from fixtures only.
"""

from __future__ import annotations

import os
import wave
from pathlib import Path
from typing import Any

import numpy as np

TINY_LLAMA = "ttsd_tiny_llama"
TINY_GPT2 = "ttsd_tiny_gpt2"

#: The characters the tiny tokenizer knows; anything else maps to ``[UNK]``.
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-()"


def register_tiny_configs() -> None:
    """Add the tiny backbone configs to ``chatterbox.models.t3.llama_configs.LLAMA_CONFIGS``."""
    from chatterbox.models.t3.llama_configs import (
        GPT2_MEDIUM_CONFIG,
        LLAMA_520M_CONFIG_DICT,
        LLAMA_CONFIGS,
    )

    LLAMA_CONFIGS[TINY_LLAMA] = {
        **LLAMA_520M_CONFIG_DICT,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "head_dim": 16,
        "torch_dtype": "float32",
    }
    LLAMA_CONFIGS[TINY_GPT2] = {
        **GPT2_MEDIUM_CONFIG,
        "n_embd": 64,
        "hidden_size": 64,
        "n_head": 4,
        "n_layer": 2,
        "n_ctx": 2048,
        "n_positions": 2048,
    }


def write_tokenizer(path: Path) -> Path:
    """Write a character-level ``tokenizer.json`` that ``EnTokenizer`` accepts.

    ``[STOP]`` is id 0 and ``[START]`` id 255, as ``T3Config`` expects; every id is
    below the 704 text tokens of the English model.
    """
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {"[STOP]": 0, "[UNK]": 1, "[SPACE]": 2}
    for char in _CHARS:
        vocab[char] = len(vocab)
    while len(vocab) < 255:  # no holes in the id range
        vocab[f"[UNUSED{len(vocab)}]"] = len(vocab)
    vocab["[START]"] = 255
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.add_special_tokens(["[STOP]", "[START]", "[UNK]", "[SPACE]"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def write_clip(path: Path, seconds: float = 6.0, rate: int = 24000, seed: int = 0) -> Path:
    """Write a mono 16-bit WAV that sounds vaguely voiced (harmonics, vibrato, noise)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120.0 + 15.0 * np.sin(2 * np.pi * 3.0 * t) + 10.0 * seed
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2.0 * t) ** 2
    audio = 0.25 * envelope * voiced + 0.01 * rng.standard_normal(t.size)
    pcm = np.clip(audio * 32767, -32768, 32767).astype("<i2")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return path


def build_tiny_standard(workdir: Path, *, seed: int = 0, clip_seconds: float = 2.0) -> Any:
    """Return a ``ChatterboxTTS`` with tiny random weights on the CPU.

    Its built-in voice is prepared from a synthetic clip of ``clip_seconds``, like the
    ``conds.pt`` the real checkpoint ships (0 leaves it without one). The reference
    dominates the cost of a short generation, so tests keep it short.
    """
    import torch
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.modules.t3_config import T3Config
    from chatterbox.models.tokenizers import EnTokenizer
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.tts import ChatterboxTTS

    register_tiny_configs()
    torch.manual_seed(seed)
    hp = T3Config.english_only()
    hp.llama_config_name = TINY_LLAMA
    hp.use_perceiver_resampler = False
    t3 = T3(hp).eval()
    s3gen = S3Gen().eval()
    ve = VoiceEncoder().eval()
    tokenizer = EnTokenizer(str(write_tokenizer(workdir / "tokenizer.json")))
    model = ChatterboxTTS(t3, s3gen, ve, tokenizer, "cpu")
    if clip_seconds:
        clip = write_clip(workdir / "builtin.wav", seconds=clip_seconds, seed=seed)
        model.prepare_conditionals(str(clip))
    return model


_HOOK = '''\
"""Test hook (written by tests/chatterbox_tiny.py): tiny random Chatterbox weights."""
import os

if os.environ.get("TTSD_TINY_CHATTERBOX"):
    import ttsd.engines.chatterbox as _engine

    class _TinyWeights:
        @staticmethod
        def from_pretrained(device):
            from pathlib import Path

            from tests.chatterbox_tiny import build_tiny_standard

            return build_tiny_standard(Path(os.environ["TTSD_TINY_CHATTERBOX"]))

        from_local = None

    _engine._model_class = lambda kind: _TinyWeights
'''


def daemon_hook_env(directory: Path, repo_root: Path) -> dict[str, str]:
    """Environment that makes a ``python -m ttsd serve`` child load the tiny model.

    It puts a ``sitecustomize`` on ``PYTHONPATH`` that replaces the engine's hub download
    with :func:`build_tiny_standard`; the engine, the scheduler and playback stay real.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_HOOK)
    return {
        "PYTHONPATH": os.pathsep.join([str(directory), str(repo_root)]),
        "TTSD_TINY_CHATTERBOX": str(directory / "model"),
    }
