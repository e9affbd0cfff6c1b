"""Cutting speech into engine chunks: ``ttsd.scheduler.chunking`` on ``ttsd.text``.

A chunk is one sentence (a long one is cut into several), each knowing its sentence
and that sentence's range in the original text.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ttsd.scheduler.chunking import chunk_speech, chunk_text, split_text
from ttsd.scheduler.jobs import Chunk
from ttsd.text import Speech, speakable
from ttsd.text.chunks import cut_long


def check_chunks(speech: Speech, result: list[Chunk]) -> None:
    """Chunks say their sentences in order, exactly, and each sentence opens once."""
    rebuilt: dict[int, list[str]] = {}
    for index, chunk in enumerate(result):
        assert chunk.index == index
        sentence = speech.sentences[chunk.sentence]
        assert (chunk.start, chunk.end) == (sentence.start, sentence.end)
        assert chunk.opens == (chunk.sentence not in rebuilt)
        rebuilt.setdefault(chunk.sentence, []).append(chunk.text)
    assert sorted(rebuilt) == list(range(len(speech.sentences)))
    for number, parts in rebuilt.items():
        assert "".join(parts).replace(" ", "") == speech.sentences[number].text.replace(" ", "")


def test_one_chunk_per_sentence_with_its_range() -> None:
    text = "Okay. I will now look at the failing tests.\n\nThen I will fix them!"
    result = chunk_text(text, 100, 40)
    assert [c.text for c in result] == [
        "Okay.",
        "I will now look at the failing tests.",
        "Then I will fix them!",
    ]
    assert [text[c.start : c.end] for c in result] == [c.text for c in result]
    assert split_text(text, 100, 40) == [c.text for c in result]


def test_limits_and_first_limit_cut_long_sentences_at_clauses() -> None:
    text = "One. " + "A long clause, with commas, " * 20 + "end."
    speech = speakable(text)
    result = chunk_speech(speech, limit=100, first_limit=40)
    assert result[0].text == "One."
    assert all(len(c.text) <= 100 for c in result)
    assert all(c.text.endswith(",") for c in result[1:-1])  # cut after a clause
    assert [c.opens for c in result[1:]] == [True] + [False] * (len(result) - 2)
    check_chunks(speech, result)


def test_a_huge_word_is_cut_without_inserting_anything() -> None:
    word = "W" + "".join(chr(ord("a") + i % 26) for i in range(19_999))
    speech = speakable(f"Start. {word} end.")
    result = chunk_speech(speech, limit=300, first_limit=120)
    assert result[0].text == "Start."
    assert "".join(c.text for c in result[1:]).replace(" ", "") == f"{word}end."
    assert all(" " not in c.text for c in result[1:-1])
    assert all(len(c.text) <= 300 for c in result)
    check_chunks(speech, result)


def test_a_huge_first_word_respects_first_limit() -> None:
    result = chunk_speech(speakable("x" * 20_000), limit=300, first_limit=30)
    assert [len(c.text) for c in result[:3]] == [30, 300, 300]
    assert sum(len(c.text) for c in result) == 20_000


def test_cut_long() -> None:
    assert cut_long("aaaa, bbbb cccc", 12, 12) == [(0, 5), (6, 15)]
    assert cut_long("aaaa bbbb cccc", 10, 10) == [(0, 9), (10, 14)]
    assert cut_long("x" * 25, 10, 10) == [(0, 10), (10, 20), (20, 25)]


def test_markdown_chunks_keep_source_ranges() -> None:
    text = "# Plan\n\n- **Build** it\n- Test it\n\nThen ship."
    speech = speakable(text)
    result = chunk_speech(speech, limit=20)
    assert [c.text for c in result] == ["Plan.", "Build it.", "Test it.", "Then ship."]
    assert [text[c.start : c.end] for c in result] == [
        "Plan",
        "**Build** it",
        "Test it",
        "Then ship.",
    ]
    check_chunks(speech, result)


def test_nothing_to_say_gives_no_chunks() -> None:
    assert chunk_text("\x1b[31m\x1b[0m", format="auto") == []
    assert chunk_text("```\ncode\n```", format="markdown", code="skip") == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.text(alphabet="ab ,.!?;—\n", min_size=1, max_size=80), min_size=1, max_size=8).map(
        " ".join
    ),
    st.integers(min_value=5, max_value=120),
    st.one_of(st.none(), st.integers(min_value=1, max_value=60)),
)
def test_chunks_keep_every_character_and_respect_limits(
    text: str, limit: int, first_limit: int | None
) -> None:
    speech = speakable(text, "text")
    result = chunk_speech(speech, limit, first_limit)
    for index, chunk in enumerate(result):
        cap = first_limit if (index == 0 and first_limit) else limit
        assert chunk.text and len(chunk.text) <= max(cap, 1)
    assert "".join(c.text for c in result).replace(" ", "") == speech.text.replace(" ", "")
    check_chunks(speech, result)
