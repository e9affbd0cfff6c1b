"""T3's transformer on a static KV cache, one decoding step replayable as a CUDA graph.

With ``cuda_graphs = true`` the token loop runs T3 through :class:`StaticSteps` instead
of the transformers model: the same layers (ttsd calls their projections, norms and
MLPs), but keys and values go into preallocated tensors and the position of the next
token lives in a device tensor, so one decoding step has fixed shapes and addresses and
can be captured once and replayed for every token of every chunk. At batch size 1-2 a
step is a few hundred small kernels whose launch cost dominates; replaying them as one
graph removes that (upstream measured 29 ms -> 6.3 ms per Turbo token on a GPU).

The prefill (the prompt, once per chunk) runs eagerly. Positions past the current one
are masked, so what earlier chunks left in the cache is never read. A prompt longer
than the cache falls back to :class:`~ttsd.engines.chatterbox.tokens.HFSteps`.

Llama (standard, multilingual) and GPT-2 (Turbo) backbones are covered; on the CPU the
same code runs without capture, which is how the tests check it against transformers.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from ttsd.engines.chatterbox.tokens import ALIGNED_HEADS, Steps, causal_rows

log = logging.getLogger("ttsd.engines.chatterbox")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class StaticSteps(Steps):
    """T3's forward passes on a static cache (module docstring). One per batch size.

    ``spy_heads`` (multilingual): the (layer, head) pairs whose attention rows of batch
    row 0 :meth:`attention` returns after each pass, as ``AttentionSpy`` does.
    """

    def __init__(
        self,
        t3: Any,
        batch: int,
        max_len: int,
        *,
        graphs: bool,
        spy_heads: tuple[tuple[int, int], ...] = (),
    ) -> None:
        self.t3 = t3
        self.batch = batch
        self.max_len = max_len
        self.graphs = graphs
        self.gpt = bool(t3.is_gpt)
        tfmr = t3.tfmr
        param = t3.speech_head.weight
        self.device, self.dtype = param.device, param.dtype
        config = tfmr.config
        self.hidden = config.hidden_size
        if self.gpt:
            self.blocks = list(tfmr.h)
            self.heads = config.n_head
            self.kv_heads = self.heads
            self.head_dim = self.hidden // self.heads
        else:
            self.blocks = list(tfmr.layers)
            self.heads = config.num_attention_heads
            self.kv_heads = config.num_key_value_heads
            self.head_dim = getattr(config, "head_dim", None) or self.hidden // self.heads
            positions = torch.arange(max_len, device=self.device)[None]
            probe = torch.zeros(1, 1, self.hidden, device=self.device, dtype=self.dtype)
            cos, sin = tfmr.rotary_emb(probe, position_ids=positions)
            self.cos, self.sin = cos[0], sin[0]  # (max_len, head_dim)
        shape = (batch, self.kv_heads, max_len, self.head_dim)
        self.keys = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in self.blocks]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.positions = torch.arange(max_len, device=self.device)
        self.pos = torch.zeros(1, dtype=torch.long, device=self.device)  # next position
        self.length = 0  # host copy of pos
        self.spy_heads = spy_heads
        self._spy_prefill: dict[int, torch.Tensor] = {}
        self._spy_step = {
            layer: torch.zeros(1, self.head_dim, device=self.device, dtype=self.dtype)
            for layer, _ in spy_heads
        }
        self._spied_prefill = False  # whether the last pass was the prefill
        self.step_input = torch.zeros(batch, 1, self.hidden, device=self.device, dtype=self.dtype)
        self.step_output: torch.Tensor | None = None
        self.graph: Any = None
        self.forwards = 0
        self.replays = 0

    # -- the transformer, on the static cache ------------------------------------------

    def _attend(
        self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, where: torch.Tensor
    ) -> torch.Tensor:
        """Store k, v at positions ``where``; attend q over every position up to its own."""
        self.keys[index].index_copy_(2, where, k)
        self.values[index].index_copy_(2, where, v)
        keys, values = self.keys[index], self.values[index]
        if self.kv_heads != self.heads:
            repeat = self.heads // self.kv_heads
            keys = keys.repeat_interleave(repeat, dim=1)
            values = values.repeat_interleave(repeat, dim=1)
        mask = self.positions[None, :] <= where[:, None]  # (L, max_len)
        return F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, scale=self.head_dim**-0.5
        )

    def _forward(self, embeds: torch.Tensor, where: torch.Tensor, step: bool) -> torch.Tensor:
        """Logits (B, V) of the last of positions ``where`` for ``embeds`` (B, L, D)."""
        batch, length, _ = embeds.shape
        if self.gpt:
            hidden = embeds + self.t3.tfmr.wpe(where)[None]
            for index, block in enumerate(self.blocks):
                x = block.ln_1(hidden)
                q, k, v = block.attn.c_attn(x).split(self.hidden, dim=2)
                q, k, v = (
                    t.view(batch, length, self.heads, self.head_dim).transpose(1, 2)
                    for t in (q, k, v)
                )
                out = self._attend(index, q, k, v, where)
                out = out.transpose(1, 2).reshape(batch, length, self.hidden)
                hidden = hidden + block.attn.c_proj(out)
                hidden = hidden + block.mlp(block.ln_2(hidden))
            hidden = self.t3.tfmr.ln_f(hidden)
            return self.t3.speech_head(hidden[:, -1:])[:, -1, :]
        cos = self.cos.index_select(0, where)[None, None]
        sin = self.sin.index_select(0, where)[None, None]
        spy_layers = {layer: head for layer, head in self.spy_heads}
        hidden = embeds
        for index, layer in enumerate(self.blocks):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            if index in spy_layers:
                if step:  # static buffers: a replayed graph writes into them
                    self._spy_step[index].copy_(q[0, spy_layers[index]])
                else:
                    self._spy_prefill[index] = q[0, spy_layers[index]].clone()
            out = self._attend(index, q, k, v, where)
            out = out.transpose(1, 2).reshape(batch, length, -1)
            hidden = hidden + attn.o_proj(out)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        hidden = self.t3.tfmr.norm(hidden)
        return self.t3.speech_head(hidden)[:, -1, :]

    # -- Steps ---------------------------------------------------------------------------

    def fits(self, prompt: int, tokens: int) -> bool:
        return prompt + tokens + 1 <= self.max_len

    def prefill(self, embeds: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        length = embeds.shape[1]
        where = self.positions[:length]
        logits = self._forward(embeds.to(self.dtype), where, step=False)
        self._spied_prefill = True
        self.pos.fill_(length)
        self.length = length
        return logits

    def _step_body(self) -> torch.Tensor:
        logits = self._forward(self.step_input, self.pos, step=True)
        self.pos.add_(1)
        return logits

    def step(self, embed: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        self.step_input.copy_(embed)
        if self.graphs and self.graph is None:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            self.replays += 1
            output = self.step_output
            assert output is not None
        else:
            output = self._step_body()
        self.length += 1
        self._spied_prefill = False
        return output

    def _capture(self) -> None:
        """Record one decoding step as a CUDA graph (after two warm-up runs on a side stream).

        The warm-ups and the capture advance ``pos``; it is put back afterwards, and
        whatever they wrote at or after it is overwritten by the real steps.
        """
        saved = self.pos.clone()
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step_body()
                self.pos.copy_(saved)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.step_output = self._step_body()
        self.pos.copy_(saved)
        self.graph = graph
        log.info(
            "chatterbox: captured a CUDA graph of one T3 step (batch %d, cache %d positions)",
            self.batch,
            self.max_len,
        )

    def attention(self) -> torch.Tensor:
        """Mean attention rows of the spied heads in the last pass (batch row 0)."""
        rows = []
        for layer, head in self.spy_heads:
            q = (self._spy_prefill if self._spied_prefill else self._spy_step)[layer].float()
            kv_head = head // (self.heads // self.kv_heads)
            keys = self.keys[layer][0, kv_head, : self.length].float()
            rows.append(causal_rows(q, keys, self.head_dim**-0.5))
        return torch.stack(rows).mean(dim=0)

    def close(self) -> None:
        """Nothing to release: the cache and the graph are reused by the next chunk."""


def static_spy_heads(t3: Any) -> tuple[tuple[int, int], ...]:
    """The aligned heads to spy on for the multilingual model, none otherwise."""
    return ALIGNED_HEADS if t3.hp.is_multilingual else ()
