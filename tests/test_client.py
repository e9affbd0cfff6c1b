"""The Python client's error paths and reconnecting, against real daemons."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.support.daemon import Daemon
from tests.support.events import job_story, kinds, poll
from ttsd import protocol
from ttsd.client import (
    Client,
    ClientError,
    ConnectionLost,
    DaemonNotRunning,
    RequestFailed,
    RequestTimeout,
)

LONG = " ".join(["This sentence keeps the tone engine busy for a while."] * 8)


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
    await asyncio.sleep(0.5)  # several attempts, all refused (nothing to wait for but time)
    assert not connecting.done()  # refused so far, still retrying
    await asyncio.to_thread(start_daemon, {"engine": "tone", "port": unused_port})
    async with await asyncio.wait_for(connecting, 20) as client:
        assert isinstance(client.hello, protocol.Hello) and client.hello.protocol == 1
        assert isinstance(await client.status(), protocol.StatusReply)


async def test_error_replies_raise_request_failed_with_the_code(client: Client) -> None:
    cases = [
        (lambda: client.speak("   "), "bad_request"),
        (lambda: client.speak("Hi.", options={"pitch": 2}), "bad_option"),
        (lambda: client.speak("Hi.", volume=3), "bad_option"),
        (lambda: client.abort(999), "unknown_job"),
        (lambda: client.synthesize("Hi.", options={"pitch": 2}), "bad_option"),
        (lambda: client.request("speak", text="Hi.", priority="urgent"), "bad_option"),
    ]
    for call, code in cases:
        with pytest.raises(RequestFailed) as caught:
            await call()
        assert caught.value.code == code
        reply = caught.value.reply
        assert isinstance(reply, protocol.ErrorReply) and reply.id is not None
        assert caught.value.message == reply.message and reply.message
    # A request type the protocol does not have is refused by the client itself (the
    # daemon's unknown_type reply is tested with raw frames in test_core_protocol).
    with pytest.raises(ClientError, match="unknown request type 'no_such_request'"):
        await client.request("no_such_request")
    # The connection is still good after every error.
    assert isinstance(await client.ping(), protocol.Pong)


async def test_request_timeout_is_a_timeout_error(start_daemon) -> None:
    daemon = start_daemon({"engine": "tone", "tone": {"ms_per_char": 20.0, "delay_ms": 2000.0}})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        with pytest.raises(RequestTimeout) as caught:
            await client.synthesize("Slow to make.", timeout=0.3)
        assert isinstance(caught.value, TimeoutError)

        async def loaded() -> bool:
            return (await client.status()).engine["state"] == "ready"

        await poll(loaded, what="the engine ready")
    # Connected once the engine is ready, so no event is due (the engine's state change
    # could otherwise arrive within the 0.1 s on a busy machine).
    async with await Client.connect("127.0.0.1", daemon.port) as quiet:
        with pytest.raises(RequestTimeout):
            await quiet.next_event(timeout=0.1)


async def test_daemon_stopping_ends_jobs_then_closes_cleanly(daemon: Daemon) -> None:
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        job = (await client.speak(LONG)).job
        daemon.signal(signal.SIGTERM)
        end = await client.wait_for_job(job, timeout=10)
        assert isinstance(end, protocol.Aborted) and end.reason == "terminate"
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
        await asyncio.to_thread(daemon.wait_for_line, "job 1 synthesizing")
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
        before = (await client.speak("Before the restart.")).job
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
        after = (await client.speak("After the restart.")).job
        assert isinstance(await client.wait_for_job(after, timeout=10), protocol.Finished)
        hellos = [m for _, m in client.messages if isinstance(m, protocol.Hello)]
        assert len(hellos) == 2  # one log across both connections
        # A restarted daemon numbers jobs from 1 again: only this connection counts.
        assert after == before == 1
        assert kinds(client, after) == ["queued", "started", "sentence", "finished"]
        job_story(client, after, "After the restart.")


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
                await client.status()
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
        assert isinstance(await client.ping(), protocol.Pong)
    monkeypatch.setenv("TTS_TOKEN", TOKEN)
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        assert isinstance(await client.ping(), protocol.Pong)
