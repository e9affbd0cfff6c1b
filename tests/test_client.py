"""The Python client's error paths and reconnecting, against real daemons."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.support.daemon import Daemon
from ttsd.client import (
    Client,
    ClientError,
    ConnectionLost,
    DaemonNotRunning,
    RequestFailed,
    RequestTimeout,
)

LONG = " ".join(["This sentence keeps the tone engine busy for a while."] * 8)


@pytest.fixture
def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_no_daemon_raises_daemon_not_running_with_a_hint(unused_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(DaemonNotRunning) as caught:
        await Client.connect("127.0.0.1", unused_port)
    assert time.monotonic() - started < 2
    message = str(caught.value)
    assert f"ws://127.0.0.1:{unused_port}" in message
    assert "connection refused" in message and "ttsd serve" in message


async def test_connect_retries_until_a_starting_daemon_answers(
    start_daemon, unused_port: int
) -> None:
    connecting = asyncio.create_task(Client.connect("127.0.0.1", unused_port, retry_for=20))
    await asyncio.sleep(0.5)
    assert not connecting.done()  # refused so far, still retrying
    await asyncio.to_thread(start_daemon, {"engine": "tone", "port": unused_port})
    async with await asyncio.wait_for(connecting, 20) as client:
        assert client.hello["type"] == "hello" and client.hello["protocol"] == 1
        assert (await client.status())["type"] == "status"


async def test_error_replies_raise_request_failed_with_the_code(client: Client) -> None:
    cases = [
        (client.request("no_such_request"), "unknown_type"),
        (client.speak("   "), "bad_request"),
        (client.speak("Hi.", options={"pitch": 2}), "bad_option"),
        (client.speak("Hi.", volume=3), "bad_option"),
        (client.abort(999), "unknown_job"),
        (client.synthesize("Hi.", options={"pitch": 2}), "bad_option"),
    ]
    for call, code in cases:
        with pytest.raises(RequestFailed) as caught:
            await call
        assert caught.value.code == code
        assert caught.value.reply["type"] == "error" and "id" in caught.value.reply
        assert caught.value.message
    # The connection is still good after every error.
    assert (await client.request("ping"))["type"] == "pong"


async def test_request_timeout_is_a_timeout_error(start_daemon) -> None:
    daemon = start_daemon({"engine": "tone", "tone": {"ms_per_char": 20.0, "delay_ms": 2000.0}})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        with pytest.raises(RequestTimeout) as caught:
            await client.synthesize("Slow to make.", timeout=0.3)
        assert isinstance(caught.value, TimeoutError)
        with pytest.raises(RequestTimeout):
            await client.next_event(timeout=0.1)


async def test_daemon_stopping_ends_jobs_then_closes_cleanly(daemon: Daemon) -> None:
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        job = (await client.speak(LONG))["job"]
        daemon.signal(signal.SIGTERM)
        end = await client.wait_for_job(job, timeout=10)
        assert (end["type"], end["reason"]) == ("aborted", "terminate")
        with pytest.raises(ConnectionLost) as caught:
            await client.next_event(timeout=10)
        assert caught.value.close_code == 1001
        assert client.closed
        with pytest.raises(ConnectionLost):
            await client.status()
    assert daemon.wait() == 0


async def test_daemon_dying_fails_requests_in_flight(start_daemon) -> None:
    daemon = start_daemon({"engine": "tone", "tone": {"ms_per_char": 20.0, "delay_ms": 5000.0}})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        pending = asyncio.create_task(client.synthesize("Never delivered.", timeout=30))
        await asyncio.sleep(0.3)
        assert not pending.done()
        daemon.signal(signal.SIGKILL)
        with pytest.raises(ConnectionLost) as caught:
            await asyncio.wait_for(pending, 10)
        assert caught.value.close_code == 1006  # no closing handshake: it died
        assert isinstance(caught.value, ClientError)


async def test_reconnect_to_a_restarted_daemon(start_daemon, unused_port: int) -> None:
    settings = {"engine": "tone", "port": unused_port}
    first = start_daemon(settings)
    async with await Client.connect("127.0.0.1", unused_port) as client:
        before = (await client.speak("Before the restart."))["job"]
        await client.wait_for_job(before, timeout=10)
        first.signal(signal.SIGKILL)
        first.wait()
        with pytest.raises(ConnectionLost):
            await client.next_event(timeout=10)
        with pytest.raises(DaemonNotRunning):
            await client.reconnect(retry_for=0)

        restart = asyncio.create_task(asyncio.to_thread(start_daemon, settings))
        await client.reconnect(retry_for=20)
        await restart
        assert client.reconnects == 1  # the failed attempt does not count
        assert not client.closed
        after = (await client.speak("After the restart."))["job"]
        assert (await client.wait_for_job(after, timeout=10))["type"] == "finished"
        hellos = [m for _, m in client.messages if m["type"] == "hello"]
        assert len(hellos) == 2  # one log across both connections
        # A restarted daemon numbers jobs from 1 again: only this connection counts.
        assert after == before == 1
        assert [m["type"] for m in client.job_events(after)] == ["queued", "started", "finished"]


async def test_a_server_that_breaks_the_protocol_is_dropped() -> None:
    async def not_hello(connection: ServerConnection) -> None:
        await connection.send('{"type": "welcome"}')
        await connection.wait_closed()

    async def garbage_after_hello(connection: ServerConnection) -> None:
        await connection.send('{"type": "hello", "protocol": 1}')
        await connection.recv()
        await connection.send("this is not JSON")
        await connection.wait_closed()

    async with serve(not_hello, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(ClientError, match="sent no hello"):
            await Client.connect("127.0.0.1", port)

    async with serve(garbage_after_hello, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with await Client.connect("127.0.0.1", port) as client:
            with pytest.raises(ConnectionLost) as caught:
                await client.request("status")
            assert "invalid message" in str(caught.value)
            assert caught.value.close_code == 1002


async def test_terminate_returns_the_close_code(daemon: Daemon) -> None:
    client = await Client.connect("127.0.0.1", daemon.port)
    assert await client.terminate() == 1001
    assert daemon.wait() == 0


TOKEN = "token-for-the-tests-0123456789"


async def test_token_from_argument_or_environment(
    start_daemon, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.delenv("TTS_TOKEN", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))  # no token file there
    daemon = start_daemon({"engine": "tone", "auth": "token", "token": TOKEN})
    with pytest.raises(ClientError, match="requires its token: set TTS_TOKEN"):
        await Client.connect("127.0.0.1", daemon.port)
    with pytest.raises(ClientError, match="refused our token"):
        await Client.connect("127.0.0.1", daemon.port, token="wrong-token-0123456789")
    async with await Client.connect("127.0.0.1", daemon.port, token=TOKEN) as client:
        assert (await client.request("ping"))["type"] == "pong"
    monkeypatch.setenv("TTS_TOKEN", TOKEN)
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        assert (await client.request("ping"))["type"] == "pong"
