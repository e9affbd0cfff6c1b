"""Cutting a sentence that is too long for one engine call.

The daemon speaks a job one sentence at a time (``ttsd.scheduler.chunking``); a
sentence longer than the limit is cut at a clause boundary (``, ; :`` or a spaced
dash), else at a space, else anywhere: a word longer than the limit (a 20,000-character
token) is cut without inserting anything, so the pieces are exact slices.
"""

from __future__ import annotations

import re

_CLAUSE_END = re.compile(r"(?<=[,;:])\s+|\s+(?=[—–-]\s)")


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
