"""Splitting text into chunks an engine speaks one at a time.

A chunk is one sentence, so that progress can be reported sentence by sentence and an
interrupted job can resume from the start of the sentence it was in. A sentence longer
than the limit is cut at clause boundaries (``, ; :`` and dashes), else at spaces, else
anywhere (a very long word is cut without inserting anything). The first chunk of a job
has a lower limit so that the first audio is ready sooner. Every chunk knows the
character range of the original text it says.
"""

from __future__ import annotations

import re

from ttsd.scheduler.jobs import Chunk

# A sentence ends at . ! ? … (optionally followed by closing quotes or brackets) and
# whitespace; a newline run (paragraph break) also ends one.
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+|\n\s*\n")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+|\s+(?=[—–-]\s)")


def _sentences(text: str) -> list[tuple[int, int]]:
    """``[start, end)`` spans of the sentences of ``text``, without surrounding space."""
    spans = []
    position = 0
    for match in _SENTENCE_END.finditer(text):
        spans.append((position, match.start()))
        position = match.end()
    spans.append((position, len(text)))
    return [_strip(text, start, end) for start, end in spans if text[start:end].strip()]


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _cut(text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
    """Cut the span of an over-long sentence into spans of at most ``limit``."""
    pieces = []
    while end - start > limit:
        window = text[start : start + limit + 1]
        cut = -1
        for match in _CLAUSE_END.finditer(window):
            if 0 < match.start() <= limit:
                cut = match.start()
        if cut <= limit // 4:  # a clause break very early would leave a tiny chunk
            space = window.rfind(" ", 0, limit + 1)
            cut = space if space > limit // 4 else cut
        if cut <= 0:
            cut = limit  # no break at all: cut the word itself
        piece = _strip(text, start, start + cut)
        if piece[1] > piece[0]:
            pieces.append(piece)
        start = _strip(text, start + cut, end)[0]
    if end > start:
        pieces.append((start, end))
    return pieces


def split_spans(
    text: str, limit: int = 300, first_limit: int | None = None
) -> list[tuple[int, int]]:
    """Spans of ``text`` to speak one at a time: sentences, cut to ``limit`` characters
    (``first_limit`` for the first one)."""
    spans: list[tuple[int, int]] = []
    for start, end in _sentences(text):
        cap = first_limit if (first_limit and not spans) else limit
        pieces = _cut(text, start, end, cap)
        if cap != limit and len(pieces) > 1:
            pieces = [pieces[0], *_cut(text, pieces[1][0], end, limit)]
        spans.extend(pieces)
    return spans


def split_text(text: str, limit: int = 300, first_limit: int | None = None) -> list[str]:
    """The chunks of ``text`` as strings (see :func:`split_spans`)."""
    return [text[start:end] for start, end in split_spans(text, limit, first_limit)]


def chunk_text(text: str, limit: int = 300, first_limit: int | None = None) -> list[Chunk]:
    """The chunks of ``text``, each with its span in ``text``."""
    return [
        Chunk(index, text[start:end], start, end)
        for index, (start, end) in enumerate(split_spans(text, limit, first_limit))
    ]
