"""Splitting a job's text into chunks an engine speaks one at a time.

The text is first made speakable (:func:`ttsd.text.speakable`: markdown read as a
person would say it, control characters removed), which gives sentences that each know
their range in the original text. A chunk is one sentence, so that progress is reported
sentence by sentence and an interrupted job resumes from the start of the sentence it
was in; a sentence longer than the limit is cut into several chunks (at a clause, else
a space, else anywhere, inserting nothing). The first chunk of a job has a lower limit
so that the first audio is ready sooner. Joining a short first sentence with the next
is left to the pacing (:mod:`.pacing`), which holds playback until the next sentence
cannot outrun it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ttsd.scheduler.jobs import Chunk

if TYPE_CHECKING:
    from ttsd.text import Speech

# ttsd.text (markdown-it, emoji) takes a fifth of a second to import: it is imported on
# first use, and the daemon warms it up in a thread once it listens (a faster cold start).


def chunk_speech(speech: Speech, limit: int = 300, first_limit: int | None = None) -> list[Chunk]:
    """The chunks of ``speech``: a sentence each, long ones cut to the limits."""
    from ttsd.text.chunks import cut_long

    chunks: list[Chunk] = []
    for number, sentence in enumerate(speech.sentences):
        cap = first_limit if (first_limit and not chunks) else limit
        text = sentence.text
        pieces = cut_long(text, cap, limit) if len(text) > cap else [(0, len(text))]
        for part, (start, end) in enumerate(pieces):
            chunks.append(
                Chunk(
                    index=len(chunks),
                    text=text[start:end],
                    start=sentence.start,
                    end=sentence.end,
                    sentence=number,
                    opens=part == 0,
                )
            )
    return chunks


def chunk_text(
    text: str,
    limit: int = 300,
    first_limit: int | None = None,
    *,
    format: str = "text",
    code: str = "summarize",
    emoji: str = "drop",
) -> list[Chunk]:
    """The chunks of ``text`` read as ``format`` (see :func:`ttsd.text.speakable`)."""
    from ttsd.text import speakable

    speech = speakable(text, format, code=code, emoji=emoji)  # type: ignore[arg-type]
    return chunk_speech(speech, limit, first_limit)


def split_text(text: str, limit: int = 300, first_limit: int | None = None) -> list[str]:
    """The chunk texts of plain ``text`` (what the engine is asked to say, in order)."""
    return [chunk.text for chunk in chunk_text(text, limit, first_limit)]
