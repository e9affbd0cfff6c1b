"""The job invariant, under random interleavings against one live daemon:

every accepted job ends with exactly one terminal event (``finished``, ``aborted`` or
``error``), after its ``queued`` (and ``started`` and its ``sentence`` events, if any),
and every client sees the events in the same order: what a client receives is one
unbroken run of the global event sequence, from when it connected to when it left.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from websockets.sync.client import ClientConnection, connect

from tests.conftest import TONE
from tests.support.events import is_event as is_broadcast
from tests.support.events import sentence_spans
from ttsd import protocol

#: Types of the terminal events (``error`` with a ``job`` is the failed job's end).
TERMINAL = {cls.TYPE for cls in protocol.TERMINAL}


def is_event(message: protocol.Message) -> bool:
    """Broadcast events, and the ``queued`` reply that stands in for one at the submitter."""
    return isinstance(message, protocol.Queued) or is_broadcast(message)


def normalized(message: protocol.Message) -> dict[str, Any]:
    """The event as every client gets it (the submitter's ``queued`` has an ``id``)."""
    return {k: v for k, v in message.to_json().items() if k != "id"}


class SyncClient:
    """A blocking client with a reader thread that keeps every message in order."""

    def __init__(self, port: int) -> None:
        self.ws: ClientConnection = connect(f"ws://127.0.0.1:{port}", compression=None)
        self.ws.__enter__()  # used as a context manager; close() leaves it
        self.messages: list[protocol.Message] = []
        self.cond = threading.Condition()
        self.closed = False
        self._ids = iter(range(1, 10**9))
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for frame in self.ws:
                with self.cond:
                    self.messages.append(protocol.decode(frame))
                    self.cond.notify_all()
        except Exception:  # the connection is gone; `closed` tells the waiters
            pass
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def request(self, kind: str, timeout: float = 10.0, **fields: Any) -> protocol.Message:
        rid = next(self._ids)
        self.ws.send(protocol.encode(protocol.REQUEST_CLASSES[kind](id=rid, **fields)))
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for message in reversed(self.messages):
                    if message.get("id") == rid:
                        return message
                left = deadline - time.monotonic()
                assert left > 0 and not self.closed, f"no reply to {kind}"
                self.cond.wait(left)

    def events(self) -> list[dict[str, Any]]:
        with self.cond:
            return [normalized(m) for m in self.messages if is_event(m)]

    def close(self) -> None:
        self.ws.close()
        self.thread.join(5)


def is_run_of(part: list[dict[str, Any]], whole: list[dict[str, Any]]) -> int | None:
    """Index where ``part`` occurs as a contiguous run in ``whole``, or None."""
    if not part:
        return len(whole)
    for start, item in enumerate(whole):
        if item == part[0] and whole[start : start + len(part)] == part:
            return start
    return None


def test_every_job_ends_once_and_everyone_sees_the_same_order(start_daemon) -> None:
    daemon = start_daemon(
        {
            **TONE,
            "tone": {"ms_per_char": 3.0},
            "max_requests_per_second": 100000,
            "max_queue_per_client": 1000,
        }
    )
    observer = SyncClient(daemon.port)  # connected for the whole run
    accepted: dict[int, str] = {}  # job -> its text

    class Interleavings(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.clients: list[SyncClient] = []
            self.left: list[SyncClient] = []
            self.jobs: set[int] = set()

        @initialize()
        def first_client(self) -> None:
            self.clients.append(SyncClient(daemon.port))

        @precondition(lambda self: len(self.clients) < 5)
        @rule()
        def connect(self) -> None:
            self.clients.append(SyncClient(daemon.port))

        @precondition(lambda self: len(self.clients) > 1)
        @rule(which=st.integers(0, 4))
        def disconnect(self, which: int) -> None:
            client = self.clients.pop(which % len(self.clients))
            client.close()
            self.left.append(client)

        @rule(
            which=st.integers(0, 4),
            text=st.text(alphabet="abcdefgh .", min_size=1, max_size=40),
            cancel=st.booleans(),
        )
        def speak(self, which: int, text: str, cancel: bool) -> None:
            client = self.clients[which % len(self.clients)]
            reply = client.request("speak", text=text, cancel_on_disconnect=cancel)
            if any(c.isalnum() for c in text):  # else nothing to say: refused
                assert isinstance(reply, protocol.Queued), reply
                self.jobs.add(reply.job)
                accepted[reply.job] = text
            else:
                assert isinstance(reply, protocol.ErrorReply) and reply.code == "bad_request"

        @rule(which=st.integers(0, 4))
        def abort_current(self, which: int) -> None:
            reply = self.clients[which % len(self.clients)].request("abort_current")
            assert isinstance(reply, protocol.Ok) and len(reply.aborted or []) <= 1

        @rule(which=st.integers(0, 4))
        def abort_all(self, which: int) -> None:
            reply = self.clients[which % len(self.clients)].request("abort_all")
            assert isinstance(reply, protocol.Ok)

        @rule(which=st.integers(0, 4))
        def status(self, which: int) -> None:
            reply = self.clients[which % len(self.clients)].request("status")
            assert isinstance(reply, protocol.StatusReply)
            live = {j["job"] for j in reply.queue}
            if reply.current is not None:
                live.add(reply.current["job"])
            assert live <= self.jobs, "status shows a job nobody queued"

        @rule(seconds=st.sampled_from([0.01, 0.05, 0.15]))
        def let_time_pass(self, seconds: float) -> None:
            time.sleep(seconds)  # jobs start, play and finish meanwhile (an interleaving)

        @invariant()
        def no_job_ends_twice(self) -> None:
            ends = [e["job"] for e in observer.events() if e["type"] in TERMINAL]
            assert len(ends) == len(set(ends)), "a job ended twice"

        def teardown(self) -> None:
            # Let every job end (abort the rest), then compare what everyone saw.
            self.clients[0].request("abort_all")
            deadline = time.monotonic() + 20
            while True:
                ended = {e["job"] for e in observer.events() if e["type"] in TERMINAL}
                if self.jobs <= ended or time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            for client in self.clients:
                client.request("ping")  # everything sent before the pong has arrived
            observer.request("ping")
            everything = observer.events()
            check_jobs(everything, {job: accepted[job] for job in self.jobs})
            for client in self.clients:
                seen = client.events()
                start = is_run_of(seen, everything)
                assert start is not None, "a client saw events out of order or missed some"
                # connected to the end: it saw everything after it joined
                assert start + len(seen) == len(everything), "a client missed later events"
            for client in self.left:
                assert is_run_of(client.events(), everything) is not None
            for client in self.clients:
                client.close()

    try:
        run_state_machine_as_test(
            Interleavings,
            settings=settings(
                max_examples=30,
                stateful_step_count=25,
                deadline=None,
                derandomize=True,  # the same interleavings every run: no flaky coverage
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        observer.close()
    assert "Traceback" not in daemon.log
    kinds = {e["type"] for e in observer.events() if e.get("job") in accepted}
    print(f"{len(accepted)} jobs; event kinds seen: {sorted(kinds)}")
    assert len(accepted) > 20  # it really ran
    assert {"started", "sentence", "finished", "aborted"} <= kinds


def check_jobs(events: list[dict[str, Any]], accepted: dict[int, str]) -> None:
    """Each accepted job: queued, maybe started and then a sentence event per sentence
    begun (in order, with its range of the text), then exactly one terminal event."""
    for job, text in accepted.items():
        mine = [e for e in events if e.get("job") == job]
        kinds = [e["type"] for e in mine]
        assert kinds[0] == "queued", (job, kinds)
        assert kinds[-1] in TERMINAL, (job, kinds)
        assert sum(k in TERMINAL for k in kinds) == 1, (job, kinds)
        said = mine[2:-1]
        if kinds[1:-1]:
            assert kinds[1] == "started" and said, (job, kinds)  # its first sentence at once
        spans = sentence_spans(text, 300, 120)
        assert [(e["type"], e["index"], e["start"], e["end"]) for e in said] == [
            ("sentence", i, start, end) for i, (start, end) in enumerate(spans[: len(said)])
        ], (job, kinds)
        if kinds[-1] == "finished":
            assert len(said) == len(spans), (job, kinds)
