"""One chunk of speech: its prompt, its runner and the loop that turns tokens into pieces.

``ChatterboxEngine.stream`` prepares a :class:`ChunkRun` (the token generator, the
transformer runner and the vocoder) and hands it to :func:`pieces`, which decides when
to call the vocoder and what each piece is. :class:`ChunkStats` records what happened
(tokens, passes, vocoder calls, piece sizes, time in T3 and in the vocoder) for tests
and the benchmark.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ttsd.engines.base import CancelToken, float_to_int16
from ttsd.engines.chatterbox.settings import (
    SILENCE_TOKEN,
    SPEECH_VOCAB_SIZE,
    TURBO_TAIL_TOKENS,
    StreamPlan,
)

log = logging.getLogger("ttsd.engines.chatterbox")


@dataclasses.dataclass
class ChunkStats:
    """What the last ``stream`` call did, updated as it runs (for tests and benchmarks)."""

    seed: int = 0
    tokens: int = 0  # speech tokens kept so far
    forwards: int = 0  # T3 forward passes so far
    vocoder_calls: int = 0
    pieces: list[int] = dataclasses.field(default_factory=list)  # samples per piece
    tokens_at_first_piece: int | None = None
    first_piece_s: float | None = None  # seconds from the call to the first piece
    cancelled: bool = False
    finished: bool = False
    token_ids: list[int] = dataclasses.field(default_factory=list)  # every sampled id
    t3_s: float = 0.0  # seconds in the token loop (each step waits for its token)
    vocoder_s: float = 0.0  # seconds in vocoder calls, watermarking included


class ChunkRun:
    """One chunk's token generator, transformer runner and vocoder."""

    def __init__(self, tokens: Iterator[int], steps: Any, vocoder: Any) -> None:
        self.tokens = tokens
        self.steps = steps
        self.vocoder = vocoder

    def close(self) -> None:
        self.tokens.close()  # type: ignore[attr-defined]
        self.steps.close()


class StaticOrFallback:
    """Static cache when the prompt fits it, else transformers (decided at prefill)."""

    def __init__(self, static: Any, cap: int, fallback: Any) -> None:
        self.static = static
        self.cap = cap
        self.fallback = fallback
        self.inner: Any = None

    @property
    def forwards(self) -> int:
        return self.inner.forwards if self.inner is not None else 0

    def prefill(self, embeds: Any) -> Any:
        if self.static.fits(embeds.shape[1], self.cap):
            self.inner = self.static
            self.static.forwards = 0
        else:
            log.warning(
                "chatterbox: a prompt of %d positions does not fit the static cache; this "
                "chunk runs without CUDA graphs",
                embeds.shape[1],
            )
            self.inner = self.fallback()
        return self.inner.prefill(embeds)

    def step(self, embed: Any) -> Any:
        return self.inner.step(embed)

    def attention(self) -> Any:
        return self.inner.attention()

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


def pieces(
    run: ChunkRun,
    plan: StreamPlan,
    *,
    streaming: bool,
    turbo: bool,
    cancel: CancelToken,
    stats: ChunkStats,
    started: float,
) -> Iterator[np.ndarray]:
    """The chunk's int16 pieces: tokens in, a vocoder call per block, audio out.

    With ``streaming`` a vocoder call is made each time the tokens not yet vocoded reach
    the plan's next block size (and the vocoder has new audio to give); without it only
    once, at the end. ``cancel`` is checked before each vocoder call (the token loop
    checks it before each step). ``run`` is closed at the end, however it ends.
    """
    blocks = plan.block_sizes()
    block = next(blocks)
    speech: list[int] = []
    at_last_call = 0

    def emit(piece: np.ndarray) -> np.ndarray:
        stats.vocoder_calls = run.vocoder.calls
        stats.pieces.append(piece.size)
        if stats.tokens_at_first_piece is None:
            stats.tokens_at_first_piece = len(speech)
            stats.first_piece_s = time.monotonic() - started
        return float_to_int16(piece)

    tokens = run.tokens
    try:
        while True:
            clock = time.perf_counter()
            token = next(tokens, None)
            stats.t3_s += time.perf_counter() - clock
            if token is None:
                break
            stats.forwards = run.steps.forwards
            stats.token_ids.append(token)
            if token >= SPEECH_VOCAB_SIZE:
                continue  # not speech: the library drops these before S3Gen too
            speech.append(token)
            stats.tokens = len(speech)
            if not streaming or len(speech) - at_last_call < block:
                continue
            if not run.vocoder.ready(len(speech)):
                continue
            if cancel.cancelled:
                return
            clock = time.perf_counter()
            piece = run.vocoder.vocode(speech, final=False)
            stats.vocoder_s += time.perf_counter() - clock
            at_last_call = len(speech)
            block = next(blocks)
            if piece.size:
                yield emit(piece)
        stats.forwards = run.steps.forwards
        if cancel.cancelled:
            return
        if turbo:
            speech = speech + [SILENCE_TOKEN] * TURBO_TAIL_TOKENS  # as generate() does
        if speech:
            clock = time.perf_counter()
            piece = run.vocoder.vocode(speech, final=True)
            stats.vocoder_s += time.perf_counter() - clock
            if piece.size:
                yield emit(piece)
    finally:
        run.close()


def t3_cond(model: Any, kind: str, conds: Any, exaggeration: float | None) -> Any:
    """A fresh T3Cond for this chunk in T3's device and dtype.

    Fresh because T3 caches the embedded speech prompt on the object it is given,
    and the stored conditionals stay in float32 for every dtype. Standard and
    multilingual take ``exaggeration`` as the library's ``generate()`` does.
    """
    import torch
    from chatterbox.models.t3.modules.cond_enc import T3Cond

    t3 = model.t3
    source = conds.t3
    emotion = source.emotion_adv
    if exaggeration is not None and kind != "turbo":
        emotion = exaggeration * torch.ones(1, 1, 1)
    dtype = t3.speech_head.weight.dtype

    def cast(value: Any) -> Any:
        if not torch.is_tensor(value):
            return value
        return value.to(t3.device, dtype=dtype if value.is_floating_point() else None)

    return T3Cond(
        speaker_emb=cast(source.speaker_emb),
        clap_emb=cast(source.clap_emb),
        cond_prompt_speech_tokens=cast(source.cond_prompt_speech_tokens),
        cond_prompt_speech_emb=None,
        emotion_adv=cast(emotion),
    )


def text_tokens(model: Any, kind: str, text: str, language: str) -> Any:
    """The text as T3's input ids (1, L), normalised as each model's ``generate()`` does."""
    import torch.nn.functional as F

    hp = model.t3.hp
    if kind == "turbo":
        from chatterbox.tts_turbo import punc_norm

        encoded = model.tokenizer(
            punc_norm(text), return_tensors="pt", padding=True, truncation=True
        )
        return encoded.input_ids.to(model.t3.device)
    if kind == "multilingual":
        from chatterbox.mtl_tts import punc_norm

        ids = model.tokenizer.text_to_tokens(punc_norm(text), language_id=language)
    else:
        from chatterbox.tts import punc_norm

        ids = model.tokenizer.text_to_tokens(punc_norm(text))
    ids = F.pad(ids, (1, 0), value=hp.start_text_token)
    ids = F.pad(ids, (0, 1), value=hp.stop_text_token)
    return ids.to(model.t3.device)
