"""The protocol's contract: ids echoed, the fields of status and hello, strict parsing,
chunking, and the queue limits. (Every kind of malformed request: tests/test_bad_input.py.)"""

from __future__ import annotations

import asyncio
import json

import pytest

from ttsd import protocol
from ttsd.client import Client, RequestFailed
from ttsd.scheduler.chunking import split_text


async def test_text_too_long(start_daemon) -> None:
    daemon = start_daemon({"engine": "tone", "max_text_length": 50})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        with pytest.raises(RequestFailed) as failure:
            await client.speak("x" * 51)
        assert failure.value.code == "text_too_long"
        assert isinstance(await client.speak("x" * 50), protocol.Queued)


async def test_queue_full_and_other_jobs_go_on(start_daemon) -> None:
    daemon = start_daemon({"engine": "tone", "max_queue": 2, "tone": {"ms_per_char": 10.0}})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        first = (await client.speak("one two three")).job
        second = (await client.speak("four five six")).job
        with pytest.raises(RequestFailed) as failure:
            await client.speak("seven")
        assert failure.value.code == "queue_full"
        assert isinstance(await client.wait_for_job(first, timeout=10), protocol.Finished)
        assert isinstance(await client.wait_for_job(second, timeout=10), protocol.Finished)
        assert isinstance(await client.speak("room again"), protocol.Queued)


async def test_replies_echo_ids_and_status_has_the_contract_fields(client: Client) -> None:
    await client.send_raw(json.dumps({"type": "status", "id": "abc"}))
    await client.send_raw(json.dumps({"type": "ping", "id": 12.5}))
    for _ in range(500):
        replies = [m for _, m in client.messages if m.get("id") is not None]
        if len(replies) == 2:
            break
        await asyncio.sleep(0.01)
    status, pong = replies
    assert isinstance(status, protocol.StatusReply) and isinstance(pong, protocol.Pong)
    assert status.id == "abc" and pong.id == 12.5
    wire = status.to_json()
    assert {"current", "queue", "synthesizing", "paused", "engine", "audio"} <= set(wire)
    assert wire["current"] is None and wire["paused"] is False  # always there, even null
    assert status.engine["name"] == "tone"
    assert status.engine["selected"] == "engine = tone in the settings"
    hello = client.hello
    assert hello.protocol == 1 and hello.version
    assert hello.engine["name"] == "tone" and hello.engine["selected"]


def test_parse_request_is_pure_and_strict() -> None:
    speak = protocol.parse_request(
        '{"type":"speak","text":"Hi.","id":"x","voice":"joe","volume":0.5}', max_text_length=10
    )
    assert speak == protocol.Speak(id="x", text="Hi.", voice="joe", volume=0.5)
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.parse_request('{"type":"speak","text":"Hi.","id":true}', max_text_length=10)
    assert err.value.code == "bad_request"
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.parse_request('{"type":"nope","id":3}', max_text_length=10)
    assert (err.value.code, err.value.request_id) == ("unknown_type", 3)


def test_split_text_respects_limits_and_boundaries() -> None:
    text = "One. Two is here! Three? " + "A long clause, with commas, " * 20 + "end."
    chunks = split_text(text, limit=100, first_limit=40)
    assert len(chunks[0]) <= 40 and all(len(c) <= 100 for c in chunks)
    assert " ".join(chunks).split() == text.split()  # nothing lost or reordered
    # A chunk is one sentence (never two), and a long one is cut after a clause.
    assert chunks[:3] == ["One.", "Two is here!", "Three?"]
    assert all(c.endswith(",") for c in chunks[3:-1]) and chunks[-1].endswith("end.")
    assert split_text("Hello.") == ["Hello."]
    unbroken = "x" * 250
    assert [len(c) for c in split_text(unbroken, limit=100)] == [100, 100, 50]
    assert "".join(split_text(unbroken, limit=100)) == unbroken  # nothing inserted
