"""Instant phrases: a bounded cache of synthesized audio, so repeated phrases start at once.

Agents repeat themselves ("Done.", "Tests passed.", "I need your input."). A chunk
whose engine, voice, options and text were made before is played from memory: its
first sample is then as near as the audio path allows. The cache holds at most
``max_bytes`` of PCM and forgets the least recently used chunks first.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

Key = tuple[str, str, str, str]


def cache_key(engine: str, voice: str | None, options: Mapping[str, Any], text: str) -> Key:
    """The key of a chunk: what decides its audio (whitespace runs do not)."""
    return (engine, voice or "", json.dumps(options, sort_keys=True), " ".join(text.split()))


class PhraseCache:
    """An LRU map from :func:`cache_key` to a chunk's audio pieces, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Key, tuple[np.ndarray, ...]] = OrderedDict()

    def get(self, key: Key) -> tuple[np.ndarray, ...] | None:
        """The pieces of ``key`` (and count a hit), or None (and count a miss)."""
        pieces = self._entries.get(key)
        if pieces is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return pieces

    def put(self, key: Key, pieces: list[np.ndarray]) -> None:
        """Remember ``pieces`` for ``key``, forgetting old entries to stay in bounds."""
        size = sum(piece.nbytes for piece in pieces)
        if size > self.max_bytes or not pieces:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= sum(piece.nbytes for piece in old)
        frozen = []
        for piece in pieces:
            piece = piece.copy()
            piece.flags.writeable = False  # shared by every job that plays it
            frozen.append(piece)
        self._entries[key] = tuple(frozen)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= sum(piece.nbytes for piece in evicted)

    def info(self) -> dict[str, Any]:
        """What ``status`` shows of the cache."""
        lookups = self.hits + self.misses
        return {
            "entries": len(self._entries),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hits / lookups, 3) if lookups else 0.0,
        }
