"""What Speech Dispatcher sends a module, turned into text ttsd can speak.

Speech Dispatcher sends every ``SPEAK`` as SSML: its own messages are wrapped in
``<speak>``, with ``&``, ``<`` and ``>`` escaped and ``<mark name="__spd_N"/>`` index
marks inserted between sentences; SSML clients send any SSML. ttsd speaks plain text,
so :func:`strip_ssml` keeps the text, decodes entities and remembers where in that text
each mark stood (a mark is reported back once the audio has passed that point).

``CHAR`` and ``KEY`` carry one character or an SSIP key name (``shift_kp-enter``);
:func:`char_text` and :func:`key_text` turn them into words a neural voice reads
correctly, since a lone ``.`` or ``a`` is otherwise silent or read as a word. The names
are English: a module config can map voices to other languages, but not these words.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass, field

# A tag, with quoted attribute values that may contain ">".
_TAG = re.compile(r"""<(?:[^>"']|"[^"]*"|'[^']*')*>""", re.DOTALL)
_MARK = re.compile(r"""^<\s*mark\b(?:[^>"']|"[^"]*"|'[^']*')*?\bname\s*=\s*(["'])(.*?)\1""", re.S)
# Tags after which the text runs on without a space in the markup, but that a reader
# hears as a pause: keep the words apart.
_BREAKING = re.compile(r"^<\s*/?\s*(?:break|p|s|speak|voice)\b", re.IGNORECASE)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_DECLARATION = re.compile(r"<[?!][^>]*>")


@dataclass
class Stripped:
    """Plain text and the index marks that stood in it."""

    text: str
    #: ``(offset in text, mark name)``, in document order.
    marks: list[tuple[int, str]] = field(default_factory=list)


def strip_ssml(ssml: str) -> Stripped:
    """The text of an SSML document, with entities decoded and the marks' positions.

    Tags are dropped (their content kept); ``<break/>``, paragraph and sentence tags
    leave a space when the words would otherwise run together. Text that is not SSML
    comes back unchanged, apart from entities, as Speech Dispatcher does it.
    """
    ssml = _DECLARATION.sub("", _COMMENT.sub("", ssml))
    parts: list[str] = []
    marks: list[tuple[int, str]] = []
    length = 0
    pause = False  # a breaking tag was passed since the last text

    def add(piece: str) -> None:
        nonlocal length, pause
        if not piece:
            return
        if pause and parts and not parts[-1][-1].isspace() and not piece[0].isspace():
            parts.append(" ")
            length += 1
        pause = False
        parts.append(piece)
        length += len(piece)

    position = 0
    for match in _TAG.finditer(ssml):
        add(html.unescape(ssml[position : match.start()]))
        tag = match.group(0)
        mark = _MARK.match(tag)
        if mark is not None:
            marks.append((length, html.unescape(mark.group(2))))
        elif _BREAKING.match(tag):
            pause = True
        position = match.end()
    add(html.unescape(ssml[position:]))
    return Stripped("".join(parts), marks)


#: How ASCII symbols are read when spoken alone.
SYMBOL_NAMES = {
    " ": "space",
    ".": "dot",
    ",": "comma",
    ";": "semicolon",
    ":": "colon",
    "!": "exclamation mark",
    "?": "question mark",
    "'": "apostrophe",
    '"': "double quote",
    "(": "left paren",
    ")": "right paren",
    "[": "left bracket",
    "]": "right bracket",
    "{": "left brace",
    "}": "right brace",
    "<": "less than",
    ">": "greater than",
    "/": "slash",
    "\\": "backslash",
    "|": "bar",
    "-": "dash",
    "_": "underscore",
    "+": "plus",
    "=": "equals",
    "*": "star",
    "&": "and",
    "%": "percent",
    "$": "dollar",
    "#": "number sign",
    "@": "at",
    "^": "caret",
    "~": "tilde",
    "`": "grave",
}

#: SSIP's symbolic key names that do not read well as they are.
KEY_NAMES = {
    "space": "space",
    "underscore": "underscore",
    "double-quote": "double quote",
    "kp-*": "keypad star",
    "kp-+": "keypad plus",
    "kp--": "keypad minus",
    "kp-.": "keypad dot",
    "kp-/": "keypad slash",
    "kp-enter": "keypad enter",
    "next": "page down",
    "prior": "page up",
    "escape": "escape",
    "backspace": "backspace",
    "shift-tab": "shift tab",
}


def char_text(char: str) -> str:
    """Words for one character as ``CHAR`` sends it.

    A letter is sent upper case, which the voices read as the letter's name (a lone
    lower-case ``a`` is read as the article); a symbol gets its name. Anything longer
    than one character (Speech Dispatcher may already have replaced a symbol by its
    name) is spoken as it is.
    """
    if not char.strip():
        return "space"
    char = char.strip()
    if len(char) != 1:
        return char
    if char in SYMBOL_NAMES:
        return SYMBOL_NAMES[char]
    if char.isalpha():
        return char.upper()
    if char.isdigit():
        return char
    name = unicodedata.name(char, "")
    return name.lower() if name else char


def key_text(key: str) -> str:
    """Words for an SSIP key name: ``shift_kp-enter`` -> ``shift keypad enter``.

    Prefixes (``control_``, ``alt_``...) are separated by ``_``; a single character is
    read as :func:`char_text` reads it.
    """
    key = key.strip()
    if not key:
        return "space"
    words = []
    for part in key.split("_") if key != "_" else ["_"]:
        if not part:
            continue
        if part in KEY_NAMES:
            words.append(KEY_NAMES[part])
        elif len(part) == 1:
            words.append(char_text(part))
        elif part.startswith("kp-") and len(part) == 4:
            words.append("keypad " + char_text(part[3]))
        elif re.fullmatch(r"f\d{1,2}", part):
            words.append("F " + part[1:])
        else:
            words.append(part.replace("-", " "))
    return " ".join(words) or "space"


def spell(text: str) -> str:
    """``text`` read character by character (SSIP's spelling mode)."""
    return ", ".join(char_text(c) for c in text if not c.isspace()) or text
