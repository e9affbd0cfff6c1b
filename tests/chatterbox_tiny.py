"""Build tiny, randomly initialised Chatterbox models that run through the real library.

The real checkpoints are gigabytes and come from the Hugging Face hub, which tests
cannot reach. What runs here is the genuine ``chatterbox-tts`` code path: ``T3``
text-to-token transformers with tiny backbones registered under new names in
``LLAMA_CONFIGS`` (2 Llama layers for standard, 14 narrow ones for multilingual so that
the alignment heads (9, 2), (12, 15), (13, 11) exist, 2 GPT-2 layers for Turbo), the real
but randomly initialised ``S3Gen`` and ``VoiceEncoder``, character-level tokenizers and
synthetic reference clips. Random weights rarely emit the stop token, so callers cap
the number of generated speech tokens.

S3Gen is the expensive part (264 M parameters, ~15 s to build here), and its
flow-matching estimator and HiFT vocoder take seconds per call: :func:`shrink_s3gen`
replaces those two with narrow random networks of the same classes. The multilingual
builder can reuse the standard model's S3Gen and voice encoder (same classes, same
shapes); Turbo needs its own meanflow S3Gen.

Importing this module imports numpy only; call these builders from fixtures.
"""

from __future__ import annotations

import os
import wave
from pathlib import Path
from typing import Any

import numpy as np

TINY_LLAMA = "ttsd_tiny_llama"
TINY_LLAMA_ALIGNED = "ttsd_tiny_llama_aligned"
TINY_GPT2 = "ttsd_tiny_gpt2"

#: The characters the tiny tokenizers know; anything else maps to ``[UNK]``.
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-()"

#: Language tags of the multilingual tokenizer (``[en]``, ...) and a few Cangjie codes.
CANGJIE_CODES = "abcdefghijklmnopqrstuvwxyz."


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
    LLAMA_CONFIGS[TINY_LLAMA_ALIGNED] = {
        **LLAMA_520M_CONFIG_DICT,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 14,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "head_dim": 4,
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


def char_tokenizer(specials: tuple[str, ...] = ()) -> Any:
    """A character-level ``tokenizers.Tokenizer`` with ``[STOP]`` = 0 and ``[START]`` = 255.

    ``specials`` (language tags, Cangjie codes) become whole tokens after id 255; every
    id stays below the 704 text tokens of the English model.
    """
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {"[STOP]": 0, "[UNK]": 1, "[SPACE]": 2}
    for char in _CHARS:
        vocab[char] = len(vocab)
    while len(vocab) < 255:  # no holes in the id range
        vocab[f"[UNUSED{len(vocab)}]"] = len(vocab)
    vocab["[START]"] = 255
    for token in specials:
        vocab[token] = len(vocab)
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.add_special_tokens(["[STOP]", "[START]", "[UNK]", "[SPACE]", *specials])
    return tokenizer


def multilingual_specials() -> tuple[str, ...]:
    from chatterbox.mtl_tts import SUPPORTED_LANGUAGES

    languages = tuple(f"[{code}]" for code in sorted(SUPPORTED_LANGUAGES))
    return languages + tuple(f"[cj_{c}]" for c in CANGJIE_CODES)


def write_tokenizer(path: Path, specials: tuple[str, ...] = ()) -> Path:
    """Write a character-level ``tokenizer.json`` that ``EnTokenizer``/``MTLTokenizer`` accept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    char_tokenizer(specials).save(str(path))
    return path


def write_turbo_tokenizer(directory: Path) -> Path:
    """Save a character-level GPT-2-style tokenizer that ``AutoTokenizer`` loads from a dir."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=char_tokenizer(), pad_token="[STOP]", eos_token="[STOP]"
    )
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return directory


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


def tiny_t3(kind: str) -> Any:
    """A tiny random ``T3`` laid out as the library builds ``kind`` (``from_local``'s hp)."""
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.modules.t3_config import T3Config

    register_tiny_configs()
    if kind == "turbo":
        hp = T3Config(text_tokens_dict_size=50276)
        hp.llama_config_name = TINY_GPT2
        hp.speech_tokens_dict_size = 6563
        hp.input_pos_emb = None
        hp.speech_cond_prompt_len = 375
        hp.use_perceiver_resampler = False
        hp.emotion_adv = False
        t3 = T3(hp)
        del t3.tfmr.wte  # as from_local does: T3 feeds embeddings, never ids
        return t3.eval()
    hp = T3Config.multilingual() if kind == "multilingual" else T3Config.english_only()
    hp.llama_config_name = TINY_LLAMA_ALIGNED if kind == "multilingual" else TINY_LLAMA
    hp.use_perceiver_resampler = False
    return T3(hp).eval()


def shrink_s3gen(s3gen: Any) -> Any:
    """Swap S3Gen's costly networks for smaller random ones of the same classes.

    The flow's conformer encoder (6 + 4 blocks), its flow-matching estimator
    (``ConditionalDecoder``: 256 channels, 12 mid blocks) and the HiFT vocoder (512 base
    channels) take seconds per call on a small CPU; with one encoder block, 64 channels
    and one block in the estimator and 64 in HiFT the same code runs in a fraction of
    that, with the same interfaces, sample counts (480 per mel frame) and edge
    behaviour in kind. The speech tokenizer and speaker encoder (conditioning only)
    stay as they are.
    """
    from chatterbox.models.s3gen.decoder import ConditionalDecoder
    from chatterbox.models.s3gen.f0_predictor import ConvRNNF0Predictor
    from chatterbox.models.s3gen.hifigan import HiFTGenerator
    from chatterbox.models.s3gen.transformer.upsample_encoder import UpsampleConformerEncoder

    # The encoder's width is fixed at 512 by its upsampling layers: fewer, thinner blocks.
    s3gen.flow.encoder = UpsampleConformerEncoder(
        output_size=512,
        attention_heads=8,
        linear_units=256,
        num_blocks=1,
        dropout_rate=0.1,
        positional_dropout_rate=0.1,
        attention_dropout_rate=0.1,
        normalize_before=True,
        input_layer="linear",
        pos_enc_layer_type="rel_pos_espnet",
        selfattention_layer_type="rel_selfattn",
        input_size=512,
        use_cnn_module=False,
        macaron_style=False,
    ).eval()
    s3gen.flow.decoder.estimator = ConditionalDecoder(
        in_channels=320,
        out_channels=80,
        causal=True,
        channels=[64],
        dropout=0.0,
        attention_head_dim=16,
        n_blocks=1,
        num_mid_blocks=1,
        num_heads=2,
        act_fn="gelu",
        meanflow=s3gen.meanflow,
    ).eval()
    s3gen.mel2wav = HiFTGenerator(
        base_channels=64,
        sampling_rate=24000,
        upsample_rates=[8, 5, 3],
        upsample_kernel_sizes=[16, 11, 7],
        source_resblock_kernel_sizes=[7, 7, 11],
        source_resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        f0_predictor=ConvRNNF0Predictor(cond_channels=64),
    ).eval()
    return s3gen


def tiny_s3gen(meanflow: bool = False) -> Any:
    """A random S3Gen (meanflow for Turbo) with the narrow estimator and vocoder."""
    from chatterbox.models.s3gen import S3Gen

    return shrink_s3gen(S3Gen(meanflow=meanflow).eval())


def build_tiny_standard(workdir: Path, *, seed: int = 0, clip_seconds: float = 2.0) -> Any:
    """Return a ``ChatterboxTTS`` with tiny random weights on the CPU.

    Its built-in voice is prepared from a synthetic clip of ``clip_seconds``, like the
    ``conds.pt`` the real checkpoint ships (0 leaves it without one). The reference
    dominates the cost of a short generation, so tests keep it short.
    """
    import torch
    from chatterbox.models.tokenizers import EnTokenizer
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.tts import ChatterboxTTS

    torch.manual_seed(seed)
    t3 = tiny_t3("standard")
    s3gen = tiny_s3gen()
    ve = VoiceEncoder().eval()
    tokenizer = EnTokenizer(str(write_tokenizer(workdir / "tokenizer.json")))
    model = ChatterboxTTS(t3, s3gen, ve, tokenizer, "cpu")
    if clip_seconds:
        clip = write_clip(workdir / "builtin.wav", seconds=clip_seconds, seed=seed)
        model.prepare_conditionals(str(clip))
    return model


def build_tiny_multilingual(
    workdir: Path, *, seed: int = 0, clip_seconds: float = 2.0, share: Any = None
) -> Any:
    """A ``ChatterboxMultilingualTTS`` with a tiny 14-layer T3 (the alignment heads exist).

    ``share``: a tiny standard model whose S3Gen and voice encoder to reuse (saves a
    gigabyte and 15 s). The tokenizer knows the language tags and ``[cj_a]``-style
    Cangjie codes; its Cangjie table is empty unless a test gives it one.
    """
    import torch
    from chatterbox.models.tokenizers import MTLTokenizer
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.mtl_tts import ChatterboxMultilingualTTS

    torch.manual_seed(seed)
    t3 = tiny_t3("multilingual")
    s3gen = share.s3gen if share is not None else tiny_s3gen()
    ve = share.ve if share is not None else VoiceEncoder().eval()
    tokenizer = MTLTokenizer.__new__(MTLTokenizer)  # without its network-bound Cangjie setup
    tokenizer.tokenizer = char_tokenizer(multilingual_specials())
    tokenizer.cangjie_converter = None
    model = ChatterboxMultilingualTTS(t3, s3gen, ve, tokenizer, "cpu")
    if clip_seconds:
        clip = write_clip(workdir / "builtin-mtl.wav", seconds=clip_seconds, seed=seed)
        model.prepare_conditionals(str(clip))
    return model


def build_tiny_turbo(
    workdir: Path, *, seed: int = 0, clip_seconds: float = 5.5, share: Any = None
) -> Any:
    """A ``ChatterboxTurboTTS`` with a tiny 2-layer GPT-2 T3 and a random meanflow S3Gen.

    Turbo refuses reference clips of 5 s or less. ``share``: a tiny model whose voice
    encoder to reuse.
    """
    import torch
    from chatterbox.models.voice_encoder import VoiceEncoder
    from chatterbox.tts_turbo import ChatterboxTurboTTS
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    t3 = tiny_t3("turbo")
    s3gen = tiny_s3gen(meanflow=True)
    ve = share.ve if share is not None else VoiceEncoder().eval()
    tokenizer = AutoTokenizer.from_pretrained(str(write_turbo_tokenizer(workdir / "turbo-tok")))
    model = ChatterboxTurboTTS(t3, s3gen, ve, tokenizer, "cpu")
    if clip_seconds:
        clip = write_clip(workdir / "builtin-turbo.wav", seconds=clip_seconds, seed=seed)
        model.prepare_conditionals(str(clip))
    return model


def save_checkpoint(model: Any, kind: str, directory: Path) -> Path:
    """Write ``model``'s weights as ``from_local`` of ``kind`` reads them (file names, formats).

    The architecture is tiny, so loading it back needs the tiny backbone registered under
    the library's config name (the tests patch ``LLAMA_CONFIGS``) and, for multilingual,
    a ``T3Config`` without the perceiver.
    """
    import torch
    from safetensors.torch import save_file

    def tensors(module: Any) -> dict[str, Any]:
        # T3.inference leaves its wrapper (sharing T3's layers) as ``patched_model``: not
        # part of a checkpoint.
        return {
            k: v.detach().clone().contiguous()
            for k, v in module.state_dict().items()
            if not k.startswith("patched_model.")
        }

    directory.mkdir(parents=True, exist_ok=True)
    if kind == "multilingual":
        torch.save(tensors(model.ve), directory / "ve.pt")
        save_file(tensors(model.t3), str(directory / "t3_mtl23ls_v2.safetensors"))
        torch.save(tensors(model.s3gen), directory / "s3gen.pt")
        write_tokenizer(directory / "grapheme_mtl_merged_expanded_v1.json", multilingual_specials())
    elif kind == "turbo":
        save_file(tensors(model.ve), str(directory / "ve.safetensors"))
        t3 = tensors(model.t3)
        # The hub file still holds GPT-2's token embedding, which from_local deletes after
        # loading; the tiny model was built without it.
        config = model.t3.cfg
        t3["tfmr.wte.weight"] = torch.zeros(config.vocab_size, config.n_embd)
        save_file(t3, str(directory / "t3_turbo_v1.safetensors"))
        save_file(tensors(model.s3gen), str(directory / "s3gen_meanflow.safetensors"))
        write_turbo_tokenizer(directory)
    else:
        save_file(tensors(model.ve), str(directory / "ve.safetensors"))
        save_file(tensors(model.t3), str(directory / "t3_cfg.safetensors"))
        save_file(tensors(model.s3gen), str(directory / "s3gen.safetensors"))
        write_tokenizer(directory / "tokenizer.json")
    if model.conds is not None:
        model.conds.save(directory / "conds.pt")
    return directory


_HOOK = '''\
"""Test hook (written by tests/chatterbox_tiny.py): tiny random Chatterbox weights."""
import os

if os.environ.get("TTSD_TINY_CHATTERBOX"):
    import ttsd.engines.chatterbox.loading as _loading

    class _TinyWeights:
        @staticmethod
        def from_pretrained(device):
            from pathlib import Path

            from tests.chatterbox_tiny import build_tiny_standard

            return build_tiny_standard(Path(os.environ["TTSD_TINY_CHATTERBOX"]))

        from_local = None

    _loading.model_class = lambda kind: _TinyWeights
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
