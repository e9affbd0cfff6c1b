"""The engine's life inside the daemon: loading while serving, unloading when idle."""

from __future__ import annotations

from tests.support.events import wait_for_event
from tests.support.expected import tone
from tests.support.pulse import Recorder, find_exact
from ttsd import protocol
from ttsd.client import Client

SELECTED = "engine = tone in the settings"


def engine_states(client: Client) -> list[str]:
    return [m.info["state"] for _, m in client.messages if isinstance(m, protocol.EngineState)]


async def test_jobs_wait_while_the_engine_loads_then_play(start_daemon, recorder: Recorder) -> None:
    daemon = start_daemon({"engine": "tone", "tone": {"ms_per_char": 20.0, "load_ms": 1500.0}})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        assert client.hello.engine == {"name": "tone", "state": "loading", "selected": SELECTED}
        job = (await client.speak("Waiting for the model.")).job
        assert (await client.status()).engine["state"] == "loading"
        end = await client.wait_for_job(job, timeout=10)
        assert isinstance(end, protocol.Finished)
        assert engine_states(client) == ["ready"]
        ready = next(m for _, m in client.messages if isinstance(m, protocol.EngineState))
        assert ready.to_json() == {
            "type": "engine",
            "name": "tone",
            "state": "ready",
            "selected": SELECTED,
            "sample_rate": 22050,
            "ms_per_char": 20.0,
            "delay_ms": 0.0,
        }
    assert find_exact(recorder.samples(), tone("Waiting for the model.")) is not None


async def test_engine_unloads_when_idle_and_reloads_for_the_next_job(
    start_daemon, recorder: Recorder
) -> None:
    daemon = start_daemon({"engine": "tone", "engine_unload": 0.5, "tone": {"ms_per_char": 20.0}})
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        first = (await client.speak("Before the nap.")).job
        await client.wait_for_job(first, timeout=10)
        await wait_for_event(client, protocol.EngineState, lambda m: m.info["state"] == "unloaded")
        assert (await client.status()).engine["state"] == "unloaded"
        second = (await client.speak("After the nap.")).job
        assert isinstance(await client.wait_for_job(second, timeout=10), protocol.Finished)
        assert engine_states(client) == ["unloaded", "loading", "ready"]
    assert find_exact(recorder.samples(), tone("After the nap.")) is not None
    assert "unloading engine tone" in daemon.log
