"""Incremental S3Gen: audio for a growing list of speech tokens, piece by piece.

S3Gen turns speech tokens into a mel spectrogram (a bidirectional encoder plus a
flow-matching decoder conditioned on the voice's reference) and the mel into a waveform
(HiFT: a pitch predictor, a harmonic source signal and a neural filter), 960 samples
(40 ms) per token. Run on the tokens generated so far, its last tokens come out
different from what they become once later tokens exist, because the encoder looks
ahead. :class:`StreamVocoder` therefore, on each call:

1. runs the flow over a window: up to ``context`` tokens already spoken plus the new
   ones, behind the voice's reference prompt, with noise fixed per mel position for the
   whole chunk (so overlapping windows start from the same noise);
2. keeps the mel of all but the last ``holdback`` tokens (their right context is still
   missing), unless this is the final call;
3. runs HiFT over that mel with a source signal that is made once per sample and
   continues across calls, with the harmonic phases carried over (the library draws new
   random phases on every call, which would make overlapping audio disagree);
4. watermarks the new audio together with ``watermark_context`` samples before it (the
   watermarker's frames need context, and it returns exactly as many samples as it is
   given when that count is a multiple of 240);
5. returns the audio from the end of the previous piece up to ``margin`` samples plus
   one crossfade before the end of what it made (those samples still feel the missing
   right context of HiFT's filters and the watermarker), where the first ``crossfade``
   samples are blended with the tail kept from the previous call.

Over a chunk the pieces add up to exactly 960 samples per speech token (as many as the
library's one-shot ``generate()`` makes), with the library's fade-in on the first 40 ms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ttsd.engines.chatterbox.settings import SAMPLES_PER_TOKEN, StreamPlan

MEL_PER_TOKEN = 2


def crossfade_weights(length: int) -> tuple[np.ndarray, np.ndarray]:
    """Complementary raised-cosine weights (fade-in, fade-out) that sum to 1 everywhere.

    Amplitude-complementary rather than equal-power because the two signals blended at a
    seam are two renderings of the same audio, nearly identical and in phase.
    """
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(length) + 0.5) / length)
    fade_in = ramp.astype(np.float32)
    return fade_in, (1.0 - fade_in).astype(np.float32)


class StreamVocoder:
    """Makes the audio of one chunk from its speech tokens, incrementally (module docstring).

    ``vocode(tokens, final)`` takes every token so far and returns the next piece of
    float32 audio, possibly empty when there is not enough new audio yet (then no model
    call is made). ``calls`` counts the vocoder runs.
    """

    def __init__(
        self,
        s3gen: Any,
        reference: dict[str, Any],
        plan: StreamPlan,
        *,
        meanflow: bool,
        steps: int,
        generator: torch.Generator,
        max_tokens: int,
        watermark: Callable[[np.ndarray], np.ndarray] | None,
    ) -> None:
        self.s3gen = s3gen
        self.plan = plan
        self.meanflow = meanflow
        self.steps = steps
        self.generator = generator
        self.watermark = watermark
        self.device = s3gen.device
        dtype = s3gen.dtype
        self.reference = {
            key: value.to(device=self.device, dtype=dtype if value.is_floating_point() else None)
            if torch.is_tensor(value)
            else value
            for key, value in reference.items()
        }
        self._align_reference()
        prompt_frames = self.reference["prompt_feat"].shape[1]
        self.prompt_noise = self._randn(1, 80, prompt_frames)
        self.token_noise = self._randn(1, 80, MEL_PER_TOKEN * max_tokens)

        sine = s3gen.mel2wav.m_source.l_sin_gen
        harmonics = sine.harmonic_num + 1
        phase = torch.rand(1, harmonics, 1, generator=generator, device=self.device) * 2 - 1
        phase = phase * math.pi
        phase[:, 0] = 0  # the fundamental starts at phase 0, as in the library's SineGen
        self.phase_offsets = phase
        self.cycles = torch.zeros(1, harmonics, 1, device=self.device)
        self.source = torch.zeros(1, 1, 0, device=self.device)  # merged source signal
        self.source_start = 0  # absolute sample index of self.source[..., 0]

        self.emitted = 0  # samples returned so far
        self.tail: np.ndarray | None = None  # samples [emitted, emitted + crossfade)
        self.fade_in, self.fade_out = crossfade_weights(plan.crossfade)
        self.calls = 0

    def _align_reference(self) -> None:
        """Make the reference mel exactly 2 frames per reference token.

        ``embed_ref`` keeps ``frames // 2`` tokens of a clip whose mel has an odd number
        of frames, and the flow then lays the last reference frame over the first frame
        of the speech: its output has one frame (480 samples) fewer than 2 per token, and
        the speech is off by a frame. Dropping that last reference frame keeps the
        output at exactly 960 samples per token, which the piece accounting relies on.
        """
        ref = self.reference
        tokens = ref["prompt_token"].shape[1]
        frames = min(ref["prompt_feat"].shape[1] // MEL_PER_TOKEN, tokens)
        ref["prompt_token"] = ref["prompt_token"][:, :frames]
        ref["prompt_token_len"] = torch.tensor([frames], device=self.device)
        ref["prompt_feat"] = ref["prompt_feat"][:, : MEL_PER_TOKEN * frames]
        ref["prompt_feat_len"] = None

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator, device=self.device)

    @property
    def source_end(self) -> int:
        return self.source_start + self.source.shape[-1]

    def ready(self, count: int) -> bool:
        """Whether a non-final call with ``count`` tokens would return new audio."""
        return self._emit_end(count, False) - self.emitted >= self._minimum()

    def _minimum(self) -> int:
        # past a tail, a piece must hold the whole blended crossfade plus 10 ms of its own
        return (self.plan.crossfade if self.tail is not None else 0) + 240

    def _emit_end(self, count: int, final: bool) -> int:
        if final:
            return count * SAMPLES_PER_TOKEN
        kept = count - self.plan.holdback
        return kept * SAMPLES_PER_TOKEN - self.plan.margin - self.plan.crossfade

    def vocode(self, tokens: list[int], final: bool) -> np.ndarray:
        """Audio after the last piece, from ``tokens`` (all of the chunk's so far)."""
        with torch.inference_mode():
            return self._vocode(tokens, final)

    def _vocode(self, tokens: list[int], final: bool) -> np.ndarray:
        count = len(tokens)
        plan = self.plan
        emit_end = self._emit_end(count, final)
        if count == 0 or (not final and emit_end - self.emitted < self._minimum()):
            return np.zeros(0, dtype=np.float32)
        kept = count if final else count - plan.holdback
        spoken = self.emitted // SAMPLES_PER_TOKEN
        reach = max(0, (self.emitted - plan.watermark_context) // SAMPLES_PER_TOKEN)
        first = min(max(0, spoken - plan.context), reach)
        mel = self._flow(tokens, first, count)[:, :, : MEL_PER_TOKEN * (kept - first)]
        wav = self._hift(mel, first, kept, final)
        base = first * SAMPLES_PER_TOKEN
        if first == 0:  # the library's fade-in against spill-over from the reference
            fade = self.s3gen.trim_fade.detach().cpu().numpy()
            wav[: fade.size] *= fade[: wav.size]
        start = max(base, self.emitted - plan.watermark_context)
        audio = wav[start - base :]
        if self.watermark is not None:
            marked = np.asarray(self.watermark(audio), dtype=np.float32)
            if marked.size != audio.size:
                raise RuntimeError(
                    f"the watermarker returned {marked.size} samples for {audio.size}"
                )
            audio = marked
        offset = self.emitted - start
        stop = emit_end - start
        if self.tail is not None:
            width = self.tail.size
            blended = self.tail * self.fade_out + audio[offset : offset + width] * self.fade_in
            piece = np.concatenate([blended, audio[offset + width : stop]])
        else:
            piece = audio[offset:stop].copy()
        self.tail = None if final else audio[stop : stop + plan.crossfade].copy()
        self.emitted = emit_end
        self.calls += 1
        return piece.astype(np.float32, copy=False)

    def _flow(self, tokens: list[int], first: int, count: int) -> torch.Tensor:
        """Mel (1, 80, 2 * (count - first)) of ``tokens[first:count]`` behind the prompt."""
        window = torch.tensor([tokens[first:count]], dtype=torch.long, device=self.device)
        noise = torch.cat(
            [
                self.prompt_noise,
                self.token_noise[:, :, MEL_PER_TOKEN * first : MEL_PER_TOKEN * count],
            ],
            dim=2,
        )
        ref = self.reference
        mel, _ = self.s3gen.flow.inference(
            token=window,
            token_len=torch.tensor([window.shape[1]], device=self.device),
            prompt_token=ref["prompt_token"],
            prompt_token_len=ref["prompt_token_len"],
            prompt_feat=ref["prompt_feat"],
            prompt_feat_len=ref.get("prompt_feat_len"),
            embedding=ref["embedding"],
            finalize=True,
            n_timesteps=self.steps,
            noised_mels=noise,
            meanflow=self.meanflow,
        )
        return mel

    def _hift(self, mel: torch.Tensor, first: int, kept: int, final: bool) -> np.ndarray:
        """Waveform of tokens ``first..kept`` from their mel, with the continuing source."""
        hift = self.s3gen.mel2wav
        mel = mel.to(self.s3gen.dtype)
        f0 = hift.f0_predictor(mel)
        f0 = hift.f0_upsamp(f0[:, None])  # (1, 1, samples): pitch per sample
        start = first * SAMPLES_PER_TOKEN
        end = kept * SAMPLES_PER_TOKEN
        # Drop source samples no window will need again: windows only move forward, so
        # afterwards self.source starts exactly at this window's start.
        if start > self.source_start:
            self.source = self.source[..., start - self.source_start :]
            self.source_start = start
        stored_end = self.source_end
        fresh, cycles = self._sine(f0[..., stored_end - start :])
        source = torch.cat([self.source, fresh], dim=-1)  # samples start..end
        # Store the new source only where its pitch had enough right context; the rest
        # serves this call only and is made again, continuing the stored phase, next time.
        keep = (end if final else end - self.plan.margin) - stored_end
        if keep > 0:
            self.source = source[..., : stored_end - start + keep]
            self.cycles = cycles[..., keep - 1 : keep] % 1.0
        wav = hift.decode(x=mel, s=source)
        return wav[0].float().cpu().numpy()

    def _sine(self, f0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HiFT's harmonic source for pitch ``f0`` (1, 1, T), continuing the phases so far.

        The same signal as the library's ``SourceModuleHnNSF`` (harmonics of the pitch,
        noise in unvoiced parts, a learned mix through tanh), except that the phase of
        each harmonic starts where the previous call's stored source ended. Returns the
        mixed source (1, 1, T) and the phase in cycles after each sample (1, H, T).
        """
        module = self.s3gen.mel2wav.m_source
        sine = module.l_sin_gen
        harmonics = sine.harmonic_num + 1
        multiples = torch.arange(1, harmonics + 1, device=f0.device, dtype=f0.dtype)
        increments = f0 * multiples.view(1, harmonics, 1) / sine.sampling_rate
        cycles = self.cycles + torch.cumsum(increments, dim=-1)
        waves = sine.sine_amp * torch.sin(2 * math.pi * (cycles % 1.0) + self.phase_offsets)
        voiced = (f0 > sine.voiced_threshold).to(waves.dtype)
        amplitude = voiced * sine.noise_std + (1 - voiced) * sine.sine_amp / 3
        noise = amplitude * torch.randn(
            waves.shape, generator=self.generator, device=waves.device, dtype=waves.dtype
        )
        waves = waves * voiced + noise
        mixed = module.l_tanh(module.l_linear(waves.transpose(1, 2)))
        return mixed.transpose(1, 2), cycles
