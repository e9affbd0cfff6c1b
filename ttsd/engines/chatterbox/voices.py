"""Voice clips and the conditioning Chatterbox computes from them, cached in memory and on disk.

A voice is a clip ``NAME.wav``, ``NAME.flac`` or ``NAME.mp3`` (any letter case of the
suffix) in the voices directory; ``default`` is the checkpoint's built-in voice unless a
clip of that name exists. Conditioning a clip takes the speech tokenizer, the speaker
encoder and S3Gen's reference path (about a second on a GPU), so it is done once: the
memory cache is checked first, by the clip's size and modification time (one ``stat``
per chunk), and only a new or changed clip is read, hashed and looked up in the disk
cache, whose key covers the clip's content, the model kind, the library version and the
checkpoint's identity.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ttsd.engines.base import EngineError
from ttsd.engines.chatterbox.settings import DEFAULT_VOICE, VOICE_NAME, VOICE_SUFFIXES

log = logging.getLogger("ttsd.engines.chatterbox")

#: Bumped when what ttsd stores in a cache file changes.
CACHE_FORMAT = 2


@dataclass
class _Entry:
    path: Path
    signature: tuple[int, int]  # (st_mtime_ns, st_size) of the clip when it was analysed
    conds: Any


class VoiceStore:
    """Finds voice clips and hands out their conditionals (see the module docstring).

    ``prepare(path)`` computes conditionals from a clip (the model's
    ``prepare_conditionals``); ``cache_key`` is everything besides the clip that the
    result depends on (model kind, library version, checkpoint).
    """

    def __init__(
        self,
        voices_dir: Path,
        cache_dir: Path,
        *,
        kind: str,
        cache_key: str,
        builtin: Any,
        prepare: Callable[[Path], Any],
        load_cached: Callable[[Path], Any],
    ) -> None:
        self.voices_dir = voices_dir
        self.cache_dir = cache_dir
        self.kind = kind
        self.cache_key = cache_key
        self.builtin = builtin
        self._prepare = prepare
        self._load_cached = load_cached
        self._memory: dict[str, _Entry] = {}
        #: How many times a clip's bytes were read (tests check the memory cache works).
        self.clip_reads = 0

    def clear(self) -> None:
        self._memory.clear()

    def names(self, voices_dir: Path, include_default: bool) -> list[str]:
        """Voice names in ``voices_dir`` (plus ``default`` when asked)."""
        names = {DEFAULT_VOICE} if include_default else set()
        with contextlib.suppress(OSError):
            names.update(
                p.stem
                for p in voices_dir.iterdir()
                if p.suffix.lower() in VOICE_SUFFIXES and VOICE_NAME.match(p.stem)
            )
        return sorted(names)

    def path(self, voice: str) -> Path | None:
        """The clip for ``voice``: ``NAME`` plus a known suffix in any case, or None.

        With several (``bob.wav`` and ``bob.FLAC``), the suffix order ``.wav``, ``.flac``,
        ``.mp3`` decides, then the file name.
        """
        candidates: list[tuple[int, str, Path]] = []
        with contextlib.suppress(OSError):
            for entry in self.voices_dir.iterdir():
                suffix = entry.suffix.lower()
                if entry.stem == voice and suffix in VOICE_SUFFIXES and entry.is_file():
                    candidates.append((VOICE_SUFFIXES.index(suffix), entry.name, entry))
        return min(candidates)[2] if candidates else None

    def conditionals(self, voice: str) -> Any:
        """The conditioning for ``voice``: memory cache, then disk cache, then computed."""
        path = self.path(voice) if VOICE_NAME.match(voice) else None
        if voice == DEFAULT_VOICE and path is None:
            if self.builtin is None:
                raise EngineError(
                    f"this Chatterbox checkpoint has no built-in voice: add a clip "
                    f"{self.voices_dir}/NAME.wav and pass voice NAME",
                    "voice_not_found",
                )
            return self.builtin
        if not VOICE_NAME.match(voice):
            raise EngineError(f"bad Chatterbox voice name {voice!r}", "voice_not_found")
        if path is None:
            raise EngineError(
                f"Chatterbox voice {voice!r} not found: no {voice}.wav, .flac or .mp3 in "
                f"{self.voices_dir}",
                "voice_not_found",
            )
        try:
            stat = path.stat()
        except OSError as exc:
            raise EngineError(f"cannot read voice clip {path}: {exc}", "voice_load") from exc
        signature = (stat.st_mtime_ns, stat.st_size)
        cached = self._memory.get(voice)
        if cached is not None and cached.path == path and cached.signature == signature:
            return cached.conds
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise EngineError(f"cannot read voice clip {path}: {exc}", "voice_load") from exc
        self.clip_reads += 1
        cache_file = self.cache_file(data)
        conds = self._load_cached(cache_file) if cache_file.is_file() else None
        if conds is None:
            started = time.monotonic()
            conds = self._prepare(path)
            log.info("conditioned voice %s in %.1f s", path.name, time.monotonic() - started)
            self._save(conds, cache_file)
        self._memory[voice] = _Entry(path, signature, conds)
        return conds

    def cache_file(self, clip: bytes) -> Path:
        """The disk cache file for a clip with these bytes under this model and library."""
        digest = hashlib.sha256(clip).hexdigest()
        material = f"{CACHE_FORMAT}\0{self.kind}\0{self.cache_key}\0{digest}"
        key = hashlib.sha256(material.encode()).hexdigest()
        return self.cache_dir / f"{self.kind}-{key[:32]}.pt"

    def _save(self, conds: Any, cache_file: Path) -> None:
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
