"""The Chatterbox engine, run through the real chatterbox-tts code on a tiny random model.

The model (see ``tests/chatterbox_tiny.py``) is built once per session (~15 s) and
shared; each engine gets its own voices and cache directories. Generation is capped
at a few speech tokens (40 ms of audio each) to keep every call around a second.

``TTSD_SLOW_TESTS=1`` also runs ``from_local`` on full-size random weights that the
test writes (about 3 GB on disk and 7 GB of memory).
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("chatterbox", reason="chatterbox-tts is not installed")

from tests.chatterbox_tiny import build_tiny_standard, write_clip, write_tokenizer
from ttsd.engines import create_engine
from ttsd.engines.base import EngineError, OptionError
from ttsd.engines.chatterbox import (
    LANGUAGES,
    LOCAL_FILES,
    SAMPLE_RATE,
    ChatterboxEngine,
)

pytestmark = [pytest.mark.chatterbox, pytest.mark.timeout(300)]  # slow when the CPU is shared

CAP = 6  # speech tokens per call in these tests (0.24 s of audio at most)
SAMPLES_PER_TOKEN = SAMPLE_RATE // 25


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_tiny_standard(tmp_path_factory.mktemp("tiny-chatterbox"))


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    voices = tmp_path / "voices"
    voices.mkdir()
    return {"voices_dir": voices, "cache_dir": tmp_path / "cache"}


@pytest.fixture
def prepare_calls(tiny_model: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Count the model's ``prepare_conditionals`` calls (the costly voice analysis)."""
    calls: list[str] = []
    original = type(tiny_model).prepare_conditionals

    def counting(self: Any, wav_fpath: str, *args: Any, **kwargs: Any) -> None:
        calls.append(wav_fpath)
        original(self, wav_fpath, *args, **kwargs)

    monkeypatch.setattr(type(tiny_model), "prepare_conditionals", counting)
    return calls


@pytest.fixture
def hub_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``from_pretrained`` fail fast, as on a machine that never downloaded weights."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def make_engine(model: Any, dirs: dict[str, Path], **settings: Any) -> ChatterboxEngine:
    settings.setdefault("max_speech_tokens", CAP)
    engine = ChatterboxEngine.from_model(model, model_id="tiny", **dirs, **settings)
    engine.load()
    return engine


def check_pcm(pcm: np.ndarray, cap: int = CAP) -> None:
    assert pcm.dtype == np.int16
    assert pcm.ndim == 1
    assert 0 < pcm.size <= cap * SAMPLES_PER_TOKEN


def test_import_is_cheap() -> None:
    code = "import sys, ttsd.engines.chatterbox; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_languages_match_library() -> None:
    from chatterbox.mtl_tts import SUPPORTED_LANGUAGES

    assert set(LANGUAGES) == set(SUPPORTED_LANGUAGES)


def test_speaks_int16_at_24k_and_warns_about_cpu_speed(
    tiny_model: Any, dirs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(tiny_model, dirs)
    assert engine.sample_rate == 24000 == tiny_model.sr
    with caplog.at_level(logging.WARNING, logger="ttsd.engines.chatterbox"):
        pcm = engine.synthesize("Hello there.", None, {})
    check_pcm(pcm)
    assert np.abs(pcm.astype(np.int32)).max() > 0
    assert any("real-time factor" in r.getMessage() for r in caplog.records)
    info = engine.describe()
    assert info["model"] == "standard" and info["device"] == "cpu"
    assert info["real_time_factor"] > 0
    assert engine.synthesize("   ", None, {}).size == 0


def test_token_cap_bounds_each_call(tiny_model: Any, dirs: dict[str, Path]) -> None:
    engine = make_engine(tiny_model, dirs, max_speech_tokens=2)
    check_pcm(engine.synthesize("A somewhat longer sentence to speak.", None, {}), cap=2)


def test_float_output_is_clipped_to_int16(tiny_model: Any, dirs: dict[str, Path]) -> None:
    import torch

    engine = make_engine(tiny_model, dirs)
    loud = torch.tensor([[0.0, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0]])
    original = tiny_model.generate
    try:
        tiny_model.generate = lambda *a, **k: loud
        pcm = engine.synthesize("Loud.", None, {})
    finally:
        tiny_model.generate = original
    assert pcm.tolist() == [0, 16384, -16384, 32767, -32767, 32767, -32767]


def test_cfg_weight_zero_works(tiny_model: Any, dirs: dict[str, Path]) -> None:
    engine = make_engine(tiny_model, dirs)
    # The pitfall this works around: the library itself fails on exactly 0.
    with pytest.raises(RuntimeError):
        tiny_model.generate("Zero.", cfg_weight=0.0)
    options = engine.validate_options({"cfg_weight": 0, "exaggeration": 0.9, "temperature": 0.6})
    assert options == {"cfg_weight": 0.0, "exaggeration": 0.9, "temperature": 0.6}
    check_pcm(engine.synthesize("Zero.", None, options))


def test_voice_clip_is_conditioned_once_and_cached(
    tiny_model: Any, dirs: dict[str, Path], prepare_calls: list[str]
) -> None:
    clip = write_clip(dirs["voices_dir"] / "alice.wav", seconds=2.0, seed=3)
    engine = make_engine(tiny_model, dirs)
    assert engine.voices() == ["alice", "default"]

    check_pcm(engine.synthesize("One.", "alice", {}))
    check_pcm(engine.synthesize("Two.", "alice", {"exaggeration": 1.2}))
    assert prepare_calls == [str(clip)]  # the second chunk used the memory cache
    cached = list((dirs["cache_dir"] / "chatterbox").glob("standard-*.pt"))
    assert len(cached) == 1

    fresh = make_engine(tiny_model, dirs)  # a new daemon: memory cache empty
    check_pcm(fresh.synthesize("Three.", "alice", {}))
    assert prepare_calls == [str(clip)]  # the disk cache served it
    assert fresh.synthesize("Four.", None, {}).size > 0  # the built-in voice still works

    time.sleep(0.01)
    write_clip(clip, seconds=2.0, seed=4)  # the clip changed: analysed again
    check_pcm(fresh.synthesize("Five.", "alice", {}))
    assert prepare_calls == [str(clip), str(clip)]
    assert len(list((dirs["cache_dir"] / "chatterbox").glob("standard-*.pt"))) == 2


def test_default_voice_setting_names_a_clip(
    tiny_model: Any, dirs: dict[str, Path], prepare_calls: list[str]
) -> None:
    clip = write_clip(dirs["voices_dir"] / "bob.flac", seconds=2.0, seed=5)
    engine = make_engine(tiny_model, dirs, voice="bob")
    check_pcm(engine.synthesize("Hi.", None, {}))
    assert prepare_calls == [str(clip)]
    assert engine.describe()["voice"] == "bob"


def test_missing_and_unreadable_voices_fail_that_job_only(
    tiny_model: Any, dirs: dict[str, Path]
) -> None:
    engine = make_engine(tiny_model, dirs)
    with pytest.raises(EngineError) as missing:
        engine.synthesize("Hi.", "nobody", {})
    assert missing.value.code == "voice_not_found"
    assert "nobody" in str(missing.value)

    (dirs["voices_dir"] / "broken.wav").write_bytes(b"RIFF not really a wave file")
    with pytest.raises(EngineError) as broken:
        engine.synthesize("Hi.", "broken", {})
    assert broken.value.code == "voice_load"
    assert "broken.wav" in str(broken.value)

    check_pcm(engine.synthesize("Still fine.", None, {}))  # the engine carries on

    for bad in ("../etc/passwd", "a/b", ".hidden", ""):
        with pytest.raises(OptionError):
            engine.check_voice(bad)
    engine.check_voice("alice")  # unknown but well formed: fails later, per job


@pytest.mark.parametrize(
    ("model", "options", "match"),
    [
        ("standard", {"speed": 1.0}, "unknown option"),
        ("standard", {"exaggeration": 2.5}, "between"),
        ("standard", {"cfg_weight": -0.1}, "between"),
        ("standard", {"temperature": 0}, "between"),
        ("standard", {"temperature": math.nan}, "between"),
        ("standard", {"temperature": "0.8"}, "must be a number"),
        ("standard", {"cfg_weight": True}, "must be a number"),
        ("standard", {"top_k": 50}, "unknown option"),
        ("standard", {"language": "fr"}, "unknown option"),
        ("turbo", {"cfg_weight": 0.5}, "unknown option"),
        ("turbo", {"top_k": 1.5}, "must be an integer"),
        ("turbo", {"top_k": 5000}, "between"),
        ("multilingual", {"language": "xx"}, "language"),
        ("multilingual", {"language": 3}, "language"),
    ],
)
def test_bad_options_are_rejected(model: str, options: dict[str, Any], match: str) -> None:
    engine = ChatterboxEngine(model=model)
    with pytest.raises(OptionError, match=match):
        engine.validate_options(options)


def test_good_options_are_normalised() -> None:
    assert ChatterboxEngine(model="turbo").validate_options(
        {"temperature": 1, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.1}
    ) == {"temperature": 1.0, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.1}
    assert ChatterboxEngine(model="multilingual").validate_options(
        {"language": "FR", "cfg_weight": 0.3}
    ) == {"language": "fr", "cfg_weight": 0.3}


@pytest.mark.parametrize(
    "settings",
    [
        {"model": "huge"},
        {"device": "tpu"},
        {"language": "xx"},
        {"max_speech_tokens": 0},
        {"max_speech_tokens": 5000},
        {"max_speech_tokens": True},
        {"exaggeration": 9},
        {"modell": "turbo"},
    ],
)
def test_bad_settings_are_rejected(settings: dict[str, Any]) -> None:
    with pytest.raises(EngineError) as err:
        create_engine("chatterbox", settings)
    assert err.value.code == "engine_load"


def test_settings_from_the_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    engine = create_engine("chatterbox", {"model": "turbo", "temperature": 0.7, "voice": None})
    assert isinstance(engine, ChatterboxEngine)
    assert engine.voices_dir == tmp_path / "config/ttsd/voices"
    assert engine.cache_dir == tmp_path / "cache/ttsd/chatterbox"
    assert engine.defaults == {"temperature": 0.7}
    assert engine.voices() == ["default"]
    assert engine.describe()["model"] == "turbo"


def test_missing_watermarker_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import perth

    monkeypatch.setattr(perth, "PerthImplicitWatermarker", None)
    engine = ChatterboxEngine(model_dir=tmp_path, device="cpu")
    with pytest.raises(EngineError, match="setuptools<81") as err:
        engine.load()
    assert err.value.code == "engine_load"


@pytest.mark.usefixtures("hub_offline")
def test_no_weights_anywhere_is_one_clear_error(tmp_path: Path) -> None:
    for kind in ("standard", "turbo"):
        engine = ChatterboxEngine(model=kind, model_dir=tmp_path / "missing", device="cpu")
        started = time.monotonic()
        with pytest.raises(EngineError) as err:
            engine.load()
        assert time.monotonic() - started < 20
        message = str(err.value)
        assert err.value.code == "engine_load"
        assert "model_dir" in message and "does not exist" in message
        assert "from_pretrained" in message and "ResembleAI/chatterbox" in message
        assert not engine.loaded


@pytest.mark.usefixtures("hub_offline")
def test_model_dir_goes_through_from_local(
    tiny_model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from chatterbox.tts import ChatterboxTTS

    calls: list[tuple[str, str]] = []

    def fake_from_local(ckpt_dir: str, device: str) -> Any:
        calls.append((ckpt_dir, device))
        return tiny_model

    monkeypatch.setattr(ChatterboxTTS, "from_local", staticmethod(fake_from_local))
    model_dir = tmp_path / "ckpt"
    model_dir.mkdir()
    engine = ChatterboxEngine(model_dir=model_dir, device="cpu", voices_dir=tmp_path)
    with pytest.raises(EngineError, match=r"lacks ve\.safetensors"):
        engine.load()  # incomplete: falls back to the hub, which is unreachable in tests
    assert calls == []
    for name in LOCAL_FILES["standard"]:
        (model_dir / name).write_bytes(b"")
    engine.load()
    assert calls == [(str(model_dir), "cpu")]
    assert engine.describe()["weights"] == f"dir:{model_dir.resolve()}"
    engine.unload()
    assert not engine.loaded

    def failing_from_local(ckpt_dir: str, device: str) -> Any:
        raise RuntimeError("Error(s) in loading state_dict for T3")

    monkeypatch.setattr(ChatterboxTTS, "from_local", staticmethod(failing_from_local))
    with pytest.raises(EngineError, match=r"from_local.*state_dict") as err:
        engine.load()
    assert err.value.code == "engine_load"


def test_unload_frees_and_reload_works(tiny_model: Any, dirs: dict[str, Path]) -> None:
    write_clip(dirs["voices_dir"] / "carol.wav", seconds=2.0, seed=6)
    engine = make_engine(tiny_model, dirs)
    check_pcm(engine.synthesize("Before.", "carol", {}))
    engine.unload()
    assert not engine.loaded
    with pytest.raises(EngineError):
        engine.synthesize("While unloaded.", None, {})
    engine.load()
    check_pcm(engine.synthesize("After.", "carol", {}))


@pytest.mark.skipif(os.environ.get("TTSD_SLOW_TESTS") != "1", reason="set TTSD_SLOW_TESTS=1")
@pytest.mark.timeout(900)
def test_from_local_with_full_size_random_weights(tmp_path: Path) -> None:
    """``from_local`` always builds the full-size model: ~3 GB of weights, ~7 GB RSS."""
    import torch
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import T3
    from chatterbox.models.voice_encoder import VoiceEncoder
    from safetensors.torch import save_file

    def save(module: torch.nn.Module, path: Path) -> None:
        state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(path))
        del state

    model_dir = tmp_path / "ckpt"
    model_dir.mkdir()
    torch.manual_seed(0)
    save(VoiceEncoder(), model_dir / "ve.safetensors")
    save(T3(), model_dir / "t3_cfg.safetensors")
    save(S3Gen(), model_dir / "s3gen.safetensors")
    write_tokenizer(model_dir / "tokenizer.json")
    voices = tmp_path / "voices"
    write_clip(voices / "dave.wav", seconds=2.0, seed=7)

    engine = ChatterboxEngine(
        model_dir=model_dir, device="cpu", voices_dir=voices, cache_dir=tmp_path / "cache",
        max_speech_tokens=4,
    )  # fmt: skip
    started = time.monotonic()
    engine.load()
    print(f"from_local of full-size random weights: {time.monotonic() - started:.1f} s")
    assert engine.voices() == ["dave"]  # no conds.pt: no built-in voice
    check_pcm(engine.synthesize("Hello.", "dave", {}), cap=4)
    with pytest.raises(EngineError) as err:
        engine.synthesize("Hello.", None, {})
    assert err.value.code == "voice_not_found"


# -- through the daemon ---------------------------------------------------------------


@pytest.fixture
def pulse24(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A private PulseAudio whose null sink runs at Chatterbox's 24 kHz."""
    from tests.support.pulse import PulseServer

    server = PulseServer(tmp_path_factory.mktemp("pulse24"), rate=SAMPLE_RATE)
    server.start()
    yield server
    server.stop()


def _daemon_settings(voices: Path) -> dict[str, Any]:
    return {
        "engine": "chatterbox",
        "voices_dir": str(voices),
        "chunk_chars": 40,
        "first_chunk_chars": 30,
        "chatterbox": {"max_speech_tokens": CAP, "device": "cpu"},
    }


@pytest.fixture
def tiny_daemon(start_daemon: Any, pulse24: Any, tmp_path: Path) -> Any:
    """The real daemon (child process) with the engine on the tiny model, a voice "erin",
    and a recorder on the 24 kHz null sink: yields (daemon, recorder)."""
    from tests.chatterbox_tiny import daemon_hook_env
    from tests.support.pulse import Recorder

    voices = tmp_path / "voices"
    write_clip(voices / "erin.wav", seconds=2.0, seed=8)
    env = daemon_hook_env(tmp_path / "hook", Path(__file__).resolve().parent.parent)
    recorder = Recorder(pulse24)
    recorder.start()
    try:
        yield start_daemon(_daemon_settings(voices), env=env, pulse=pulse24), recorder
    finally:
        recorder.stop()


@pytest.mark.timeout(300)
async def test_daemon_speaks_with_chatterbox_at_24k(tiny_daemon: Any) -> None:
    from tests.support.pulse import sound_spans
    from ttsd.client import Client

    daemon, recorder = tiny_daemon
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        assert "erin" in await client.voices()
        reply = await client.speak("Hello from the tiny model.", voice="erin")
        end = await client.wait_for_job(reply["job"], timeout=120)
        assert end["type"] == "finished", end
        assert 0 < end["audio_seconds"] <= CAP / 25
        recorder.wait_for_silence(0.3)
        spans = sound_spans(recorder.samples(), 0.05, SAMPLE_RATE)
        assert spans, "nothing was recorded"
        heard = sum(b - a for a, b in spans) / SAMPLE_RATE
        assert heard == pytest.approx(end["audio_seconds"], abs=0.05)

        audio = await client.synthesize("Sent back.", voice="erin", timeout=120)
        assert audio.sample_rate == SAMPLE_RATE and audio.samples > 0
        cached = list((daemon.home / "cache/ttsd/chatterbox").glob("standard-*.pt"))
        assert len(cached) == 1  # erin was conditioned once for both jobs


@pytest.mark.timeout(300)
async def test_daemon_abort_during_chatterbox_generation_stops_within_a_chunk(
    tiny_daemon: Any,
) -> None:
    import asyncio

    from tests.support.pulse import sound_spans
    from ttsd.client import Client

    daemon, recorder = tiny_daemon
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        # Many chunks, each far slower to make than to play: abort mid-generation.
        text = " ".join(f"Sentence number {n} is here." for n in range(8))
        loop = asyncio.get_running_loop()
        sent = loop.time()
        job = (await client.speak(text, voice="erin"))["job"]
        while not any(m.get("type") == "started" for m in client.job_events(job)):
            await asyncio.sleep(0.02)
        chunk_time = loop.time() - sent  # one chunk of generation (and model load)
        aborted_at = loop.time()
        assert await client.abort_current() == [job]
        quiet_from = recorder.now_index() + int(0.1 * SAMPLE_RATE)
        nxt = (await client.speak("Next.", voice="erin"))["job"]
        await client.wait_for_job(nxt, timeout=120)
        started_next = next(
            t for t, m in client.messages if m.get("type") == "started" and m["job"] == nxt
        )
        # The generator finished at most the chunk in flight, then moved on.
        assert started_next - aborted_at < 2 * chunk_time + 2.0
        assert [m["type"] for m in client.job_events(job)][-1] == "aborted"
        after = sound_spans(recorder.samples()[quiet_from:], 0.05, SAMPLE_RATE)
        assert len(after) <= 1  # only the next job's audio after the abort
