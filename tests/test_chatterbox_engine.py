"""The Chatterbox engine, run through the real chatterbox-tts code on tiny random models.

The models (see ``tests/chatterbox_tiny.py``) are built once per session and shared
(``tests/chatterbox_fixtures.py``); each engine gets its own voices and cache
directories. Generation is capped at a few speech tokens (40 ms of audio each) to keep
every call around a second. Streaming itself is tested in ``test_chatterbox_streaming.py``.

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

from tests import chatterbox_fixtures
from tests.chatterbox_tiny import write_clip, write_tokenizer
from ttsd import protocol
from ttsd.engines import create_engine
from ttsd.engines.base import EngineError, OptionError
from ttsd.engines.chatterbox import (
    LANGUAGES,
    LOCAL_FILES,
    SAMPLE_RATE,
    ChatterboxEngine,
)

# The shared session fixtures (one build of each tiny model for the whole run).
tiny_workdir = chatterbox_fixtures.tiny_workdir
tiny_model = chatterbox_fixtures.tiny_model
tiny_multilingual = chatterbox_fixtures.tiny_multilingual
tiny_turbo = chatterbox_fixtures.tiny_turbo

pytestmark = [pytest.mark.chatterbox, pytest.mark.timeout(300)]  # slow when the CPU is shared

CAP = 6  # speech tokens per call in these tests (0.24 s of audio at most)
SAMPLES_PER_TOKEN = SAMPLE_RATE // 25


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
    tiny_model: Any,
    dirs: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
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


def test_float_output_is_clipped_to_int16(
    tiny_model: Any,
    dirs: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = make_engine(tiny_model, dirs)
    loud = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 3.0, -3.0], dtype=np.float32)

    def watermark(audio: np.ndarray, sample_rate: int) -> np.ndarray:
        return np.resize(loud, audio.size)  # the last step before int16: make it loud

    monkeypatch.setattr(tiny_model.watermarker, "apply_watermark", watermark)
    pcm = engine.synthesize("Loud.", None, {})
    assert pcm[:7].tolist() == [0, 16384, -16384, 32767, -32767, 32767, -32767]


def test_cfg_weight_zero_works(tiny_model: Any, dirs: dict[str, Path]) -> None:
    engine = make_engine(tiny_model, dirs)
    # The pitfall this works around: the library itself fails on exactly 0.
    with pytest.raises(RuntimeError):
        tiny_model.generate("Zero.", cfg_weight=0.0)
    options = engine.validate_options({"cfg_weight": 0, "exaggeration": 0.9, "temperature": 0.6})
    assert options == {"cfg_weight": 0.0, "exaggeration": 0.9, "temperature": 0.6}
    check_pcm(engine.synthesize("Zero.", None, options))


def test_voice_clip_is_conditioned_once_and_cached(
    tiny_model: Any,
    dirs: dict[str, Path],
    prepare_calls: list[str],
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
    tiny_model: Any,
    dirs: dict[str, Path],
    prepare_calls: list[str],
) -> None:
    clip = write_clip(dirs["voices_dir"] / "bob.flac", seconds=2.0, seed=5)
    engine = make_engine(tiny_model, dirs, voice="bob")
    check_pcm(engine.synthesize("Hi.", None, {}))
    assert prepare_calls == [str(clip)]
    assert engine.describe()["voice"] == "bob"


def test_missing_and_unreadable_voices_fail_that_job_only(
    tiny_model: Any,
    dirs: dict[str, Path],
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
    tiny_model: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
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


def test_voice_clips_with_upper_case_suffixes_are_found(
    tiny_model: Any,
    dirs: dict[str, Path],
    prepare_calls: list[str],
) -> None:
    bob = write_clip(dirs["voices_dir"] / "Bob.WAV", seconds=1.0, seed=9)
    carol = write_clip(dirs["voices_dir"] / "carol.Flac", seconds=1.0, seed=10)
    engine = make_engine(tiny_model, dirs)
    assert engine.voices() == ["Bob", "carol", "default"]
    assert engine.voice_path("Bob") == bob and engine.voice_path("carol") == carol
    check_pcm(engine.synthesize("Hi.", "Bob", {}))
    check_pcm(engine.synthesize("Hi.", "carol", {}))
    assert prepare_calls == [str(bob), str(carol)]


def test_a_cached_clip_is_not_read_again_until_it_changes(
    tiny_model: Any,
    dirs: dict[str, Path],
    prepare_calls: list[str],
) -> None:
    clip = write_clip(dirs["voices_dir"] / "dora.wav", seconds=1.0, seed=11)
    engine = make_engine(tiny_model, dirs)
    for text in ("One.", "Two.", "Three."):
        check_pcm(engine.synthesize(text, "dora", {}))
    store = engine._voices
    assert store is not None and store.clip_reads == 1  # one stat per chunk, one read
    write_clip(clip, seconds=1.2, seed=12)  # another size: a changed clip
    check_pcm(engine.synthesize("Four.", "dora", {}))
    assert store.clip_reads == 2 and len(prepare_calls) == 2


def test_disk_cache_key_covers_library_version_and_checkpoint(
    tiny_model: Any,
    dirs: dict[str, Path],
    prepare_calls: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ttsd.engines.chatterbox import loading

    write_clip(dirs["voices_dir"] / "eve.wav", seconds=1.0, seed=13)
    check_pcm(make_engine(tiny_model, dirs).synthesize("Hi.", "eve", {}))
    check_pcm(make_engine(tiny_model, dirs).synthesize("Hi.", "eve", {}))
    assert len(prepare_calls) == 1  # the disk cache served the second engine
    monkeypatch.setattr(loading, "library_version", lambda: "0.1.8")
    check_pcm(make_engine(tiny_model, dirs).synthesize("Hi.", "eve", {}))
    assert len(prepare_calls) == 2  # another library version: analysed again
    engine = ChatterboxEngine.from_model(
        tiny_model, model_id="other-weights", max_speech_tokens=CAP, **dirs
    )
    engine.load()
    check_pcm(engine.synthesize("Hi.", "eve", {}))
    assert len(prepare_calls) == 3  # other weights: analysed again
    assert len(list((dirs["cache_dir"] / "chatterbox").glob("standard-*.pt"))) == 3


def test_turbo_needs_its_tokenizer_files_in_model_dir(tmp_path: Path) -> None:
    from ttsd.engines.chatterbox.loading import local_problem

    for name in ("ve.safetensors", "t3_turbo_v1.safetensors", "s3gen_meanflow.safetensors"):
        (tmp_path / name).write_bytes(b"")
    problem = local_problem("turbo", tmp_path)
    assert problem is not None
    assert "tokenizer_config.json" in problem and "vocab.json+merges.txt" in problem
    for name in ("tokenizer_config.json", "vocab.json"):
        (tmp_path / name).write_bytes(b"{}")
    assert "merges.txt" in (local_problem("turbo", tmp_path) or "")
    (tmp_path / "merges.txt").write_bytes(b"")
    assert local_problem("turbo", tmp_path) is None


def test_turbo_conditioning_survives_numpy2_type_promotion(tiny_turbo: Any, tmp_path: Path) -> None:
    """NumPy 2 makes Turbo's loudness-normalised clip float64, which the tokenizer rejects."""
    from types import SimpleNamespace

    from ttsd.engines.chatterbox.loading import fix_library

    promoting = SimpleNamespace(norm_loudness=lambda wav, sr: wav * np.float64(1.5))
    fix_library(promoting)
    fix_library(promoting)  # idempotent: one wrapper
    clip = np.full(8, 0.1, dtype=np.float32)
    out = promoting.norm_loudness(clip, 24000)
    assert out.dtype == np.float32 and out[0] == pytest.approx(0.15)
    engine = ChatterboxEngine.from_model(
        tiny_turbo, voices_dir=tmp_path, cache_dir=tmp_path / "cache", max_speech_tokens=4
    )
    engine.load()  # applies the fix to the model it serves
    assert tiny_turbo.norm_loudness(clip, 24000).dtype == np.float32


class _Unreachable:
    """Stands in for the network: every connection or name lookup fails, and is counted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import socket

        self.attempts: list[str] = []

        def refuse(what: str) -> Any:
            def fail(*args: Any, **kwargs: Any) -> Any:
                self.attempts.append(f"{what}{args[1:2]}")
                raise OSError(101, "Network is unreachable (blocked by the test)")

            return fail

        monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
        monkeypatch.setattr(socket.socket, "connect_ex", refuse("connect_ex"))
        monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
        monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["standard", "turbo", "multilingual"])
def test_local_model_dir_loads_with_the_network_unreachable(
    kind: str,
    tiny_model: Any,
    tiny_turbo: Any,
    tiny_multilingual: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``from_local`` of each model on a directory written as the hub lays it out.

    The library builds its full-size architecture; the test registers the tiny one under
    the library's config names (and the tiny models' S3Gen), everything else is the real
    loading path: weights files, tokenizer files, ``conds.pt``, Cangjie table.
    """
    import chatterbox.mtl_tts
    import chatterbox.tts
    import chatterbox.tts_turbo
    from chatterbox.models.t3.llama_configs import LLAMA_CONFIGS
    from chatterbox.models.t3.modules.t3_config import T3Config

    from tests.chatterbox_tiny import (
        TINY_GPT2,
        TINY_LLAMA,
        TINY_LLAMA_ALIGNED,
        save_checkpoint,
    )

    model = {"standard": tiny_model, "turbo": tiny_turbo, "multilingual": tiny_multilingual}[kind]
    model_dir = save_checkpoint(model, kind, tmp_path / "ckpt")
    if kind == "multilingual":
        (model_dir / "Cangjie5_TC.json").write_text('["中\\tl", "文\\tyk"]', encoding="utf-8")
    monkeypatch.setenv("PKUSEG_HOME", str(tmp_path / "pkuseg-home"))  # empty: no segmenter
    monkeypatch.setitem(LLAMA_CONFIGS, "Llama_520M", LLAMA_CONFIGS[TINY_LLAMA])
    if kind == "multilingual":
        monkeypatch.setitem(LLAMA_CONFIGS, "Llama_520M", LLAMA_CONFIGS[TINY_LLAMA_ALIGNED])
    monkeypatch.setitem(LLAMA_CONFIGS, "GPT2_medium", LLAMA_CONFIGS[TINY_GPT2])
    original_init = T3Config.__init__

    def tiny_hp(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.use_perceiver_resampler = False  # the tiny T3s have none

    monkeypatch.setattr(T3Config, "__init__", tiny_hp)
    # The weights below are loaded into the session model's S3Gen object (the same values
    # it was saved from): building a fresh one costs 15 s.
    for module in (chatterbox.tts, chatterbox.mtl_tts, chatterbox.tts_turbo):
        monkeypatch.setattr(module, "S3Gen", lambda meanflow=False: model.s3gen)

    network = _Unreachable(monkeypatch)
    engine = ChatterboxEngine(
        model=kind,
        model_dir=model_dir,
        device="cpu",
        voices_dir=tmp_path / "voices",
        cache_dir=tmp_path / "cache",
        max_speech_tokens=4,
    )
    engine.load()
    assert engine.describe()["weights"] == f"dir:{model_dir.resolve()}"
    assert engine.voices() == ["default"]  # conds.pt: the built-in voice
    check_pcm(engine.synthesize("Hello.", None, {"seed": 1}), cap=4 + 3)
    if kind == "multilingual":
        tokenizer = engine.model.tokenizer
        ids = tokenizer.encode("中文", language_id="zh")
        assert tokenizer.tokenizer.token_to_id("[cj_l]") in ids  # the table in model_dir
        assert tokenizer.tokenizer.token_to_id("[cj_y]") in ids
        assert tokenizer.cangjie_converter.segmenter is None  # no pkuseg model: none used
    assert network.attempts == []


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
        end = await client.wait_for_job(reply.job, timeout=120)
        assert isinstance(end, protocol.Finished), end
        assert 0 < end.audio_seconds <= CAP / 25
        recorder.wait_for_silence(0.3)
        spans = sound_spans(recorder.samples(), 0.05, SAMPLE_RATE)
        assert spans, "nothing was recorded"
        heard = sum(b - a for a, b in spans) / SAMPLE_RATE
        assert heard == pytest.approx(end.audio_seconds, abs=0.05)

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
        # (The engine's own tests count the steps after a cancel: at most one.)
        text = " ".join(f"Sentence number {n} is here." for n in range(8))
        loop = asyncio.get_running_loop()
        sent = loop.time()
        job = (await client.speak(text, voice="erin")).job
        await client.wait_for(protocol.Started, job, timeout=120)
        chunk_time = loop.time() - sent  # one chunk of generation (and model load)
        aborted_at = loop.time()
        assert await client.abort_current() == [job]
        quiet_from = recorder.now_index() + int(0.1 * SAMPLE_RATE)
        nxt = (await client.speak("Next.", voice="erin")).job
        await client.wait_for_job(nxt, timeout=120)
        started_next = next(
            t for t, m in client.messages if isinstance(m, protocol.Started) and m.job == nxt
        )
        # The generator finished at most the chunk in flight, then moved on.
        assert started_next - aborted_at < 2 * chunk_time + 2.0
        assert isinstance(client.job_events(job)[-1], protocol.Aborted)
        after = sound_spans(recorder.samples()[quiet_from:], 0.05, SAMPLE_RATE)
        assert len(after) <= 1  # only the next job's audio after the abort


@pytest.mark.timeout(300)
async def test_daemon_starts_playing_before_the_chunks_token_loop_ends(
    start_daemon: Any, pulse24: Any, tmp_path: Path
) -> None:
    """Token streaming through the daemon: ``started`` comes while the only chunk of the
    job is still being made (status shows no chunk completely made yet)."""
    from tests.chatterbox_tiny import daemon_hook_env
    from ttsd.client import Client

    voices = tmp_path / "voices"
    write_clip(voices / "erin.wav", seconds=2.0, seed=8)
    settings = _daemon_settings(voices)
    settings["chatterbox"] = {"max_speech_tokens": 48, "first_block_tokens": 8, "device": "cpu"}
    # On this CPU the model is slower than real time: gapless pacing would (rightly) wait
    # for the whole chunk. What is tested here is that the stream reaches the player.
    settings["gapless"] = False
    # pacat starts a stream once its buffer is full: keep it below one 8-token piece.
    settings["latency_ms"] = 150
    env = daemon_hook_env(tmp_path / "hook", Path(__file__).resolve().parent.parent)
    daemon = start_daemon(settings, env=env, pulse=pulse24)
    async with await Client.connect("127.0.0.1", daemon.port) as client:
        job = (await client.speak("One sentence.", voice="erin")).job
        await client.wait_for(protocol.Started, job, timeout=200)
        current = (await client.status()).current
        assert current is not None and current["job"] == job
        assert current["chunks"] == 1 and current["generated"] == 0, current
        end = await client.wait_for_job(job, timeout=200)
        assert isinstance(end, protocol.Finished)
        assert 8 / 25 < end.audio_seconds <= 48 / 25 + 0.2  # more than the first piece
