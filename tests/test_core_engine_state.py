"""The engine's life inside the daemon: loading while serving, unloading when idle."""

from __future__ import annotations

import asyncio

from tests.support.expected import tone
from tests.support.pulse import Recorder, find_exact
from ttsd.client import Client


async def test_jobs_wait_while_the_engine_loads_then_play(start_daemon, recorder: Recorder) -> None:
    daemon = start_daemon({"engine": "tone", "tone": {"ms_per_char": 20.0, "load_ms": 1500.0}})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        assert client.hello["engine"] == {"name": "tone", "state": "loading"}
        job = (await client.speak("Waiting for the model."))["job"]
        status = await client.request("status")
        assert status["engine"]["state"] == "loading"
        end = await client.wait_for_job(job, timeout=10)
        assert end["type"] == "finished"
        engine_events = [m["state"] for _, m in client.messages if m["type"] == "engine"]
        assert engine_events == ["ready"]
    assert find_exact(recorder.samples(), tone("Waiting for the model.")) is not None


async def test_engine_unloads_when_idle_and_reloads_for_the_next_job(
    start_daemon, recorder: Recorder
) -> None:
    daemon = start_daemon({"engine": "tone", "engine_unload": 0.5, "tone": {"ms_per_char": 20.0}})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        first = (await client.speak("Before the nap."))["job"]
        await client.wait_for_job(first, timeout=10)
        for _ in range(100):
            if (await client.request("status"))["engine"]["state"] == "unloaded":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the engine was not unloaded")
        second = (await client.speak("After the nap."))["job"]
        assert (await client.wait_for_job(second, timeout=10))["type"] == "finished"
        states = [m["state"] for _, m in client.messages if m["type"] == "engine"]
        assert states == ["unloaded", "loading", "ready"]
    assert find_exact(recorder.samples(), tone("After the nap.")) is not None
    assert "unloading engine tone" in daemon.log
