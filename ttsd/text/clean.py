"""Removing what a terminal or a broken encoder left in text, keeping a map back to it.

Agents and scripts pipe terminal output into ttsd: colour codes, cursor moves, OSC titles
and hyperlinks, form feeds, NULs. None of it is speech, and none of it should make a
request fail, so :func:`clean` removes it. Because the daemon reports progress as
character ranges of the text the client sent, the result keeps a map from every cleaned
position back to the original one (:meth:`Cleaned.source_start`, :meth:`Cleaned.source_end`).

What is done, in one left-to-right pass:

* ANSI/VT escape sequences are removed whole: CSI (``ESC [`` ... final byte, also the
  8-bit ``U+009B``), OSC/DCS/SOS/PM/APC strings up to their terminator (BEL or ST; an
  unterminated one ends at the end of its line so that one stray ``ESC ]`` cannot swallow
  the rest of a message), two- and three-byte escapes (``ESC ( B``, ``ESC 7``), and a lone
  ``ESC``.
* ``\\r\\n`` and lone ``\\r`` become ``\\n`` (what CommonMark does too, so that the
  markdown parser sees exactly the cleaned text). Vertical tab, form feed, the
  information separators FS/GS/RS, NEL (U+0085) and the line and paragraph separators
  (U+2028, U+2029) also become ``\\n``: they separate lines, and removing them would glue
  two words together.
* Every other C0 control but tab and newline, DEL and the C1 controls are removed.
* Invisible format characters that only disturb word matching are removed: soft hyphen,
  zero-width space, word joiner, byte order mark, left-to-right/right-to-left marks and
  the bidirectional embedding/override/isolate controls. Zero-width joiner and non-joiner
  are kept: emoji sequences and several scripts need them.
* Lone surrogates (which ``json.loads`` produces from ``"\\ud800"``) become U+FFFD, so the
  text can always be encoded as UTF-8.

Positions are Python string indices (code points) of the original text.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

_ANSI = (
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI: parameters, intermediates, final byte
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]"  # nF and Fp/Fe/Fs escapes: ESC ( B, ESC 7, ESC =, ESC c
    r"|\x1b"
)
_NEWLINE = r"\r\n?|[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]"
_REMOVE = (
    r"[\x00-\x08\x0e-\x1a\x1f\x7f-\x9f"
    r"\u00ad\u200b\u200e\u200f\u202a-\u202e\u2060\u2066-\u2069\ufeff]+"
)
_SURROGATE = "[\ud800-\udfff]"

_BAD = re.compile(
    f"(?P<ansi>{_ANSI})|(?P<newline>{_NEWLINE})|(?P<remove>{_REMOVE})|(?P<surrogate>{_SURROGATE})"
)


@dataclass(frozen=True)
class Cleaned:
    """Cleaned text and the map from its positions back to the original text.

    The map is piecewise: ``anchors`` holds ``(cleaned_position, original_position)``
    pairs, sorted, one where each edit began and one after it; between anchors the two
    texts advance together. An untouched text has no anchors at all.
    """

    text: str
    anchors: tuple[tuple[int, int], ...] = ()
    _keys: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keys", tuple(cleaned for cleaned, _ in self.anchors))

    def source_start(self, position: int) -> int:
        """The original index of the cleaned character at ``position`` (a range start)."""
        index = bisect_right(self._keys, position) - 1
        if index < 0:
            return position
        cleaned, original = self.anchors[index]
        return original + (position - cleaned)

    def source_end(self, position: int) -> int:
        """The original index that ends a range ending at cleaned ``position`` (exclusive).

        It is just after the original characters of the cleaned character before
        ``position``: all of ``\r\n`` for its ``\n``, but none of what was removed right
        after the range (a colour reset after a word).
        """
        index = bisect_left(self._keys, position)
        if index < len(self._keys) and self._keys[index] == position:
            # The first anchor here ends an edit or starts a removal: either way, the
            # original position where the cleaned range ends.
            return self.anchors[index][1]
        if index == 0:
            return position
        cleaned, original = self.anchors[index - 1]
        return original + (position - cleaned)


# Any character that starts one of the above: one character class is scanned far faster
# than the alternation, and almost all text has none.
_SUSPECT = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u200b\u200e\u200f\u202a-\u202e"
    "\u2028\u2029\u2060\u2066-\u2069\ufeff\ud800-\udfff]"
)


def clean(text: str) -> Cleaned:
    """Remove escape sequences and control characters; see the module docstring."""
    if not _SUSPECT.search(text):
        return Cleaned(text)
    parts: list[str] = []
    anchors: list[tuple[int, int]] = []
    cleaned_length = 0
    last = 0
    for match in _BAD.finditer(text):
        start, end = match.span()
        parts.append(text[last:start])
        cleaned_length += start - last
        kind = match.lastgroup
        if kind == "newline":
            replacement = "\n"
        elif kind == "surrogate":
            replacement = "\ufffd"
        else:
            replacement = ""
        # The replacement's first character maps to the start of what it replaced,
        # and the text after it maps to the original text after the match.
        anchors.append((cleaned_length, start))
        parts.append(replacement)
        cleaned_length += len(replacement)
        anchors.append((cleaned_length, end))
        last = end
    parts.append(text[last:])
    return Cleaned("".join(parts), tuple(anchors))
