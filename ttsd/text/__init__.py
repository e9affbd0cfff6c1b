"""Speech-ready text: what agents and scripts write, turned into what a person would say.

Pure functions, no I/O. :func:`speakable` reads plain text or markdown into sentences,
each with the range of the original text it says; :func:`ttsd.text.chunks.cut_long`
cuts a sentence too long for one engine call. ``docs/text.md`` describes the rules.
"""

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
    "Cleaned",
    "CodeMode",
    "EmojiMode",
    "Format",
    "Sentence",
    "Speech",
    "clean",
    "detect_format",
    "looks_like_markdown",
    "speakable",
    "warm_up",
]
