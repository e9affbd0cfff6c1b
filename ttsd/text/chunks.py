"""Grouping the sentences of a :class:`~ttsd.text.speech.Speech` into engine chunks.

The rules are those of ``ttsd.scheduler.chunking.split_text``, which this module
generalises to sentences with ranges: sentences are joined with a space while the chunk
stays within the limit; the first chunk has its own, lower limit (``first_limit``) so
that the first audio is ready sooner; a sentence longer than its chunk's limit is cut
at a clause boundary (``, ; :`` or a spaced dash), else at a space, else anywhere.

Two rules are new:

* A short first sentence ("Okay.", "Sure thing.": :data:`SHORT_WORDS` words or fewer)
  is never a chunk of its own when the next sentence fits with it within ``limit``,
  even if that exceeds ``first_limit``: engines speak one or two words on their own
  with odd prosody, and the pair is still short.
* A word longer than the limit (a 20,000-character token) is cut without inserting
  anything: the chunks' texts are exact slices of the sentence.

Every chunk says which sentences (or parts of a sentence) it holds, where they are in
the chunk's text and which range of the original text they say, so that the daemon can
report "sentence N, characters a-b" when a chunk starts playing and resume from the
chunk where a sentence starts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ttsd.text.speech import Sentence, Speech

#: A first sentence of at most this many words joins the next one (see above).
SHORT_WORDS = 3

_CLAUSE_END = re.compile(r"(?<=[,;:])\s+|\s+(?=[—–-]\s)")


@dataclass(frozen=True)
class ChunkPart:
    """A sentence, or the part of one, inside a :class:`Chunk`.

    ``sentence`` indexes the speech's sentences; ``start``/``end`` is the part's range in
    the chunk's text; ``source_start``/``source_end`` is the whole sentence's range in the
    original text; ``first`` is False for the continuation of a sentence that was cut to
    fit the limit (its first part is in an earlier chunk).
    """

    sentence: int
    start: int
    end: int
    source_start: int
    source_end: int
    first: bool = True


@dataclass(frozen=True)
class Chunk:
    """The text an engine synthesises in one call, and the sentences in it."""

    text: str
    parts: tuple[ChunkPart, ...]


def cut_long(text: str, first_limit: int, limit: int) -> list[tuple[int, int]]:
    """Cut ``text`` into ranges: the first at most ``first_limit`` long, others ``limit``.

    Cuts go at the last clause boundary within the limit, else the last space, else at
    the limit itself (inside a word, inserting nothing). A clause or space boundary in
    the first quarter of the window is not used, as it would leave a tiny piece.
    Spaces at a cut belong to no range.
    """
    pieces: list[tuple[int, int]] = []
    position = 0
    cap = max(1, first_limit)
    length = len(text)
    while length - position > cap:
        window = text[position : position + cap + 1]
        cut = -1
        for match in _CLAUSE_END.finditer(window):
            if 0 < match.start() <= cap:
                cut = match.start()
        if cut <= cap // 4:
            space = window.rfind(" ", 0, cap + 1)
            cut = space if space > cap // 4 else cut
        if cut <= 0:
            cut = cap
        end = position + cut
        while end > position and text[end - 1].isspace():
            end -= 1
        pieces.append((position, end))
        position += cut
        while position < length and text[position].isspace():
            position += 1
        cap = max(1, limit)
    if position < length:
        pieces.append((position, length))
    return pieces


def _is_short(text: str) -> bool:
    return len(text.split()) <= SHORT_WORDS


def chunks(
    speech: Speech | Sequence[Sentence],
    limit: int = 300,
    first_limit: int | None = None,
    *,
    start: int = 0,
) -> list[Chunk]:
    """Group sentences into chunks of at most ``limit`` characters (see the module docstring).

    ``first_limit`` (if given) caps the first chunk, except that a short first sentence
    may join the next one up to ``limit``. ``start`` skips the sentences before that
    index, to resume a job from the start of a sentence: the first chunk then starts
    with that sentence (and has ``first_limit``), and parts keep their indexes in
    ``speech``.
    """
    sentences = speech.sentences if isinstance(speech, Speech) else tuple(speech)
    result: list[Chunk] = []
    # The chunk being built: (sentence index, text, first part of its sentence?).
    current: list[tuple[int, str, bool]] = []
    length = 0  # of the chunk being built, with the spaces that will join its parts

    def emit() -> None:
        nonlocal length
        parts: list[ChunkPart] = []
        position = 0
        for index, text, first in current:
            sentence = sentences[index]
            parts.append(
                ChunkPart(
                    index, position, position + len(text), sentence.start, sentence.end, first
                )
            )
            position += len(text) + 1
        result.append(Chunk(" ".join(text for _, text, _ in current), tuple(parts)))
        current.clear()
        length = 0

    for index in range(max(0, start), len(sentences)):
        text = sentences[index].text
        cap = min(first_limit, limit) if (first_limit and not result) else limit
        joined = length + 1 + len(text)
        if current and joined <= cap:
            current.append((index, text, True))
            length = joined
            continue
        if (
            current
            and not result
            and len(current) == 1
            and current[0][2]
            and _is_short(current[0][1])
            and joined <= limit
        ):
            current.append((index, text, True))
            length = joined
            continue
        if current:
            emit()
            cap = limit
        if len(text) <= cap:
            current.append((index, text, True))
            length = len(text)
            continue
        pieces = cut_long(text, cap, limit)
        for number, (start, end) in enumerate(pieces):
            current.append((index, text[start:end], number == 0))
            length = end - start
            if number < len(pieces) - 1:
                emit()
    if current:
        emit()
    return result
