"""Splitting text into chunks an engine speaks one at a time.

Chunks end at sentence boundaries where possible, else at clause boundaries (``, ; :``
and dashes), else at spaces, and are never longer than the limit. The first chunk of
a job has a lower limit so that the first audio is ready sooner.
"""

from __future__ import annotations

import re

# A sentence ends at . ! ? … (optionally followed by closing quotes or brackets) and
# whitespace; a newline run (paragraph break) also ends one.
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+|\n\s*\n")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+|\s+(?=[—–-]\s)")


def _split_long(text: str, limit: int) -> list[str]:
    """Split one over-long sentence at clause boundaries, then at spaces, then anywhere."""
    pieces: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = -1
        for match in _CLAUSE_END.finditer(window):
            if 0 < match.start() <= limit:
                cut = match.start()
        if cut <= limit // 4:  # a clause break very early would leave a tiny chunk
            space = window.rfind(" ", 0, limit + 1)
            cut = space if space > limit // 4 else cut
        if cut <= 0:
            cut = limit
        pieces.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        pieces.append(rest)
    return pieces


def split_text(text: str, limit: int = 300, first_limit: int | None = None) -> list[str]:
    """Split ``text`` into speakable chunks of at most ``limit`` characters.

    Short sentences are joined up to the limit. ``first_limit`` (if given) caps the
    first chunk so that time to first audio stays low on long texts.
    """
    sentences = [s.strip() for s in _SENTENCE_END.split(text.strip()) if s and s.strip()]
    chunks: list[str] = []
    current = ""
    for sentence in sentences:
        cap = first_limit if (first_limit and not chunks) else limit
        if current and len(current) + 1 + len(sentence) <= cap:
            current = f"{current} {sentence}"
            continue
        if current:
            chunks.append(current)
            cap = limit
        if len(sentence) <= cap:
            current = sentence
        else:
            parts = _split_long(sentence, cap)
            if cap != limit and len(parts) > 1:
                parts = [parts[0], *_split_long(" ".join(parts[1:]), limit)]
            chunks.extend(parts[:-1])
            current = parts[-1]
    if current:
        chunks.append(current)
    return chunks
