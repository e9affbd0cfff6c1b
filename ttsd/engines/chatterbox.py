"""Chatterbox (Resemble AI): expressive neural speech and voice cloning, best on a GPU.

Built on the public API of ``chatterbox-tts`` 0.1.7: ``ChatterboxTTS`` (``model =
"standard"``), ``ChatterboxTurboTTS`` (``"turbo"``) and ``ChatterboxMultilingualTTS``
(``"multilingual"``, with ``language``). Weights come from a local checkpoint directory
(``model_dir``, loaded with ``from_local``) or from the Hugging Face hub
(``from_pretrained``, cached by ``huggingface_hub``).

Voices are reference clips ``NAME.wav``, ``NAME.flac`` or ``NAME.mp3`` in the voices
directory; ``default`` is the voice built into the checkpoint. The conditioning computed
from a clip is kept in memory and on disk under ``cache_dir``, keyed by the clip's
content, the model kind and where the weights came from, so each clip is analysed once.

torch and chatterbox are imported inside methods: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ttsd.engines.base import (
    Engine,
    EngineError,
    OptionError,
    check_number,
    float_to_int16,
    reject_unknown,
)

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000  # chatterbox.models.s3gen.S3GEN_SR
DEFAULT_VOICE = "default"
VOICE_SUFFIXES = (".wav", ".flac", ".mp3")
MODELS = ("standard", "turbo", "multilingual")
DEVICES = ("auto", "cpu", "cuda", "mps")

#: Speech tokens come at 25 per second; the library stops at 1000 (40 s) per call.
TOKENS_PER_SECOND = 25
MAX_SPEECH_TOKENS = 1000

#: ``chatterbox.mtl_tts.SUPPORTED_LANGUAGES`` of 0.1.7 (a test checks they agree).
LANGUAGES = (
    "ar", "da", "de", "el", "en", "es", "fi", "fr", "he", "hi", "it", "ja",
    "ko", "ms", "nl", "no", "pl", "pt", "ru", "sv", "sw", "tr", "zh",
)  # fmt: skip

#: Hub repositories that ``from_pretrained`` downloads from.
HUB_REPOS = {
    "standard": "ResembleAI/chatterbox",
    "turbo": "ResembleAI/chatterbox-turbo",
    "multilingual": "ResembleAI/chatterbox",
}

#: Files ``from_local`` reads from ``model_dir`` (``conds.pt``, the default voice, is optional).
LOCAL_FILES = {
    "standard": ("ve.safetensors", "t3_cfg.safetensors", "s3gen.safetensors", "tokenizer.json"),
    "turbo": ("ve.safetensors", "t3_turbo_v1.safetensors", "s3gen_meanflow.safetensors"),
    "multilingual": (
        "ve.pt",
        "t3_mtl23ls_v2.safetensors",
        "s3gen.pt",
        "grapheme_mtl_merged_expanded_v1.json",
    ),
}

#: Per-job numeric options ``(low, high, integer)`` for each model, named as the keyword
#: arguments of its ``generate()``. Turbo ignores exaggeration, cfg_weight and min_p.
_RANGES: dict[str, dict[str, tuple[float, float, bool]]] = {
    "standard": {
        "exaggeration": (0.0, 2.0, False),
        "cfg_weight": (0.0, 1.0, False),
        "temperature": (0.05, 2.0, False),
        "repetition_penalty": (1.0, 3.0, False),
        "min_p": (0.0, 1.0, False),
        "top_p": (0.01, 1.0, False),
    },
    "turbo": {
        "temperature": (0.05, 2.0, False),
        "repetition_penalty": (1.0, 3.0, False),
        "top_p": (0.01, 1.0, False),
        "top_k": (0, 1000, True),  # 0 turns top-k filtering off
    },
}
_RANGES["multilingual"] = dict(_RANGES["standard"])

#: ``cfg_weight`` of exactly 0 breaks the standard model (it then builds a batch of one
#: where the sampler expects two); this value is indistinguishable in the output.
CFG_EPSILON = 1e-6

_VOICE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]*$")


class ChatterboxEngine(Engine):
    """The Chatterbox engine; see the module docstring.

    Settings (the ``[chatterbox]`` config table plus what the daemon adds):

    - ``model``: ``"standard"`` (default), ``"turbo"`` or ``"multilingual"``.
    - ``language``: default language of the multilingual model (``"en"``).
    - ``model_dir``: a local checkpoint directory for ``from_local``; when it is unset or
      incomplete, the weights come from the hub with ``from_pretrained``.
    - ``device``: ``"auto"`` (cuda, else mps, else cpu), ``"cpu"``, ``"cuda"``,
      ``"cuda:N"`` or ``"mps"``.
    - ``max_speech_tokens``: cap on speech tokens per chunk (25 per second of audio;
      at most and by default 1000, i.e. 40 s).
    - ``voice``, ``voices_dir``, ``cache_dir``: default voice name, clip directory
      (``$XDG_CONFIG_HOME/ttsd/voices``) and cache root (``$XDG_CACHE_HOME/ttsd``).
    - any per-job option (``exaggeration``, ``cfg_weight``, ``temperature``, ...):
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
        max_speech_tokens: int = MAX_SPEECH_TOKENS,
        voice: str | None = None,
        voices_dir: Path | str | None = None,
        cache_dir: Path | str | None = None,
        **defaults: Any,
    ) -> None:
        if model not in MODELS:
            raise EngineError(
                f"chatterbox: model must be one of {', '.join(MODELS)}, got {model!r}",
                "engine_load",
            )
        self.kind = model
        device = str(device)
        if device not in DEVICES and not re.fullmatch(r"cuda:\d+", device):
            raise EngineError(
                f"chatterbox: device must be auto, cpu, cuda, cuda:N or mps, got {device!r}",
                "engine_load",
            )
        self.device_setting = device
        if language not in LANGUAGES:
            raise EngineError(
                f"chatterbox: language must be one of {', '.join(LANGUAGES)}, got {language!r}",
                "engine_load",
            )
        self.language = language
        cap = max_speech_tokens
        if isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= MAX_SPEECH_TOKENS:
            raise EngineError(
                f"chatterbox: max_speech_tokens must be an integer from 1 to {MAX_SPEECH_TOKENS}",
                "engine_load",
            )
        self.max_speech_tokens = cap
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
        self.rtf: float | None = None  # measured real-time factor (CPU only)
        self._model: Any = None
        self._injected: tuple[Any, Any] | None = None  # (model, its built-in conditionals)
        self._source = f"hub:{HUB_REPOS[self.kind]}"  # what the weights are, for cache keys
        self._builtin: Any = None  # the checkpoint's own conditionals (conds.pt)
        self._conds: dict[str, tuple[tuple[int, int], Any]] = {}  # voice -> (stat, conds)

    @classmethod
    def from_model(
        cls, model: Any, *, model_id: str = "injected", **settings: Any
    ) -> ChatterboxEngine:
        """An engine around an already built Chatterbox model object (for tests).

        ``model_id`` names the weights in disk cache keys. The model kind is taken from
        the object's class unless ``model`` is given in ``settings``.
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

    def load(self) -> None:
        if self._model is not None:
            return
        started = time.monotonic()
        if self._injected is not None:
            model, builtin = self._injected
            self.device = str(model.device)
        else:
            _check_watermarker()
            self.device = _resolve_device(self.device_setting)
            model = self._load_weights(self.device)
            builtin = model.conds
        self._builtin = builtin
        self._model = model
        log.info(
            "chatterbox %s model ready on %s in %.1f s (weights: %s)",
            self.kind,
            self.device,
            time.monotonic() - started,
            self._source,
        )

    def _load_weights(self, device: str) -> Any:
        """Build the model with ``from_local`` or ``from_pretrained``; one error if neither."""
        cls = _model_class(self.kind)
        local_problem = "model_dir is not set"
        if self.model_dir is not None:
            missing = [f for f in LOCAL_FILES[self.kind] if not (self.model_dir / f).is_file()]
            if not self.model_dir.is_dir():
                local_problem = f"model_dir {self.model_dir} does not exist"
            elif missing:
                local_problem = f"model_dir {self.model_dir} lacks {', '.join(missing)}"
            else:
                log.info("loading chatterbox %s weights from %s", self.kind, self.model_dir)
                try:
                    model = cls.from_local(str(self.model_dir), device)
                except Exception as exc:
                    raise EngineError(
                        f"cannot load Chatterbox {self.kind} weights from model_dir "
                        f"{self.model_dir} (from_local): {type(exc).__name__}: {exc}",
                        "engine_load",
                    ) from exc
                self._source = f"dir:{self.model_dir.resolve()}"
                return model
            log.warning("chatterbox: %s; trying the Hugging Face hub", local_problem)
        repo = HUB_REPOS[self.kind]
        log.info("loading chatterbox %s weights from the hub (%s)", self.kind, repo)
        try:
            model = cls.from_pretrained(device)
        except Exception as exc:
            raise EngineError(
                f"no Chatterbox {self.kind} weights: (1) local checkpoint: {local_problem} "
                f"(set model_dir in [chatterbox] to a directory with "
                f"{', '.join(LOCAL_FILES[self.kind])}); (2) Hugging Face hub ({repo}, "
                f"from_pretrained): {type(exc).__name__}: {_first_line(exc)} (needs network "
                f"once, then the hub cache; HF_HUB_OFFLINE=1 uses the cache only)",
                "engine_load",
            ) from exc
        self._source = f"hub:{repo}"
        return model

    def unload(self) -> None:
        if self._model is None:
            return
        on_cuda = bool(self.device and self.device.startswith("cuda"))
        self._model = None
        self._builtin = None
        self._conds.clear()
        gc.collect()
        if on_cuda:
            import torch

            torch.cuda.empty_cache()
        log.info("chatterbox model unloaded")

    # -- options and voices ----------------------------------------------------------

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        ranges = _RANGES[self.kind]
        known = set(ranges) | ({"language"} if self.kind == "multilingual" else set())
        reject_unknown(options, known, f"{self.name} ({self.kind} model)")
        checked: dict[str, Any] = {}
        for key, (low, high, integer) in ranges.items():
            value = check_number(options, key, low, high, integer=integer)
            if value is not None:
                checked[key] = int(value) if integer else float(value)
        if "language" in options:
            language = options["language"]
            if not isinstance(language, str) or language.lower() not in LANGUAGES:
                raise OptionError(
                    f"option 'language' must be one of {', '.join(LANGUAGES)}, got {language!r}"
                )
            checked["language"] = language.lower()
        return checked

    def check_voice(self, voice: str | None) -> None:
        if voice is not None and not _VOICE_NAME.match(voice):
            raise OptionError(
                f"bad Chatterbox voice name {voice!r}: use the name of a clip in "
                f"{self.voices_dir} without its suffix"
            )

    def voices(self) -> list[str]:
        names = set()
        if self._model is None or self._builtin is not None:
            names.add(DEFAULT_VOICE)
        with contextlib.suppress(OSError):
            names.update(
                p.stem
                for p in self.voices_dir.iterdir()
                if p.suffix.lower() in VOICE_SUFFIXES and _VOICE_NAME.match(p.stem)
            )
        return sorted(names)

    def voice_path(self, voice: str) -> Path | None:
        """The clip for ``voice`` in the voices directory, or None."""
        for suffix in VOICE_SUFFIXES:
            path = self.voices_dir / f"{voice}{suffix}"
            if path.is_file():
                return path
        return None

    def _conditionals(self, voice: str) -> Any:
        """The model's conditioning for ``voice``: memory cache, then disk cache, then compute."""
        if voice == DEFAULT_VOICE and self.voice_path(voice) is None:
            if self._builtin is None:
                raise EngineError(
                    f"this Chatterbox checkpoint has no built-in voice: add a clip "
                    f"{self.voices_dir}/NAME.wav and pass voice NAME",
                    "voice_not_found",
                )
            return self._builtin
        if not _VOICE_NAME.match(voice):
            raise EngineError(f"bad Chatterbox voice name {voice!r}", "voice_not_found")
        path = self.voice_path(voice)
        if path is None:
            raise EngineError(
                f"Chatterbox voice {voice!r} not found: no {voice}.wav, .flac or .mp3 in "
                f"{self.voices_dir}",
                "voice_not_found",
            )
        try:
            stat = path.stat()
            data = path.read_bytes()
        except OSError as exc:
            raise EngineError(f"cannot read voice clip {path}: {exc}", "voice_load") from exc
        signature = (stat.st_mtime_ns, stat.st_size)
        cached = self._conds.get(voice)
        if cached is not None and cached[0] == signature:
            return cached[1]
        digest = hashlib.sha256(data).hexdigest()
        key = hashlib.sha256(f"{self.kind}\0{self._source}\0{digest}".encode()).hexdigest()
        cache_file = self.cache_dir / f"{self.kind}-{key[:32]}.pt"
        conds = self._load_cached(cache_file)
        if conds is None:
            conds = self._prepare(path)
            self._save_cached(conds, cache_file)
        self._conds[voice] = (signature, conds)
        return conds

    def _prepare(self, path: Path) -> Any:
        model = self._model
        saved = model.conds
        started = time.monotonic()
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
        log.info("conditioned voice %s in %.1f s", path.name, time.monotonic() - started)
        return conds

    def _load_cached(self, cache_file: Path) -> Any:
        if not cache_file.is_file():
            return None
        from chatterbox.tts import Conditionals

        try:
            return Conditionals.load(cache_file, map_location=self.device or "cpu").to(self.device)
        except Exception as exc:  # a stale or corrupt cache entry: compute it again
            log.warning("ignoring voice cache %s: %s", cache_file, exc)
            return None

    def _save_cached(self, conds: Any, cache_file: Path) -> None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=cache_file.parent, suffix=".tmp")
            os.close(fd)
            try:
                conds.save(Path(tmp))
                os.replace(tmp, cache_file)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except Exception as exc:  # the cache is an optimisation: never fail the job for it
            log.warning("cannot write voice cache %s: %s", cache_file, exc)

    # -- synthesis -------------------------------------------------------------------

    def synthesize(self, text: str, voice: str | None, options: Mapping[str, Any]) -> np.ndarray:
        model = self._model
        if model is None:
            raise EngineError("the Chatterbox model is not loaded", "engine_load")
        if not text.strip():
            return np.zeros(0, dtype=np.int16)
        import torch

        model.conds = self._conditionals(voice or self.default_voice)
        kwargs = {**self.defaults, **options}
        if self.kind == "multilingual":
            kwargs["language_id"] = kwargs.pop("language", self.language)
        if self.kind == "standard" and kwargs.get("cfg_weight", 0.5) == 0.0:
            kwargs["cfg_weight"] = CFG_EPSILON
        _cap_speech_tokens(model, self.max_speech_tokens)
        started = time.monotonic()
        try:
            with torch.inference_mode():
                wav = model.generate(text, **kwargs)
        except Exception as exc:
            raise EngineError(
                f"Chatterbox failed on this chunk: {type(exc).__name__}: {exc}", "engine_failed"
            ) from exc
        finally:
            model.conds = self._builtin
        pcm = float_to_int16(wav.detach().cpu().numpy())
        self._measure(time.monotonic() - started, pcm.size)
        return pcm

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
        }
        if self.kind == "multilingual":
            info["language"] = self.language
        if self.rtf is not None:
            info["real_time_factor"] = round(self.rtf, 2)
        return info


def _xdg(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable)
    return Path(value) if value else Path.home() / fallback


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"


def _model_class(kind: str) -> Any:
    try:
        if kind == "turbo":
            from chatterbox.tts_turbo import ChatterboxTurboTTS as cls
        elif kind == "multilingual":
            from chatterbox.mtl_tts import ChatterboxMultilingualTTS as cls
        else:
            from chatterbox.tts import ChatterboxTTS as cls
    except ImportError as exc:
        raise EngineError(
            f"chatterbox-tts is not installed or broken ({exc}): pip install 'ttsd[chatterbox]'",
            "engine_load",
        ) from exc
    return cls


def _check_watermarker() -> None:
    """Fail clearly when resemble-perth cannot build its watermarker.

    Every Chatterbox model calls ``perth.PerthImplicitWatermarker()`` in its constructor;
    perth sets that name to None when its import fails, as it does with setuptools 81
    and later (no more ``pkg_resources``), and the model then dies with "'NoneType'
    object is not callable".
    """
    try:
        import perth
    except ImportError as exc:
        raise EngineError(
            f"resemble-perth (the watermarker of chatterbox-tts) cannot be imported: {exc}",
            "engine_load",
        ) from exc
    if getattr(perth, "PerthImplicitWatermarker", None) is None:
        raise EngineError(
            "resemble-perth cannot load PerthImplicitWatermarker, which chatterbox-tts "
            "needs; this happens with setuptools 81 or later (perth imports pkg_resources): "
            "pip install 'setuptools<81' in the daemon's environment",
            "engine_load",
        )


def _resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device = {setting!r} but torch sees no CUDA GPU", "engine_load")
    if setting == "mps" and not torch.backends.mps.is_available():
        raise EngineError("device = 'mps' but torch reports MPS unavailable", "engine_load")
    return setting


def _cap_speech_tokens(model: Any, cap: int) -> None:
    """Limit the speech tokens one ``generate()`` call makes to ``cap``.

    The library hard-codes 1000 (``max_new_tokens`` of ``T3.inference``; Turbo's
    ``inference_turbo`` takes ``max_gen_len``). Wrappers on the model's ``t3`` instance
    read the cap from the instance, so several engines may share one model object. The
    ``inference`` wrapper also drops tokens outside the speech vocabulary.
    """
    t3 = model.t3
    state = vars(t3)
    state["_ttsd_token_cap"] = cap
    if "_ttsd_capped" in state:
        return
    cls = type(t3)

    def inference(*args: Any, **kwargs: Any) -> Any:
        limit = kwargs.get("max_new_tokens") or MAX_SPEECH_TOKENS
        kwargs["max_new_tokens"] = min(limit, state["_ttsd_token_cap"])
        tokens = cls.inference(t3, *args, **kwargs)
        # Only S3Gen's 6561 codes plus start/stop are speech: the multilingual model
        # passes anything else on to S3Gen, which fails with "index out of range".
        return tokens[..., tokens[0] <= t3.hp.stop_speech_token] if tokens.dim() == 2 else tokens

    def inference_turbo(*args: Any, **kwargs: Any) -> Any:
        limit = kwargs.get("max_gen_len") or MAX_SPEECH_TOKENS
        # inference_turbo samples one token before its loop of max_gen_len steps
        kwargs["max_gen_len"] = min(limit, state["_ttsd_token_cap"] - 1)
        return cls.inference_turbo(t3, *args, **kwargs)

    state["inference"] = inference
    state["inference_turbo"] = inference_turbo
    state["_ttsd_capped"] = True
