"""Every limit holds, with its own error code, and hurts only the client that hits it."""

from __future__ import annotations

import asyncio
import statistics
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import TONE
from tests.support.daemon import Daemon
from tests.support.events import poll
from tests.wsraw import RawSocket
from ttsd import protocol
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
        assert isinstance(await other.ping(), protocol.Pong)
        assert isinstance(await other.speak("b" * 1900), protocol.Queued)


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
        assert isinstance(await two.speak("Room again."), protocol.Queued)


async def test_per_client_queue_limit_leaves_room_for_others(start_daemon) -> None:
    daemon = start_daemon({**TONE, "max_queue": 10, "max_queue_per_client": 2})
    async with (
        await Client.connect("127.0.0.1", daemon.port) as greedy,
        await Client.connect("127.0.0.1", daemon.port) as polite,
    ):
        first = await greedy.speak(LONG)
        await greedy.speak(LONG)
        assert await error_code(greedy.speak(LONG)) == "client_queue_full"
        assert isinstance(await polite.speak("My turn too."), protocol.Queued)
        await greedy.abort(first.job)
        assert isinstance(await greedy.speak("One more."), protocol.Queued)
        await greedy.abort_all()


async def test_synthesize_limit_per_client(start_daemon) -> None:
    # Each synthesis takes 2 s to make: two run, a third of the same client is refused,
    # another client still gets its own.
    daemon = start_daemon({"engine": "tone", "tone": {"ms_per_char": 20.0, "delay_ms": 2000.0}})
    async with (
        await Client.connect("127.0.0.1", daemon.port) as greedy,
        await Client.connect("127.0.0.1", daemon.port) as other,
    ):
        making = [asyncio.create_task(greedy.synthesize(f"Number {n}.")) for n in range(2)]
        await poll(lambda: _synthesizing(other, 2), what="two syntheses under way")
        assert await error_code(greedy.synthesize("A third.")) == "client_queue_full"
        theirs = asyncio.create_task(other.synthesize("Mine."))
        await poll(lambda: _synthesizing(other, 3), what="the other client's too")
        assert sorted(await greedy.abort_all()) == [1, 2, 3]  # abort_all ends syntheses too
        for task in [*making, theirs]:
            with pytest.raises(RequestFailed) as failure:
                await task
            assert failure.value.code == "aborted"


async def _synthesizing(client: Client, count: int) -> bool:
    return len((await client.status()).synthesizing) == count


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
    await poll(lambda: _clients(clients[0], 2), what="the daemon saw the client leave")
    async with await Client.connect("127.0.0.1", daemon.port) as again:
        assert (await again.status()).clients == 3
    for client in clients:
        await client.close()


async def _clients(client: Client, count: int) -> bool:
    return (await client.status()).clients == count


async def test_request_rate_limit_per_client(start_daemon) -> None:
    daemon = start_daemon({**TONE, "max_requests_per_second": 5})
    async with (
        await Client.connect("127.0.0.1", daemon.port) as fast,
        await Client.connect("127.0.0.1", daemon.port) as calm,
    ):
        outcomes = []
        for _ in range(15):
            try:
                await fast.ping()
                outcomes.append("ok")
            except RequestFailed as exc:
                outcomes.append(exc.code)
        assert outcomes[:5] == ["ok"] * 5
        assert outcomes.count("rate_limited") >= 8
        assert isinstance(await calm.ping(), protocol.Pong)  # its own budget
        await asyncio.sleep(0.5)  # the bucket refills with time: 5 requests per second
        assert isinstance(await fast.ping(), protocol.Pong)
    # One warning per burst, not one per refused request.
    assert len([line for line in daemon.lines if "requests per second" in line]) == 1


async def flood(port: int, jobs: int) -> list[float]:
    """Queue and abort ``jobs`` jobs behind a long one; a watcher measures how long each
    ``queued`` event takes to reach it. Returns the latencies."""
    async with (
        await Client.connect("127.0.0.1", port) as flooder,
        await Client.connect("127.0.0.1", port) as watcher,
    ):
        await flooder.speak(LONG)  # keeps the speaker busy: the others stay queued
        sent: dict[int, float] = {}
        received: dict[int, float] = {}

        async def watch() -> None:
            async for event in watcher.events():
                if isinstance(event, protocol.Queued):
                    received[event.job] = time.monotonic()

        watching = asyncio.create_task(watch())
        for _ in range(jobs):
            before = time.monotonic()
            job = (await flooder.speak("Short one.")).job
            sent[job] = before
            await flooder.abort(job)
        await flooder.abort_all()
        await poll(lambda: set(sent) <= set(received), what="the watcher got every queued")
        watching.cancel()
        return [received[job] - sent[job] for job in sent]


async def test_a_client_that_does_not_read_is_dropped_without_delaying_others(
    start_daemon,
) -> None:
    daemon = start_daemon({**TONE, "send_buffer_limit": 8192, "max_requests_per_second": 100000})
    baseline = await flood(daemon.port, 300)

    sleeper = RawSocket(daemon.port, rcvbuf=4096)
    assert sleeper.handshake()[0] == 101
    started = time.monotonic()
    # 1000 jobs send the sleeper some 200 kB of events: over 16 times its limit of
    # 8192 bytes unsent (plus what the kernel's buffers hold), where it is dropped
    # however fast the jobs come (before that, after 1 s behind).
    with_sleeper = await flood(daemon.port, 1000)
    dropped = [line for line in daemon.lines if "dropped: it is not reading" in line]
    assert len(dropped) == 1, daemon.log
    assert "limit 8192" in dropped[0]

    async with await Client.connect("127.0.0.1", daemon.port) as probe:
        assert (await probe.status()).clients == 1  # the sleeper is gone
    # Its connection was cut: it reads what reached its side, then the end (the daemon
    # aborted the connection without a closing handshake). A timeout here would mean
    # the connection was left open.
    sleeper.sock.settimeout(5)
    while sleeper.sock.recv(1 << 20):
        pass
    sleeper.close()
    assert time.monotonic() - started < 30

    # The watcher saw every queued event, promptly, with or without the sleeper.
    assert len(baseline) == 300 and len(with_sleeper) == 1000
    typical = statistics.median(baseline)
    print(
        f"queued-event latency: baseline median {typical * 1000:.2f} ms "
        f"max {max(baseline) * 1000:.1f} ms; with a non-reading client median "
        f"{statistics.median(with_sleeper) * 1000:.2f} ms max {max(with_sleeper) * 1000:.1f} ms "
        f"over {len(with_sleeper)} events"
    )
    assert statistics.median(with_sleeper) < 5 * typical + 0.005
    assert max(with_sleeper) < 0.5


async def flood_until_dropped(client: Client, daemon: Daemon) -> None:
    """Queue and abort jobs until the daemon drops its non-reading client (see above)."""
    for _ in range(1000):
        extra = (await client.speak("filler")).job
        await client.abort(extra)
        if "not reading" in daemon.log:
            break
    assert "not reading" in daemon.log


async def test_a_slow_client_dropped_mid_job_does_not_stop_the_job(start_daemon) -> None:
    daemon = start_daemon({**TONE, "send_buffer_limit": 8192, "max_requests_per_second": 1e5})
    sleeper = RawSocket(daemon.port, rcvbuf=4096)
    assert sleeper.handshake()[0] == 101
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        text = "Keep talking please."
        job = (await client.speak(text)).job
        await flood_until_dropped(client, daemon)
        end = await client.wait_for_job(job, timeout=10)
        assert isinstance(end, protocol.Finished) and end.spoken_chars == len(text)
    sleeper.close()


async def test_a_slow_client_dropped_has_gone_so_its_opted_in_job_ends(start_daemon) -> None:
    # Dropped for not reading, a client has left as one that closes does: a job that
    # asked to end with its connection ends (and the idle clock starts from then).
    daemon = start_daemon({**TONE, "send_buffer_limit": 8192, "max_requests_per_second": 1e5})
    sleeper = RawSocket(daemon.port, rcvbuf=4096)
    assert sleeper.handshake()[0] == 101
    long_text = "Long enough to outlast the flood. " * 20
    sleeper.send_json({"type": "speak", "id": 1, "text": long_text, "cancel_on_disconnect": True})
    async with await Client.connect("127.0.0.1", daemon.port) as client:

        async def playing() -> bool:
            return (await client.status()).current is not None

        await poll(playing, what="the sleeper's job playing")
        current = (await client.status()).current
        assert current is not None
        job = current["job"]
        await flood_until_dropped(client, daemon)
        end = await client.wait_for_job(job, timeout=10)
        assert isinstance(end, protocol.Aborted) and end.reason == "client_disconnected"
    sleeper.close()
