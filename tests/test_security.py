"""Who may connect: Origin allowlist, Host check, token, loopback-only listening."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import TONE
from tests.support.events import job_story
from tests.wsraw import RawSocket
from ttsd import protocol
from ttsd.client import Client, ClientError

GOOD_ORIGIN = "http://good.example:8000"


async def status_code_of(port: int, **options) -> int:
    try:
        async with connect(f"ws://127.0.0.1:{port}", **options):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_foreign_origin_is_refused_with_403_and_queues_nothing(daemon) -> None:
    raw = RawSocket(daemon.port)
    status, response = raw.handshake("Origin: https://evil.example")
    raw.close()
    assert status == 403
    assert "origin 'https://evil.example' is not allowed" in response
    assert await status_code_of(daemon.port, origin="http://localhost:3000") == 403
    assert await status_code_of(daemon.port, origin="null") == 403
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        status_reply = await client.status()
    assert status_reply.current is None and status_reply.queue == []
    assert "refused a handshake" in daemon.log


async def test_handshake_without_origin_is_accepted(client: Client) -> None:
    assert isinstance(await client.speak("No origin here."), protocol.Queued)


async def test_allowlisted_origin_may_connect_and_others_may_not(start_daemon) -> None:
    daemon = start_daemon({**TONE, "allowed_origins": f"{GOOD_ORIGIN}, https://other.example"})
    assert await status_code_of(daemon.port, origin=GOOD_ORIGIN) == 101
    assert await status_code_of(daemon.port, origin="HTTP://GOOD.EXAMPLE:8000") == 101
    assert await status_code_of(daemon.port, origin="http://good.example:8001") == 403
    assert await status_code_of(daemon.port, origin="http://good.example") == 403


def test_config_rejects_a_malformed_origin(start_daemon) -> None:
    with pytest.raises(RuntimeError, match="daemon exited 2") as failure:
        start_daemon({**TONE, "allowed_origins": "good.example"})
    assert "is not an origin" in str(failure.value)


@pytest.mark.parametrize(
    "host,expected",
    [
        ("127.0.0.1:{port}", 101),
        ("localhost:{port}", 101),
        ("LOCALHOST", 101),
        ("[::1]:{port}", 101),
        ("127.0.0.5:{port}", 101),
        ("rebind.attacker.example:{port}", 403),
        ("localhost.attacker.example:{port}", 403),
        ("192.168.1.20:{port}", 403),
        (None, 101),  # HTTP/1.0-style clients; browsers always send Host
    ],
)
def test_host_header_is_checked_against_dns_rebinding(daemon, host, expected) -> None:
    raw = RawSocket(daemon.port)
    status, _ = raw.handshake(host=None if host is None else host.format(port=daemon.port))
    raw.close()
    assert status == expected


def test_two_host_headers_are_refused(daemon) -> None:
    raw = RawSocket(daemon.port)
    status, _ = raw.handshake("Host: evil.example", host="127.0.0.1")
    raw.close()
    assert status == 400


# --- Token ---------------------------------------------------------------------------


@pytest.fixture
def token_daemon(start_daemon):
    daemon = start_daemon({**TONE, "auth": "token"})
    path = daemon.home / "ttsd" / "token"  # the fixture's XDG_RUNTIME_DIR is the home
    return daemon, path.read_text().strip(), path


def test_token_file_is_created_private(token_daemon) -> None:
    _, token, path = token_daemon
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(token) >= 32


async def ask(ws, **request) -> protocol.Message:
    await ws.send(json.dumps(request))
    return protocol.decode(await ws.recv())


async def hello(ws) -> protocol.Hello:
    message = protocol.decode(await ws.recv())
    assert isinstance(message, protocol.Hello)
    return message


async def test_first_message_must_be_auth_with_the_token(token_daemon) -> None:
    daemon, token, _ = token_daemon
    url = f"ws://127.0.0.1:{daemon.port}"
    async with connect(url) as ws:
        assert (await hello(ws)).auth == "required"
        reply = await ask(ws, type="speak", text="Let me in.", id=1)
        assert isinstance(reply, protocol.ErrorReply)
        assert (reply.code, reply.id) == ("unauthorized", 1)
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008

    async with connect(url) as ws:
        await hello(ws)
        reply = await ask(ws, type="auth", token="x" * 43, id=2)
        assert isinstance(reply, protocol.ErrorReply)
        assert (reply.code, reply.id) == ("unauthorized", 2)
        with pytest.raises(ConnectionClosed):
            await ws.recv()

    async with connect(url) as ws:
        await ws.recv()
        reply = await ask(ws, type="auth", token=token, id=3)
        assert reply.to_json() == {"type": "ok", "authenticated": True, "id": 3}
        assert isinstance(await ask(ws, type="speak", text="Now I may.", id=4), protocol.Queued)

    # The Python client finds the token itself, or says what is missing.
    with pytest.raises(ClientError, match="requires its token"):
        await Client.connect("127.0.0.1", daemon.port)
    async with await Client.connect("127.0.0.1", daemon.port, token=token) as client:
        job = (await client.speak("Through the client.")).job
        assert isinstance(await client.wait_for_job(job, timeout=10), protocol.Finished)


async def test_unauthenticated_connections_receive_no_events(token_daemon) -> None:
    daemon, token, _ = token_daemon
    lurker = RawSocket(daemon.port)
    assert lurker.handshake()[0] == 101
    greeting = protocol.from_json(lurker.read_json())
    assert isinstance(greeting, protocol.Hello) and greeting.auth == "required"
    headers = {"Authorization": f"Bearer {token}"}
    async with await Client.connect("127.0.0.1", daemon.port, additional_headers=headers) as c:
        assert c.hello.auth is None and "auth" not in c.hello.to_json()
        job = (await c.speak("Secret words.")).job
        await c.wait_for_job(job, timeout=10)
    lurker.send_json({"type": "status", "id": 1})
    reply = protocol.from_json(lurker.read_json())  # its first message: no event before it
    assert isinstance(reply, protocol.ErrorReply)
    assert (reply.code, reply.id) == ("unauthorized", 1)
    assert lurker.read_close() == 1008
    lurker.close()


async def test_bearer_header_with_the_wrong_token_is_refused_with_401(token_daemon) -> None:
    daemon, token, _ = token_daemon
    bad = {"Authorization": "Bearer " + "y" * len(token)}
    assert await status_code_of(daemon.port, additional_headers=bad) == 401
    good = {"Authorization": f"Bearer {token}"}
    assert await status_code_of(daemon.port, additional_headers=good) == 101


async def test_token_from_config_is_used_and_no_file_is_written(start_daemon) -> None:
    secret = "a-configured-token-0123456789"
    daemon = start_daemon({**TONE, "auth": "token", "token": secret})
    assert not (daemon.home / "ttsd" / "token").exists()
    async with connect(f"ws://127.0.0.1:{daemon.port}") as ws:
        await ws.recv()
        reply = await ask(ws, type="auth", token=secret)
        assert reply.to_json() == {"type": "ok", "authenticated": True}
        assert isinstance(await ask(ws, type="ping"), protocol.Pong)
    async with await Client.connect("127.0.0.1", daemon.port, token=secret) as client:
        assert isinstance(await client.ping(), protocol.Pong)


async def test_an_idle_unauthenticated_connection_cannot_speak(token_daemon) -> None:
    daemon, _, _ = token_daemon
    async with connect(f"ws://127.0.0.1:{daemon.port}") as ws:
        await ws.recv()  # hello
        await ws.send('{"type":"speak","text":"sneaky"}')
        assert '"unauthorized"' in await ws.recv()
        with pytest.raises(ConnectionClosed):
            await ws.recv()


async def test_a_client_that_never_authenticates_is_closed_after_auth_timeout(
    start_daemon,
) -> None:
    secret = "a-configured-token-0123456789"
    daemon = start_daemon({**TONE, "auth": "token", "token": secret, "auth_timeout": 1.5})
    async with connect(f"ws://127.0.0.1:{daemon.port}") as lurker:
        opened = time.monotonic()
        assert (await hello(lurker)).auth == "required"
        async with await Client.connect("127.0.0.1", daemon.port, token=secret) as member:
            # A job that plays across the lurker's deadline, heard by the member throughout.
            text = "This job plays while the silent connection is shown the door. " * 3
            job = (await member.speak(text)).job
            await member.wait_for(protocol.Started, job, timeout=5)
            reply = protocol.decode(await asyncio.wait_for(lurker.recv(), 10))
            refused_at = time.monotonic()
            closed = refused_at - opened
            assert isinstance(reply, protocol.ErrorReply) and reply.code == "unauthorized"
            assert "no token within 1.5 s" in reply.message
            with pytest.raises(ConnectionClosed):
                await lurker.recv()
            assert lurker.close_code == 1008
            # Not before its time; the upper bound only has to tell 1.5 s from the default 10 s.
            assert 1.4 <= closed < 6.0, closed
            end = await member.wait_for_job(job, timeout=15)
            assert isinstance(end, protocol.Finished)
            assert job_story(member, job, text) == end  # every sentence, then finished
            # Its events kept coming after the lurker was closed, not only before.
            finished_at = next(t for t, m in member.messages if m is end)
            assert finished_at > refused_at
            assert isinstance(await member.ping(), protocol.Pong)
    assert "refused: no token within 1.5 s" in daemon.log


def test_auth_timeout_must_be_positive(start_daemon) -> None:
    with pytest.raises(RuntimeError, match="daemon exited 2") as failure:
        start_daemon({**TONE, "auth_timeout": 0})
    assert "auth_timeout must be more than 0" in str(failure.value)


def test_a_token_file_readable_by_others_is_refused(start_daemon, tmp_path) -> None:
    runtime = tmp_path / "runtime"
    (runtime / "ttsd").mkdir(parents=True)
    path = runtime / "ttsd" / "token"
    path.write_text("an-old-token-that-others-can-read\n")
    os.chmod(path, 0o644)
    with pytest.raises(RuntimeError, match="daemon exited 2") as failure:
        start_daemon({**TONE, "auth": "token"}, env={"XDG_RUNTIME_DIR": str(runtime)})
    assert "mode 0600" in str(failure.value)


# --- Listening beyond loopback -------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_listening_beyond_loopback_without_a_token_is_refused(start_daemon, host) -> None:
    with pytest.raises(RuntimeError, match="daemon exited 2") as failure:
        start_daemon({**TONE, "host": host})
    assert "beyond loopback" in str(failure.value)


async def test_listening_beyond_loopback_with_a_token_requires_it(start_daemon) -> None:
    daemon = start_daemon({**TONE, "host": "0.0.0.0", "auth": "token"})
    token = (daemon.home / "ttsd" / "token").read_text().strip()
    # On a wildcard bind any IP literal is a fine Host; a DNS name still is not.
    raw = RawSocket(daemon.port)
    assert raw.handshake(host=f"10.1.2.3:{daemon.port}")[0] == 101
    raw.close()
    raw = RawSocket(daemon.port)
    assert raw.handshake(host=f"rebind.example:{daemon.port}")[0] == 403
    raw.close()
    async with connect(f"ws://127.0.0.1:{daemon.port}") as ws:
        await ws.recv()
        reply = await ask(ws, type="status")
        assert isinstance(reply, protocol.ErrorReply) and reply.code == "unauthorized"
    with pytest.raises(ClientError, match="requires its token"):
        await Client.connect("127.0.0.1", daemon.port)
    async with await Client.connect("127.0.0.1", daemon.port, token=token) as client:
        assert isinstance(await client.status(), protocol.StatusReply)
