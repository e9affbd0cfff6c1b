"""Benchmark of the Chatterbox engine: first piece, real-time factor, abort, memory, drift.

Runs each model (standard, turbo, multilingual) through ``ChatterboxEngine.stream``
exactly as the daemon's engine host does, on whatever device torch finds (or
``--device``), and writes every result to a JSON file as soon as it is measured (a run
cut short still leaves what it measured). Per model:

- build and conditioning time, GPU memory after loading;
- warm-up chunks first (CUDA kernels, allocator, caches), not counted;
- per variant (fp32 streaming, fp32 at the chunk's end, fp32 + CUDA graphs, bf16,
  bf16 + CUDA graphs; graphs need CUDA): time to the first audio piece (the call to
  ``stream`` until its first piece: text, prompt, the first block of tokens, one vocoder
  call, watermarking), the whole chunk's time, speech tokens, T3 milliseconds per token,
  real-time factor overall and after the first piece;
- whether the CUDA-graph path samples the same tokens as the eager one (same seed);
- abort latency: ``cancel()`` from another thread at a random moment after the first
  piece, until the generator returns;
- the watermark detector's score on streamed audio and on unwatermarked vocoder output;
- GPU memory before and after ``unload``;
- multilingual only: real-time factor over ``--drift-chunks`` chunks (200), first
  against last, with the attention hook count, and the library's own loop for contrast.

Weights: ``--weights random`` (the default) builds the library's full-size architectures
with random weights, as ``from_local`` would with a checkpoint; the compute per token is
the real one, but random weights rarely emit the stop token, so every chunk runs to
``--tokens`` speech tokens (25 per second of audio). Counts are of tokens, never of
audio duration alone. ``--weights tiny`` uses the test suite's tiny models (for a dry
run of this script). ``--model-dir DIR`` or ``--weights hub`` load real weights.

Examples::

    python bench/chatterbox_gpu.py --json out.json                 # all models, GPU
    python bench/chatterbox_gpu.py --quick --device cpu --json /tmp/q.json   # dry run
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import traceback
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ttsd.engines.base import CancelToken  # noqa: E402
from ttsd.engines.chatterbox import SAMPLE_RATE, ChatterboxEngine  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the quiet river bank.",
    "Local speech synthesis keeps your words on your own machine.",
    "Each sentence becomes a chunk, and chunks play while the next one is made.",
    "Voices are cloned from a short reference clip of clean speech.",
]
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-()"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Results:
    """The JSON document, rewritten atomically after every measurement."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, Any] = {"meta": {}, "models": {}}

    def save(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)


class Budget:
    """Wall-clock budget: phases that would start after it are skipped and say so."""

    def __init__(self, seconds: float) -> None:
        self.start = time.monotonic()
        self.seconds = seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


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
    for token in [*_CHARS]:
        vocab[token] = len(vocab)
    while len(vocab) < 255:
        vocab[f"[UNUSED{len(vocab)}]"] = len(vocab)
    vocab["[START]"] = 255
    for token in specials:
        vocab[token] = len(vocab)
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.add_special_tokens(["[STOP]", "[START]", "[UNK]", "[SPACE]", *specials])
    return tokenizer


_SHARED: dict[str, Any] = {}  # S3Gen and voice encoder shared by standard and multilingual


def build_model(kind: str, device: str, workdir: Path, weights: str) -> Any:
    """The model of ``kind`` with random weights, full size or tiny; real ones from dir/hub."""
    import torch

    if weights in ("hub", "dir"):
        from ttsd.engines.chatterbox.loading import load_model

        model_dir = Path(_SHARED["model_dir"]) if weights == "dir" else None
        return load_model(kind, model_dir, device).model
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.t3.modules.t3_config import T3Config
    from chatterbox.models.voice_encoder import VoiceEncoder

    tiny = weights == "tiny"
    if tiny:
        sys.path.insert(0, str(ROOT))
        from tests import chatterbox_tiny

        chatterbox_tiny.register_tiny_configs()
    torch.manual_seed(0)
    if "ve" not in _SHARED:
        _SHARED["ve"] = VoiceEncoder().to(device).eval()
    ve = _SHARED["ve"]

    def s3gen(meanflow: bool) -> Any:
        key = f"s3gen-{meanflow}"
        if key not in _SHARED or meanflow:  # Turbo's meanflow S3Gen is built for Turbo only
            module = S3Gen(meanflow=meanflow)
            if tiny:
                chatterbox_tiny.shrink_s3gen(module)
            _SHARED[key] = module.to(device).eval()
        return _SHARED[key]

    if kind == "turbo":
        from chatterbox.tts_turbo import ChatterboxTurboTTS
        from transformers import PreTrainedTokenizerFast

        hp = T3Config(text_tokens_dict_size=50276)
        hp.llama_config_name = chatterbox_tiny.TINY_GPT2 if tiny else "GPT2_medium"
        hp.speech_tokens_dict_size = 6563
        hp.input_pos_emb = None
        hp.speech_cond_prompt_len = 375
        hp.use_perceiver_resampler = False
        hp.emotion_adv = False
        t3 = T3(hp)
        del t3.tfmr.wte
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=char_tokenizer([]), pad_token="[STOP]", eos_token="[STOP]"
        )
        cls: Any = ChatterboxTurboTTS
        gen = s3gen(True)
    elif kind == "multilingual":
        from chatterbox.models.tokenizers import MTLTokenizer
        from chatterbox.mtl_tts import SUPPORTED_LANGUAGES, ChatterboxMultilingualTTS

        hp = T3Config.multilingual()
        if tiny:
            hp.llama_config_name = chatterbox_tiny.TINY_LLAMA_ALIGNED
            hp.use_perceiver_resampler = False
        t3 = T3(hp)
        tokenizer = MTLTokenizer.__new__(MTLTokenizer)  # no hub fetch of Cangjie data
        tokenizer.tokenizer = char_tokenizer([f"[{code}]" for code in SUPPORTED_LANGUAGES])
        tokenizer.cangjie_converter = None
        cls = ChatterboxMultilingualTTS
        gen = s3gen(False)
    else:
        from chatterbox.models.tokenizers import EnTokenizer
        from chatterbox.tts import ChatterboxTTS

        hp = T3Config.english_only()
        if tiny:
            hp.llama_config_name = chatterbox_tiny.TINY_LLAMA
            hp.use_perceiver_resampler = False
        t3 = T3(hp)
        path = workdir / "tokenizer.json"
        char_tokenizer([]).save(str(path))
        tokenizer = EnTokenizer(str(path))
        cls = ChatterboxTTS
        gen = s3gen(False)
    t3 = t3.to(device).eval()
    from ttsd.engines.chatterbox.loading import fix_library, quiet_output

    with quiet_output():  # the watermarker prints when it loads
        model = cls(t3, gen, ve, tokenizer, device)
    fix_library(model)  # the engine does this at load; prepare_conditionals comes first here
    return model


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def memory(device: str) -> dict[str, float]:
    """GPU memory in MiB (allocated by tensors, reserved by the allocator, peak allocated)."""
    import torch

    if not device.startswith("cuda"):
        import resource

        rss = 0.0
        with open("/proc/self/status") as status:  # Linux: the current resident set
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"rss_mib": rss, "rss_peak_mib": peak}
    sync(device)
    return {
        "allocated_mib": torch.cuda.memory_allocated() / 2**20,
        "reserved_mib": torch.cuda.memory_reserved() / 2**20,
        "peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
    }


def run_chunk(engine: ChatterboxEngine, text: str, seed: int) -> dict[str, Any]:
    """One chunk through ``stream``: first piece, total, tokens, rates."""
    started = time.perf_counter()
    first = None
    samples = 0
    for piece in engine.stream(text, None, {"seed": seed}, CancelToken()):
        if first is None:
            first = time.perf_counter() - started
        samples += piece.size
    total = time.perf_counter() - started
    stats = engine.last_chunk
    audio = samples / SAMPLE_RATE
    after_first = audio - (stats.pieces[0] / SAMPLE_RATE if stats.pieces else 0.0)
    return {
        "first_piece_s": first,
        "total_s": total,
        "speech_tokens": stats.tokens,
        "sampled_tokens": len(stats.token_ids),
        "tokens_at_first_piece": stats.tokens_at_first_piece,
        "audio_s": audio,
        "pieces": len(stats.pieces),
        "vocoder_calls": stats.vocoder_calls,
        "t3_s": stats.t3_s,
        "vocoder_s": stats.vocoder_s,
        "t3_ms_per_token": 1000 * stats.t3_s / max(1, len(stats.token_ids)),
        "rtf": total / audio if audio else None,
        "rtf_after_first_piece": (total - (first or 0.0)) / after_first if after_first else None,
        "token_ids": stats.token_ids,
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians (and min/max) of the numeric fields of measured chunks."""
    out: dict[str, Any] = {"chunks": len(rows)}
    for key in (
        "first_piece_s",
        "total_s",
        "speech_tokens",
        "t3_ms_per_token",
        "vocoder_s",
        "rtf",
        "rtf_after_first_piece",
    ):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[key] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
            }
    return out


def abort_latency(engine: ChatterboxEngine, trials: int, seed: int) -> list[dict[str, Any]]:
    """Cancel from another thread at a random moment after the first piece; time the return."""
    rng = random.Random(seed)
    rows = []
    for trial in range(trials):
        cancel = CancelToken()
        first_piece = threading.Event()  # set by the consumer thread
        ended: dict[str, float] = {}

        def consume(
            token: CancelToken = cancel,
            done: dict[str, float] = ended,
            index: int = trial,
            first_piece: threading.Event = first_piece,
        ) -> None:
            pieces = 0
            for _ in engine.stream(SENTENCES[index % 4], None, {"seed": 100 + index}, token):
                pieces += 1
                first_piece.set()
            done["at"] = time.perf_counter()
            done["pieces"] = pieces
            first_piece.set()

        thread = threading.Thread(target=consume)
        thread.start()
        first_piece.wait(timeout=120)
        time.sleep(rng.uniform(0.0, 0.3))
        cancelled_at = time.perf_counter()
        cancel.cancel()
        thread.join(timeout=120)
        stats = engine.last_chunk
        rows.append(
            {
                "latency_s": ended.get("at", float("nan")) - cancelled_at,
                "pieces_before": ended.get("pieces"),
                "finished_anyway": stats.finished,
                "tokens": stats.tokens,
            }
        )
    return rows


def watermark_check(engine: ChatterboxEngine, model: Any) -> dict[str, Any]:
    """The detector's mean bit on a streamed chunk and on the same kind of audio unmarked."""
    import torch

    from ttsd.engines.chatterbox.vocoder import StreamVocoder

    pcm = np.concatenate(list(engine.stream(SENTENCES[0], None, {"seed": 7}, CancelToken())))
    marked = pcm.astype(np.float32) / 32768.0
    vocoder = StreamVocoder(
        model.s3gen,
        model.conds.gen,
        engine.plan,
        meanflow=engine.kind == "turbo",
        steps=engine.vocoder_steps,
        generator=torch.Generator(device=str(model.s3gen.device)).manual_seed(0),
        max_tokens=engine.last_chunk.tokens + 8,
        watermark=None,
    )
    speech = [t for t in engine.last_chunk.token_ids if t < 6561]
    plain = vocoder.vocode(speech, final=True)
    score = model.watermarker.get_watermark
    return {
        "detector_mean_on_streamed_audio": float(np.mean(score(marked, sample_rate=SAMPLE_RATE))),
        "detector_mean_on_unwatermarked_audio": float(
            np.mean(score(plain, sample_rate=SAMPLE_RATE))
        ),
        "note": "1.0 = watermark found in every detector frame, ~0 = none",
    }


def hook_count(model: Any) -> int:
    return sum(len(model.t3.tfmr.layers[layer].self_attn._forward_hooks) for layer in (9, 12, 13))


def drift(engine: ChatterboxEngine, model: Any, chunks: int, budget: Budget) -> dict[str, Any]:
    """Real-time factor chunk after chunk on the multilingual model (ttsd's loop)."""
    rows = []
    for n in range(chunks):
        if budget.left() < 20:
            break
        started = time.perf_counter()
        pcm = engine.synthesize(SENTENCES[n % 4], None, {"seed": n})
        wall = time.perf_counter() - started
        rows.append(
            {
                "rtf": wall / (pcm.size / SAMPLE_RATE) if pcm.size else None,
                "ms_per_token": 1000 * wall / max(1, len(engine.last_chunk.token_ids)),
                "hooks": hook_count(model),
            }
        )
    per_token = [r["ms_per_token"] for r in rows]
    window = max(1, min(20, len(rows) // 4))
    return {
        "chunks": len(rows),
        "requested": chunks,
        "first_ms_per_token": statistics.mean(per_token[:window]) if rows else None,
        "last_ms_per_token": statistics.mean(per_token[-window:]) if rows else None,
        "hooks_first": rows[0]["hooks"] if rows else None,
        "hooks_last": rows[-1]["hooks"] if rows else None,
        "ms_per_token": per_token,
    }


def library_drift(model: Any, calls: int, cap: int, budget: Budget) -> dict[str, Any]:
    """The library's own ``T3.inference`` on a copy of T3, for contrast (hooks pile up)."""
    import torch
    import torch.nn.functional as F

    t3 = copy.deepcopy(model.t3)
    ids = model.tokenizer.text_to_tokens("Hello there.", language_id="en")
    ids = torch.cat([ids, ids])
    ids = F.pad(F.pad(ids, (1, 0), value=255), (0, 1), value=0).to(t3.device)
    times, hooks = [], []
    for _ in range(calls):
        if budget.left() < 15:
            break
        started = time.perf_counter()
        out = t3.inference(t3_cond=model.conds.t3, text_tokens=ids, max_new_tokens=cap)
        times.append(1000 * (time.perf_counter() - started) / max(1, out.shape[1]))
        hooks.append(len(t3.tfmr.layers[9].self_attn._forward_hooks))
    del t3
    return {"calls": len(times), "ms_per_token": times, "hooks_on_layer_9": hooks}


def guarded(results: Results, where: dict[str, Any], key: str, fn: Callable[[], Any]) -> Any:
    """Run one measurement; record its result or its error, and save either way."""
    try:
        value = fn()
        where[key] = value
        return value
    except Exception as exc:
        where[key] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        log(f"  {key} FAILED: {type(exc).__name__}: {exc}")
        return None
    finally:
        results.save()


def bench_model(
    kind: str,
    args: argparse.Namespace,
    device: str,
    workdir: Path,
    results: Results,
    budget: Budget,
) -> None:
    """Build ``kind``, measure every variant, unload; results go into ``results``."""
    import torch

    entry: dict[str, Any] = {}
    results.data["models"][kind] = entry
    entry["memory_before_load"] = memory(device)
    started = time.perf_counter()
    model = build_model(kind, device, workdir, args.weights)
    # Standard and multilingual share one S3Gen here; an earlier model's bf16 variants
    # cast its estimator in place: every model starts in float32.
    model.s3gen.flow.decoder.estimator.float()
    sync(device)
    entry["build_s"] = time.perf_counter() - started
    entry["memory_after_load"] = memory(device)
    clip = write_clip(workdir / "reference.wav")
    started = time.perf_counter()
    model.prepare_conditionals(str(clip))
    sync(device)
    entry["conditioning_s"] = time.perf_counter() - started
    results.save()
    log(f"{kind}: built in {entry['build_s']:.1f} s, voice in {entry['conditioning_s']:.1f} s")
    bench_variants(kind, model, args, device, workdir, entry, results, budget)
    before = memory(device)
    del model
    _SHARED.pop("s3gen-True", None)
    later = args.models_list[args.models_list.index(kind) + 1 :]
    if not any(k in ("standard", "multilingual") for k in later):
        _SHARED.pop("s3gen-False", None)
    else:
        entry["memory_unload_note"] = "S3Gen stays loaded: the next model shares it"
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    entry["memory_unload"] = {"before": before, "after": memory(device)}
    results.save()


def variants_for(device: str) -> list[tuple[str, dict[str, Any]]]:
    """The settings compared, in an order that casts to bf16 last (casting is in place)."""
    cuda = device.startswith("cuda")
    variants: list[tuple[str, dict[str, Any]]] = [
        ("fp32_stream", {"dtype": "float32"}),
        ("fp32_end_of_chunk", {"dtype": "float32", "streaming": False}),
    ]
    if cuda:
        variants.append(("fp32_cuda_graphs", {"dtype": "float32", "cuda_graphs": True}))
    variants.append(("bf16_stream", {"dtype": "bfloat16"}))
    if cuda:
        variants.append(("bf16_cuda_graphs", {"dtype": "bfloat16", "cuda_graphs": True}))
    return variants


def bench_variants(
    kind: str,
    model: Any,
    args: argparse.Namespace,
    device: str,
    workdir: Path,
    entry: dict[str, Any],
    results: Results,
    budget: Budget,
) -> None:
    """Each variant: warm-up, measured chunks; abort, watermark and drift where they belong."""
    import torch

    common = {
        "max_speech_tokens": args.tokens,
        "voices_dir": workdir / "voices",
        "cache_dir": workdir / "cache",
    }
    entry["variants"] = {}
    reference_tokens: list[int] | None = None
    for name, settings in variants_for(device):
        if args.variants and name not in args.variants.split(","):
            continue
        if budget.left() < args.reserve_s:
            entry["variants"][name] = {"skipped": "time budget"}
            continue
        slot: dict[str, Any] = {}
        entry["variants"][name] = slot

        def measure(settings: dict[str, Any] = settings, slot: dict[str, Any] = slot) -> Any:
            engine = ChatterboxEngine.from_model(
                model, model_id=f"bench-{args.weights}", **common, **settings
            )
            engine.load()
            for w in range(args.warmup):
                run_chunk(engine, SENTENCES[w % 4], seed=1000 + w)
            rows = [run_chunk(engine, SENTENCES[i % 4], seed=i) for i in range(args.chunks)]
            slot["memory"] = memory(device)
            slot["summary"] = summarize(rows)
            slot["chunks"] = [{k: v for k, v in r.items() if k != "token_ids"} for r in rows]
            return engine, rows

        outcome = guarded(results, slot, "_run", measure)
        slot.pop("_run", None)
        if outcome is None:
            continue
        engine, rows = outcome
        summary = slot["summary"]

        def median(key: str, summary: dict[str, Any] = summary) -> float:
            return float(summary.get(key, {}).get("median") or 0.0)

        log(
            f"  {kind} {name}: first piece {median('first_piece_s'):.3f} s, "
            f"T3 {median('t3_ms_per_token'):.1f} ms/token, RTF {median('rtf'):.2f}"
        )
        if name == "fp32_stream":
            reference_tokens = rows[0]["token_ids"]
            guarded(
                results,
                entry,
                "abort",
                lambda engine=engine: abort_latency(engine, args.abort_trials, 5),
            )
            guarded(results, entry, "watermark", lambda e=engine: watermark_check(e, model))
        if name == "fp32_cuda_graphs" and reference_tokens is not None:
            ours = rows[0]["token_ids"]
            compared = min(len(ours), len(reference_tokens))
            same = next(
                (i for i in range(compared) if ours[i] != reference_tokens[i]),
                compared,
            )
            slot["tokens_equal_to_eager_prefix"] = same
            slot["tokens_compared"] = compared
        if kind == "multilingual" and name == "fp32_stream" and args.drift_chunks:
            drift_engine = ChatterboxEngine.from_model(
                model, model_id="bench-drift", **{**common, "max_speech_tokens": args.drift_tokens}
            )
            drift_engine.load()
            guarded(
                results,
                entry,
                "drift",
                lambda e=drift_engine: drift(e, model, args.drift_chunks, budget),
            )
            if args.library_drift:
                guarded(
                    results,
                    entry,
                    "library_drift",
                    lambda: library_drift(model, args.library_drift, args.drift_tokens, budget),
                )
        del engine
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


def describe_device(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="turbo,standard,multilingual")
    parser.add_argument("--chunks", type=int, default=3, help="measured chunks per variant")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured chunks first")
    parser.add_argument("--tokens", type=int, default=80, help="speech tokens per chunk (cap)")
    parser.add_argument("--abort-trials", type=int, default=4)
    parser.add_argument("--drift-chunks", type=int, default=200)
    parser.add_argument("--drift-tokens", type=int, default=10)
    parser.add_argument("--library-drift", type=int, default=20, help="library calls, contrast")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--weights", choices=("random", "tiny", "hub", "dir"), default="random")
    parser.add_argument("--model-dir", help="a local checkpoint (implies --weights dir)")
    parser.add_argument("--json", type=Path, help="write results here (after every step)")
    parser.add_argument("--markdown", type=Path, help="write the table here as well")
    parser.add_argument(
        "--variants",
        default="",
        help="comma-separated subset of fp32_stream, fp32_end_of_chunk, fp32_cuda_graphs, "
        "bf16_stream, bf16_cuda_graphs (default: all that the device supports)",
    )
    parser.add_argument("--budget-s", type=float, default=400.0, help="skip phases after this")
    parser.add_argument("--reserve-s", type=float, default=25.0, help="time a variant needs")
    parser.add_argument(
        "--quick", action="store_true", help="dry run: tiny weights, 1 chunk, few tokens"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.weights = "tiny" if args.weights == "random" else args.weights
        args.chunks, args.warmup, args.tokens, args.abort_trials = 1, 1, 24, 2
        args.drift_chunks, args.drift_tokens, args.library_drift = 6, 6, 3
    if args.model_dir:
        args.weights = "dir"
        _SHARED["model_dir"] = args.model_dir
    if args.weights != "hub":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
    args.models_list = [m.strip() for m in args.models.split(",") if m.strip()]

    import torch

    from ttsd.engines.chatterbox.loading import library_version, resolve_device

    budget = Budget(args.budget_s)
    device = resolve_device(args.device)
    results = Results(args.json)
    results.data["meta"] = {
        "device": describe_device(device),
        "torch": torch.__version__,
        "chatterbox_tts": library_version(),
        "python": platform.python_version(),
        "weights": args.weights,
        "weights_note": (
            "random weights at full size: real compute per token, but the stop token "
            "rarely comes, so each chunk runs to the token cap"
            if args.weights == "random"
            else args.weights
        ),
        "tokens_per_chunk_cap": args.tokens,
        "first_piece_definition": "stream() call to its first piece (engine only: the "
        "daemon adds queueing and the sink's latency)",
        "args": {k: v for k, v in vars(args).items() if k != "models_list"},
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    results.save()
    log(f"device: {results.data['meta']['device']}")
    with tempfile.TemporaryDirectory(prefix="ttsd-bench-") as tmp:
        for kind in args.models_list:
            if budget.left() < args.reserve_s:
                results.data["models"][kind] = {"skipped": "time budget"}
                results.save()
                continue
            log(f"{kind}: building ({args.weights} weights)")
            try:
                bench_model(kind, args, device, Path(tmp), results, budget)
            except Exception as exc:  # one model failing must not stop the others
                results.data["models"].setdefault(kind, {})["error"] = {
                    "message": f"{type(exc).__name__}: {exc}",
                    "trace": traceback.format_exc(),
                }
                log(f"{kind} FAILED: {type(exc).__name__}: {exc}")
                gc.collect()
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
            results.save()
    results.data["meta"]["wall_s"] = time.monotonic() - budget.start
    results.save()
    table = render(results.data)
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    failed = [k for k, v in results.data["models"].items() if "error" in v]
    return 1 if len(failed) == len(args.models_list) else 0


def render(data: dict[str, Any]) -> str:
    """A Markdown table of the medians, for the log and for docs/benchmarks.md."""
    lines = [
        f"Chatterbox on {data['meta']['device']} ({data['meta']['weights']} weights, "
        f"<= {data['meta']['tokens_per_chunk_cap']} tokens per chunk)",
        "",
        "| model | variant | first piece s | chunk s | tokens | T3 ms/token | RTF "
        "| RTF after 1st |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, entry in data["models"].items():
        for name, slot in (entry.get("variants") or {}).items():
            summary = slot.get("summary") if isinstance(slot, dict) else None
            if not summary:
                lines.append(f"| {kind} | {name} | {slot.get('skipped', 'failed')} |")
                continue

            def med(key: str, fmt: str = ".3f", s: dict[str, Any] = summary) -> str:
                value = s.get(key, {}).get("median")
                return format(value, fmt) if value is not None else "-"

            lines.append(
                f"| {kind} | {name} | {med('first_piece_s')} | {med('total_s', '.2f')} | "
                f"{med('speech_tokens', '.0f')} | {med('t3_ms_per_token', '.1f')} | "
                f"{med('rtf', '.2f')} | {med('rtf_after_first_piece', '.2f')} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
