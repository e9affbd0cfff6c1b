"""Bad input gets a clear error reply; the connection and the daemon stay usable."""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from tests.conftest import TONE
from tests.support.events import is_event, raw_reply
from tests.support.expected import played_start as played
from tests.support.pulse import Recorder
from tests.wsraw import BINARY, TEXT, RawSocket
from ttsd import protocol
from ttsd.client import Client
from ttsd.engines.tone import ToneEngine

NESTED = '{"a":' * 500 + "1" + "}" * 500
TOO_DEEP = '{"a":' * 50000 + "1" + "}" * 50000

# (frame, expected error code) - each a kind of malformed request from the issue
MALFORMED: list[tuple[str, str]] = [
    ("this is not json", "bad_json"),
    ("{'type': 'ping'}", "bad_json"),
    ('{"type": "speak", "text": NaN}', "bad_json"),
    ('{"type": "ping"', "bad_json"),
    ("", "bad_json"),
    ("[1, 2, 3]", "bad_request"),
    ('"speak"', "bad_request"),
    ("42", "bad_request"),
    ("null", "bad_request"),
    ("{}", "bad_request"),
    ('{"text": "no type"}', "bad_request"),
    ('{"type": 5}', "bad_request"),
    ('{"type": null}', "bad_request"),
    ('{"type": "sing", "id": 1}', "unknown_type"),
    ('{"type": "speak", "text": 5, "id": "t"}', "bad_request"),
    ('{"type": "speak", "text": "hi", "colour": "red"}', "bad_request"),
    ('{"type": "ping", "extra": 1}', "bad_request"),
    ('{"type": "speak"}', "bad_request"),
    ('{"type": "speak", "text": 5}', "bad_request"),
    ('{"type": "speak", "text": ["a"]}', "bad_request"),
    ('{"type": "speak", "text": ""}', "bad_request"),
    ('{"type": "speak", "text": "   \\n\\t  "}', "bad_request"),
    # Control characters are removed from what is spoken (not refused); a text of
    # nothing else has nothing to say.
    ('{"type": "speak", "text": "\\u0007\\u0000\\u0085"}', "bad_request"),
    ('{"type": "speak", "text": "\\u001b[31m\\u001b[0m"}', "bad_request"),
    ('{"type": "speak", "text": ". , ;"}', "bad_request"),
    ('{"type": "speak", "text": "lone \\ud800 surrogate"}', "bad_request"),
    ('{"type": "speak", "text": "abc\\ud800def", "id": 8}', "bad_request"),
    ('{"type": "ping", "id": "\\udfff"}', "bad_request"),
    ('{"type": "speak", "text": "hi", "voice": 7}', "bad_request"),
    ('{"type": "speak", "text": "hi", "voice": ""}', "bad_request"),
    ('{"type": "speak", "text": "hi", "volume": "loud"}', "bad_option"),
    ('{"type": "speak", "text": "hi", "volume": 3}', "bad_option"),
    ('{"type": "speak", "text": "hi", "volume": true}', "bad_option"),
    ('{"type": "speak", "text": "hi", "volume": 1e999}', "bad_option"),
    ('{"type": "speak", "text": "hi", "volume": -1e308}', "bad_option"),
    ('{"type": "speak", "text": "hi", "volume": NaN}', "bad_json"),
    ('{"type": "speak", "text": "hi", "volume": Infinity}', "bad_json"),
    ('{"type": "speak", "text": "hi", "options": []}', "bad_option"),
    ('{"type": "speak", "text": "hi", "options": {"frequency": 1e300}}', "bad_option"),
    ('{"type": "speak", "text": "hi", "options": {"x": {"y": [1, {"z": null}]}}}', "bad_option"),
    ('{"type": "speak", "text": "hi", "options": {"pitch": 2}}', "bad_option"),
    ('{"type": "speak", "text": "hi", "priority": "urgent"}', "bad_option"),
    ('{"type": "speak", "text": "hi", "resume": true}', "bad_option"),
    ('{"type": "speak", "text": "hi", "format": "html"}', "bad_option"),
    ('{"type": "abort"}', "bad_request"),
    ('{"type": "abort", "job": 1, "client": "x"}', "bad_request"),
    ('{"type": "identify"}', "bad_request"),
    ('{"type": "identify", "name": "bell\\u0007"}', "bad_request"),
    ('{"type": "speak", "text": "hi", "cancel_on_disconnect": "yes"}', "bad_request"),
    ('{"type": "abort", "job": true}', "bad_request"),
    ('{"type": "abort", "job": "1"}', "bad_request"),
    ('{"type": "abort", "job": -3}', "bad_request"),
    ('{"type": "abort", "job": 1.5}', "bad_request"),
    ('{"type": "abort", "job": 100000000000000000000000000000}', "bad_request"),
    ('{"type": "abort", "job": ' + "9" * 5000 + "}", "bad_json"),
    ('{"type": "abort", "job": 999999, "id": 7}', "unknown_job"),
    ('{"type": "ping", "id": {"nested": true}}', "bad_request"),
    ('{"type": "ping", "id": [1]}', "bad_request"),
    ('{"type": "ping", "id": 1e400}', "bad_request"),
    ('{"type": "ping", "id": "' + "i" * 300 + '"}', "bad_request"),
    ('{"type": "speak", "text": ' + NESTED + "}", "bad_request"),
    ("[" * 100000 + "]" * 100000, "bad_json"),
    (NESTED, "bad_request"),
    ('{"type": "speak", "text": "hi", "options": ' + TOO_DEEP + "}", "bad_json"),
    ('{"type": "auth", "token": 3}', "unauthorized"),
]


async def test_every_malformed_request_gets_its_error_and_the_connection_stays_usable(
    start_daemon, recorder: Recorder
) -> None:
    daemon = start_daemon({**TONE, "max_requests_per_second": 10000})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        await check_malformed(client, recorder)


#: The id each error reply must echo: the frame's own, when it was a usable one.
ECHOED = {
    '{"type": "sing", "id": 1}': 1,
    '{"type": "speak", "text": 5, "id": "t"}': "t",
    '{"type": "speak", "text": "abc\\ud800def", "id": 8}': 8,
    '{"type": "abort", "job": 999999, "id": 7}': 7,
}


async def check_malformed(client: Client, recorder: Recorder) -> None:
    for frame, code in MALFORMED:
        reply = await raw_reply(client, frame)
        assert isinstance(reply, protocol.ErrorReply), (frame[:80], reply)
        assert reply.code == code, (frame[:80], reply)
        assert reply.message and "job" not in reply.to_json()
        assert reply.id == ECHOED.get(frame), (frame[:80], reply)
        assert isinstance(await client.ping(), protocol.Pong)
    reply = await raw_reply(client, b'{"type": "ping"}')
    assert isinstance(reply, protocol.ErrorReply)
    assert reply.code == "bad_request" and "binary" in reply.message

    # Nothing malformed was queued; a good request still speaks.
    status = await client.status()
    assert status.current is None and status.queue == []
    job = (await client.speak("Still here.")).job
    assert isinstance(await client.wait_for_job(job, timeout=10), protocol.Finished)
    recorder.wait_for_silence(0.2)
    expected = ToneEngine(ms_per_char=20.0).synthesize("Still here.", None, {})
    assert played(recorder.samples(), expected, recorder.rate)


def test_invalid_utf8_closes_only_that_connection_with_1007(daemon) -> None:
    raw = RawSocket(daemon.port)
    assert raw.handshake()[0] == 101
    assert isinstance(protocol.from_json(raw.read_json()), protocol.Hello)
    raw.send_frame(TEXT, b'{"type": "speak", "text": "\xff\xfe bad"}')
    assert raw.read_close() == 1007
    raw.close()

    raw = RawSocket(daemon.port)  # overlong encoding and a truncated sequence
    raw.handshake()
    raw.read_json()
    raw.send_frame(TEXT, b'{"type": "ping", "id": "\xc0\xaf\xe2\x82"}')
    assert raw.read_close() == 1007
    raw.close()

    raw = RawSocket(daemon.port)  # a continuation frame with nothing to continue
    raw.handshake()
    raw.read_json()
    raw.send_frame(0x0, b"orphan")
    assert raw.read_close() == 1002
    raw.close()

    raw = RawSocket(daemon.port)  # binary frames are refused, but the connection lives
    raw.handshake()
    raw.read_json()
    raw.send_frame(BINARY, b"\x00\x01\x02")
    reply = protocol.from_json(raw.read_json())
    assert isinstance(reply, protocol.ErrorReply) and reply.code == "bad_request"
    raw.send_json({"type": "ping", "id": 9})
    assert raw.read_json() == protocol.Pong(id=9).to_json()
    raw.close()


# --- Property: random requests never break the daemon ---------------------------------

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
#: Requests that would change what the rest of the test hears are left out.
UNSENT = ("terminate", "synthesize", "pause")
request_type = st.sampled_from([t for t in protocol.REQUEST_TYPES if t not in UNSENT]) | st.text(
    max_size=12
).filter(lambda t: t not in UNSENT)
field_name = st.sampled_from(
    [
        "text",
        "voice",
        "volume",
        "options",
        "job",
        "client",
        "token",
        "cancel_on_disconnect",
        "priority",
        "key",
        "resume",
        "format",
        "name",
    ]
) | st.text(max_size=8).filter(lambda k: k not in ("type", "id"))
request = st.builds(
    lambda kind, fields: {**fields, "type": kind},
    request_type,
    st.dictionaries(field_name, json_value | st.text(max_size=40), max_size=4),
)
frame = st.one_of(
    request.map(json.dumps),
    json_value.map(json.dumps),
    st.text(max_size=60),
)


def test_random_requests_never_break_the_daemon(start_daemon, recorder: Recorder) -> None:
    daemon = start_daemon(
        {**TONE, "max_requests_per_second": 100000, "max_queue_per_client": 1000, "max_queue": 1000}
    )
    with connect(f"ws://127.0.0.1:{daemon.port}", compression=None) as ws:
        assert isinstance(protocol.decode(ws.recv(5)), protocol.Hello)
        probes = iter(range(10**9))

        @settings(
            max_examples=150,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(frame)
        def one_frame(text: str) -> None:
            ws.send(text)
            probe = f"probe-{next(probes)}"
            ws.send(json.dumps({"type": "ping", "id": probe}))
            replies = []
            while True:
                message = protocol.decode(ws.recv(5))
                if message.get("id") == probe:
                    break
                # This is the only client: a queued without id answers its own speak.
                if isinstance(message, protocol.Queued) or not is_event(message):
                    replies.append(message)
            assert isinstance(message, protocol.Pong)
            assert len(replies) == 1, (text, replies)
            assert not isinstance(replies[0], protocol.Unknown), replies
            if isinstance(replies[0], protocol.ErrorReply):
                assert replies[0].code in {c.value for c in protocol.Code} and replies[0].message

        one_frame()
        ws.send(json.dumps({"type": "abort_all", "id": "end"}))
        while protocol.decode(ws.recv(5)).get("id") != "end":
            pass

    # Still alive and still speaking, sample for sample.
    assert daemon.process is not None and daemon.process.poll() is None
    recorder.wait_for_silence(0.3)
    with connect(f"ws://127.0.0.1:{daemon.port}", compression=None) as ws:
        ws.recv(5)
        speak = protocol.Speak(text="After the storm.", options={"frequency": 660}, id=1)
        ws.send(protocol.encode(speak))
        queued = protocol.decode(ws.recv(5))
        assert isinstance(queued, protocol.Queued)
        while not (
            isinstance(m := protocol.decode(ws.recv(10)), protocol.TERMINAL) and m.job == queued.job
        ):
            pass
    assert isinstance(m, protocol.Finished)
    recorder.wait_for_silence(0.2)
    expected = ToneEngine(ms_per_char=20.0).synthesize("After the storm.", None, {"frequency": 660})
    assert played(recorder.samples(), np.asarray(expected), recorder.rate)
    assert "Traceback" not in daemon.log
