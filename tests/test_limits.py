"""Every limit holds, with its own error code, and hurts only the client that hits it."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import TONE
from tests.wsraw import RawSocket
from ttsd.client import Client, RequestFailed

LONG = "A long sentence that keeps the speaker busy for a while. " * 4  # ~4.6 s of tone


async def error_code(call) -> str:
    with pytest.raises(RequestFailed) as failure:
        await call
    return str(failure.value.code)


async def test_oversized_message_closes_with_1009_and_others_carry_on(start_daemon) -> None:
    daemon = start_daemon({**TONE, "max_message_bytes": 2048})
    async with await Client.connect("127.0.0.1", daemon.port) as other:
        async with await Client.connect("127.0.0.1", daemon.port) as big:
            await big.send_raw('{"type":"speak","text":"' + "a" * 3000 + '"}')
            assert await big.wait_closed(timeout=5) == 1009
        assert (await other.request("ping"))["type"] == "pong"
        fits = await other.speak("b" * 1900)
        assert fits["type"] == "queued"


async def test_text_longer_than_the_limit_is_refused(start_daemon) -> None:
    daemon = start_daemon({**TONE, "max_text_length": 50})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        assert await error_code(client.speak("x" * 51)) == "text_too_long"
        assert (await client.speak("y" * 50))["type"] == "queued"


async def test_total_queue_limit(start_daemon) -> None:
    daemon = start_daemon({**TONE, "max_queue": 3, "max_queue_per_client": 10})
    async with (
        await Client.connect("127.0.0.1", daemon.port) as one,
        await Client.connect("127.0.0.1", daemon.port) as two,
    ):
        await one.speak(LONG)
        await two.speak(LONG)
        await one.speak(LONG)
        assert await error_code(two.speak(LONG)) == "queue_full"
        await one.abort_all()
        assert (await two.speak("Room again."))["type"] == "queued"


async def test_per_client_queue_limit_leaves_room_for_others(start_daemon) -> None:
    daemon = start_daemon({**TONE, "max_queue": 10, "max_queue_per_client": 2})
    async with (
        await Client.connect("127.0.0.1", daemon.port) as greedy,
        await Client.connect("127.0.0.1", daemon.port) as polite,
    ):
        first = await greedy.speak(LONG)
        await greedy.speak(LONG)
        assert await error_code(greedy.speak(LONG)) == "client_queue_full"
        assert (await polite.speak("My turn too."))["type"] == "queued"
        await greedy.abort(first["job"])
        assert (await greedy.speak("One more."))["type"] == "queued"
        await greedy.abort_all()


async def test_connection_limit_answers_503(start_daemon) -> None:
    daemon = start_daemon({**TONE, "max_connections": 3})
    url = f"ws://127.0.0.1:{daemon.port}"
    clients = [await Client.connect("127.0.0.1", daemon.port) for _ in range(3)]
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url):
            pass
    assert refused.value.response.status_code == 503
    assert b"too many connections" in refused.value.response.body
    await clients.pop().close()
    await asyncio.sleep(0.2)
    async with await Client.connect("127.0.0.1", daemon.port) as again:
        assert (await again.request("status"))["clients"] == 3
    for client in clients:
        await client.close()


async def test_request_rate_limit_per_client(start_daemon) -> None:
    daemon = start_daemon({**TONE, "max_requests_per_second": 5})
    async with (
        await Client.connect("127.0.0.1", daemon.port) as fast,
        await Client.connect("127.0.0.1", daemon.port) as calm,
    ):
        outcomes = []
        for _ in range(15):
            try:
                await fast.request("ping")
                outcomes.append("ok")
            except RequestFailed as exc:
                outcomes.append(exc.code)
        assert outcomes[:5] == ["ok"] * 5
        assert outcomes.count("rate_limited") >= 8
        assert (await calm.request("ping"))["type"] == "pong"  # its own budget
        await asyncio.sleep(0.5)
        assert (await fast.request("ping"))["type"] == "pong"  # the bucket refills


async def flood(port: int, seconds: float) -> list[float]:
    """Queue and abort jobs behind a long one for ``seconds``; a watcher measures how
    long each ``queued`` event takes to reach it. Returns the latencies."""
    async with (
        await Client.connect("127.0.0.1", port) as flooder,
        await Client.connect("127.0.0.1", port) as watcher,
    ):
        await flooder.speak(LONG)  # keeps the speaker busy: the others stay queued
        sent: dict[int, float] = {}
        received: dict[int, float] = {}

        async def watch() -> None:
            async for event in watcher.events():
                if event["type"] == "queued":
                    received[event["job"]] = time.monotonic()

        watching = asyncio.create_task(watch())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            before = time.monotonic()
            job = (await flooder.speak("Short one."))["job"]
            sent[job] = before
            await flooder.abort(job)
        await flooder.abort_all()
        await asyncio.sleep(0.2)
        watching.cancel()
        assert set(sent) <= set(received), "the watcher missed queued events"
        return [received[job] - sent[job] for job in sent]


async def test_a_client_that_does_not_read_is_dropped_without_delaying_others(
    start_daemon,
) -> None:
    daemon = start_daemon({**TONE, "send_buffer_limit": 8192, "max_requests_per_second": 100000})
    baseline = await flood(daemon.port, 1.5)

    sleeper = RawSocket(daemon.port, rcvbuf=4096)
    assert sleeper.handshake()[0] == 101
    started = time.monotonic()
    with_sleeper = await flood(daemon.port, 4.0)
    assert "dropped: it is not reading" in daemon.log
    dropped_line = next(line for line in daemon.lines if "not reading" in line)
    assert "limit 8192" in dropped_line

    async with await Client.connect("127.0.0.1", daemon.port) as probe:
        assert (await probe.request("status"))["clients"] == 1  # the sleeper is gone
    sleeper.sock.settimeout(2)
    with pytest.raises((ConnectionError, OSError)):
        while sleeper.sock.recv(1 << 20):
            pass
        raise ConnectionError("closed")
    sleeper.close()
    assert time.monotonic() - started < 10

    # The watcher saw every queued event, promptly, with or without the sleeper.
    assert len(baseline) > 50 and len(with_sleeper) > 100
    typical = statistics.median(baseline)
    print(
        f"queued-event latency: baseline median {typical * 1000:.2f} ms "
        f"max {max(baseline) * 1000:.1f} ms; with a non-reading client median "
        f"{statistics.median(with_sleeper) * 1000:.2f} ms max {max(with_sleeper) * 1000:.1f} ms "
        f"over {len(with_sleeper)} events"
    )
    assert statistics.median(with_sleeper) < 5 * typical + 0.005
    assert max(with_sleeper) < 0.5


async def test_a_slow_client_dropped_mid_job_does_not_stop_the_job(start_daemon) -> None:
    daemon = start_daemon({**TONE, "send_buffer_limit": 8192, "max_requests_per_second": 1e5})
    sleeper = RawSocket(daemon.port, rcvbuf=4096)
    assert sleeper.handshake()[0] == 101
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        job = (await client.speak("Keep talking please."))["job"]
        deadline = time.monotonic() + 4
        while "not reading" not in daemon.log and time.monotonic() < deadline:
            extra = (await client.speak("filler"))["job"]
            await client.abort(extra)
        assert "not reading" in daemon.log
        assert (await client.wait_for_job(job, timeout=10))["type"] == "finished"
    sleeper.close()
