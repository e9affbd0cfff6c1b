"""ttsd's own T3 token loop: speech tokens one at a time, stoppable between steps.

The library's ``T3.inference`` (standard, multilingual) and ``T3.inference_turbo`` return
all tokens of a chunk at once. These generators do the same computation step by step
and yield each token as soon as it is sampled, so that audio can be made from the first
ones while the rest are still being generated, and return before the next forward
pass once the cancel token is set. The logits go through the same processing as in the
library, with the same ``transformers`` processor classes and in the same order:

- standard and multilingual: classifier-free guidance (``cond + w * (cond - uncond)``),
  the multilingual alignment checks (:class:`AlignmentGuard`), repetition penalty over
  the tokens so far (start token included), temperature, min-p, top-p;
- Turbo: temperature, top-k, top-p, then repetition penalty, and a first token sampled
  from the prompt before the loop.

Two quirks of the library are kept because the trained weights expect them: the
standard/multilingual prompt ends with the start-of-speech embedding twice, and
Turbo's first token is never treated as the end. Tokens are drawn with their own
``torch.Generator``, so the vocoder's random numbers in between cannot change them: with
a generator seeded ``s`` the tokens equal the library's after ``torch.manual_seed(s)``.

Differences, on purpose: a CFG weight of 0 runs a batch of one (the library crashes on
it), the multilingual alignment checks read their three attention heads through
hooks that live only as long as the chunk, and the model keeps its attention
implementation (the library's analyzer adds hooks on every call and switches the whole
model to eager attention for good, which made each chunk slower than the last).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ttsd.engines.base import CancelToken

log = logging.getLogger("ttsd.engines.chatterbox")

#: (layer, head) pairs whose attention tracks the text position in the multilingual
#: model (``chatterbox.models.t3.inference.alignment_stream_analyzer.LLAMA_ALIGNED_HEADS``).
ALIGNED_HEADS = ((12, 15), (13, 11), (9, 2))


@dataclass
class Sampling:
    """The sampling parameters of one chunk (the library's ``generate()`` arguments)."""

    temperature: float = 0.8
    repetition_penalty: float = 1.2
    top_p: float = 1.0
    min_p: float = 0.05
    cfg_weight: float = 0.5
    top_k: int = 1000


class Steps:
    """Runs T3's transformer for the token loop: a prefill, then one token at a time.

    ``prefill(embeds)`` takes the whole prompt (B, L, D) and ``step(embed)`` one new
    position (B, 1, D); both return the speech logits of the last position (B, V).
    ``forwards`` counts the passes (tests check that cancel stops them).
    """

    forwards: int = 0

    def prefill(self, embeds: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step(self, embed: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the loop held (hooks, caches)."""


class HFSteps(Steps):
    """The transformers model with its dynamic KV cache, called as the library calls it."""

    def __init__(self, t3: Any, spy: AttentionSpy | None = None) -> None:
        self.t3 = t3
        self.past: Any = None
        self.spy = spy
        self.forwards = 0

    def _forward(self, embeds: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        t3 = self.t3
        if t3.is_gpt:
            out = t3.tfmr(inputs_embeds=embeds, past_key_values=self.past, use_cache=True)
            self.past = out.past_key_values
            # inference_turbo projects the last position only
            return t3.speech_head(out[0][:, -1:])[:, -1, :]
        out = t3.tfmr(
            inputs_embeds=embeds,
            past_key_values=self.past,
            use_cache=True,
            output_hidden_states=True,
            return_dict=True,
        )
        self.past = out.past_key_values
        # T3HuggingfaceBackend projects every position of the last hidden state
        return t3.speech_head(out.hidden_states[-1])[:, -1, :]

    def prefill(self, embeds: torch.Tensor) -> torch.Tensor:
        self.past = None
        return self._forward(embeds)

    def step(self, embed: torch.Tensor) -> torch.Tensor:
        return self._forward(embed)

    def attention(self) -> torch.Tensor:
        """The aligned heads' attention rows of the last pass (multilingual; needs a spy)."""
        assert self.spy is not None
        return self.spy.attention()

    def close(self) -> None:
        self.past = None
        if self.spy is not None:
            self.spy.close()


class AttentionSpy:
    """Reads the aligned heads' attention of batch row 0 without changing the model.

    A forward hook on each aligned layer's attention module recomputes that one head
    from the module's input (query and key projections of that head only, rotary
    embedding, causal softmax in float32, as eager attention does) and keeps the keys it
    has seen. The model itself runs unchanged, with whatever attention implementation it
    has. :meth:`close` removes the hooks; they live for one chunk.
    """

    def __init__(self, tfmr: Any, heads: tuple[tuple[int, int], ...] = ALIGNED_HEADS) -> None:
        self.heads = heads
        self._keys: dict[int, torch.Tensor] = {}
        self._rows: dict[int, torch.Tensor] = {}
        self._handles = [
            tfmr.layers[layer].self_attn.register_forward_hook(
                self._hook(index, head), with_kwargs=True
            )
            for index, (layer, head) in enumerate(heads)
        ]

    def _hook(self, index: int, head: int) -> Callable[..., None]:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            cos, sin = kwargs["position_embeddings"]
            q, k = head_query_key(module, hidden[:1], cos[:1], sin[:1], head)
            keys = self._keys.get(index)
            keys = k if keys is None else torch.cat([keys, k], dim=0)
            self._keys[index] = keys
            self._rows[index] = causal_rows(q, keys, module.scaling)

        return hook

    def attention(self) -> torch.Tensor:
        """Mean over the aligned heads of the last forward's attention rows (rows, keys)."""
        return torch.stack([self._rows[i] for i in range(len(self.heads))]).mean(dim=0)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._keys.clear()
        self._rows.clear()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def head_query_key(
    attn: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, head: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query and key (rotary applied) of one head of a Llama attention module, batch row 0.

    ``hidden`` is the module's input (1, L, D); returns two (L, head_dim) tensors.
    """
    dim = attn.head_dim
    kv_head = head // attn.num_key_value_groups
    q_weight = attn.q_proj.weight[head * dim : (head + 1) * dim]
    k_weight = attn.k_proj.weight[kv_head * dim : (kv_head + 1) * dim]
    q_bias, k_bias = attn.q_proj.bias, attn.k_proj.bias
    if q_bias is not None:
        q_bias = q_bias[head * dim : (head + 1) * dim]
    if k_bias is not None:
        k_bias = k_bias[kv_head * dim : (kv_head + 1) * dim]
    q = F.linear(hidden[0], q_weight, q_bias)
    k = F.linear(hidden[0], k_weight, k_bias)
    cos, sin = cos[0].to(q.dtype), sin[0].to(q.dtype)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def causal_rows(q: torch.Tensor, keys: torch.Tensor, scaling: float) -> torch.Tensor:
    """Softmax attention of the last ``len(q)`` positions over ``keys``, causally masked."""
    scores = (q @ keys.T).float() * scaling
    rows, total = scores.shape
    first = total - rows  # absolute position of the first query row
    allowed = torch.arange(total, device=q.device)[None, :] <= (
        first + torch.arange(rows, device=q.device)[:, None]
    )
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1)


class AlignmentGuard:
    """The multilingual model's alignment checks, as the library's analyzer makes them.

    From the aligned heads' attention over the text it tracks which text position is
    being spoken; it forbids the end token until the text is nearly done, and forces it
    on a long tail after the text, on attention jumping back into spoken text, or on
    the same token twice in a row. Same thresholds as ``AlignmentStreamAnalyzer.step``
    of chatterbox-tts 0.1.7; one difference: with 5 text tokens or fewer the
    repetition check is skipped where the library would fail on an empty slice.
    """

    def __init__(self, spy: AttentionSpy, text_slice: tuple[int, int], eos: int) -> None:
        self.spy = spy
        self.start, self.end = text_slice
        self.eos = eos
        self.alignment = torch.zeros(0, self.end - self.start)
        self.frame = 0
        self.text_position = 0
        self.started = False
        self.started_at: int | None = None
        self.complete = False
        self.completed_at: int | None = None
        self.recent: list[int] = []
        self.forced_end = False

    def step(self, logits: torch.Tensor, last_token: int) -> torch.Tensor:
        attention = self.spy.attention()
        i, j = self.start, self.end
        # The prefill's rows are every prompt position: keep those after the text (the
        # start-of-speech positions); each later forward adds one row.
        chunk = attention[j:, i:j] if self.frame == 0 else attention[:, i:j]
        chunk = chunk.clone().cpu()
        chunk[:, self.frame + 1 :] = 0
        self.alignment = torch.cat((self.alignment, chunk), dim=0)
        a = self.alignment
        frames, size = a.shape

        position = int(chunk[-1].argmax())
        if -4 < position - self.text_position < 7:
            self.text_position = position
        false_start = (not self.started) and bool(a[-2:, -2:].max() > 0.1 or a[:, :4].max() < 0.5)
        self.started = not false_start
        if self.started and self.started_at is None:
            self.started_at = frames
        self.complete = self.complete or self.text_position >= size - 3
        if self.complete and self.completed_at is None:
            self.completed_at = frames
        long_tail = self.complete and bool(a[self.completed_at :, -3:].sum(dim=0).max() >= 5)
        repetition = (
            self.complete
            and size > 5
            and bool(a[self.completed_at :, :-5].max(dim=1).values.sum() > 5)
        )
        self.recent = [*self.recent, last_token][-8:]
        token_repetition = len(self.recent) >= 3 and len(set(self.recent[-2:])) == 1

        if position < size - 3 and size > 5:
            logits[..., self.eos] = -(2**15)
        if long_tail or repetition or token_repetition:
            log.debug(
                "alignment guard ends the chunk: long_tail=%s repetition=%s token_repetition=%s",
                long_tail,
                repetition,
                token_repetition,
            )
            self.forced_end = True
            logits = -(2**15) * torch.ones_like(logits)
            logits[..., self.eos] = 2**15
        self.frame += 1
        return logits


def llama_tokens(
    t3: Any,
    cond: Any,
    text_tokens: torch.Tensor,
    sampling: Sampling,
    cap: int,
    generator: torch.Generator,
    cancel: CancelToken,
    steps: Steps,
    guard_factory: Callable[[int, int], AlignmentGuard] | None = None,
) -> Iterator[int]:
    """Speech tokens of the standard or multilingual T3, as ``T3.inference`` samples them.

    ``text_tokens`` is (1, L) with start and stop text tokens. Yields each token id below
    the stop token (ids of 6561 and more are not speech and are for the caller to drop);
    returns at the stop token, after ``cap`` tokens, or before the next forward pass once
    ``cancel`` is set. ``guard_factory(start, end)`` makes the multilingual alignment
    guard for the text's slice of the prompt.
    """
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TopPLogitsWarper,
    )

    hp = t3.hp
    device = t3.device
    cfg = sampling.cfg_weight > 0.0
    weight = sampling.cfg_weight
    repetition = RepetitionPenaltyLogitsProcessor(penalty=float(sampling.repetition_penalty))
    min_p = MinPLogitsWarper(min_p=sampling.min_p)
    top_p = TopPLogitsWarper(top_p=sampling.top_p)
    # Work happens in inference mode, entered and left around each step and never held
    # across a yield (the mode is per thread, and the consumer's thread is not ours).
    with torch.inference_mode():
        batch = torch.cat([text_tokens, text_tokens]) if cfg else text_tokens
        batch = batch.to(dtype=torch.long, device=device)
        start = torch.full_like(batch[:, :1], hp.start_speech_token)
        embeds, len_cond = t3.prepare_input_embeds(
            t3_cond=cond, text_tokens=batch, speech_tokens=start, cfg_weight=weight
        )
        bos = torch.tensor([[hp.start_speech_token]], dtype=torch.long, device=device)
        bos_embed = t3.speech_emb(bos) + t3.speech_pos_emb.get_fixed_embedding(0)
        if cfg:
            bos_embed = torch.cat([bos_embed, bos_embed])
        inputs = torch.cat([embeds, bos_embed], dim=1)
        generated = bos.clone()
    guard = guard_factory(len_cond, len_cond + batch.size(1)) if guard_factory else None

    if cancel.cancelled:
        return
    with torch.inference_mode():
        output = steps.prefill(inputs)
    for i in range(cap):
        with torch.inference_mode():
            logits = output.float()
            cond_logits = logits[0:1, :]
            if cfg:
                w = torch.as_tensor(weight, device=cond_logits.device, dtype=cond_logits.dtype)
                logits = cond_logits + w * (cond_logits - logits[1:2, :])
            else:
                logits = cond_logits.clone()
            if guard is not None:
                logits = guard.step(logits, int(generated[0, -1]))
            ids = generated[:1]
            logits = repetition(ids, logits)
            if sampling.temperature != 1.0:
                logits = logits / sampling.temperature
            logits = min_p(ids, logits)
            logits = top_p(ids, logits)
            probs = torch.softmax(logits, dim=-1)
            token = torch.multinomial(probs, num_samples=1, generator=generator)
            generated = torch.cat([generated, token], dim=1)
        value = int(token)
        if value == hp.stop_speech_token:
            return
        yield value
        if i + 1 == cap or cancel.cancelled:
            return
        with torch.inference_mode():
            embed = t3.speech_emb(token) + t3.speech_pos_emb.get_fixed_embedding(i + 1)
            if cfg:
                embed = torch.cat([embed, embed])
            output = steps.step(embed)


def turbo_tokens(
    t3: Any,
    cond: Any,
    text_tokens: torch.Tensor,
    sampling: Sampling,
    cap: int,
    generator: torch.Generator,
    cancel: CancelToken,
    steps: Steps,
) -> Iterator[int]:
    """Speech tokens of the Turbo T3, as ``T3.inference_turbo`` samples them.

    As :func:`llama_tokens`; ``cap`` counts every sampled token (the library's
    ``max_gen_len`` is ``cap - 1``: it samples one token before its loop).
    """
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if sampling.temperature > 0 and sampling.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k > 0:
        processors.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        processors.append(TopPLogitsWarper(sampling.top_p))
    if sampling.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))

    hp = t3.hp
    with torch.inference_mode():
        text = text_tokens.to(dtype=torch.long, device=t3.device)
        start = hp.start_speech_token * torch.ones_like(text[:, :1])
        embeds, _ = t3.prepare_input_embeds(
            t3_cond=cond, text_tokens=text, speech_tokens=start, cfg_weight=0.0
        )
    if cancel.cancelled:
        return
    with torch.inference_mode():
        logits = steps.prefill(embeds).float()
        probs = F.softmax(processors(start, logits), dim=-1)
        token = torch.multinomial(probs, num_samples=1, generator=generator)
    generated = [token]
    yield int(token)  # even the stop token: the library only stops on it inside its loop
    for _ in range(cap - 1):
        if cancel.cancelled:
            return
        with torch.inference_mode():
            logits = steps.step(t3.speech_emb(token)).float()
            processed = processors(torch.cat(generated, dim=1), logits)
            exhausted = bool(torch.all(processed == -float("inf")))
            if not exhausted:
                probs = F.softmax(processed, dim=-1)
                token = torch.multinomial(probs, num_samples=1, generator=generator)
        if exhausted:
            log.warning("chatterbox turbo: every token was filtered out; ending the chunk")
            return
        generated.append(token)
        value = int(token)
        if value == hp.stop_speech_token:
            return
        yield value
