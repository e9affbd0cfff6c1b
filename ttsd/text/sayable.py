"""Making the tokens of technical prose and code sayable.

Two sets of rules, both pure functions on :class:`~ttsd.text.mapped.Mapped` strings so
that every spoken word keeps the source range it stands for:

:func:`prose` is for ordinary text (plain text, markdown paragraphs, headings, cells).
Its rules are deliberately conservative: each one needs an unmistakably technical token,
so that normal sentences pass through untouched.

* A URL (``scheme://...`` or ``www....``, and its angle brackets if it has them) is read
  as its host, without ``www.``, plus its port when it has one: ``https://github.com/a/b``
  -> ``github.com``, ``http://localhost:8080/x`` -> ``localhost port 8080``.
* A file path is read component by component: ``/usr/local/bin/ttsd`` -> ``slash usr
  slash local slash bin slash ttsd``, ``~/.config/ttsd/config.toml`` -> ``home slash dot
  config slash ttsd slash config dot toml``. A path is one that starts with ``/``, ``~/``,
  ``./`` or ``../``, or a relative one with a known file extension (``src/main.rs``) or at
  least two slashes (``a/b/c``); ``and/or``, ``km/h``, ``TCP/IP`` and dates stay as written.
* A file name with a known extension is read with "dot": ``config.toml`` -> ``config dot
  toml``, ``.gitignore`` -> ``dot gitignore``. Unknown suffixes (``github.com``, ``e.g.``,
  ``v1.2``) are left alone: engines read those well.
* Identifiers: ``snake_case_name`` -> ``snake case name``, ``SCREAMING_CASE`` ->
  ``screaming case``, ``__init__`` -> ``dunder init``, camelCase starting in lower case
  and at least four letters long (``camelCaseName`` -> ``camel case name``, ``macOS`` ->
  ``mac OS``; not ``kWh`` or ``pH``), PascalCase only with three humps or more
  (``SpeechRequestHandler``; not ``GitHub``, ``McDonald``), and a call ``foo.bar()`` ->
  ``foo dot bar``.
* Arrows (``→``, ``⇒``, a spaced ``->`` or ``=>``) are read as "to".
* Decoration is dropped: lines of ``---``/``===``/``***``, ASCII and box-drawing table
  borders, block elements (``████░░``), bullets (``•``), U+FFFD and private-use
  characters (terminal icon fonts).
* Emoji are dropped, or read by their CLDR name (``🚀`` -> ``rocket``, ``🇫🇷`` -> ``flag
  France``, skin tones left out); a keycap emoji is read as its digit. ``©``, ``®``,
  ``™``, ``‼`` without an emoji presentation selector are text, not emoji, and stay.

:func:`code` reads code (inline code spans, code blocks in ``read`` mode) and is more
aggressive: every identifier is split into words, dots between names are "dot", and
operators become words (``==`` -> ``equals``, ``--verbose`` -> ``dash dash verbose``,
a spaced ``<`` -> ``less than``). Brackets (also the angle brackets of ``Promise<User>``),
quotes and semicolons are dropped; commas and colons stay as pauses.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

import emoji as emoji_data

from ttsd.text.mapped import Mapped

EmojiMode = Literal["drop", "name"]


def word_set(text: str) -> frozenset[str]:
    """The set of the whitespace-separated words of ``text`` (for long word lists)."""
    return frozenset(text.split())


#: File extensions that make ``name.ext`` a file name. Country-code TLDs that are also
#: extensions (``.py``, ``.rs``, ``.sh``, ``.md``) count as files: agents name files far
#: more often than such hosts, and a URL is read as its host by its own rule anyway.
FILE_EXTENSIONS = word_set(
    """
    py pyi pyc ipynb rs go js mjs cjs ts tsx jsx vue svelte json jsonl toml yaml yml md rst
    txt csv tsv log ini cfg conf env sh bash zsh fish ps1 bat c h cc cpp cxx hpp hh java kt
    kts scala swift rb php pl lua dart ex exs erl hs ml zig nim sql html htm css scss sass
    less xml svg png jpg jpeg gif webp ico bmp tiff pdf wav mp3 ogg flac opus m4a mp4 mkv
    webm onnx pt pth safetensors gguf bin zip tar gz tgz xz bz2 zst whl deb rpm iso img
    lock service socket timer desktop mod sum diff patch proto tf tfvars nix cmake mk gradle
    pem crt key pub db sqlite bak tmp swp dockerfile gitignore cs fs vb r jl
    """
)

_EXT = "|".join(sorted(FILE_EXTENSIONS, key=len, reverse=True))
_PATH_CHAR = r"[\w.@+-]"
_PATH_END = r"[\w@+-]"  # a path never ends with a period: that ends the sentence

_PROSE = re.compile(
    # scheme://... or www....; a trailing period, comma, bracket... is not part of it.
    r"(?P<url><(?:[a-zA-Z][a-zA-Z0-9+.-]*://|www\.)[^\s<>]+>"  # <https://...>, brackets too
    r"|\b(?:[a-zA-Z][a-zA-Z0-9+.-]*://|www\.)[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}])"
    # /abs/path, ~/path, ./rel, ../rel: the slash must not follow a word (and/or).
    rf"|(?P<path>(?<![\w.~/:<-])(?:~|\.\.?)?/(?:{_PATH_CHAR}*{_PATH_END}/?)+)"
    rf"|(?P<relpath>(?<![\w.~/:@-]){_PATH_CHAR}*{_PATH_END}(?:/{_PATH_CHAR}*{_PATH_END})+)"
    rf"|(?P<file>(?<![\w.@/-])(?:[\w-]+\.)+(?i:{_EXT})(?![\w-]|\.\w))"
    r"|(?P<dotfile>(?<![\w./])\.[a-z][a-z0-9_-]*(?:\.[a-z0-9]+)*(?!\w|\.\w))"
    r"|(?P<dunder>\b__[a-z][a-z0-9]*(?:_[a-z0-9]+)*__(?!\w))"
    r"|(?P<call>\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*(?:\(\)|(?=\()))"
    r"|(?P<snake>\b_*[A-Za-z][A-Za-z0-9]*(?:_+[A-Za-z0-9]+)+_*(?!\w))"
    r"|(?P<camel>\b[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)+\b)"
    r"|(?P<pascal>\b(?:[A-Z][a-z0-9]+){3,}\b)"
    r"|(?P<arrow>[→⟶⇒]|(?<!\S)(?:->|=>)(?!\S))"
    r"|(?P<rule>(?<!\S)[-=_*#~+|:]{3,}(?!\S)|[\u2500-\u259f]+|[•◦‣⁃▪▫])"
    r"|(?P<unspeakable>[\ufffd\ue000-\uf8ff\U000f0000-\U0010ffff]+)"
)

# A run of characters that may hold an emoji (pictographs, dingbats, regional
# indicators, tags, joiners, selectors, keycap bases); only such runs are handed to the
# emoji library, whose pure-Python scan would otherwise dominate the time on long text.
_EMOJI_CANDIDATE = re.compile(
    "[#*0-9]?[\u00a9\u00ae\u203c-\u3299\ufe0f\u200d\u20e3"
    "\U0001f000-\U0001faff\U000e0020-\U000e007f]+"
)
_SKIN_TONE = re.compile(r"_?(?:medium-light|medium-dark|light|medium|dark)_skin_tone")
#: Names that read better than the CLDR ones (``check mark button``).
_EMOJI_NAMES = {
    "\u2705": "check mark",
    "\u2714": "check mark",
    "\u2713": "check mark",
    "\u2611": "check mark",
    "\u274c": "cross mark",
    "\u274e": "cross mark",
    "\u2717": "cross mark",
    "\u2718": "cross mark",
}
_UNQUALIFIED = emoji_data.STATUS["unqualified"]
# Check marks and crosses that are not emoji to Unicode but are used as such.
_PICTOGRAPHS = frozenset("\u2713\u2717\u2718")


def host_words(url: str) -> str:
    """What a URL is read as: its host (no ``www.``), and its port if it has one."""
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        host = parts.hostname
        port = parts.port
    except ValueError:  # a malformed port or IPv6 literal
        return "a link"
    if not host:
        return path_words(parts.path) if parts.path else "a link"
    host = host.removeprefix("www.")
    return f"{host} port {port}" if port else host


def path_words(path: str) -> str:
    """Read a file path: ``~/.config/a_b.toml`` -> ``home slash dot config slash a b dot toml``."""
    words: list[str] = []
    if path.startswith("~/") or path == "~":
        words.append("home")
        path = path[1:]
    path = path.rstrip("/") or path
    for index, component in enumerate(path.split("/")):
        if index > 0:
            words.append("slash")
        if component:
            words.append(file_words(component))
    return " ".join(words)


def file_words(name: str) -> str:
    """Read a file name: ``.gitignore`` -> ``dot gitignore``, ``a_b.gz`` -> ``a b dot gz``."""
    if name in (".", ".."):
        return " ".join(["dot"] * len(name))
    pieces = name.split(".")
    words = [identifier_words(piece, split_case=False) if piece else "" for piece in pieces]
    return " dot ".join(words).strip()


_CASE_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z0-9]+")


def identifier_words(name: str, *, split_case: bool = True) -> str:
    """Read an identifier as words.

    Underscores separate words (leading and trailing ones are dropped; ``__x__`` is
    "dunder x"); an all-capitals name is lowered (``MAX_RETRIES`` -> ``max retries``:
    engines spell out some capitalised words). With ``split_case``, camel and Pascal humps
    are words too, capitalised humps lowered and acronyms kept (``parseHTTPResponse`` ->
    ``parse HTTP response``).
    """
    parts = [part for part in name.split("_") if part]
    if not parts:
        return name
    prefix = "dunder " if name.startswith("__") and name.endswith("__") else ""
    screaming = name.upper() == name and "_" in name
    words: list[str] = []
    for part in parts:
        if screaming:
            words.append(part.lower())
        elif split_case and not part.isdigit():
            pieces = _CASE_WORD.findall(part)
            if "".join(pieces) != part:  # characters the pattern does not cover: keep as is
                pieces = [part]
            words.extend(p.lower() if p[:1].isupper() and p[1:].islower() else p for p in pieces)
        else:
            words.append(part)
    return prefix + " ".join(words)


def _apart(match: re.Match[str], words: str | None) -> str | None:
    """``words`` with a space on a side where a word character touches the match.

    ``fooBar()a`` must not become ``foo bara``.
    """
    if words is None:
        return None
    text, start, end = match.string, match.start(), match.end()
    if start > 0 and text[start - 1].isalnum() and not words[:1].isspace():
        words = " " + words
    if end < len(text) and text[end].isalnum() and not words[-1:].isspace():
        words += " "
    return words


def _prose_token(match: re.Match[str]) -> str | None:
    return _apart(match, _prose_words(match))


def _prose_words(match: re.Match[str]) -> str | None:
    kind = match.lastgroup
    token = match.group()
    if kind == "url":
        return host_words(token.strip("<>"))
    if kind == "path":
        if token in ("/", "~/", "./", "../"):
            return None
        return path_words(token)
    if kind == "relpath":
        components = token.split("/")
        if all(c.replace(".", "").replace("-", "").isdigit() for c in components):
            return None  # a date or a fraction: 2024/01/02, 1/2
        last = components[-1]
        has_extension = "." in last and last.rsplit(".", 1)[1].lower() in FILE_EXTENSIONS
        if not has_extension and len(components) < 3:
            return None  # and/or, km/h, TCP/IP
        return path_words(token)
    if kind in ("file", "dotfile"):
        return file_words(token)
    if kind in ("snake", "dunder"):
        return identifier_words(token)
    if kind == "call":
        name = token.removesuffix("()")
        if "." not in name and name == token:
            return None  # a word before a parenthesis, as in "word(s)"
        return " dot ".join(identifier_words(part) for part in name.split("."))
    if kind == "camel":
        return identifier_words(token) if len(token) >= 4 else None
    if kind == "pascal":
        return identifier_words(token)
    if kind == "arrow":
        return " to "
    return " "  # rule, unspeakable: a space, so that the words around stay apart


def _emoji_name(chars: str) -> str:
    base = chars.replace("\ufe0f", "")
    if base in _EMOJI_NAMES:
        return _EMOJI_NAMES[base]
    if chars in _PICTOGRAPHS:
        return "check mark" if chars == "\u2713" else "cross mark"
    data = emoji_data.EMOJI_DATA.get(chars) or emoji_data.EMOJI_DATA.get(base)
    if data is None:
        return ""
    name = _SKIN_TONE.sub("", data["en"].strip(":")).replace("_", " ").strip()
    if name.startswith("keycap "):
        return {"#": "hash", "*": "star"}.get(name[7:], name[7:])
    if all(0x1F1E6 <= ord(c) <= 0x1F1FF for c in base) or "\U000e007f" in base:
        return f"flag {name}"  # regional indicator pairs and tag sequences are flags
    return name


def _emoji_in(run: str) -> list[tuple[int, int, str]]:
    """The emoji in a candidate run: (start, end, characters), text-style symbols left out."""
    found: list[tuple[int, int, str]] = []
    covered = 0
    for item in emoji_data.emoji_list(run):
        start, end, chars = item["match_start"], item["match_end"], item["emoji"]
        data = emoji_data.EMOJI_DATA.get(chars, {})
        if data.get("status") == _UNQUALIFIED and ord(chars[0]) < 0x2190:
            continue  # ©, ®, ™, ‼ with no emoji selector are text symbols
        for index in range(covered, start):  # a ✓ or ✗ the library does not know
            if run[index] in _PICTOGRAPHS:
                found.append((index, index + 1, run[index]))
        found.append((start, end, chars))
        covered = end
    for index in range(covered, len(run)):
        if run[index] in _PICTOGRAPHS:
            found.append((index, index + 1, run[index]))
    return found


def emoji(text: Mapped, mode: EmojiMode) -> Mapped:
    """Drop or name the emoji in ``text``; stray joiners and selectors go too."""
    if text.text.isascii():
        return text

    return text.sub(_EMOJI_CANDIDATE, lambda match: _emoji_run(match.group(), mode))


@lru_cache(maxsize=4096)
def _emoji_run(run: str, mode: EmojiMode) -> str | None:
    """What a candidate run becomes (None: unchanged). Cached: agents repeat their emoji."""
    found = _emoji_in(run)
    if not found and not any(c in "\ufe0f\u200d\u20e3" for c in run):
        return None
    pieces: list[str] = []
    last = 0
    for start, end, chars in found:
        pieces.append(run[last:start])
        name = _emoji_name(chars)
        keycap = name.isdigit() or chars.replace("\ufe0f", "").endswith("\u20e3")
        pieces.append(f" {name} " if mode == "name" or keycap else " ")
        last = end
    pieces.append(run[last:])
    return re.sub("[\ufe0f\u200d\u20e3]", "", "".join(pieces))


# What a whitespace-delimited token must contain for any prose rule to apply to it.
# Searching for this first, and running the rules only on the tokens found, is several
# times faster than running the many-branched rules at every position of long prose.
_INTERESTING = re.compile(
    r"[/_(→⟶⇒•◦‣⁃▪▫\ufffd\u2500-\u259f\ue000-\uf8ff\U000f0000-\U0010ffff]"
    r"|[a-z0-9][A-Z]|[A-Z][a-z0-9]+[A-Z]|\.[^\W\d]|[-=*#~+|:]{3}|(?<!\S)[-=]>(?!\S)"
)
_SPACE = re.compile(r"\s")


def _interesting_tokens(text: str) -> Iterator[tuple[int, int]]:
    """The ranges of the whitespace-delimited tokens that may need a prose rule."""
    end = -1
    for hit in _INTERESTING.finditer(text):
        position = hit.start()
        if position < end:
            continue  # in the token just yielded
        start = position
        while start > 0 and not text[start - 1].isspace():
            start -= 1
        space = _SPACE.search(text, position)
        end = space.start() if space else len(text)
        yield start, end


def prose(text: Mapped, emoji_mode: EmojiMode = "drop") -> Mapped:
    """Apply the prose rules (see the module docstring) to ``text``."""
    # Every rule matches within one token (no rule's match holds whitespace, and the
    # look-behinds only look at characters of the token or the whitespace before it).
    if _INTERESTING.search(text.text):
        text = text.sub(_PROSE, _prose_token, _interesting_tokens(text.text))
    return emoji(text, emoji_mode)


_OPERATORS = {
    "===": "equals",
    "!==": "not equal",
    "==": "equals",
    "!=": "not equal",
    "<=": "less or equal",
    ">=": "greater or equal",
    "->": "arrow",
    "=>": "arrow",
    "&&": "and",
    "||": "or",
    "+=": "plus equals",
    "-=": "minus equals",
    "*=": "times equals",
    "/=": "divided equals",
    ":=": "colon equals",
    "**": "star star",
    "++": "plus plus",
    "::": " ",
    "=": "equals",
    "<": "less than",
    ">": "greater than",
    "!": "not",
    "+": "plus",
    "-": "minus",
    "*": "star",
    "/": "slash",
    "%": "percent",
    "&": "and",
    "|": "pipe",
    "^": "caret",
    "~": "tilde",
    "@": "at",
    "#": "hash",
    "$": "dollar",
    "\\": "backslash",
    ".": "dot",
}
_DROPPED = "()[]{}\"'`;"

_CODE = re.compile(
    r"(?P<url>\b(?:[a-zA-Z][a-zA-Z0-9+.-]*://|www\.)[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}])"
    rf"|(?P<path>(?:~|\.\.?)?/(?:{_PATH_CHAR}*{_PATH_END}/?)+"
    rf"|{_PATH_CHAR}*{_PATH_END}(?:/{_PATH_CHAR}*{_PATH_END})+)"
    r"|(?P<flag>(?<![\w-])--?(?=[A-Za-z]))"
    r"|(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*(?:\(\))?)"
    r"|(?P<number>[0-9][\w.]*)"
    r"|(?P<operator>===|!==|==|!=|<=|>=|->|=>|&&|\|\||\+=|-=|\*=|/=|:=|\*\*|\+\+|::"
    r"|[=<>!+\-*/%&|^~@#$\\.])"
    r"|(?P<dropped>[()\[\]{}\"'`;]+)"
)


def _code_token(match: re.Match[str]) -> str | None:
    return _apart(match, _code_words(match))


def _code_words(match: re.Match[str]) -> str | None:
    kind = match.lastgroup
    token = match.group()
    if kind == "url":
        return f" {host_words(token)} "
    if kind == "path":
        return f" {path_words(token)} "
    if kind == "flag":
        return " ".join(["dash"] * len(token)) + " "
    if kind == "name":
        name = token.removesuffix("()")
        if name.isalpha() and (name.islower() or name.isupper() or name.istitle()):
            return None if name == token else name  # a plain word reads as itself
        return " " + " dot ".join(identifier_words(part) for part in name.split(".")) + " "
    if kind == "number":
        return None
    if kind == "operator":
        if token in "<>":
            # Spaced, a comparison (a < b); touching a name, brackets (Promise<User>).
            text, start, end = match.string, match.start(), match.end()
            spaced = (start == 0 or text[start - 1].isspace()) and (
                end == len(text) or text[end].isspace()
            )
            if not spaced:
                return " "
        return f" {_OPERATORS[token]} "
    return " "  # brackets, quotes, semicolons


def code(text: Mapped, emoji_mode: EmojiMode = "drop") -> Mapped:
    """Apply the code-reading rules (see the module docstring) to ``text``."""
    return emoji(text.sub(_CODE, _code_token), emoji_mode)


@lru_cache(maxsize=64)
def language_name(info: str) -> str:
    """The spoken name of a code fence's language (``py`` -> ``Python``), or ``""``."""
    word = info.strip().split(maxsplit=1)[0] if info.strip() else ""
    word = word.strip("{}.").lower()
    if not word or not re.fullmatch(r"[\w+#.-]{1,30}", word):
        return ""
    return _LANGUAGES.get(word, word)


_LANGUAGES = {
    "py": "Python",
    "python": "Python",
    "python3": "Python",
    "pycon": "Python",
    "js": "JavaScript",
    "javascript": "JavaScript",
    "mjs": "JavaScript",
    "jsx": "JavaScript",
    "ts": "TypeScript",
    "typescript": "TypeScript",
    "tsx": "TypeScript",
    "rs": "Rust",
    "rust": "Rust",
    "go": "Go",
    "golang": "Go",
    "sh": "shell",
    "shell": "shell",
    "bash": "shell",
    "zsh": "shell",
    "console": "shell",
    "shell-session": "shell",
    "fish": "shell",
    "powershell": "PowerShell",
    "ps1": "PowerShell",
    "c": "C",
    "h": "C",
    "cpp": "C++",
    "c++": "C++",
    "cc": "C++",
    "hpp": "C++",
    "cs": "C#",
    "csharp": "C#",
    "c#": "C#",
    "java": "Java",
    "kotlin": "Kotlin",
    "kt": "Kotlin",
    "swift": "Swift",
    "rb": "Ruby",
    "ruby": "Ruby",
    "php": "PHP",
    "json": "JSON",
    "jsonc": "JSON",
    "json5": "JSON",
    "yaml": "YAML",
    "yml": "YAML",
    "toml": "TOML",
    "ini": "INI",
    "xml": "XML",
    "html": "HTML",
    "css": "CSS",
    "scss": "SCSS",
    "sql": "SQL",
    "md": "markdown",
    "markdown": "markdown",
    "diff": "diff",
    "patch": "diff",
    "dockerfile": "Dockerfile",
    "docker": "Dockerfile",
    "make": "Makefile",
    "makefile": "Makefile",
    "lua": "Lua",
    "r": "R",
    "text": "",
    "txt": "",
    "plain": "",
    "plaintext": "",
}
