"""Speech-ready text: ``ttsd.text.speakable``, table-driven.

Each case is an input, a format and the exact sentences to be spoken; every case also
checks the sentences' ranges in the original text (:func:`check_spans`).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttsd.text import Speech, clean, detect_format, speakable, warm_up


# Words that rules say without taking them from the source ("dot", "slash", a code block's
# summary, a task's state); a case adds its own (a table's column names, emoji names).
def words(text: str) -> frozenset[str]:
    return frozenset(text.split())


GENERATED = words(
    "dot slash home dash dunder a code block of line lines in diff table row rows and "
    "columns column done to do equals not equal plus minus star port less than greater "
    "arrow or pipe hash at dollar tilde caret backslash check mark cross flag"
)


SUMMARY = re.compile(r"(\d+\. )?A (code block|diff|table) of ")


def source_words(text: str) -> set[str]:
    """The words of source text, as written and split the way the rules split identifiers."""
    text = clean(text).text
    split = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text)
    split = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1 \2", split)
    return set(re.findall(r"[^\W_]+", f"{text} {split}".lower()))


def check_spans(source: str, speech: Speech, generated: frozenset[str] = frozenset()) -> None:
    """Ranges are ordered, disjoint, within the text, and each says words of its own slice.

    A summary ("A code block of 3 lines in Python.") says words of its own making.
    """
    previous_end = 0
    for sentence in speech.sentences:
        assert sentence.text and sentence.text == sentence.text.strip()
        assert "  " not in sentence.text
        assert previous_end <= sentence.start <= sentence.end <= len(source), speech
        previous_end = sentence.end
        if SUMMARY.match(sentence.text):
            continue
        said = set(re.findall(r"[^\W_]+", sentence.text.lower()))
        available = source_words(source[sentence.start : sentence.end])
        missing = said - available - GENERATED - generated
        assert not missing, (sentence, source[sentence.start : sentence.end], missing)


def said(text: str, format: str = "auto", **options: object) -> list[str]:
    """The sentences spoken for ``text``, after checking their ranges."""
    speech = speakable(text, format, **options)  # type: ignore[arg-type]
    check_spans(text, speech)
    return [sentence.text for sentence in speech.sentences]


# -- plain text: passes through, whitespace aside ------------------------------------------

PLAIN = [
    ("Hello, world! How are you today?", ["Hello, world!", "How are you today?"]),
    (
        "The build finished in 3.5 seconds. All 42 tests passed.",
        ["The build finished in 3.5 seconds.", "All 42 tests passed."],
    ),
    (
        "The meeting is at 3 p.m. tomorrow, says Dr. Smith. J. R. R. Tolkien agrees.",
        ["The meeting is at 3 p.m. tomorrow, says Dr. Smith.", "J. R. R. Tolkien agrees."],
    ),
    ("  Too   many\tspaces\n here.  ", ["Too many spaces here."]),
    ("Wait... what? Really!", ["Wait... what?", "Really!"]),
    ("Really? yes! no. ok. é. Über.", ["Really?", "yes!", "no. ok. é.", "Über."]),
    ('She said "Go home." Then she left.', ['She said "Go home."', "Then she left."]),
    ("Über Straßen, sagte sie. Ça va? Ja.", ["Über Straßen, sagte sie.", "Ça va?", "Ja."]),
    ("你好。世界", ["你好。世界"]),
    ("I have 2 cats and 1 dog (both old).", ["I have 2 cats and 1 dog (both old)."]),
    ("Write to help@example.com for access.", ["Write to help@example.com for access."]),
    (
        "Use and/or, km/h, TCP/IP and 24/7 support from 2024/01/02 on.",
        ["Use and/or, km/h, TCP/IP and 24/7 support from 2024/01/02 on."],
    ),
    (
        "Prices rose 5% in Q3; e.g. coffee is $4.50 now, i.e. more.",
        ["Prices rose 5% in Q3; e.g. coffee is $4.50 now, i.e. more."],
    ),
    (
        "GitHub, YouTube, JavaScript, iOS, kWh and McDonald's are fine.",
        ["GitHub, YouTube, JavaScript, iOS, kWh and McDonald's are fine."],
    ),
    (
        "Version v1.2.3 is out, pi is 3.14 and U.S. law applies.",
        ["Version v1.2.3 is out, pi is 3.14 and U.S. law applies."],
    ),
    ("© 2024 Acme™. All rights reserved.", ["© 2024 Acme™.", "All rights reserved."]),
    ("Score: 10 > 9 and 3 < 4, a * b = c.", ["Score: 10 > 9 and 3 < 4, a * b = c."]),
    ("This sentence has one asterisk* in it.", ["This sentence has one asterisk* in it."]),
    ("2*3*4 = 24", ["2*3*4 = 24"]),
    ("Use <Enter> to confirm.", ["Use <Enter> to confirm."]),
    ("#hashtag and C# are fine", ["#hashtag and C# are fine"]),
    ("First paragraph\n\nSecond paragraph", ["First paragraph.", "Second paragraph"]),
    ("  a  \n\n\n  b  ", ["a.", "b"]),
    ("line one\nline two\nline three.", ["line one line two line three."]),
    ("", []),
    ("   \n\t ", []),
]


@pytest.mark.parametrize(("text", "expected"), PLAIN)
@pytest.mark.parametrize("format", ["auto", "text"])
def test_plain_text_passes_through(text: str, expected: list[str], format: str) -> None:
    assert said(text, format) == expected
    assert speakable(text, format).format == "text"  # type: ignore[arg-type]


# -- auto: what is markdown -----------------------------------------------------------------

DETECTION = [
    # plain text, including near misses
    ("Just a sentence.", "text"),
    ("This sentence has one asterisk* in it.", "text"),
    ("2*3*4 = 24 and a * b * c", "text"),
    ("x = a*b + c*d", "text"),
    ("Open my_file_name.txt and __init__.py now", "text"),
    ("snake_case_name and other_var", "text"),
    ("Use <Enter> to confirm, or <b>not</b>.", "text"),
    ("    indented line\n    another one", "text"),
    ("See https://example.com/a_b*c*d and <https://x.org>", "text"),
    ("Fish &amp; chips \\* here", "text"),
    ("#hashtag, #1 priority", "text"),
    ("Above\n\n***\n\nBelow", "text"),
    ("Price: $5 * 3 = $15", "text"),
    ("[1] a citation, [not a link]", "text"),
    # markdown
    ("# Title\n\nBody.", "markdown"),
    ("Title\n=====\n\nBody", "markdown"),
    ("Some **bold** text.", "markdown"),
    ("I *really* mean it.", "markdown"),
    ("**Note:** read this", "markdown"),
    ("- one\n- two", "markdown"),
    ("1. one\n2. two", "markdown"),
    ("```\ncode\n```", "markdown"),
    ("Run `make test` now.", "markdown"),
    ("See [the docs](https://example.com/docs).", "markdown"),
    ("![diagram](d.png)", "markdown"),
    ("> quoted text", "markdown"),
    ("| a | b |\n|---|---|\n| 1 | 2 |", "markdown"),
    ("~~old~~ new", "markdown"),
    ("(*aside*) text", "markdown"),
    ("line one\n*emphasis* at a line start", "markdown"),
]


@pytest.mark.parametrize(("text", "expected"), DETECTION)
def test_auto_detects_markdown(text: str, expected: str) -> None:
    assert detect_format(text) == expected
    assert speakable(text).format == expected


# -- markdown -------------------------------------------------------------------------------

MARKDOWN = [
    ("# Title\n\nBody.", ["Title.", "Body."]),
    ("## Findings ##\nAll good", ["Findings.", "All good"]),
    ("# Why?\n\nBecause.", ["Why?", "Because."]),
    ("Title\n=====\n\nBody", ["Title.", "Body"]),
    ("## Steps\n1. Build it\n2. Test it", ["Steps.", "1. Build it.", "2. Test it"]),
    ("3. three\n4. four", ["3. three.", "4. four"]),
    ("1) one\n2) two", ["1. one.", "2. two"]),
    ("- a\n  - b\n  - c\n- d", ["a.", "b.", "c.", "d"]),
    ("* First. Second one\n* Third", ["First.", "Second one.", "Third"]),
    ("- [x] tests\n- [ ] docs", ["Done: tests.", "To do: docs"]),
    ("1. [x] shipped", ["1. Done: shipped"]),
    ("***both*** and __under__ and _em_", ["both and under and em"]),
    ("Some **bold** text.", ["Some bold text."]),
    ("~~old~~ new", ["old new"]),
    ("[**bold link**](http://x.org/a)", ["bold link"]),
    ("[https://github.com/a/b](https://github.com/a/b)", ["github.com"]),
    ("<https://docs.python.org/3/library/re.html>", ["docs.python.org"]),
    ("See https://www.example.com/path?q=1.", ["See example.com."]),
    ("Open [](https://example.com/x) now", ["Open example.com now"]),
    ("Read [the docs][1] first.\n\n[1]: https://example.com", ["Read the docs first."]),
    ("Read [the docs] first.\n\n[the docs]: https://example.com", ["Read the docs first."]),
    ("![A cat](cat.png)", ["A cat"]),
    ("Look: ![](x.png)", ["Look:"]),
    ("[![Build](https://ci.example.com/badge.svg)](https://ci.example.com/)", ["Build"]),
    ("Press <kbd>Ctrl</kbd>+<kbd>C</kbd> to stop", ["Press Ctrl+C to stop"]),
    ("Set <your-token> here, **now**", ["Set your-token here, now"]),
    ("one<br>two", ["one two"]),
    ('<div align="center">\n<b>Hi</b> there\n</div>', ["Hi there"]),
    ("<!-- hidden -->\nVisible", ["Visible"]),
    ("<details>\n<summary>Logs</summary>\n\nSome *logs*.\n</details>", ["Logs.", "Some logs."]),
    ("Fish &amp; chips &mdash; good", ["Fish & chips — good"]),
    ("Not \\*emphasis\\*", ["Not *emphasis*"]),
    ("Above\n\n---\n\nBelow", ["Above.", "Below"]),
    ("> a\n>\n> > b", ["a.", "b"]),
    ("> **Note**\n> Read this.", ["Note Read this."]),
    ("line one  \nline two\\\nline three", ["line one line two line three"]),
    ("Run `make test` now.", ["Run make test now."]),
    (
        "Call `snake_case_name`, `camelCaseName`, `SCREAMING_CASE` and `foo.bar()`.",
        ["Call snake case name, camel case name, screaming case and foo dot bar."],
    ),
    (
        "Edit `~/.config/ttsd/config.toml`.",
        ["Edit home slash dot config slash ttsd slash config dot toml."],
    ),
    (
        "Try `ttsd say --priority important -v`",
        ["Try ttsd say dash dash priority important dash v"],
    ),
    ("If `x == 1 && y != 2`", ["If x equals 1 and y not equal 2"]),
    ("Use ``a `tick` here``", ["Use a tick here"]),
    ("A *list*:\n\n- one\n- two\n\nDone.", ["A list:", "one.", "two.", "Done."]),
    ("> [!WARNING]\n> Back up first.", ["Warning: Back up first."]),
    ("> [!note] Read this", ["Note: Read this"]),
    (
        "Returns `Promise<User>` if `a < b`",
        ["Returns Promise User if a less than b"],
    ),
    ("<div>&amp;aa &lt;b&gt;</div>", ["&aa <b>"]),
    ("> <div>b\n", ["b"]),
    ("<div><![a, b", []),  # malformed markup html.parser rejects: no crash
]


@pytest.mark.parametrize(("text", "expected"), MARKDOWN)
def test_markdown(text: str, expected: list[str]) -> None:
    assert said(text, "markdown") == expected


CODE_BLOCKS = [
    ("```python\na = 1\nb = 2\nc = 3\n```", "summarize", ["A code block of 3 lines in Python."]),
    ("```py\nprint()\n```", "summarize", ["A code block of 1 line in Python."]),
    ("```\nplain\n```", "summarize", ["A code block of 1 line."]),
    ("```mermaid\ngraph TD\n```", "summarize", ["A code block of 1 line in mermaid."]),
    ("```diff\n-a\n+b\n```", "summarize", ["A diff of 2 lines."]),
    ("```ts {1,3}\nlet x\n```", "summarize", ["A code block of 1 line in TypeScript."]),
    ("~~~bash\nls\n~~~", "summarize", ["A code block of 1 line in shell."]),
    ("Intro:\n\n    x = 1\n    y = 2\n", "summarize", ["Intro:", "A code block of 2 lines."]),
    ("Run this:\n\n```sh\nmake\n```\n\nThen wait.", "skip", ["Run this:", "Then wait."]),
    ("```\n\n```", "summarize", []),
    (
        "```sh\nls -la ~/src\n\ncd /tmp && make\n```",
        "read",
        ["ls dash la home slash src.", "cd slash tmp and make"],
    ),
    (
        "```python\nif user.is_admin():\n    print(config_path)\n```",
        "read",
        ["if user dot is admin:", "print config path"],
    ),
    (
        "1. Install:\n   ```sh\n   pip install ttsd\n   ```",
        "summarize",
        ["1. Install:", "A code block of 1 line in shell."],
    ),
    ("- ```\n  x\n  ```", "summarize", ["A code block of 1 line."]),
]


@pytest.mark.parametrize(("text", "mode", "expected"), CODE_BLOCKS)
def test_code_blocks(text: str, mode: str, expected: list[str]) -> None:
    assert said(text, "markdown", code=mode) == expected


TABLE = "| Name | Age |\n|------|----:|\n| Alice | 30 |\n| Bob | 25 |\n"

TABLES = [
    (TABLE, {}, ["Name: Alice, Age: 30.", "Name: Bob, Age: 25"]),
    (TABLE, {"table_rows": 1}, ["A table of 2 rows and 2 columns: Name, Age."]),
    ("| a | b |\n|---|---|\n|  | 2 |", {}, ["b: 2"]),
    ("| a | b |\n|---|---|", {}, ["a, b"]),
    ("| | b |\n|---|---|\n| x | y |", {}, ["x, b: y"]),
    (
        "| Test | OK |\n|---|---|\n| unit | ✅ |\n| e2e | ❌ |",
        {},
        ["Test: unit, OK: check mark.", "Test: e2e, OK: cross mark"],
    ),
    ("| `f()` | [x](http://x.org) |\n|---|---|\n| **1** | 2 |", {}, ["f: 1, x: 2"]),
    (
        "| " + " | ".join(f"c{i}" for i in range(9)) + " |\n|" + "---|" * 9 + "\n|" + " x |" * 9,
        {},
        ["A table of 1 row and 9 columns."],
    ),
]


TABLE_WORDS = words("name age a b test ok c0 c1 c2 c3 c4 c5 c6 c7 c8 f x")


@pytest.mark.parametrize(("text", "options", "expected"), TABLES)
def test_tables(text: str, options: dict[str, int], expected: list[str]) -> None:
    speech = speakable(text, "markdown", **options)  # type: ignore[arg-type]
    assert [s.text for s in speech.sentences] == expected
    check_spans(text, speech, TABLE_WORDS)


def test_table_rows_have_their_own_ranges() -> None:
    speech = speakable(TABLE, "markdown")
    assert [TABLE[s.start : s.end] for s in speech.sentences] == ["Alice | 30", "Bob | 25"]


# -- prose rules (plain text and markdown alike) ------------------------------------------

PROSE = [
    ("See https://github.com/anthropics/x/pull/3.", ["See github.com."]),
    ("Open http://localhost:8080/api now", ["Open localhost port 8080 now"]),
    ("Docs at www.example.org/foo, and (https://a.io/x).", ["Docs at example.org, and (a.io)."]),
    ("Clone git+ssh://git@host.example.com/r.git", ["Clone host.example.com"]),
    ("Mail <https://lists.example.org/x> today", ["Mail lists.example.org today"]),
    (
        "Installed to /usr/local/bin/ttsd.",
        ["Installed to slash usr slash local slash bin slash ttsd."],
    ),
    (
        "Edit ~/.config/ttsd/config.toml now",
        ["Edit home slash dot config slash ttsd slash config dot toml now"],
    ),
    ("Look at src/main.rs and a/b/c", ["Look at src slash main dot rs and a slash b slash c"]),
    ("Run ./run.sh or ../tools/x", ["Run dot slash run dot sh or dot dot slash tools slash x"]),
    ("Edit config.toml and README.md.", ["Edit config dot toml and README dot md."]),
    ("Add it to .gitignore.", ["Add it to dot gitignore."]),
    ("Unpack data.tar.gz here", ["Unpack data dot tar dot gz here"]),
    ("Set snake_case_name and MAX_RETRIES.", ["Set snake case name and max retries."]),
    ("Edit __init__.py and __main__", ["Edit dunder init dot py and dunder main"]),
    ("Call foo.bar() or baz(), not word(s)", ["Call foo dot bar or baz, not word(s)"]),
    ("The camelCaseName on macOS and iPhone", ["The camel case name on mac OS and i phone"]),
    ("The SpeechRequestHandler class", ["The speech request handler class"]),
    ("Build → Test ⇒ Ship -> Done", ["Build to Test to Ship to Done"]),
    ("Results\n-------\nAll good ======", ["Results All good"]),
    ("┌──┐\n│ok│\n└──┘", ["ok"]),
    ("Progress ████░░ 60%", ["Progress 60%"]),
    ("Items:\n• one\n• two", ["Items:", "one.", "two"]),
    ("Prompt \ue0b0 ready \U000f0001", ["Prompt ready"]),
    ("fooBar()a and fooBar()/x/y.py", ["foo bar a and foo bar slash x slash y dot py"]),
    ("a_b1a base64Encode HTTP2Server", ["a b1a base64 encode HTTP2Server"]),
]


@pytest.mark.parametrize(("text", "expected"), PROSE)
def test_prose_rules(text: str, expected: list[str]) -> None:
    assert said(text, "text") == expected


def test_text_format_never_reads_markdown() -> None:
    text = "# Not a heading\n\n- **not** a list, `not code`"
    speech = speakable(text, "text")
    assert speech.format == "text"
    assert [s.text for s in speech.sentences] == [
        "# Not a heading.",
        "- **not** a list, `not code`",
    ]
    assert speakable("", "markdown").format == "markdown"


def test_prose_rules_apply_in_markdown_but_not_inside_link_targets() -> None:
    text = "Edit **src/main.rs** (see [the guide](https://example.com/docs/a_b.md))."
    assert said(text, "markdown") == ["Edit src slash main dot rs (see the guide)."]


EMOJI = [
    ("Deployed 🚀 to prod ✅", "drop", ["Deployed to prod"]),
    ("Deployed 🚀 to prod ✅", "name", ["Deployed rocket to prod check mark"]),
    ("Nice 👍🏽 from 🇫🇷", "name", ["Nice thumbs up from flag France"]),
    ("Nice 👍🏽 from 🇫🇷", "drop", ["Nice from"]),
    ("The 👨‍👩‍👧 came", "name", ["The family man woman girl came"]),
    ("Step 1️⃣ done", "drop", ["Step 1 done"]),
    ("Great work 🎉!", "drop", ["Great work!"]),
    ("🎉", "drop", []),
    ("I ❤️ it", "name", ["I red heart it"]),
    ("Checks: ✓ and ✗", "name", ["Checks: check mark and cross mark"]),
    ("Checks: ✓ and ✗", "drop", ["Checks: and"]),
    ("# 🚀 Launch\n\nGo ✨", "drop", ["Launch.", "Go"]),
]


@pytest.mark.parametrize(("text", "mode", "expected"), EMOJI)
def test_emoji(text: str, mode: str, expected: list[str]) -> None:
    names = words("rocket thumbs up flag france family man woman girl red heart")
    speech = speakable(text, emoji=mode)  # type: ignore[arg-type]
    assert [s.text for s in speech.sentences] == expected
    check_spans(text, speech, names)


# -- control characters and escapes --------------------------------------------------------

CONTROLS = [
    ("\x1b[1;31mError\x1b[0m: disk full", ["Error: disk full"]),
    ("\x1b]8;;https://x.com\x07link\x1b]8;;\x07 text", ["link text"]),
    ("\x1b]0;window title\x1b\\Hello", ["Hello"]),
    ("\x1b[2K\x1b[1Gprogress 50%\x1b[?25h", ["progress 50%"]),
    ("\x1b(Bplain\x1b7 saved\x1b8", ["plain saved"]),
    ("\x9b31mred\x9b0m", ["red"]),
    ("\x1b]0;unterminated title\nNext line", ["Next line"]),
    ("done\x1b", ["done"]),
    ("page one\x0cpage two\x0bthree", ["page one page two three"]),
    ("nul\x00here del\x7fhere c1\x80here", ["nulhere delhere c1here"]),
    ("a\x85b\u2028c\u2029d", ["a b c d"]),
    ("one\r\ntwo\r\n\r\nthree\rfour", ["one two.", "three four"]),
    (
        "pass\u200bword \u202eevil\u202c and soft\u00adhyphen \ufeffBOM",
        ["password evil and softhyphen BOM"],
    ),
    ("bad \ud800 char \udfff", ["bad char"]),
    ("\x1b[0m", []),
    ("\x1b[1m# Title\x1b[0m\n\nbody", ["Title.", "body"]),
]


@pytest.mark.parametrize(("text", "expected"), CONTROLS)
def test_control_characters_are_removed(text: str, expected: list[str]) -> None:
    speech = speakable(text)
    assert [s.text for s in speech.sentences] == expected
    check_spans(text, speech)
    for sentence in speech.sentences:
        sentence.text.encode("utf-8")  # never a lone surrogate
        assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in sentence.text)


def test_spans_point_into_the_original_text_around_escapes() -> None:
    text = "\x1b[32mok\x1b[0m first.\r\n\r\n\x1b[1mSecond\x1b[0m one."
    speech = speakable(text, "text")
    assert [(s.text, text[s.start : s.end]) for s in speech.sentences] == [
        ("ok first.", "ok\x1b[0m first."),
        ("Second one.", "Second\x1b[0m one."),
    ]


def test_clean_maps_positions_back() -> None:
    cleaned = clean("a\x1b[1mb\r\nc\ud800")
    assert cleaned.text == "ab\nc\ufffd"
    assert [cleaned.source_start(i) for i in range(5)] == [0, 5, 6, 8, 9]
    assert [cleaned.source_end(i) for i in range(1, 6)] == [1, 6, 8, 9, 10]
    assert clean("untouched").anchors == ()


# -- exact ranges -------------------------------------------------------------------------


def test_sentence_ranges_are_exact() -> None:
    text = "Hello there. General Kenobi!\n\nYou are a bold one."
    speech = speakable(text)
    assert [(s.start, s.end) for s in speech.sentences] == [(0, 12), (13, 28), (30, 49)]
    assert [text[s.start : s.end] for s in speech.sentences] == [s.text for s in speech.sentences]


def test_markdown_ranges_cover_inline_markup_not_block_markers() -> None:
    text = "## The *plan*\n\n- **Build** it. Then [test](http://x.org) it\n1. `run()` now"
    speech = speakable(text)
    assert [text[s.start : s.end] for s in speech.sentences] == [
        "The *plan*",
        "**Build** it.",
        "Then [test](http://x.org) it",
        "1. `run()` now",
    ]


# -- a realistic agent reply ------------------------------------------------------------------

AGENT_REPLY = """\
## Summary 🔍

I found **three problems** in the *scheduler*. The main one is in `ttsd/scheduler/chunking.py`:
`split_text()` inserts spaces when it cuts a long word.

### Details

1. The first chunk can be a lone "Okay."
2. Long tokens get **spaces** inserted
3. See [issue 13](https://github.com/acme/ttsd/issues/13) for the plan

| Test | Result |
|------|--------|
| test_limits | passed ✅ |
| test_faults | failed ❌ |

```python
def split_text(text: str, limit: int = 300) -> list[str]:
    ...
```

Next, I'll edit ~/.config/ttsd/config.toml and re-run the tests. 🚀
"""

AGENT_SPOKEN = [
    "Summary.",
    "I found three problems in the scheduler.",
    "The main one is in ttsd slash scheduler slash chunking dot py: split text inserts spaces"
    " when it cuts a long word.",
    "Details.",
    '1. The first chunk can be a lone "Okay."',
    "2. Long tokens get spaces inserted.",
    "3. See issue 13 for the plan.",
    "Test: test limits, Result: passed.",
    "Test: test faults, Result: failed.",
    "A code block of 2 lines in Python.",
    "Next, I'll edit home slash dot config slash ttsd slash config dot toml and re-run the tests.",
]


def test_agent_reply_is_spoken_without_symbols() -> None:
    speech = speakable(AGENT_REPLY)
    assert speech.format == "markdown"
    assert [s.text for s in speech.sentences] == AGENT_SPOKEN
    check_spans(AGENT_REPLY, speech, frozenset({"test", "result"}))
    spoken = speech.text
    for symbol in ("*", "#", "`", "|", "[", "](", "http", "~", "_", "🚀", "✅"):
        assert symbol not in spoken


def test_agent_reply_with_emoji_names_and_code_read() -> None:
    speech = speakable(AGENT_REPLY, code="read", emoji="name")
    assert speech.sentences[0].text == "Summary magnifying glass tilted left."
    assert "Result: passed check mark." in speech.text
    assert "def split text text: str, limit: int equals 300 arrow list str:" in speech.text


# -- options and robustness ---------------------------------------------------------------------


def test_warm_up() -> None:
    warm_up()  # builds the emoji tables; nothing to see but that it runs


def test_unknown_options_raise() -> None:
    with pytest.raises(ValueError, match="format"):
        speakable("x", "html")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="code"):
        speakable("x", code="summarise")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="emoji"):
        speakable("x", emoji="keep")  # type: ignore[arg-type]


def test_as_dict() -> None:
    assert speakable("# Hi\n\nThere.").as_dict() == {
        "format": "markdown",
        "text": "Hi. There.",
        "sentences": [
            {"text": "Hi.", "start": 2, "end": 4},
            {"text": "There.", "start": 6, "end": 12},
        ],
    }


def test_long_input_is_handled_linearly() -> None:
    # Structure, not time: one 20,000-character word, and a long markdown document.
    word = "x" * 20_000
    assert [s.text for s in speakable(word).sentences] == [word]
    long = AGENT_REPLY * 20
    speech = speakable(long)
    assert len(speech.sentences) == 20 * len(AGENT_SPOKEN)
    check_spans(long, speech, frozenset({"test", "result"}))


_PIECES = [
    *"ab Z1.,!?*_`#>-|[]()<>/~:\n\t\\&;",
    *["\x1b[1m", "\x1b]0;t\x07", "\x00", "\x0c", "\ud800", "🚀", "👍🏽", "é"],
    *["```", "**", "https://x.org/a", "- ", "1. ", "| a |", "\n---\n", "    "],
    *["<div>", "</div>", "<!--", "-->", "<b>", "&amp;", "[x](y)", "![", "> ", "[!NOTE]"],
    *["|---|", "- [ ] ", "~~", "<x-y>", "\r\n", "\u2028", "a_b", "/x/y.py", "fooBar()"],
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(_PIECES), max_size=40).map("".join),
    st.sampled_from(["auto", "text", "markdown"]),
    st.sampled_from(["summarize", "skip", "read"]),
)
def test_never_fails_and_ranges_stay_ordered(text: str, format: str, code: str) -> None:
    speech = speakable(text, format, code=code)  # type: ignore[arg-type]
    previous_end = 0
    for sentence in speech.sentences:
        assert sentence.text.strip() == sentence.text and sentence.text
        assert previous_end <= sentence.start <= sentence.end <= len(text)
        previous_end = sentence.end
        sentence.text.encode("utf-8")
        assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in sentence.text)
