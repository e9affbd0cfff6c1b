"""Text that remembers, character by character, where in the source it came from.

Every transformation of speech-ready text (dropping markup, reading a URL as its host,
collapsing whitespace) works on :class:`Mapped` strings, so that each sentence finally
spoken can name the exact source range it was made from. Character ``i`` of a mapped
string came from ``source[starts[i]:ends[i]]``: a copied character has a range of one,
a replacement (``"config dot toml"`` for ``config.toml``) gives all its characters the
range of what it replaced, and an inserted character (the period that ends a heading)
has an empty range where it was inserted. Positions only ever grow along a string, so
the range of any slice is ``(starts[first], ends[last])``.

Python lists of ints are used rather than per-piece offsets because they make every
operation a plain slice or concatenation (C speed), with no piece boundaries to respect.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable


class Mapped:
    """A string with a source range per character (see the module docstring)."""

    __slots__ = ("ends", "starts", "text")

    def __init__(self, text: str, starts: list[int], ends: list[int]) -> None:
        self.text = text
        self.starts = starts
        self.ends = ends

    @classmethod
    def copied(cls, source: str, start: int, end: int) -> Mapped:
        """``source[start:end]``, each character mapped to itself."""
        return cls(source[start:end], list(range(start, end)), list(range(start + 1, end + 1)))

    @classmethod
    def replacing(cls, text: str, start: int, end: int) -> Mapped:
        """``text`` said in place of ``source[start:end]``."""
        return cls(text, [start] * len(text), [end] * len(text))

    @classmethod
    def inserted(cls, text: str, at: int) -> Mapped:
        """``text`` that has no source of its own, placed at ``at``."""
        return cls(text, [at] * len(text), [at] * len(text))

    @classmethod
    def join(cls, parts: Iterable[Mapped]) -> Mapped:
        """Concatenate mapped strings."""
        if isinstance(parts, list) and len(parts) == 1:
            return parts[0]
        texts: list[str] = []
        starts: list[int] = []
        ends: list[int] = []
        for part in parts:
            texts.append(part.text)
            starts.extend(part.starts)
            ends.extend(part.ends)
        return cls("".join(texts), starts, ends)

    def __len__(self) -> int:
        return len(self.text)

    def __repr__(self) -> str:
        return f"Mapped({self.text!r})"

    def slice(self, start: int, end: int) -> Mapped:
        """The characters ``start:end``."""
        return Mapped(self.text[start:end], self.starts[start:end], self.ends[start:end])

    def span(self, start: int = 0, end: int | None = None) -> tuple[int, int]:
        """The source range of the characters ``start:end`` (which must not be empty)."""
        end = len(self.text) if end is None else end
        return self.starts[start], self.ends[end - 1]

    def sub(
        self,
        pattern: re.Pattern[str],
        replace: Callable[[re.Match[str]], str | None],
        regions: Iterable[tuple[int, int]] | None = None,
    ) -> Mapped:
        """Replace each match of ``pattern`` by ``replace(match)``, mapped to the match.

        ``replace`` returns ``None`` to keep a match as it is (a candidate that turned
        out not to qualify), which keeps its per-character map. ``regions`` (ordered,
        disjoint ``(start, end)`` pairs) limits the search to those parts of the text.
        """
        if regions is None:
            if not pattern.search(self.text):
                return self  # the common case, decided in C
            regions = ((0, len(self.text)),)

        def edits() -> Iterable[tuple[int, int, str]]:
            last_end, last_text = -1, ""
            for start, end in regions:
                for match in pattern.finditer(self.text, start, end):
                    if match.end() == match.start():
                        continue
                    replacement = replace(match)
                    if replacement is None:
                        continue
                    if (
                        match.start() == last_end
                        and last_text[-1:].isalnum()
                        and replacement[:1].isalnum()
                    ):
                        replacement = " " + replacement  # two replacements never fuse words
                    yield match.start(), match.end(), replacement
                    last_end, last_text = match.end(), replacement

        return self.edit(edits())

    def edit(self, edits: Iterable[tuple[int, int, str]]) -> Mapped:
        """Replace ``[start:end)`` by ``text`` for ordered, disjoint, non-empty ``edits``."""
        texts: list[str] = []
        starts: list[int] = []
        ends: list[int] = []
        last = 0
        for start, end, replacement in edits:
            texts.append(self.text[last:start])
            starts.extend(self.starts[last:start])
            ends.extend(self.ends[last:start])
            texts.append(replacement)
            starts.extend([self.starts[start]] * len(replacement))
            ends.extend([self.ends[end - 1]] * len(replacement))
            last = end
        if last == 0 and not texts:
            return self
        texts.append(self.text[last:])
        starts.extend(self.starts[last:])
        ends.extend(self.ends[last:])
        return Mapped("".join(texts), starts, ends)

    def collapse(self) -> Mapped:
        """Collapse whitespace runs to one space and strip both ends."""
        collapsed = self.sub(_SPACES, _one_space)
        text = collapsed.text
        start = len(text) - len(text.lstrip(" "))
        end = len(text.rstrip(" "))
        if start == 0 and end == len(text):
            return collapsed
        return collapsed.slice(start, end)


# Whitespace that is not already a single space: most prose has only single spaces, so
# matching them all (to keep them) would cost a call per word.
_SPACES = re.compile(r"[^\S ]\s*| \s+")


def _one_space(match: re.Match[str]) -> str:
    return " "
