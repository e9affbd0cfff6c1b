"""Time to first audio and real-time factor of the Chatterbox engine, per model and chunk.

Runs each model (standard, turbo, multilingual) through ``ChatterboxEngine.synthesize``,
exactly as the daemon does, on whatever device torch finds (or ``--device``). Weights:

- ``--weights hub`` / ``auto`` (the default): the real checkpoints through
  ``from_pretrained`` when they are in the Hugging Face cache (``auto``) or may be
  downloaded (``hub``); ``--model-dir DIR`` loads a local checkpoint instead;
- ``--weights random``, or ``auto`` with nothing cached: the library's own constructors
  at full size with random weights. The compute per token is the same; random weights
  never emit the stop token, so every chunk runs to ``--tokens`` speech tokens
  (25 per second of audio), standing in for a sentence of that length.

Reported per model: build/load time, voice conditioning time (a synthetic 10 s clip),
then per chunk the speech produced, the wall time and the real-time factor (wall time
divided by audio time; below 1 is faster than real time). Time to first audio is the
wall time of chunk 1: Chatterbox is not streaming, a chunk plays when it is complete.

Examples::

    python bench/chatterbox_gpu.py                       # all models, 3 chunks each
    python bench/chatterbox_gpu.py --models turbo --chunks 1 --tokens 25   # quick, CPU
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ttsd.engines.chatterbox import SAMPLE_RATE, ChatterboxEngine

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the quiet river bank.",
    "Local speech synthesis keeps your words on your own machine.",
    "Each sentence becomes a chunk, and chunks play while the next one is made.",
    "Voices are cloned from a short reference clip of clean speech.",
]
CHECK_FILE = {
    "standard": ("ResembleAI/chatterbox", "t3_cfg.safetensors"),
    "turbo": ("ResembleAI/chatterbox-turbo", "t3_turbo_v1.safetensors"),
    "multilingual": ("ResembleAI/chatterbox", "t3_mtl23ls_v2.safetensors"),
}
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-()"


def write_clip(path: Path, seconds: float = 10.0, rate: int = 24000) -> Path:
    """A synthetic voiced reference clip (harmonics with vibrato and a little noise)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(120.0 + 15.0 * np.sin(2 * np.pi * 3.0 * t)) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    audio = 0.25 * (0.5 + 0.5 * np.sin(2 * np.pi * 2.0 * t) ** 2) * voiced
    audio += 0.01 * rng.standard_normal(t.size)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def char_tokenizer(specials: list[str]) -> Any:
    """A character-level ``tokenizers.Tokenizer`` (stands in for the real vocabulary)."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {"[STOP]": 0, "[UNK]": 1, "[SPACE]": 2}
    for token in [*_CHARS, *specials]:
        vocab[token] = len(vocab)
    while len(vocab) < 255:
        vocab[f"[UNUSED{len(vocab)}]"] = len(vocab)
    vocab["[START]"] = 255
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.add_special_tokens(["[STOP]", "[START]", "[UNK]", "[SPACE]", *specials])
    return tokenizer


def build_random(kind: str, device: str, workdir: Path) -> Any:
    """The full-size architecture of ``kind`` with random weights, as ``from_local`` builds it."""
    import torch
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.modules.t3_config import T3Config
    from chatterbox.models.voice_encoder import VoiceEncoder

    torch.manual_seed(0)
    ve = VoiceEncoder()
    if kind == "turbo":
        from chatterbox.tts_turbo import ChatterboxTurboTTS
        from transformers import PreTrainedTokenizerFast

        hp = T3Config(text_tokens_dict_size=50276)
        hp.llama_config_name = "GPT2_medium"
        hp.speech_tokens_dict_size = 6563
        hp.input_pos_emb = None
        hp.speech_cond_prompt_len = 375
        hp.use_perceiver_resampler = False
        hp.emotion_adv = False
        t3 = T3(hp)
        del t3.tfmr.wte
        s3gen = S3Gen(meanflow=True)
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=char_tokenizer([]), pad_token="[STOP]", eos_token="[STOP]"
        )
        cls: Any = ChatterboxTurboTTS
    elif kind == "multilingual":
        from chatterbox.models.tokenizers import MTLTokenizer
        from chatterbox.mtl_tts import SUPPORTED_LANGUAGES, ChatterboxMultilingualTTS

        t3 = T3(T3Config.multilingual())
        s3gen = S3Gen()
        tokenizer = MTLTokenizer.__new__(MTLTokenizer)  # skips the hub fetch of Cangjie data
        tokenizer.tokenizer = char_tokenizer([f"[{code}]" for code in SUPPORTED_LANGUAGES])
        tokenizer.cangjie_converter = None
        cls = ChatterboxMultilingualTTS
    else:
        from chatterbox.models.tokenizers import EnTokenizer
        from chatterbox.tts import ChatterboxTTS

        t3 = T3()
        s3gen = S3Gen()
        path = workdir / "tokenizer.json"
        char_tokenizer([]).save(str(path))
        tokenizer = EnTokenizer(str(path))
        cls = ChatterboxTTS
    for module in (ve, t3, s3gen):
        module.to(device).eval()
    return cls(t3, s3gen, ve, tokenizer, device)


def cached_on_hub(kind: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    repo, filename = CHECK_FILE[kind]
    return isinstance(try_to_load_from_cache(repo, filename), str)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_model(kind: str, args: argparse.Namespace, device: str, workdir: Path) -> list[dict]:
    from ttsd.engines.chatterbox import _model_class

    weights = args.weights
    if weights == "auto":
        weights = "dir" if args.model_dir else ("hub" if cached_on_hub(kind) else "random")
    started = time.perf_counter()
    if weights == "random":
        model = build_random(kind, device, workdir)
    elif weights == "dir":
        model = _model_class(kind).from_local(args.model_dir, device)
    else:
        model = _model_class(kind).from_pretrained(device)
    sync(device)
    build_s = time.perf_counter() - started

    clip = write_clip(workdir / "reference.wav")
    started = time.perf_counter()
    model.prepare_conditionals(str(clip))
    sync(device)
    cond_s = time.perf_counter() - started

    settings: dict[str, Any] = {"max_speech_tokens": args.tokens, "voices_dir": workdir}
    engine = ChatterboxEngine.from_model(model, model_id=f"bench-{weights}", **settings)
    engine.load()
    rows = []
    for index in range(args.chunks):
        text = SENTENCES[index % len(SENTENCES)]
        started = time.perf_counter()
        pcm = engine.synthesize(text, None, {})
        wall = time.perf_counter() - started
        audio = pcm.size / SAMPLE_RATE
        rows.append(
            {
                "model": kind,
                "device": device,
                "weights": weights,
                "build_s": build_s,
                "cond_s": cond_s,
                "chunk": index + 1,
                "tokens": round(audio * 25),
                "audio_s": audio,
                "wall_s": wall,
                "rtf": wall / audio if audio else float("inf"),
            }
        )
        print(
            f"  {kind} chunk {index + 1}: {audio:.2f} s of audio in {wall:.2f} s",
            file=sys.stderr,
            flush=True,
        )
    engine.unload()
    del engine, model
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    return rows


def describe_device(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"  # noqa: E501


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="standard,turbo,multilingual")
    parser.add_argument("--chunks", type=int, default=3, help="chunks per model (default 3)")
    parser.add_argument(
        "--tokens", type=int, default=75, help="speech tokens per chunk cap (75 = 3 s of audio)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--weights", choices=("auto", "hub", "random"), default="auto")
    parser.add_argument("--model-dir", help="local checkpoint directory (from_local)")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.weights == "random" or (args.weights == "auto" and not args.model_dir):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported
    if args.model_dir:
        args.weights = "auto"

    from ttsd.engines.chatterbox import _resolve_device

    device = _resolve_device(args.device)
    print(f"device: {describe_device(device)}", file=sys.stderr)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ttsd-bench-") as tmp:
        for kind in models:
            print(f"{kind}: building...", file=sys.stderr, flush=True)
            rows += bench_model(kind, args, device, Path(tmp))

    print(f"\nChatterbox on {describe_device(device)}\n")
    print("| model | weights | load s | voice s | chunk | tokens | audio s | wall s | RTF |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['model']} | {r['weights']} | {r['build_s']:.1f} | {r['cond_s']:.2f} | "
            f"{r['chunk']} | {r['tokens']} | {r['audio_s']:.2f} | {r['wall_s']:.2f} | "
            f"{r['rtf']:.2f} |"
        )
    print("\nTime to first audio = wall s of chunk 1 (plus queueing); RTF = wall s / audio s.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
