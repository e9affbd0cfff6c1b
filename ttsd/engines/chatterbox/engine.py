"""The Chatterbox engine: settings, loading, voices, and speech streamed token by token.

``ChatterboxEngine.stream`` runs T3's token loop itself (``tokens``) and turns the tokens
into audio while they come (``vocoder``): a first piece after ``first_block_tokens``
tokens, then pieces for blocks that double up to ``max_block_tokens``. ``synthesize``
is the concatenation of ``stream``; ``streaming = false`` makes ``stream`` vocode the
whole chunk once, at its end (the library's own order of work).
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ttsd.engines.base import CancelToken, EngineError, OptionError, StreamingEngine
from ttsd.engines.chatterbox import chunk, loading
from ttsd.engines.chatterbox.settings import (
    DEFAULT_VOICE,
    GENERATE_DEFAULTS,
    HUB_REPOS,
    MAX_SPEECH_TOKENS,
    SAMPLE_RATE,
    TURBO_TAIL_TOKENS,
    VOICE_NAME,
    StreamPlan,
    check_options,
    check_settings,
)
from ttsd.engines.chatterbox.voices import VoiceStore

log = logging.getLogger("ttsd.engines.chatterbox")

#: Prompt positions the static KV cache holds besides the speech tokens: conditioning
#: (at most 1 + 375 + 1 for Turbo's speech prompt), the text and the start tokens.
STATIC_PROMPT_POSITIONS = 1024

#: Flow-matching steps of S3Gen per model when ``vocoder_steps`` is not set (the library's).
LIBRARY_VOCODER_STEPS = {"standard": 10, "multilingual": 10, "turbo": 2}


class ChatterboxEngine(StreamingEngine):
    """The Chatterbox engine (see the package docstring and docs/chatterbox.md).

    Settings (the ``[chatterbox]`` config table plus what the daemon adds):

    - ``model``: ``"standard"`` (default), ``"turbo"`` or ``"multilingual"``.
    - ``language``: default language of the multilingual model (``"en"``).
    - ``model_dir``: a local checkpoint directory for ``from_local``; when it is unset or
      incomplete, the weights come from the hub with ``from_pretrained``.
    - ``device``: ``"auto"`` (cuda, else mps, else cpu), ``"cpu"``, ``"cuda"``,
      ``"cuda:N"`` or ``"mps"``.
    - ``dtype``: ``"float32"`` (default) or ``"bfloat16"`` for T3 and S3Gen's
      flow-matching estimator.
    - ``cuda_graphs``: replay T3's decoding step as a CUDA graph (CUDA only; ignored
      with a warning elsewhere). Off by default.
    - ``streaming``: make audio while tokens are generated (default) or at the chunk's end.
    - ``first_block_tokens``, ``max_block_tokens``: tokens before the first piece (10),
      and the largest block later pieces grow to (80).
    - ``vocoder_steps``: flow-matching steps of S3Gen (library default: 10, Turbo 2).
    - ``max_speech_tokens``: cap on speech tokens per chunk (25 per second of audio;
      at most and by default 1000, i.e. 40 s).
    - ``voice``, ``voices_dir``, ``cache_dir``: default voice name, clip directory
      (``$XDG_CONFIG_HOME/ttsd/voices``) and cache root (``$XDG_CACHE_HOME/ttsd``).
    - any per-job option (``exaggeration``, ``cfg_weight``, ``temperature``, ``seed``...):
      its default for jobs that do not set it.
    """

    name = "chatterbox"

    def __init__(
        self,
        *,
        model: str = "standard",
        language: str = "en",
        model_dir: Path | str | None = None,
        device: str = "auto",
        dtype: str = "float32",
        cuda_graphs: bool = False,
        streaming: bool = True,
        max_speech_tokens: int = MAX_SPEECH_TOKENS,
        first_block_tokens: int = 10,
        max_block_tokens: int = 80,
        vocoder_steps: int | None = None,
        voice: str | None = None,
        voices_dir: Path | str | None = None,
        cache_dir: Path | str | None = None,
        **defaults: Any,
    ) -> None:
        settings = check_settings(
            {
                "model": model,
                "language": language,
                "device": device,
                "dtype": dtype,
                "cuda_graphs": cuda_graphs,
                "streaming": streaming,
                "max_speech_tokens": max_speech_tokens,
                "first_block_tokens": first_block_tokens,
                "max_block_tokens": max_block_tokens,
            }
        )
        if vocoder_steps is not None and (
            isinstance(vocoder_steps, bool)
            or not isinstance(vocoder_steps, int)
            or not 1 <= vocoder_steps <= 50
        ):
            raise EngineError(
                f"chatterbox: vocoder_steps must be an integer from 1 to 50, got {vocoder_steps!r}",
                "engine_load",
            )
        self.settings = settings
        self.kind = settings.model
        self.language = settings.language
        self.device_setting = settings.device
        self.dtype = settings.dtype
        self.cuda_graphs = settings.cuda_graphs
        self.streaming = settings.streaming
        self.max_speech_tokens = settings.max_speech_tokens
        self.plan = StreamPlan(
            first_block=settings.first_block_tokens, max_block=settings.max_block_tokens
        )
        self.vocoder_steps = vocoder_steps or LIBRARY_VOCODER_STEPS[self.kind]
        self.model_dir = Path(model_dir).expanduser() if model_dir else None
        self.voices_dir = (
            Path(voices_dir) if voices_dir else _xdg("XDG_CONFIG_HOME", ".config") / "ttsd/voices"
        )
        root = Path(cache_dir) if cache_dir else _xdg("XDG_CACHE_HOME", ".cache") / "ttsd"
        self.cache_dir = root / "chatterbox"
        self.default_voice = voice or DEFAULT_VOICE
        try:
            self.defaults = self.validate_options(defaults)
        except OptionError as exc:
            raise EngineError(f"chatterbox settings: {exc}", "engine_load") from None

        self.device: str | None = None  # resolved at load
        self.graphs_active = False  # cuda_graphs as it applies to the loaded device
        self.rtf: float | None = None  # measured real-time factor (CPU only)
        self.last_chunk = chunk.ChunkStats()
        self._model: Any = None
        self._injected: tuple[Any, Any] | None = None  # (model, its built-in conditionals)
        self._source = f"hub:{HUB_REPOS[self.kind]}"  # what the weights are, for describe()
        self._voices: VoiceStore | None = None
        self._static: dict[int, Any] = {}  # batch size -> StaticSteps (cuda_graphs)
        #: Run T3 on the static cache without CUDA graphs (how tests check that path on CPU).
        self.static_cache_without_graphs = False

    @classmethod
    def from_model(
        cls, model: Any, *, model_id: str = "injected", **settings: Any
    ) -> ChatterboxEngine:
        """An engine around an already built Chatterbox model object (for tests and benches).

        ``model_id`` names the weights in disk cache keys. The model kind is taken from
        the object's class unless ``model`` is given in ``settings``. A ``dtype`` other
        than float32 casts the object's T3 and estimator in place at load.
        """
        kind = {
            "ChatterboxTurboTTS": "turbo",
            "ChatterboxMultilingualTTS": "multilingual",
        }.get(type(model).__name__, "standard")
        settings.setdefault("model", kind)
        engine = cls(**settings)
        engine._injected = (model, model.conds)
        engine._source = f"model:{model_id}"
        return engine

    # -- loading ---------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Any:
        """The loaded library model object (None before load)."""
        return self._model

    def load(self) -> None:
        if self._model is not None:
            return
        started = time.monotonic()
        if self._injected is not None:
            model, builtin = self._injected
            self.device = str(model.device)
            checkpoint = self._source
            loading.quiet_library()
        else:
            loading.check_watermarker()
            self.device = loading.resolve_device(self.device_setting)
            loaded = loading.load_model(self.kind, self.model_dir, self.device)
            model, builtin = loaded.model, loaded.model.conds
            self._source, checkpoint = loaded.source, loaded.checkpoint
        loading.fix_library(model)
        on_cuda = self.device.startswith("cuda")
        if self.dtype != "float32":
            if not on_cuda:
                log.warning(
                    "chatterbox: dtype = %r on %s runs, but is usually slower than float32 "
                    "there; it is meant for GPUs",
                    self.dtype,
                    self.device,
                )
            loading.apply_dtype(model, self.dtype)
        self.graphs_active = self.cuda_graphs and on_cuda
        if self.cuda_graphs and not on_cuda:
            log.warning(
                "chatterbox: cuda_graphs = true is ignored: the model runs on %s and CUDA "
                "graphs need a CUDA GPU",
                self.device,
            )
        if on_cuda and hasattr(model.watermarker, "perth_net"):
            # The watermarker's network runs on the CPU by default: a fixed cost per piece.
            model.watermarker.perth_net.to(self.device)
        self._voices = VoiceStore(
            self.voices_dir,
            self.cache_dir,
            kind=self.kind,
            cache_key=f"chatterbox-tts {loading.library_version()}\0{checkpoint}",
            builtin=builtin,
            prepare=self._prepare,
            load_cached=self._load_cached,
        )
        self._model = model
        log.info(
            "chatterbox %s model ready on %s in %.1f s (weights: %s, dtype %s, cuda graphs %s, "
            "streaming %s)",
            self.kind,
            self.device,
            time.monotonic() - started,
            self._source,
            self.dtype,
            "on" if self.graphs_active else "off",
            "on" if self.streaming else "off",
        )

    def unload(self) -> None:
        if self._model is None:
            return
        on_cuda = bool(self.device and self.device.startswith("cuda"))
        self._model = None
        self._voices = None
        self._static.clear()
        gc.collect()
        if on_cuda:
            import torch

            torch.cuda.empty_cache()
        log.info("chatterbox model unloaded")

    # -- options and voices ----------------------------------------------------------

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return check_options(self.kind, options, self.name)

    def check_voice(self, voice: str | None) -> None:
        if voice is not None and not VOICE_NAME.match(voice):
            raise OptionError(
                f"bad Chatterbox voice name {voice!r}: use the name of a clip in "
                f"{self.voices_dir} without its suffix"
            )

    def voices(self) -> list[str]:
        store = self._voices
        include_default = store is None or store.builtin is not None
        return _store_for_listing(self).names(self.voices_dir, include_default)

    def voice_path(self, voice: str) -> Path | None:
        """The clip for ``voice`` in the voices directory (any case of suffix), or None."""
        return _store_for_listing(self).path(voice)

    def _prepare(self, path: Path) -> Any:
        """Conditionals from a clip, with the model's ``prepare_conditionals``."""
        model = self._model
        saved = model.conds
        try:
            model.prepare_conditionals(
                str(path), exaggeration=self.defaults.get("exaggeration", 0.5)
            )
            conds = model.conds
        except Exception as exc:
            raise EngineError(
                f"cannot use voice clip {path}: {type(exc).__name__}: {exc}".rstrip(": "),
                "voice_load",
            ) from exc
        finally:
            model.conds = saved
        return conds

    def _load_cached(self, cache_file: Path) -> Any:
        from chatterbox.tts import Conditionals

        try:
            return Conditionals.load(cache_file, map_location=self.device or "cpu").to(self.device)
        except Exception as exc:  # a stale or corrupt cache entry: compute it again
            log.warning("ignoring voice cache %s: %s", cache_file, exc)
            return None

    # -- synthesis -------------------------------------------------------------------

    def stream(
        self,
        text: str,
        voice: str | None,
        options: Mapping[str, Any],
        cancel: CancelToken,
    ) -> Iterator[np.ndarray]:
        """Speak one chunk as int16 pieces, made while its speech tokens are generated.

        Checks ``cancel`` before every T3 step and every vocoder call and then returns
        without making the rest (a piece in progress is finished first).
        """
        model = self._model
        if model is None:
            raise EngineError("the Chatterbox model is not loaded", "engine_load")
        if not text.strip():
            return
        started = time.monotonic()
        stats = chunk.ChunkStats()
        self.last_chunk = stats
        try:
            run = self._start(text, voice, options, cancel, stats)
            produced = 0
            pieces = chunk.pieces(
                run,
                self.plan,
                streaming=self.streaming,
                turbo=self.kind == "turbo",
                cancel=cancel,
                stats=stats,
                started=started,
            )
            for piece in pieces:
                produced += piece.size
                yield piece
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(
                f"Chatterbox failed on this chunk: {type(exc).__name__}: {exc}", "engine_failed"
            ) from exc
        stats.cancelled = cancel.cancelled
        stats.finished = not cancel.cancelled
        if stats.finished:
            self._measure(time.monotonic() - started, produced)

    def _start(
        self,
        text: str,
        voice: str | None,
        options: Mapping[str, Any],
        cancel: CancelToken,
        stats: chunk.ChunkStats,
    ) -> chunk.ChunkRun:
        """Everything a chunk needs before its first token: conditioning, tokens, loops."""
        import torch

        from ttsd.engines.chatterbox import tokens as t3loop
        from ttsd.engines.chatterbox.vocoder import StreamVocoder

        assert self._voices is not None
        model = self._model
        conds = self._voices.conditionals(voice or self.default_voice)
        params = {**GENERATE_DEFAULTS[self.kind], **self.defaults, **options}
        language = params.pop("language", self.language)
        seed = params.pop("seed", None)
        if seed is None:  # from torch's global generator: torch.manual_seed still decides
            seed = int(torch.randint(0, 2**32 - 1, (1,)).item())
        stats.seed = seed
        device = str(model.t3.device)
        token_generator = torch.Generator(device=device).manual_seed(seed)
        vocoder_generator = torch.Generator(device=str(model.s3gen.device)).manual_seed(
            (seed + 0x5EED) % 2**63
        )
        sampling = t3loop.Sampling(
            **{k: v for k, v in params.items() if k in t3loop.Sampling.__dataclass_fields__}
        )
        cap = self.max_speech_tokens
        with torch.inference_mode():
            cond = chunk.t3_cond(model, self.kind, conds, params.get("exaggeration"))
            text_tokens = chunk.text_tokens(model, self.kind, text, language)
        # The vocoder first: the runner below may hook into the model, and ChunkRun undoes that.
        vocoder = StreamVocoder(
            model.s3gen,
            conds.gen,
            self.plan,
            meanflow=self.kind == "turbo",
            steps=self.vocoder_steps,
            generator=vocoder_generator,
            max_tokens=cap + TURBO_TAIL_TOKENS,
            watermark=partial(model.watermarker.apply_watermark, sample_rate=SAMPLE_RATE),
        )
        if self.kind == "turbo":
            steps = self._steps(1, cap)
            tokens = t3loop.turbo_tokens(
                model.t3, cond, text_tokens, sampling, cap, token_generator, cancel, steps
            )
        else:
            batch = 2 if sampling.cfg_weight > 0 else 1
            steps = self._steps(batch, cap)
            guard = None
            if self.kind == "multilingual":

                def guard(start: int, end: int) -> Any:
                    return t3loop.AlignmentGuard(steps, (start, end), model.t3.hp.stop_speech_token)

            tokens = t3loop.llama_tokens(
                model.t3, cond, text_tokens, sampling, cap, token_generator, cancel, steps, guard
            )
        return chunk.ChunkRun(tokens, steps, vocoder)

    def _steps(self, batch: int, cap: int) -> Any:
        """The transformer runner for a chunk: static cache + CUDA graph, or transformers."""
        from ttsd.engines.chatterbox import tokens as t3loop

        t3 = self._model.t3
        spy = self.kind == "multilingual"
        if not (self.graphs_active or self.static_cache_without_graphs):
            return t3loop.HFSteps(t3, t3loop.AttentionSpy(t3.tfmr) if spy else None)
        from ttsd.engines.chatterbox.graphs import StaticSteps, static_spy_heads

        static = self._static.get(batch)
        if static is None:
            static = StaticSteps(
                t3,
                batch,
                STATIC_PROMPT_POSITIONS + self.max_speech_tokens,
                graphs=self.graphs_active,
                spy_heads=static_spy_heads(t3),
            )
            self._static[batch] = static
        return chunk.StaticOrFallback(
            static, cap, lambda: t3loop.HFSteps(t3, t3loop.AttentionSpy(t3.tfmr) if spy else None)
        )

    def _measure(self, elapsed: float, samples: int) -> None:
        """Track the real-time factor; warn once when the CPU is far too slow."""
        if samples == 0 or self.device != "cpu":
            return
        rtf = elapsed / (samples / SAMPLE_RATE)
        first = self.rtf is None
        self.rtf = rtf if first else 0.7 * self.rtf + 0.3 * rtf
        if first:
            log.warning(
                "Chatterbox runs on the CPU: %.1f s to make %.1f s of audio (real-time factor "
                "%.1f); expect %s. A CUDA GPU is recommended, or use the piper engine.",
                elapsed,
                samples / SAMPLE_RATE,
                rtf,
                "gaps between sentences" if rtf > 1 else "slow starts",
            )

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "model": self.kind,
            "device": self.device or self.device_setting,
            "voice": self.default_voice,
            "weights": self._source,
            "dtype": self.dtype,
            "cuda_graphs": self.graphs_active if self.loaded else self.cuda_graphs,
            "streaming": self.streaming,
        }
        if self.kind == "multilingual":
            info["language"] = self.language
        if self.rtf is not None:
            info["real_time_factor"] = round(self.rtf, 2)
        return info


def _xdg(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    return Path(value) if value else Path.home() / fallback


def _store_for_listing(engine: ChatterboxEngine) -> VoiceStore:
    """The engine's voice store, or a bare one for listing before the model is loaded."""
    if engine._voices is not None:
        return engine._voices
    return VoiceStore(
        engine.voices_dir,
        engine.cache_dir,
        kind=engine.kind,
        cache_key="",
        builtin=None,
        prepare=lambda path: None,
        load_cached=lambda path: None,
    )
