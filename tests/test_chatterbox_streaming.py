"""Token-level streaming of the Chatterbox engine, on tiny random models through the real library.

What is checked, with counters and recorded audio (never wall-clock limits):

- the token loop samples exactly the library's tokens under a fixed seed (all three
  models), also on the static-cache path that CUDA graphs replay;
- pieces add up to 960 samples per speech token, and each seam is the crossfade of the
  kept tail with the next rendering of the same samples;
- seams are no rougher than the rest of the audio;
- the first piece comes after the first block, long before the token loop ends;
- after cancel at most the forward pass in flight finishes, and no vocoder call starts;
- the multilingual model keeps its hooks and attention implementation over many chunks;
- bf16 and cuda_graphs settings on the CPU.

Generation is capped at a few dozen tokens (40 ms of audio each); the tiny models'
S3Gen has narrow networks (``tests/chatterbox_tiny.py``), so a chunk takes about a second.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("chatterbox", reason="chatterbox-tts is not installed")

from tests import chatterbox_fixtures
from ttsd.engines.base import CancelToken, EngineError
from ttsd.engines.chatterbox import SAMPLES_PER_TOKEN, ChatterboxEngine, StreamPlan

# The shared session fixtures (one build of each tiny model for the whole run).
tiny_workdir = chatterbox_fixtures.tiny_workdir
tiny_model = chatterbox_fixtures.tiny_model
tiny_multilingual = chatterbox_fixtures.tiny_multilingual
tiny_turbo = chatterbox_fixtures.tiny_turbo

pytestmark = [pytest.mark.chatterbox, pytest.mark.timeout(300)]

TEXT = "Hello there, this is a test of streaming."
BLOCK = 8  # first and later blocks in these tests: pieces after 8, 16, 24... tokens


def make_engine(model: Any, tmp_path: Path, **settings: Any) -> ChatterboxEngine:
    settings.setdefault("max_speech_tokens", 24)
    settings.setdefault("first_block_tokens", BLOCK)
    settings.setdefault("max_block_tokens", BLOCK)
    settings.setdefault("vocoder_steps", 1)
    engine = ChatterboxEngine.from_model(
        model,
        model_id="tiny",
        voices_dir=tmp_path / "voices",
        cache_dir=tmp_path / "cache",
        **settings,
    )
    engine.load()
    return engine


def library_tokens(model: Any, kind: str, seed: int, cap: int, text: str = TEXT) -> list[int]:
    """What the library's own loop samples after ``torch.manual_seed(seed)``.

    Runs on a copy of T3: the library's multilingual analyzer leaves hooks behind and
    switches attention to eager for good, which must not leak into other tests.
    """
    import torch
    import torch.nn.functional as F

    t3 = copy.deepcopy(model.t3)
    torch.manual_seed(seed)
    if kind == "turbo":
        from chatterbox.tts_turbo import punc_norm

        ids = model.tokenizer(punc_norm(text), return_tensors="pt", padding=True).input_ids
        out = t3.inference_turbo(
            t3_cond=model.conds.t3, text_tokens=ids, max_gen_len=cap - 1
        )  # the library's defaults: temperature 0.8, top_k 1000, top_p 0.95, penalty 1.2
        return [int(t) for t in out[0]]
    if kind == "multilingual":
        from chatterbox.mtl_tts import punc_norm

        ids = model.tokenizer.text_to_tokens(punc_norm(text), language_id="en")
        penalty = 2.0
    else:
        from chatterbox.tts import punc_norm

        ids = model.tokenizer.text_to_tokens(punc_norm(text))
        penalty = 1.2
    ids = torch.cat([ids, ids])
    ids = F.pad(F.pad(ids, (1, 0), value=t3.hp.start_text_token), (0, 1), value=0)
    out = t3.inference(
        t3_cond=model.conds.t3,
        text_tokens=ids,
        max_new_tokens=cap,
        temperature=0.8,
        cfg_weight=0.5,
        repetition_penalty=penalty,
        min_p=0.05,
        top_p=1.0,
    )
    return [int(t) for t in out[0] if int(t) != t3.hp.stop_speech_token]


@pytest.fixture
def models(tiny_model: Any, tiny_multilingual: Any, tiny_turbo: Any) -> dict[str, Any]:
    return {"standard": tiny_model, "multilingual": tiny_multilingual, "turbo": tiny_turbo}


@pytest.mark.parametrize("kind", ["standard", "multilingual", "turbo"])
@pytest.mark.parametrize("static", [False, True], ids=["transformers", "static-cache"])
def test_tokens_are_the_librarys_under_a_fixed_seed(
    kind: str, static: bool, models: dict[str, Any], tmp_path: Path
) -> None:
    model = models[kind]
    cap = 20
    engine = make_engine(model, tmp_path, max_speech_tokens=cap)
    engine.static_cache_without_graphs = static
    engine.synthesize(TEXT, None, {"seed": 7})
    ours = engine.last_chunk.token_ids
    assert len(ours) >= 10  # random weights rarely stop early; enough to compare
    assert ours == library_tokens(model, kind, 7, cap)[: len(ours)]
    if static:
        assert engine._static[1 if kind == "turbo" else 2].forwards == len(ours)


def expected_pieces(tokens: int, plan: StreamPlan, tail_tokens: int = 0) -> list[int]:
    """Piece sizes the plan promises for a chunk of ``tokens`` speech tokens.

    A vocoder call after every ``BLOCK`` new tokens returns audio up to ``holdback``
    tokens plus ``margin`` plus one crossfade before the end; the final call, when the
    token loop has ended, returns the rest, up to 960 samples per token (Turbo adds its
    3 silence tokens).
    """
    ends = []
    for count in range(BLOCK, tokens + 1, BLOCK):
        ends.append((count - plan.holdback) * SAMPLES_PER_TOKEN - plan.margin - plan.crossfade)
    ends.append((tokens + tail_tokens) * SAMPLES_PER_TOKEN)
    return list(np.diff([0, *ends]))


@pytest.mark.parametrize("kind", ["standard", "turbo"])
def test_pieces_add_up_to_960_samples_per_token(
    kind: str, models: dict[str, Any], tmp_path: Path
) -> None:
    engine = make_engine(models[kind], tmp_path, max_speech_tokens=30)
    pieces = list(engine.stream(TEXT, None, {"seed": 3}, CancelToken()))
    stats = engine.last_chunk
    sizes = [p.size for p in pieces]
    tail = 3 if kind == "turbo" else 0
    assert sizes == stats.pieces
    assert sizes == expected_pieces(stats.tokens, engine.plan, tail)
    assert sum(sizes) == (stats.tokens + tail) * SAMPLES_PER_TOKEN
    assert len(sizes) >= 3  # two seams at least
    assert all(p.dtype == np.int16 and p.ndim == 1 for p in pieces)


def test_each_seam_crossfades_the_kept_tail_with_the_next_rendering(
    tiny_model: Any,
    tmp_path: Path,
) -> None:
    """Recorded at the watermarker's input: each call's audio and where it starts."""
    from ttsd.engines.chatterbox.vocoder import StreamVocoder, crossfade_weights

    plan = StreamPlan(first_block=BLOCK, max_block=BLOCK)
    rendered: list[np.ndarray] = []

    def watermark(audio: np.ndarray) -> np.ndarray:
        rendered.append(audio.copy())
        return audio

    import torch

    vocoder = StreamVocoder(
        tiny_model.s3gen,
        tiny_model.conds.gen,
        plan,
        meanflow=False,
        steps=1,
        generator=torch.Generator().manual_seed(0),
        max_tokens=40,
        watermark=watermark,
    )
    tokens = [int(t) for t in torch.randint(0, 6561, (28,), generator=torch.Generator())]
    starts, pieces = [], []
    for count, final in ((8, False), (16, False), (24, False), (28, True)):
        emitted = vocoder.emitted
        starts.append(max(0, emitted - plan.watermark_context))
        pieces.append(vocoder.vocode(tokens[:count], final))
    fade_in, fade_out = crossfade_weights(plan.crossfade)
    x = plan.crossfade
    # first piece: the first rendering up to its hold-back, margin and crossfade
    assert np.array_equal(pieces[0], rendered[0][: pieces[0].size])
    emitted = pieces[0].size
    for k in range(1, 4):
        before, now = rendered[k - 1], rendered[k]
        tail = before[emitted - starts[k - 1] : emitted - starts[k - 1] + x]
        fresh = now[emitted - starts[k] :]
        np.testing.assert_allclose(
            pieces[k][:x], tail * fade_out + fresh[:x] * fade_in, rtol=0, atol=1e-7
        )
        assert np.array_equal(pieces[k][x:], fresh[x : pieces[k].size])
        emitted += pieces[k].size
    assert emitted == 28 * SAMPLES_PER_TOKEN
    assert vocoder.calls == 4


def roughness(audio: np.ndarray, centre: int, half: int = 24) -> float:
    """Largest second difference near ``centre``: a step or kink at a seam shows here."""
    window = audio[max(0, centre - half) : centre + half].astype(np.float64)
    return float(np.abs(np.diff(window, n=2)).max())


@pytest.fixture
def smooth_vocoder(tiny_model: Any) -> Iterator[Any]:
    """Make HiFT's output smooth so that seams can be heard (measured) at all.

    The tiny model's random HiFT makes white noise, in which any splice is invisible.
    Here its pitch predictor gives a smooth contour from the mel and its filter passes
    the harmonic source through, scaled by a gain from the mel: the audio is then the
    continuing source of ``StreamVocoder`` shaped by the flow's mel, so a phase jump,
    a misplaced crop or a misaligned crossfade shows as a kink. Everything else (the
    flow windows, hold-back, crops, crossfades, the real watermarker) is unchanged.
    """
    import torch

    hift = tiny_model.s3gen.mel2wav

    class SmoothPitch(torch.nn.Module):
        def forward(self, mel: torch.Tensor) -> torch.Tensor:
            return 140.0 + 30.0 * torch.tanh(mel.mean(dim=1))

    def decode(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        level = torch.nn.functional.interpolate(
            x.mean(dim=1, keepdim=True), scale_factor=480, mode="linear"
        )
        return 0.5 * s[:, 0, :] * torch.sigmoid(level[:, 0, :])

    # Set and restored by hand: monkeypatch's undo cannot put back a submodule.
    original = hift.f0_predictor
    hift.f0_predictor = SmoothPitch()
    hift.decode = decode
    try:
        yield tiny_model
    finally:
        hift.f0_predictor = original
        del hift.decode  # the class's method again


def test_seams_are_no_rougher_than_the_interior(smooth_vocoder: Any, tmp_path: Path) -> None:
    engine = make_engine(smooth_vocoder, tmp_path, max_speech_tokens=48)
    pieces = list(engine.stream(TEXT, None, {"seed": 11}, CancelToken()))
    audio = np.concatenate(pieces).astype(np.float64)
    seams = np.cumsum([p.size for p in pieces])[:-1]
    assert len(seams) >= 4
    skip = 2 * SAMPLES_PER_TOKEN  # the library's fade-in at the start
    interior = [
        roughness(audio, c)
        for c in range(skip, audio.size - 48, 48)
        if np.min(np.abs(seams - c)) > 1000
    ]
    # No seam rougher than the roughest stretch inside pieces, and seams typical overall.
    limit = max(interior)
    at_seams = [roughness(audio, int(seam)) for seam in seams]
    assert max(at_seams) <= limit, (at_seams, limit)
    assert np.median(at_seams) <= 1.25 * np.median(interior), (at_seams, np.median(interior))
    # The statistic does catch splices: the same audio with 37 samples cut out at each
    # seam (a phase jump of the harmonics, like joining two renderings without a fade).
    spliced = [
        roughness(np.concatenate([audio[:seam], audio[seam + 37 :]]), int(seam)) for seam in seams
    ]
    assert max(spliced) > 2 * limit


def test_first_piece_comes_after_the_first_block(
    tiny_model: Any,
    tmp_path: Path,
) -> None:
    engine = make_engine(tiny_model, tmp_path, max_speech_tokens=40)
    stream = engine.stream(TEXT, None, {"seed": 5}, CancelToken())
    first = next(stream)
    stats = engine.last_chunk
    assert stats.tokens == BLOCK == stats.tokens_at_first_piece
    at_first = stats.forwards
    assert at_first < 20  # the token loop is far from its end (40 tokens)
    assert first.size == (BLOCK - 3) * SAMPLES_PER_TOKEN - 2400 - 480
    rest = list(stream)
    assert rest and stats.finished
    assert stats.forwards == len(stats.token_ids) > at_first


def test_non_streaming_makes_one_piece_of_the_same_tokens(
    tiny_model: Any,
    tmp_path: Path,
) -> None:
    streaming = make_engine(tiny_model, tmp_path)
    streaming.synthesize(TEXT, None, {"seed": 9})
    whole = make_engine(tiny_model, tmp_path, streaming=False)
    pieces = list(whole.stream(TEXT, None, {"seed": 9}, CancelToken()))
    assert len(pieces) == 1 and whole.last_chunk.vocoder_calls == 1
    assert whole.last_chunk.token_ids == streaming.last_chunk.token_ids
    assert pieces[0].size == whole.last_chunk.tokens * SAMPLES_PER_TOKEN
    again = whole.synthesize(TEXT, None, {"seed": 9})
    assert np.array_equal(again, pieces[0])  # a seed makes the audio reproducible too


class _Counting:
    """Counts T3 forward passes and S3Gen flow calls; can cancel at a given forward."""

    def __init__(self, model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        from ttsd.engines.chatterbox import tokens

        self.forwards = 0
        self.vocoder = 0
        self.cancel = CancelToken()
        self.cancel_at: int | None = None
        self.vocoder_at_cancel: int | None = None
        step, prefill = tokens.HFSteps.step, tokens.HFSteps.prefill
        flow = type(model.s3gen.flow).inference

        def count(original: Any) -> Any:
            def wrapper(steps: Any, embeds: Any) -> Any:
                self.forwards += 1
                out = original(steps, embeds)
                if self.cancel_at is not None and self.forwards == self.cancel_at:
                    self.cancel.cancel()  # lands while this pass is "in flight"
                    self.vocoder_at_cancel = self.vocoder
                return out

            return wrapper

        def counted_flow(module: Any, *args: Any, **kwargs: Any) -> Any:
            self.vocoder += 1
            return flow(module, *args, **kwargs)

        monkeypatch.setattr(tokens.HFSteps, "step", count(step))
        monkeypatch.setattr(tokens.HFSteps, "prefill", count(prefill))
        monkeypatch.setattr(type(model.s3gen.flow), "inference", counted_flow)


def test_cancel_between_pieces_stops_before_the_next_step(
    tiny_model: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = make_engine(tiny_model, tmp_path, max_speech_tokens=40)
    counter = _Counting(tiny_model, monkeypatch)
    stream = engine.stream(TEXT, None, {"seed": 5}, counter.cancel)
    next(stream)
    forwards, calls = counter.forwards, counter.vocoder
    counter.cancel.cancel()
    assert list(stream) == []
    assert counter.forwards == forwards  # not one more step
    assert counter.vocoder == calls == 1
    assert engine.last_chunk.cancelled and not engine.last_chunk.finished


@pytest.mark.parametrize("at", [1, 5, 8, 12])
def test_cancel_during_a_step_lets_only_that_step_finish(
    at: int,
    tiny_model: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = make_engine(tiny_model, tmp_path, max_speech_tokens=40)
    counter = _Counting(tiny_model, monkeypatch)
    counter.cancel_at = at
    pieces = list(engine.stream(TEXT, None, {"seed": 5}, counter.cancel))
    assert counter.forwards == at  # the pass in flight when cancel came, none after
    assert counter.vocoder == counter.vocoder_at_cancel == len(pieces)  # none after it
    assert engine.last_chunk.cancelled


def test_cancel_before_start_runs_nothing(
    tiny_model: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = make_engine(tiny_model, tmp_path)
    counter = _Counting(tiny_model, monkeypatch)
    counter.cancel.cancel()
    assert list(engine.stream(TEXT, None, {}, counter.cancel)) == []
    assert counter.forwards == counter.vocoder == 0


def test_multilingual_keeps_its_hooks_and_attention_over_many_chunks(
    tiny_multilingual: Any,
    tmp_path: Path,
) -> None:
    from ttsd.engines.chatterbox.tokens import ALIGNED_HEADS

    model = tiny_multilingual
    engine = make_engine(model, tmp_path, max_speech_tokens=6)
    layers = [model.t3.tfmr.layers[layer].self_attn for layer, _ in ALIGNED_HEADS]
    implementation = model.t3.tfmr.config._attn_implementation
    counts, forwards = [], []
    for n in range(12):
        engine.synthesize(f"Chunk {n}.", None, {"seed": 1})
        counts.append([len(layer._forward_hooks) for layer in layers])
        forwards.append(engine.last_chunk.forwards)
    assert all(c == counts[0] for c in counts), counts
    assert model.t3.tfmr.config._attn_implementation == implementation != "eager"
    assert len(set(forwards)) == 1  # the same work per chunk

    # The defect being avoided: the library's loop adds hooks on every call.
    t3 = copy.deepcopy(model.t3)
    before = len(t3.tfmr.layers[9].self_attn._forward_hooks)
    import torch

    ids = torch.tensor([[255, 5, 6, 7, 8, 9, 0], [255, 5, 6, 7, 8, 9, 0]])
    for _ in range(2):
        t3.inference(t3_cond=model.conds.t3, text_tokens=ids, max_new_tokens=2)
    assert len(t3.tfmr.layers[9].self_attn._forward_hooks) == before + 2
    assert t3.tfmr.config._attn_implementation == "eager"


def test_alignment_guard_can_end_a_chunk(
    tiny_multilingual: Any,
    tmp_path: Path,
) -> None:
    """A token repeated twice in a row forces the end, as in the library's analyzer."""
    from ttsd.engines.chatterbox.tokens import AlignmentGuard

    class Flat:
        def attention(self) -> Any:
            import torch

            return torch.full((1, 12), 1 / 12)

    import torch

    guard = AlignmentGuard(Flat(), (2, 10), eos=6562)
    guard.frame = 1
    logits = torch.zeros(1, 8194)
    guard.step(logits.clone(), 100)
    guard.step(logits.clone(), 200)
    forced = guard.step(logits.clone(), 200)
    assert guard.forced_end and int(forced.argmax()) == 6562


def test_seeds_make_chunks_reproducible(
    tiny_model: Any,
    tmp_path: Path,
) -> None:
    engine = make_engine(tiny_model, tmp_path, max_speech_tokens=12)
    first = engine.synthesize(TEXT, None, {"seed": 21})
    assert np.array_equal(first, engine.synthesize(TEXT, None, {"seed": 21}))
    assert not np.array_equal(first, engine.synthesize(TEXT, None, {"seed": 22}))


def test_library_prints_and_progress_bars_stay_out_of_the_output(
    tiny_turbo: Any,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    engine = make_engine(tiny_turbo, tmp_path, max_speech_tokens=10)
    capfd.readouterr()
    engine.synthesize(TEXT, None, {"seed": 2})
    out, err = capfd.readouterr()
    assert "S3 Token" not in out + err  # Turbo's vocoder prints this on every call
    assert "it/s" not in out + err and "%|" not in out + err  # no tqdm bars


def test_bfloat16_runs_on_the_cpu(tiny_model: Any, tmp_path: Path) -> None:
    import torch
    from chatterbox.tts import ChatterboxTTS

    # Load casts T3 and the estimator in place: give this model its own copies of those
    # two (HiFT's weight norm cannot be deep-copied, and nothing else is cast).
    s3gen = copy.copy(tiny_model.s3gen)
    s3gen._modules = dict(s3gen._modules)
    flow = s3gen.flow = copy.copy(tiny_model.s3gen.flow)
    flow._modules = dict(flow._modules)
    decoder = flow.decoder = copy.copy(tiny_model.s3gen.flow.decoder)
    decoder._modules = dict(decoder._modules)
    decoder.estimator = copy.deepcopy(tiny_model.s3gen.flow.decoder.estimator)
    model = ChatterboxTTS(
        copy.deepcopy(tiny_model.t3),
        s3gen,
        tiny_model.ve,
        tiny_model.tokenizer,
        "cpu",
        conds=tiny_model.conds,
    )
    engine = make_engine(model, tmp_path, dtype="bfloat16", max_speech_tokens=12)
    assert model.t3.speech_head.weight.dtype == torch.bfloat16
    assert model.s3gen.flow.decoder.estimator.dtype == torch.bfloat16
    assert model.s3gen.mel2wav.conv_pre.weight.dtype == torch.float32  # HiFT stays fp32
    pcm = engine.synthesize(TEXT, None, {"seed": 4})
    assert pcm.dtype == np.int16
    assert pcm.size == engine.last_chunk.tokens * SAMPLES_PER_TOKEN > 0
    assert engine.describe()["dtype"] == "bfloat16"


def test_cuda_graphs_are_ignored_with_a_warning_on_the_cpu(
    tiny_model: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="ttsd.engines.chatterbox"):
        engine = make_engine(tiny_model, tmp_path, cuda_graphs=True, max_speech_tokens=10)
    assert any("cuda_graphs = true is ignored" in r.getMessage() for r in caplog.records)
    assert engine.describe()["cuda_graphs"] is False
    assert engine.synthesize(TEXT, None, {"seed": 1}).size > 0
    assert engine._static == {}  # the transformers path ran


@pytest.mark.parametrize(
    "settings",
    [
        {"dtype": "float16"},
        {"dtype": "bf16"},
        {"cuda_graphs": "yes"},
        {"cuda_graphs": 1},
        {"streaming": "no"},
        {"first_block_tokens": 3},
        {"first_block_tokens": 20, "max_block_tokens": 10},
        {"vocoder_steps": 0},
    ],
)
def test_bad_gpu_and_streaming_settings_are_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(EngineError) as err:
        ChatterboxEngine(**settings)
    assert err.value.code == "engine_load"
