"""Speech-ready text: what agents and scripts write, turned into what a person would say.

Pure functions, no I/O. :func:`speakable` reads plain text or markdown into sentences,
each with the range of the original text it says; :func:`chunks` groups those sentences
into the pieces an engine synthesises one at a time. ``docs/text.md`` describes the rules.
"""

from ttsd.text.chunks import Chunk, ChunkPart, chunks
from ttsd.text.clean import Cleaned, clean
from ttsd.text.sayable import EmojiMode
from ttsd.text.speech import (
    CODE_MODES,
    EMOJI_MODES,
    FORMATS,
    CodeMode,
    Format,
    Sentence,
    Speech,
    detect_format,
    looks_like_markdown,
    speakable,
    warm_up,
)

__all__ = [
    "CODE_MODES",
    "EMOJI_MODES",
    "FORMATS",
    "Chunk",
    "ChunkPart",
    "Cleaned",
    "CodeMode",
    "EmojiMode",
    "Format",
    "Sentence",
    "Speech",
    "chunks",
    "clean",
    "detect_format",
    "looks_like_markdown",
    "speakable",
    "warm_up",
]
