"""Grouping speech into engine chunks: ``ttsd.text.chunks``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttsd.scheduler.chunking import split_text
from ttsd.text import Chunk, Sentence, Speech, chunks, speakable
from ttsd.text.chunks import cut_long


def check_parts(speech: Speech, result: list[Chunk]) -> None:
    """Parts say their sentences in order, exactly, and each sentence starts once."""
    rebuilt: dict[int, list[str]] = {}
    starts = []
    for chunk in result:
        position = 0
        for part in chunk.parts:
            assert part.start == position
            position = part.end + 1
            sentence = speech.sentences[part.sentence]
            assert (part.source_start, part.source_end) == (sentence.start, sentence.end)
            rebuilt.setdefault(part.sentence, []).append(chunk.text[part.start : part.end])
            if part.first:
                starts.append(part.sentence)
        assert position - 1 == len(chunk.text)
    assert starts == list(range(len(speech.sentences)))
    for index, pieces in rebuilt.items():
        # Cut pieces rejoin to the sentence: at a space (one was dropped) or inside a word.
        text = speech.sentences[index].text
        assert "".join(pieces).replace(" ", "") == text.replace(" ", "")
        assert all(piece in text for piece in pieces)


PLAIN_TEXTS = [
    "One. Two is here! Three? " + "A long clause, with commas, " * 20 + "end.",
    "Hello.",
    "The quick brown fox jumps over the lazy dog. " * 30,
    "The first paragraph is here.\n\nSecond paragraph, which is a little longer than the first.",
    "A sentence with a dash — and another clause; then more words, and more, until the end "
    "of a very long sentence that must be cut somewhere sensible by the chunker.",
]


@pytest.mark.parametrize("text", PLAIN_TEXTS)
@pytest.mark.parametrize(("limit", "first_limit"), [(300, None), (100, 40), (60, 30)])
def test_plain_text_chunks_like_split_text(text: str, limit: int, first_limit: int | None) -> None:
    speech = speakable(text, "text")
    result = chunks(speech, limit, first_limit)
    assert [c.text for c in result] == split_text(text, limit, first_limit)
    check_parts(speech, result)


def test_limits_and_first_limit() -> None:
    text = "One. Two is here! Three? " + "A long clause, with commas, " * 20 + "end."
    speech = speakable(text)
    result = chunks(speech, limit=100, first_limit=40)
    assert len(result[0].text) <= 40
    assert all(len(c.text) <= 100 for c in result)
    assert " ".join(c.text for c in result).split() == text.split()
    check_parts(speech, result)


def test_short_first_sentence_joins_the_next() -> None:
    speech = speakable("Okay. I will now look at the failing tests in the scheduler.")
    result = chunks(speech, limit=100, first_limit=30)
    assert [c.text for c in result] == [
        "Okay. I will now look at the failing tests in the scheduler."
    ]
    assert [(p.sentence, p.start, p.end) for p in result[0].parts] == [(0, 0, 5), (1, 6, 60)]


def test_short_first_sentence_stays_alone_when_the_next_does_not_fit() -> None:
    long = "This sentence is much longer than the whole limit of forty characters."
    result = chunks(speakable(f"Okay. {long}"), limit=40, first_limit=30)
    assert result[0].text == "Okay."
    assert all(len(c.text) <= 40 for c in result)


def test_split_text_differs_only_by_the_short_first_sentence() -> None:
    text = "Okay.\n\nSecond paragraph, which is a little longer than the first."
    assert split_text(text, 100, 40) == [
        "Okay.",
        "Second paragraph, which is a little longer than the first.",
    ]
    assert [c.text for c in chunks(speakable(text), 100, 40)] == [
        "Okay. Second paragraph, which is a little longer than the first."
    ]


def test_longer_first_sentence_keeps_first_limit() -> None:
    text = "Here is the summary of it. I will now look at the failing tests in the scheduler."
    result = chunks(speakable(text), limit=100, first_limit=30)
    assert [c.text for c in result] == [
        "Here is the summary of it.",
        "I will now look at the failing tests in the scheduler.",
    ]


def test_a_huge_word_is_cut_without_inserting_anything() -> None:
    word = "W" + "".join(chr(ord("a") + i % 26) for i in range(19_999))
    speech = speakable(f"Start. {word} end.")
    result = chunks(speech, limit=300, first_limit=120)
    assert all(len(c.text) <= 300 for c in result)
    texts = [c.text for c in result]
    assert texts[0] == "Start."
    # Slices of the sentence, in order, nothing inserted.
    assert "".join(texts[1:]) == f"{word} end."
    assert all(" " not in t for t in texts[1:-1])
    check_parts(speech, result)


def test_a_huge_first_word_respects_first_limit() -> None:
    word = "x" * 20_000
    result = chunks(speakable(word), limit=300, first_limit=30)
    assert [len(c.text) for c in result[:3]] == [30, 300, 300]
    assert "".join(c.text for c in result) == word
    assert [p.first for c in result[:2] for p in c.parts] == [True, False]


def test_cut_long() -> None:
    assert cut_long("aaaa, bbbb cccc", 12, 12) == [(0, 5), (6, 15)]
    assert cut_long("aaaa bbbb cccc", 10, 10) == [(0, 9), (10, 14)]
    assert cut_long("x" * 25, 10, 10) == [(0, 10), (10, 20), (20, 25)]
    assert cut_long("short", 10, 10) == [(0, 5)]


def test_markdown_chunks_keep_source_ranges() -> None:
    text = "# Plan\n\n- **Build** it\n- Test it\n\nThen ship."
    speech = speakable(text)
    result = chunks(speech, limit=20)
    assert [c.text for c in result] == ["Plan. Build it.", "Test it. Then ship."]
    ranges = [(text[p.source_start : p.source_end]) for c in result for p in c.parts]
    assert ranges == ["Plan", "**Build** it", "Test it", "Then ship."]
    check_parts(speech, result)


def test_resume_from_a_sentence() -> None:
    speech = speakable("The first one here. The second one here. The third one here. The last.")
    result = chunks(speech, limit=40, first_limit=20, start=2)
    assert [c.text for c in result] == ["The third one here.", "The last."]
    assert [p.sentence for c in result for p in c.parts] == [2, 3]
    assert [c.text for c in chunks(speech, 40, start=2)] == ["The third one here. The last."]
    assert chunks(speech, 30, start=4) == []


def test_sentences_without_a_speech() -> None:
    sentences = [Sentence("One.", 0, 4), Sentence("Two.", 5, 9)]
    assert [c.text for c in chunks(sentences, 300)] == ["One. Two."]
    assert chunks([], 300) == []


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
    result = chunks(speech, limit, first_limit)
    for index, chunk in enumerate(result):
        assert chunk.text and len(chunk.text) <= limit
        if index == 0 and first_limit and first_limit < limit:
            short_join = len(chunk.parts) == 2 and len(speech.sentences[0].text.split()) <= 3
            assert len(chunk.text) <= first_limit or short_join
    assert "".join(c.text for c in result).replace(" ", "") == speech.text.replace(" ", "")
    check_parts(speech, result)
