"""Speech engines and the registry that builds one by name.

Engine modules import their heavy libraries lazily, so importing this package is cheap
and a missing optional engine only matters when it is chosen.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ttsd.engines.base import CancelToken, Engine, EngineError, OptionError

__all__ = [
    "ENGINE_NAMES",
    "CancelToken",
    "Engine",
    "EngineError",
    "OptionError",
    "create_engine",
    "resolve_auto",
]

log = logging.getLogger(__name__)


def _piper(settings: Mapping[str, Any]) -> Engine:
    from ttsd.engines.piper import PiperEngine

    voices_dir = settings.get("voices_dir")
    return PiperEngine(
        voice=settings.get("voice"), voices_dir=Path(voices_dir) if voices_dir else None
    )


def _chatterbox(settings: Mapping[str, Any]) -> Engine:
    from ttsd.engines.chatterbox import ChatterboxEngine

    return ChatterboxEngine(**settings)


def _tone(settings: Mapping[str, Any]) -> Engine:
    from ttsd.engines.tone import ToneEngine

    return ToneEngine(**{k: v for k, v in settings.items() if k not in ("voice", "voices_dir")})


def _remote(settings: Mapping[str, Any]) -> Engine:
    from ttsd.engines.remote import FALLBACKS, RemoteEngine

    own = {k: v for k, v in settings.items() if k not in ("voices_dir", "fallback_settings")}
    name = own.pop("fallback", None)
    fallback = None
    if name is not None:
        if name not in FALLBACKS:
            raise EngineError(
                f"[remote] fallback must be one of {', '.join(FALLBACKS)}, got {name!r}",
                "engine_load",
            )
        try:
            fallback = create_engine(name, settings.get("fallback_settings", {}))
        except TypeError as exc:  # an unknown key in the fallback's own table
            raise EngineError(f"[{name}] settings (the remote fallback): {exc}") from None
    return RemoteEngine(**own, fallback=fallback)


_FACTORIES: dict[str, Callable[[Mapping[str, Any]], Engine]] = {
    "piper": _piper,
    "chatterbox": _chatterbox,
    "tone": _tone,
    "remote": _remote,
}

#: Names accepted by the ``engine`` setting.
ENGINE_NAMES = ("auto", *_FACTORIES)


def nvidia_gpu_present(dev: Path = Path("/dev"), proc: Path = Path("/proc")) -> bool:
    """True if the NVIDIA driver shows a GPU (a device node or its /proc entry).

    A cheap look before importing torch (seconds, and gigabytes of CUDA libraries) to
    ask the same question properly.
    """
    return (dev / "nvidia0").exists() or (proc / "driver" / "nvidia" / "gpus").is_dir()


def resolve_auto() -> tuple[str, str]:
    """Pick an engine for ``engine = "auto"``; return ``(name, reason)``.

    Chatterbox when it is installed and a CUDA GPU is present, else Piper. torch is
    imported only when the NVIDIA driver shows a GPU; even then it takes a second or
    two, so callers run this off the event loop.
    """
    if importlib.util.find_spec("chatterbox") is None:
        return "piper", "chatterbox-tts is not installed"
    if not nvidia_gpu_present():
        return "piper", "no NVIDIA GPU (no /dev/nvidia0): Chatterbox needs one to be pleasant"
    try:
        import torch
    except ImportError:
        return "piper", "torch is not importable"
    if not torch.cuda.is_available():
        return "piper", "chatterbox-tts is installed but no CUDA GPU is available"
    return "chatterbox", f"CUDA GPU found ({torch.cuda.get_device_name(0)})"


def create_engine(name: str, settings: Mapping[str, Any]) -> Engine:
    """Build (but do not load) the engine called ``name`` with its config section."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise EngineError(f"unknown engine {name!r}", "engine_load") from None
    return factory(settings)
