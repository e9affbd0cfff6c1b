"""Logging to the journal with structured fields, and readable lines in a terminal.

The end-to-end test runs the real daemon in a private mount namespace
(``unshare -m``, as root) where ``/run/systemd/journal`` is a directory of the
test's, holding a datagram socket the test reads: what systemd-python's
``JournalHandler`` sends there is exactly what journald would receive. No journald
is involved, and the host's ``/run`` is untouched.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon
from tests.support.notify import DatagramListener
from ttsd import protocol
from ttsd.client import Client
from ttsd.systemd import journal


def parse_entry(data: bytes) -> dict[str, str]:
    """Decode one datagram of journald's native protocol into its fields."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = end + 1
        else:  # KEY\n<64-bit little-endian length><value>\n: a value with newlines
            key = line
            (size,) = struct.unpack_from("<Q", data, end + 1)
            value = data[end + 9 : end + 9 + size]
            i = end + 9 + size + 1
        fields[key.decode()] = value.decode(errors="replace")
    return fields


class JournalSocket(DatagramListener):
    """A stand-in for journald's ``/run/systemd/journal/socket``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.entries: list[dict[str, str]] = []
        super().__init__(directory / "socket")

    def received(self, data: bytes, moment: float) -> None:
        self.entries.append(parse_entry(data))

    def wait_for(
        self, predicate: Callable[[dict[str, str]], bool], timeout: float = 15.0
    ) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in list(self.entries):
                if predicate(entry):
                    return entry
            time.sleep(0.02)
        messages = [e.get("MESSAGE") for e in self.entries]
        raise AssertionError(f"no such journal entry within {timeout} s; got {messages}")


def can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


# In the namespace: a private /run holding only our journal directory.
NAMESPACE_SETUP = (
    "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && "
    'mount --bind "$JOURNAL_DIR" /run/systemd/journal && exec "$@"'
)


@pytest.mark.skipif(not can_unshare(), reason="needs root for unshare -m (private mount namespace)")
async def test_job_life_and_protocol_errors_reach_the_journal_with_fields(
    tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    sink = JournalSocket(tmp_path / "journal")
    try:
        # Its stderr is the journal stream (JOURNAL_STREAM names it), as under systemd.
        daemon = start_daemon(
            {"engine": "tone"},
            env={"JOURNAL_DIR": str(sink.directory)},
            wrap=["unshare", "-m", "--propagation", "private", "sh", "-c", NAMESPACE_SETUP, "sh"],
            journal_stream=True,
            wait=False,
        )
        listening = sink.wait_for(lambda e: "listening on port" in e.get("MESSAGE", ""))
        port = int(re.search(r"port (\d+)", listening["MESSAGE"]).group(1))  # type: ignore[union-attr]
        assert listening["SYSLOG_IDENTIFIER"] == "ttsd"
        assert listening["PRIORITY"] == "6"

        async with await Client.connect("127.0.0.1", port) as client:
            label = client.hello.client
            job = (await client.speak("Into the journal.")).job
            assert isinstance(await client.wait_for_job(job, timeout=15), protocol.Finished)
            await client.send_raw("{not json")

            for event in ("queued", "started", "finished"):
                entry = sink.wait_for(
                    lambda e, ev=event: e.get("JOB") == str(job) and e.get("EVENT") == ev
                )
                assert entry["CLIENT"] == label
                assert entry["PRIORITY"] == "6"
                assert entry["LOGGER"] == "ttsd.scheduler"
                assert f"job {job} {event}" in entry["MESSAGE"]
            error = sink.wait_for(lambda e: e.get("EVENT") == "protocol_error")
            assert error["CLIENT"] == label
            assert error["PRIORITY"] == "4"
            # Only journal field names go out: no lower-case record attributes.
            assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", key) for key in error)
            await client.request("terminate")
        assert daemon.wait(15) == 0
    finally:
        sink.close()
    assert "job" not in daemon.log, "under systemd, logs belong in the journal"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """setup_logging replaces the root logger's handlers: put pytest's back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    websockets_level = logging.getLogger("websockets").level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("websockets").setLevel(websockets_level)


@pytest.mark.usefixtures("restore_logging")
def test_foreground_logs_readable_lines_on_stderr() -> None:
    stream = io.StringIO()
    assert journal.setup_logging("info", env={}, stream=stream) == "stderr"
    logging.getLogger("ttsd.scheduler").info(
        "job %d queued", 12, extra={"JOB": 12, "CLIENT": "c", "EVENT": "queued"}
    )
    logging.getLogger("ttsd.scheduler").debug("hidden at info")
    line = stream.getvalue().strip()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO ttsd\.scheduler: job 12 queued", line
    )


def test_journal_stream_is_recognised_only_when_it_is_stderr(tmp_path: Path) -> None:
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        st = os.fstat(a.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert journal.stderr_is_journal(env, a.fileno())
        assert not journal.stderr_is_journal(env, b.fileno())
        assert not journal.stderr_is_journal({}, a.fileno())
        assert not journal.stderr_is_journal({"JOURNAL_STREAM": "garbage"}, a.fileno())
        # INVOCATION_ID alone (a shell started from a desktop service) is not enough.
        assert not journal.stderr_is_journal({"INVOCATION_ID": "abc"}, a.fileno())


@pytest.mark.usefixtures("restore_logging")
def test_without_systemd_python_stderr_gets_syslog_priorities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "systemd.journal", None)  # import fails
    with (tmp_path / "stderr").open("w+") as stream:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert journal.setup_logging("info", env=env, stream=stream) == "journal"
        logging.getLogger("ttsd.server").warning("bad request")
        logging.getLogger("ttsd").info("stopped")
        stream.seek(0)
        assert stream.read().splitlines() == ["<4>ttsd.server: bad request", "<6>ttsd: stopped"]


def test_journal_fields_are_the_upper_case_extras() -> None:
    record = logging.LogRecord("ttsd.scheduler", logging.INFO, __file__, 1, "m", None, None)
    record.JOB = 3
    record.CLIENT = "client-1@127.0.0.1:5"
    record.EVENT = "finished"
    record.lower = "not a field"
    record.NONE = None
    assert journal.journal_fields(record) == {
        "JOB": "3",
        "CLIENT": "client-1@127.0.0.1:5",
        "EVENT": "finished",
    }
