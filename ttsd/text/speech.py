"""Turning what agents write into what a person would say: :func:`speakable`.

The pipeline, for one text:

1. :func:`~ttsd.text.clean.clean` removes escape sequences and control characters and
   keeps a map back to the original text.
2. The cleaned text is parsed with markdown-it-py (CommonMark plus GFM tables and
   strikethrough). In ``auto`` format the token stream decides whether the text is
   markdown (:func:`looks_like_markdown`); plain text is never read as markdown.
3. A reader walks the blocks (markdown tokens, or blank-line separated paragraphs of
   plain text) and builds each block's spoken text as a :class:`~ttsd.text.mapped.Mapped`
   string: every spoken character knows the source range it came from.
4. The prose and code rules of :mod:`ttsd.text.sayable` make tokens sayable, whitespace
   is collapsed, and each block is split into sentences.
5. Sentences get the final punctuation a listener needs to hear a pause, and their
   ranges are mapped back to the original text.

Where the character ranges come from (markdown-it only maps tokens to source *lines*):
an inline token's content is located line by line in the source starting at its first
line (each content line is a verbatim substring of its source line, with the block's
markers such as ``> `` or ``- `` stripped in front); then its children are located in
order with a moving cursor: text by its content, escapes and entities by their markup
(``\\*``, ``&amp;``), emphasis by its delimiters, code spans by their backticks, and a
link's destination (``](url)``) is skipped by a small bracket scan. Where something
cannot be found verbatim (a tab expanded by the parser, an autolink normalised), its
words are mapped to the cursor position instead, so ranges stay ordered, only coarser.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any, Literal

from markdown_it import MarkdownIt
from markdown_it.token import Token

from ttsd.text import sayable
from ttsd.text.clean import Cleaned, clean
from ttsd.text.mapped import Mapped
from ttsd.text.sayable import EmojiMode, word_set

Format = Literal["text", "markdown", "auto"]
CodeMode = Literal["summarize", "skip", "read"]

FORMATS: tuple[str, ...] = ("text", "markdown", "auto")
CODE_MODES: tuple[str, ...] = ("summarize", "skip", "read")
EMOJI_MODES: tuple[str, ...] = ("drop", "name")

#: Tables with more body rows than this (by default) are summarised, not read.
TABLE_ROWS = 10
#: Tables with more columns than this are always summarised: rows would be too long.
TABLE_COLUMNS = 8


@dataclass(frozen=True)
class Sentence:
    """One sentence to speak and the range ``[start, end)`` of the original text it says.

    Ranges are Python string indices (code points) of the text given to
    :func:`speakable`, ordered and non-overlapping across a :class:`Speech`. A range
    covers the source the sentence was made from, including inline markup inside it and
    around it within its block (``**`` before a first word, a link's ``](url)`` after a
    last one), but not block markers (``## ``, ``- ``) or whitespace between sentences.
    """

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Speech:
    """What :func:`speakable` made of a text."""

    sentences: tuple[Sentence, ...]
    #: How the text was read: ``"markdown"`` or ``"text"`` (what ``auto`` decided).
    format: Literal["text", "markdown"]

    @property
    def text(self) -> str:
        """Everything to say, the sentences joined by spaces."""
        return " ".join(sentence.text for sentence in self.sentences)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form (for a ``normalize`` reply)."""
        return {
            "format": self.format,
            "text": self.text,
            "sentences": [{"text": s.text, "start": s.start, "end": s.end} for s in self.sentences],
        }


def speakable(
    text: str,
    format: Format = "auto",
    *,
    code: CodeMode = "summarize",
    emoji: EmojiMode = "drop",
    table_rows: int = TABLE_ROWS,
) -> Speech:
    """Turn ``text`` into the sentences a person would say (see the module docstring).

    ``format``: ``"text"``, ``"markdown"``, or ``"auto"`` (markdown if the text has
    markdown structure, see :func:`looks_like_markdown`). ``code``: what fenced and
    indented code blocks become: ``"summarize"`` (``"A code block of 12 lines in
    Python."``), ``"skip"`` (nothing) or ``"read"`` (each line a sentence, read with the
    code rules). Inline code is always read. ``emoji``: ``"drop"`` or ``"name"``.
    ``table_rows``: tables with more body rows are summarised.

    Never raises on any string (control characters, lone surrogates); raises
    :class:`ValueError` only for an unknown option value.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    if code not in CODE_MODES:
        raise ValueError(f"code must be one of {', '.join(CODE_MODES)}, not {code!r}")
    if emoji not in EMOJI_MODES:
        raise ValueError(f"emoji must be one of {', '.join(EMOJI_MODES)}, not {emoji!r}")
    cleaned = clean(text)
    source = cleaned.text
    tokens: list[Token] | None = None
    if format != "text" and source.strip():
        tokens = _PARSER.parse(source)
        if format == "auto" and not looks_like_markdown(tokens):
            tokens = None
    if tokens is not None:
        blocks = _MarkdownReader(source, code, emoji, table_rows).blocks(tokens)
    else:
        blocks = _plain_blocks(source, emoji)
    read_as: Literal["text", "markdown"] = "markdown" if tokens is not None else "text"
    if format == "markdown":
        read_as = "markdown"  # also for blank text, which needs no parse
    return Speech(_finish(_sentences(blocks), cleaned), read_as)


def warm_up() -> None:
    """Build the lazily built tables (the emoji search tree) now, not in the first request.

    Costs some tens of milliseconds once; a daemon calls it at start-up.
    """
    speakable("# Warm\n\nUp `x` [y](https://z.org) 🚀 |a|\n|-|\n|b|", emoji="name")


def detect_format(text: str) -> Literal["text", "markdown"]:
    """What ``auto`` would read ``text`` as."""
    source = clean(text).text
    return "markdown" if source.strip() and looks_like_markdown(_PARSER.parse(source)) else "text"


def _make_parser() -> MarkdownIt:
    parser = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    # text_join would merge escapes and entities into text, losing their source form
    # (their markup), which is what locates them in the source.
    parser.disable("text_join")
    # Link destinations are never spoken whole (only a host, read from the raw URL), so
    # they need no normalising; the default (percent-encoding, punycode for every host)
    # took a third of the parse time of a link-heavy text. Identity link text keeps an
    # autolink's text exactly as in the source, where it is then found.
    parser.normalizeLink = _same  # type: ignore[method-assign]
    parser.normalizeLinkText = _same  # type: ignore[method-assign]
    return parser


def _same(text: str) -> str:
    return text


_PARSER = _make_parser()

_BLOCK_SIGNALS = word_set(
    "heading_open fence table_open blockquote_open bullet_list_open ordered_list_open"
)
_INLINE_SIGNALS = word_set("code_inline image s_open")


def looks_like_markdown(tokens: Sequence[Token]) -> bool:
    """Whether parsed text has markdown structure that plain text does not have.

    Markdown when it has any of: a heading (``# x``, or a line underlined with ``===`` or
    ``---``), a fenced code block, a table, a blockquote, a list (``- x``, ``1. x``), a
    code span, an image, strikethrough, a ``[link](url)``, or emphasis whose delimiters
    stand between words (``a *real* one``, ``**Note:**``). Not signals, because plain
    text has them too: emphasis inside a word or touching one (``2*3*4``,
    ``__init__.py``), a lone ``*``, indented lines, ``<angle brackets>``, a horizontal
    rule, entities, ``<https://autolinks>``. The structures counted are read almost the
    same way as plain text anyway, so a false positive costs little.
    """
    for token in tokens:
        if token.type in _BLOCK_SIGNALS:
            return True
        if token.type != "inline" or not token.children:
            continue
        children = token.children
        for index, child in enumerate(children):
            if child.type in _INLINE_SIGNALS:
                return True
            if child.type == "link_open" and child.markup != "autolink":
                return True
            if child.type in ("em_open", "strong_open") and _free_emphasis(children, index):
                return True
    return False


def _opens_word(char: str) -> bool:
    """Whether a word may start after ``char`` (a space or an opening bracket or quote)."""
    return char.isspace() or char in "([{\"'"


def _free_emphasis(children: list[Token], index: int) -> bool:
    """Whether the emphasis opening at ``index`` stands between words, not inside one."""
    before = children[index - 1] if index > 0 else None
    if (
        before is not None
        and before.type not in ("softbreak", "hardbreak")
        and (before.type != "text" or not _opens_word(before.content[-1:]))
    ):
        return False
    close = children[index].type.replace("_open", "_close")
    depth = 0
    for after_index in range(index + 1, len(children)):
        child_type = children[after_index].type
        if child_type == children[index].type:
            depth += 1
        elif child_type == close:
            if depth:
                depth -= 1
                continue
            following = children[after_index + 1] if after_index + 1 < len(children) else None
            if following is None or following.type in ("softbreak", "hardbreak"):
                return True
            if following.type != "text":
                return False
            head = following.content[:2]
            return head[:1].isspace() or (
                head[:1] in ".,;:!?)]}\"'" and (len(head) < 2 or not head[1].isalnum())
            )
    return False


# -- blocks ---------------------------------------------------------------------------


@dataclass
class _Block:
    """A unit of speech: a heading, a paragraph, a list item's text, a table row.

    ``body`` is already sayable; ``start``/``end`` is the block's source range (cleaned
    text), which widens its first and last sentence; ``split`` says whether the body is
    split into sentences (a table row or a code summary is one); ``prefix`` is said
    before the first sentence (an ordered list item's number).
    """

    body: Mapped
    start: int
    end: int
    split: bool = True
    prefix: str = ""


# A sentence ends after . ! ? or … (and closing quotes or brackets) before a space.
_SENTENCE_END = re.compile(r"([.!?…]+)[\"'”’)\]]*(?= \S)")
_ABBREVIATIONS = word_set("mr mrs ms dr prof sr jr st vs e.g i.e approx no fig cf eq al")
_SPACE_BEFORE_PUNCTUATION = re.compile(r" (?=[.,!?;:](?: |$))")


def _sentence_bounds(text: str) -> Iterator[tuple[int, int]]:
    """Split collapsed text into sentences: (start, end) pairs, spaces left out.

    A period or ellipsis does not end a sentence before a word in lower case ("3 p.m.
    today", "e.g. this", "wait... what") or after an abbreviation or an initial ("Dr.
    Smith", "J. Smith"); a question or exclamation mark always does.
    """
    start = 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        marks = match.group(1)
        if "!" not in marks and "?" not in marks:
            if text[end + 1].islower():
                continue
            space = text.rfind(" ", start, match.start())
            word = text[space + 1 if space >= 0 else start : match.start()]
            if word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper()):
                continue
        yield start, end
        start = end + 1
    if start < len(text):
        yield start, len(text)


def _sentences(blocks: Iterator[_Block]) -> list[tuple[str, int, int]]:
    """Split blocks into (text, start, end) sentences, in cleaned-text coordinates."""
    sentences: list[tuple[str, int, int]] = []
    for block in blocks:
        body = block.body.collapse()
        body = body.sub(_SPACE_BEFORE_PUNCTUATION, lambda _: "")
        if not body.text or not any(c.isalnum() for c in body.text):
            continue  # nothing left to say ("---", a lone emoji dropped)
        bounds = list(_sentence_bounds(body.text)) if block.split else [(0, len(body.text))]
        for number, (start, end) in enumerate(bounds):
            text = body.text[start:end]
            source_start, source_end = body.span(start, end)
            if number == 0:
                source_start = min(source_start, block.start)
                if block.prefix:
                    text = f"{block.prefix} {text}"
            if number == len(bounds) - 1:
                source_end = max(source_end, block.end)
            sentences.append((text, source_start, source_end))
    return sentences


_ENDS_WITH_PAUSE = re.compile(r"[.!?…:;,][\"'”’)\]]*$")


def _finish(sentences: list[tuple[str, int, int]], cleaned: Cleaned) -> tuple[Sentence, ...]:
    """Add pauses between sentences and map ranges back to the original text."""
    result: list[Sentence] = []
    previous_end = 0
    for index, (text, start, end) in enumerate(sentences):
        if index < len(sentences) - 1 and not _ENDS_WITH_PAUSE.search(text):
            # A heading or list item without punctuation would run into the next
            # sentence when chunks join sentences with a space: give it its pause.
            text += "."
        start = max(start, previous_end)  # ranges stay ordered and disjoint
        end = max(end, start)
        previous_end = end
        original_start = cleaned.source_start(start)
        original_end = max(
            cleaned.source_end(end) if end > start else original_start, original_start
        )
        result.append(Sentence(text, original_start, original_end))
    return tuple(result)


# -- plain text -----------------------------------------------------------------------

# Paragraphs end at blank lines; a line starting with a bullet character starts a new one.
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*|\n(?=[ \t]*[•◦▪‣⁃] )")


def _plain_blocks(source: str, emoji: EmojiMode) -> Iterator[_Block]:
    """Blocks of plain text: its paragraphs, read with the prose rules."""
    start = 0
    for match in [*_PARAGRAPH_BREAK.finditer(source), None]:
        end = match.start() if match else len(source)
        text = source[start:end]
        first = start + len(text) - len(text.lstrip())
        last = start + len(text.rstrip())
        if first < last:
            yield _Block(sayable.prose(Mapped.copied(source, first, last), emoji), first, last)
        if match:
            start = match.end()


# -- markdown -------------------------------------------------------------------------

_KNOWN_HTML = word_set(
    """
    a abbr address article aside audio b bdi bdo blockquote body br button caption center
    cite code col colgroup data dd del details dfn dialog div dl dt em embed fieldset
    figcaption figure font footer form h1 h2 h3 h4 h5 h6 head header hr html i iframe img
    input ins kbd label legend li link main mark meta meter nav noscript object ol optgroup
    option output p param picture pre progress q rp rt ruby s samp script section select
    small source span strike strong style sub summary sup svg table tbody td template
    textarea tfoot th thead time title tr track tt u ul var video wbr
    """
)
_HTML_BLOCK_TAGS = word_set(
    """
    address article aside blockquote br caption dd details dialog div dl dt fieldset
    figcaption figure footer form h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section
    summary table td th tr ul
    """
)
_OPEN_TAG = re.compile(r"<([A-Za-z][A-Za-z0-9-]*)\s*/?>")
_ALERT = re.compile(r"\[!(NOTE|TIP|IMPORTANT|WARNING|CAUTION)\]\s*", re.IGNORECASE)
_TAG_NAME = re.compile(r"</?([A-Za-z][A-Za-z0-9-]*)")


class _HtmlText(HTMLParser):
    """The text of an HTML block as ``(source, spoken)`` pieces; ``None`` ends a block.

    Character references are reported on their own (``convert_charrefs=False``), so that
    every piece's source form is verbatim in the markdown source and can be located.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.pieces: list[tuple[str, str] | None] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._hidden += 1
        elif tag in _HTML_BLOCK_TAGS:
            self.pieces.append(None)
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self.pieces.append((alt, alt))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._hidden = max(0, self._hidden - 1)
        elif tag in _HTML_BLOCK_TAGS:
            self.pieces.append(None)

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.pieces.append((data, data))

    def handle_entityref(self, name: str) -> None:
        self.handle_reference(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self.handle_reference(f"&#{name};")

    def handle_reference(self, reference: str) -> None:
        if not self._hidden:
            self.pieces.append((reference, html.unescape(reference)))


class _MarkdownReader:
    """Walks markdown-it tokens and yields the blocks to speak (see the module docstring)."""

    def __init__(self, source: str, code: CodeMode, emoji: EmojiMode, table_rows: int) -> None:
        self.source = source
        self.code = code
        self.emoji = emoji
        self.table_rows = table_rows
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", source)]
        # Set at a list item's start, for the item's first block: its number ("3.") or
        # "" for a bullet; None elsewhere.
        self.item: str | None = None
        self.marker = -1  # where that number is in the source

    # positions

    def _line_start(self, line: int) -> int:
        return self.line_starts[min(line, len(self.line_starts) - 1)]

    def _line_end(self, line: int) -> int:
        """The end of ``line`` (before its newline)."""
        if line + 1 < len(self.line_starts):
            return self.line_starts[line + 1] - 1
        return len(self.source)

    def _lines(self, token: Token) -> tuple[int, int]:
        """The source range of a block token's lines, without the last newline."""
        first, last = token.map or (0, 0)
        return self._line_start(first), self._line_end(max(first, last - 1))

    def _find(self, needle: str, cursor: int, limit: int) -> int:
        return self.source.find(needle, cursor, limit) if needle else -1

    def _locate(self, token: Token, hint: int = 0) -> tuple[int, int]:
        """The source range of an inline token's content (see the module docstring)."""
        start, limit = self._lines(token)
        start = max(start, hint)
        if not token.content.strip():
            return start, start  # an empty table cell
        cursor, first = start, -1
        for line in token.content.split("\n"):
            line = line.strip()
            if not line:
                continue
            found = self._find(line, cursor, limit)
            if found < 0:
                return self._strip(start, limit)
            if first < 0:
                first = found
            cursor = found + len(line)
        return (first, cursor) if first >= 0 else self._strip(start, limit)

    def _strip(self, start: int, end: int) -> tuple[int, int]:
        text = self.source[start:end]
        return start + len(text) - len(text.lstrip()), start + len(text.rstrip())

    # blocks

    def blocks(self, tokens: list[Token]) -> Iterator[_Block]:
        """The blocks of a token stream, in order."""
        index = 0
        while index < len(tokens):
            token = tokens[index]
            kind = token.type
            blocks: Iterator[_Block] = iter(())
            if kind == "list_item_open":
                ordered = token.markup in (".", ")")
                self.item = f"{token.info}." if ordered and token.info else ""
                # The number is spoken, so the item's first sentence starts at it.
                first_line = (token.map or (0, 0))[0]
                self.marker = (
                    self._find(token.info, self._line_start(first_line), self._line_end(first_line))
                    if self.item
                    else -1
                )
            elif kind == "inline":
                blocks = self._inline_block(token)
            elif kind in ("fence", "code_block"):
                blocks = self._code_block(token)
            elif kind == "html_block":
                blocks = self._html_block(token)
            elif kind == "table_open":
                close = index
                while tokens[close].type != "table_close":
                    close += 1
                blocks = self._table(token, tokens[index : close + 1])
                index = close
            for block in blocks:
                if block.prefix and self.marker >= 0:
                    block.start = min(block.start, self.marker)
                    self.marker = -1
                yield block
            index += 1

    def _take_prefix(self) -> str:
        """What to say before a block: the number of the list item it starts, if any."""
        prefix, self.item = self.item or "", None
        return prefix

    def _inline_block(self, token: Token) -> Iterator[_Block]:
        start, end = self._locate(token)
        children = list(token.children or [])
        starts_item = self.item is not None
        prefix = self._take_prefix()
        if starts_item and children and children[0].type == "text":
            # A task list item: "[ ] write docs" or "[x] write tests".
            head = children[0].content[:4]
            if head in ("[ ] ", "[x] ", "[X] "):
                done = "Done:" if head != "[ ] " else "To do:"
                prefix = f"{prefix} {done}".strip()
                at = self._find(head, start, end)
                children[0] = Token("text", "", 0, content=children[0].content[4:])
                body, _ = self._render(children, at + 4 if at >= 0 else start, end)
                yield _Block(body, start, end, prefix=prefix)  # "[x]" is in the range
                return
        if children and children[0].type == "text":
            # A GitHub alert: "> [!WARNING]" opens a quote that is a warning.
            alert = _ALERT.match(children[0].content)
            if alert:
                label = f"{alert.group(1).capitalize()}:"
                prefix = f"{prefix} {label}".strip()
                rest = children[0].content[alert.end() :]
                at = self._find(alert.group(), start, end)
                children[0] = Token("text", "", 0, content=rest)
                body, _ = self._render(children, at + alert.end() if at >= 0 else start, end)
                yield _Block(body, start, end, prefix=prefix)
                return
        body, _ = self._render(children, start, end)
        yield _Block(body, start, end, prefix=prefix)

    def _render(self, children: list[Token], cursor: int, limit: int) -> tuple[Mapped, int]:
        """Render inline tokens to sayable text, locating each in the source from ``cursor``."""
        parts: list[Mapped] = []
        run: list[Mapped] = []  # consecutive text, made sayable together

        def flush() -> None:
            if run:
                parts.append(sayable.prose(Mapped.join(run), self.emoji))
                run.clear()

        link_parts = 0
        index = 0
        while index < len(children):
            child = children[index]
            kind = child.type
            if kind == "text":
                found = self._find(child.content, cursor, limit)
                if found >= 0:
                    run.append(Mapped.copied(self.source, found, found + len(child.content)))
                    cursor = found + len(child.content)
                else:
                    run.append(Mapped.replacing(child.content, cursor, cursor))
            elif kind == "text_special":  # a backslash escape or an entity
                found = self._find(child.markup, cursor, limit)
                if found >= 0:
                    run.append(Mapped.replacing(child.content, found, found + len(child.markup)))
                    cursor = found + len(child.markup)
                else:
                    run.append(Mapped.replacing(child.content, cursor, cursor))
            elif kind in ("softbreak", "hardbreak"):
                run.append(Mapped.inserted(" ", cursor))
            elif kind == "code_inline":
                flush()
                mapped, cursor = self._code_span(child, cursor, limit)
                parts.append(mapped)
            elif kind == "link_open":
                flush()
                link_parts = len(parts)
            elif kind == "link_close":
                flush()
                if not any(any(c.isalnum() for c in p.text) for p in parts[link_parts:]):
                    href = children_href(children, index)
                    parts.append(Mapped.replacing(f" {sayable.host_words(href)} ", cursor, cursor))
                if child.markup != "autolink":
                    cursor = _skip_link_tail(self.source, cursor, limit)
                else:
                    found = self._find(">", cursor, limit)
                    cursor = found + 1 if found >= 0 else cursor
            elif kind == "image":
                flush()
                found = self._find("![", cursor, limit)
                if found >= 0:
                    cursor = found + 2
                alt, cursor = self._render(list(child.children or []), cursor, limit)
                parts.append(alt)
                cursor = _skip_link_tail(self.source, cursor, limit)
            elif kind == "html_inline":
                flush()
                found = self._find(child.content, cursor, limit)
                start = found if found >= 0 else cursor
                end = start + len(child.content) if found >= 0 else cursor
                parts.append(Mapped.replacing(_inline_tag_words(child.content), start, end))
                cursor = end
            elif child.markup:  # emphasis and strikethrough delimiters vanish
                flush()
                found = self._find(child.markup, cursor, limit)
                if found >= 0:
                    cursor = found + len(child.markup)
            index += 1
        flush()
        return Mapped.join(parts), cursor

    def _code_span(self, token: Token, cursor: int, limit: int) -> tuple[Mapped, int]:
        """An inline code span, read with the code rules."""
        opening = self._find(token.markup, cursor, limit)
        if opening < 0:
            return Mapped.replacing(token.content, cursor, cursor), cursor
        found = self._find(token.content, opening + len(token.markup), limit)
        if found < 0:
            closing = self._find(token.markup, opening + len(token.markup), limit)
            end = closing + len(token.markup) if closing >= 0 else opening + len(token.markup)
            return Mapped.replacing(token.content, opening, end), end
        content = Mapped.copied(self.source, found, found + len(token.content))
        closing = self._find(token.markup, found + len(token.content), limit)
        end = closing + len(token.markup) if closing >= 0 else found + len(token.content)
        spoken = sayable.code(content, self.emoji)
        # A space on each side, so that the words never fuse with prose ("`x`s").
        return Mapped.join([Mapped.inserted(" ", opening), spoken, Mapped.inserted(" ", end)]), end

    def _code_block(self, token: Token) -> Iterator[_Block]:
        start, end = self._lines(token)
        prefix = self._take_prefix()
        lines = token.content.rstrip("\n").split("\n") if token.content.strip() else []
        if self.code == "skip" or not lines:
            return
        if self.code == "summarize":
            count = len(lines)
            size = f"{count} line" if count == 1 else f"{count} lines"
            language = sayable.language_name(token.info) if token.type == "fence" else ""
            if language == "diff":
                text = f"A diff of {size}."
            elif language:
                text = f"A code block of {size} in {language}."
            else:
                text = f"A code block of {size}."
            yield _Block(Mapped.replacing(text, start, end), start, end, False, prefix)
            return
        cursor = start
        for line in lines:
            stripped = line.strip()
            if not stripped:
                continue
            found = self._find(stripped, cursor, end)
            if found >= 0:
                mapped = Mapped.copied(self.source, found, found + len(stripped))
                cursor = found + len(stripped)
            else:
                mapped = Mapped.replacing(stripped, cursor, cursor)
            first, last = mapped.span() if found >= 0 else (cursor, cursor)
            yield _Block(sayable.code(mapped, self.emoji), first, last, False, prefix)
            prefix = ""

    def _html_block(self, token: Token) -> Iterator[_Block]:
        start, end = self._lines(token)
        parser = _HtmlText()
        try:
            parser.feed(token.content)
            parser.close()
        except Exception:  # html.parser asserts on some malformed markup ("<![a")
            pass  # what it read before that is kept; malformed markup is not speech
        cursor = start
        pieces: list[Mapped] = []
        for piece in [*parser.pieces, None]:
            if piece is not None:
                raw, spoken = piece
                if raw[:1].isspace():  # whitespace separates words; its lines may be cut
                    pieces.append(Mapped.inserted(" ", cursor))
                if raw == spoken:  # text, not a character reference: strip both
                    raw = spoken = raw.strip()
                found = self._find(raw, cursor, end)
                if found >= 0 and raw == spoken:
                    pieces.append(Mapped.copied(self.source, found, found + len(raw)))
                elif found >= 0:
                    pieces.append(Mapped.replacing(spoken, found, found + len(raw)))
                elif spoken.strip():
                    pieces.append(Mapped.replacing(spoken, cursor, cursor))
                cursor = found + len(raw) if found >= 0 else cursor
                if piece[0][-1:].isspace():
                    pieces.append(Mapped.inserted(" ", cursor))
                continue
            body = Mapped.join(pieces).collapse()
            pieces = []
            if body.text:
                first, last = body.span()
                prefix = self._take_prefix()
                yield _Block(sayable.prose(body, self.emoji), first, last, True, prefix)

    def _table(self, table: Token, tokens: list[Token]) -> Iterator[_Block]:
        rows: list[tuple[bool, Token, list[Token]]] = []  # (header?, tr token, cell inlines)
        header = False
        for token in tokens:
            if token.type == "thead_open":
                header = True
            elif token.type == "thead_close":
                header = False
            elif token.type == "tr_open":
                rows.append((header, token, []))
            elif token.type == "inline" and rows:
                rows[-1][2].append(token)
        prefix = self._take_prefix()
        head = [r for r in rows if r[0]]
        body = [r for r in rows if not r[0]]
        columns = max((len(r[2]) for r in rows), default=0)
        names = [self._cell(cell, 0)[0].collapse().text for cell in head[0][2]] if head else []
        if len(body) > self.table_rows or columns > TABLE_COLUMNS:
            start, end = self._lines(table)
            rows_said = f"{len(body)} row" if len(body) == 1 else f"{len(body)} rows"
            text = f"A table of {rows_said} and {columns} columns"
            named = [n for n in names if n]
            text += f": {', '.join(named)}." if named and columns <= TABLE_COLUMNS else "."
            yield _Block(Mapped.replacing(text, start, end), start, end, False, prefix)
            return
        for is_header, _row, cells in body or head:
            parts: list[Mapped] = []
            hint = self._lines(cells[0])[0] if cells else 0
            row_start, row_end = (-1, -1)
            for column, cell in enumerate(cells):
                value, (cell_start, cell_end) = self._cell(cell, hint)
                hint = cell_end
                value = value.collapse()
                if row_start < 0:
                    row_start = cell_start
                row_end = cell_end
                if not any(c.isalnum() for c in value.text):
                    continue
                name = names[column] if column < len(names) and not is_header else ""
                label = f"{name}: " if name else ""
                separator = ", " if parts else ""
                parts.append(Mapped.inserted(separator + label, value.starts[0]))
                parts.append(value)
            if parts:
                yield _Block(Mapped.join(parts), row_start, row_end, False, prefix)
                prefix = ""

    def _cell(self, cell: Token, hint: int) -> tuple[Mapped, tuple[int, int]]:
        """A table cell's sayable text (emoji named if nothing else is left) and range."""
        start, end = self._locate(cell, hint)
        value, _ = self._render(list(cell.children or []), start, end)
        if self.emoji == "drop" and not any(c.isalnum() for c in value.text):
            # A cell holding only ✅ or ❌ carries its meaning in the emoji.
            emoji, self.emoji = self.emoji, "name"
            value, _ = self._render(list(cell.children or []), start, end)
            self.emoji = emoji
        return value, (start, end)


def children_href(children: list[Token], close_index: int) -> str:
    """The ``href`` of the link that the ``link_close`` at ``close_index`` closes."""
    depth = 0
    for index in range(close_index - 1, -1, -1):
        kind = children[index].type
        if kind == "link_close":
            depth += 1
        elif kind == "link_open":
            if not depth:
                return str(children[index].attrs.get("href", ""))
            depth -= 1
    return ""


def _skip_link_tail(source: str, cursor: int, limit: int) -> int:
    """Skip ``](destination "title")`` or ``][label]`` after a link's text.

    Only brackets are scanned (the parser already decided it is a link); this moves the
    cursor past the destination so that it is neither searched for text nor spoken.
    """
    close = source.find("]", cursor, limit)
    if close < 0:
        return cursor
    position = close + 1
    if source.startswith("(", position):
        depth = 0
        while position < limit:
            char = source[position]
            if char == "\\":
                position += 2
                continue
            if char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if depth == 0:
                    return position + 1
            position += 1
        return close + 1
    if source.startswith("[", position):
        end = source.find("]", position, limit)
        return end + 1 if end >= 0 else position
    return position


def _inline_tag_words(tag: str) -> str:
    """What an inline HTML tag says: nothing, unless it is no HTML element.

    A tag that breaks a line (``<br>``, ``<p>``) or a comment separates words: a space.
    Formatting tags (``<kbd>``, ``<b>``) say nothing, so ``<kbd>Ctrl</kbd>+C`` stays
    "Ctrl+C". ``<your-token>`` in "replace <your-token> with" is a placeholder, not markup:
    the parser cannot tell, so a name that is no HTML element is read.
    """
    match = _TAG_NAME.match(tag)
    if not match:
        return " "  # a comment, a processing instruction, a declaration
    name = match.group(1).lower()
    if name not in _KNOWN_HTML:
        return f" {match.group(1)} " if _OPEN_TAG.fullmatch(tag) else " "
    return " " if name in _HTML_BLOCK_TAGS else ""
