"""Checks of the events a client received about a job, on the typed messages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

from ttsd import protocol
from ttsd.client import Client, RequestTimeout
from ttsd.scheduler.chunking import chunk_text

M = TypeVar("M", bound=protocol.Message)


def kinds(client: Client, job: int) -> list[str]:
    """The types of the messages ``client`` received about ``job``, in order."""
    return [m.TYPE for m in client.job_events(job)]


def sentence_spans(
    text: str, chunk_chars: int = 300, first_chunk_chars: int | None = 120
) -> list[tuple[int, int]]:
    """The ranges of ``text`` that a job's ``sentence`` events report, in order."""
    chunks = chunk_text(text, chunk_chars, first_chunk_chars, format="auto")
    return [(chunk.start, chunk.end) for chunk in chunks if chunk.opens]


def job_story(
    client: Client,
    job: int,
    text: str,
    chunk_chars: int = 300,
    first_chunk_chars: int | None = 120,
) -> protocol.Finished | protocol.Aborted | protocol.JobError:
    """Check every message ``client`` received about ``job`` (spoken ``text``); return
    its terminal event.

    The order is ``queued``, then, if its sound started, ``started`` and one
    ``sentence`` per sentence that started playing (indices 0, 1, ... with the
    sentence's character range), then exactly one terminal event whose ``spoken_chars`` is the end
    of the last sentence started (all of the text when finished).
    """
    events = client.job_events(job)
    assert events and isinstance(events[0], protocol.Queued), events
    end = events[-1]
    assert isinstance(end, protocol.TERMINAL), events
    assert sum(isinstance(e, protocol.TERMINAL) for e in events) == 1, events
    middle = events[1:-1]
    spans = sentence_spans(text, chunk_chars, first_chunk_chars)
    if middle:
        assert isinstance(middle[0], protocol.Started), events
        said = middle[1:]
        assert all(isinstance(e, protocol.Sentence) for e in said), events
        assert [(e.index, e.start, e.end) for e in said] == [
            (i, start, stop) for i, (start, stop) in enumerate(spans[: len(said)])
        ], events
    else:
        said = []
    assert {e.get("client") for e in events} == {events[0].client}, "events name the client"
    if isinstance(end, protocol.Finished):
        assert len(said) == len(spans), events
        assert end.spoken_chars == len(text)
    else:
        assert end.spoken_chars == (spans[len(said) - 1][1] if said else 0), events
    return end


async def raw_reply(client: Client, frame: str | bytes, timeout: float = 5.0) -> protocol.Message:
    """The reply to a frame sent as is: the first message after it that is not an event,
    a ``queued`` counting as the reply (only this client speaks meanwhile). A reply
    whose ``id`` the client did not send is only in :attr:`Client.messages`."""
    before = len(client.messages)
    await client.send_raw(frame)
    deadline = time.monotonic() + timeout
    while True:
        for _, message in client.messages[before:]:
            if isinstance(message, protocol.Queued) or not is_event(message):
                return message
        assert time.monotonic() < deadline, f"no reply to {frame[:80]!r}"
        await asyncio.sleep(0.005)


#: Messages the daemon sends to every client, never as a reply.
EVENTS = (
    protocol.Started,
    protocol.Sentence,
    protocol.Postponed,
    protocol.Continued,
    protocol.Finished,
    protocol.Aborted,
    protocol.JobError,
    protocol.Paused,
    protocol.Resumed,
    protocol.EngineState,
    protocol.AudioState,
)


def is_event(message: protocol.Message) -> bool:
    """True for an event: a message every client gets, or a ``queued`` without ``id``
    (which is also how the client that spoke without an ``id`` is answered)."""
    if isinstance(message, protocol.Queued):
        return message.id is None
    return isinstance(message, EVENTS)


async def wait_for_event(
    client: Client,
    kind: type[M],
    where: Callable[[M], bool] = lambda message: True,
    timeout: float = 10.0,
) -> M:
    """The first event of class ``kind`` that satisfies ``where``, received before or
    after now on this connection."""
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        messages = [m for _, m in client.messages]
        for message in messages[seen:]:
            if isinstance(message, kind) and message.get("id") is None and where(message):
                return message
        seen = len(messages)
        left = deadline - time.monotonic()
        if left <= 0:
            raise RequestTimeout(f"no such {kind.TYPE} event within {timeout} s")
        try:
            await client.next_event(timeout=left)
        except RequestTimeout:
            continue


async def poll(check: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Wait until ``check()`` (an async or plain callable) is true."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.02)
