"""The Speech Dispatcher module with real parts: a private speech-dispatcher whose
default module is ``sd_ttsd``, pointed at a ttsd daemon with Piper playing on a
private PulseAudio, driven by the real ``spd-say``; and the module alone on pipes.

Piper runs with ``noise_scale = noise_w_scale = 0`` (the module's ``TtsdOption``
defaults here), which makes its output deterministic, so the recording at the sink
can be compared sample for sample with :class:`PiperEngine`'s own output.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support.daemon import Daemon, write_config
from tests.support.expected import tone
from tests.support.pulse import PulseServer, Recorder, find_exact, first_audible, last_audible
from tests.support.speechd import (
    SSIP,
    ModuleProcess,
    SocketActivated,
    SpeechDispatcher,
    free_port,
    speechd_available,
)
from ttsd.bridges.speechd.module import split_long
from ttsd.bridges.speechd.settings import (
    ConfigError,
    ModuleConfig,
    SpeechSettings,
    job_volume,
    length_scale,
    speak_fields,
    voice_lines,
)
from ttsd.bridges.speechd.text import char_text, key_text, spell, strip_ssml
from ttsd.client import Client
from ttsd.engines.piper import PiperEngine
from ttsd.scheduler.chunking import split_text

EXACT = {"noise_scale": 0.0, "noise_w_scale": 0.0}
MODULE_EXACT = {"TtsdOption": [("noise_scale", 0), ("noise_w_scale", 0)], "Debug": 1}

TEXT = "The quick brown fox jumps over the lazy dog. Then it runs into the forest."
LONG = (
    "This is a long message that takes a good while to say, so that there is time to "
    "interrupt it. It goes on with a second sentence, which is long as well. And a "
    "third one follows, to be sure that it is still speaking when the next one comes."
)
SHORT = "A new message."

needs_speechd = pytest.mark.skipif(
    not speechd_available(), reason="speech-dispatcher and spd-say are not installed"
)


@pytest.fixture(scope="module")
def piper() -> PiperEngine:
    engine = PiperEngine()
    engine.load()
    return engine


def expected(piper: PiperEngine, text: str, **options: Any) -> np.ndarray:
    """What the daemon plays for ``text``: its chunks, back to back."""
    return np.concatenate(
        [
            piper.synthesize(chunk, None, {**EXACT, **options})
            for chunk in split_text(text, 300, 120)
        ]
    )


def locate(recording: np.ndarray, pcm: np.ndarray) -> int | None:
    """Where ``pcm`` was played in ``recording``, every sample exact and in order.

    On a loaded machine pacat may underrun, and the sink then plays digital silence in
    the middle of a message: if ``pcm`` is not there as one run, the search is made
    again with the exact zeros left out on both sides, so every sample that carries
    sound must still be there, unchanged and in order, with gaps allowed.
    """
    found = find_exact(recording, pcm)
    if found is not None:
        return found
    sound = np.flatnonzero(recording)
    found = find_exact(recording[sound], pcm[pcm != 0])
    if found is None:
        return None
    print(f"(found with underrun gaps at sample {int(sound[found])})")
    return int(sound[found])


def pa_volume(pcm: np.ndarray, volume: float) -> np.ndarray:
    """``pcm`` as PulseAudio plays it at stream volume ``volume`` (what ``pacat
    --volume`` sets): the cubic volume curve, then its 16.16 fixed-point multiply
    (``pa_volume_memchunk`` for s16), so the result is exact to the sample."""
    linear = (round(volume * 65536) / 65536) ** 3
    factor = int(np.rint(linear * 0x10000))
    t = pcm.astype(np.int64)
    t = ((t * (factor & 0xFFFF)) >> 16) + t * (factor >> 16)
    return np.clip(t, -0x8000, 0x7FFF).astype(np.int16)


def command_received(speechd: SpeechDispatcher, command: str) -> float:
    """When the module got ``command`` (its debug log has the monotonic time)."""
    found = re.findall(rf"<- {command} \(at monotonic ([0-9.]+)\)", speechd.module_log)
    assert found, f"the module never got {command}"
    return float(found[-1])


def wait_heard(recorder: Recorder, seconds: float, timeout: float = 30) -> int:
    """Wait for sound, then until ``seconds`` of it were recorded; return its start."""
    heard = recorder.wait_for_sound(timeout=timeout)
    while recorder.now_index() - heard < recorder.rate * seconds:
        time.sleep(0.02)
    return heard


@pytest.fixture
def speechd(tmp_path: Path, start_daemon: Callable[..., Daemon]) -> Iterator[SpeechDispatcher]:
    """A Piper daemon and a private speech-dispatcher whose default module speaks to it."""
    daemon = start_daemon({"engine": "piper"})
    server = SpeechDispatcher(tmp_path / "speechd", {"TtsdPort": daemon.port, **MODULE_EXACT})
    try:
        yield server.start()
    finally:
        server.stop()


@needs_speechd
@pytest.mark.piper
def test_spd_say_plays_the_piper_speech_of_the_text(
    speechd: SpeechDispatcher, recorder: Recorder, piper: PiperEngine
) -> None:
    sent = time.monotonic()
    speechd.say("-w", TEXT)
    recorder.wait_for_silence(0.5)
    recorded = recorder.samples()
    start = locate(recorded, expected(piper, TEXT))
    assert start is not None, "the recording is not Piper's speech of the text"
    print(f"first sound {1000 * (recorder.time_of(first_audible(recorded)) - sent):.0f} ms")
    # The module told Speech Dispatcher when it began, passed the sentence mark, ended.
    log = speechd.module_log
    assert log.index("-> 701 BEGIN") < log.index("-> 700-__spd_") < log.index("-> 702 END")


@needs_speechd
@pytest.mark.piper
def test_spd_say_cancel_leaves_silence_within_50ms(
    speechd: SpeechDispatcher, recorder: Recorder, piper: PiperEngine
) -> None:
    """``spd-say -C`` in the middle of a message: silence within 50 ms, measured on the
    recording from the moment ``spd-say -C`` was started.

    That span includes starting ``spd-say`` and Speech Dispatcher's handling, which on
    a loaded machine can alone take longer; so the cancel is tried up to three times
    and one must make it, while on every try the module's own part (the STOP reaching
    the module to silence) must be under 50 ms."""
    whole = expected(piper, LONG)
    measured = []
    for _ in range(3):
        begin = recorder.now_index()
        speechd.say(LONG)
        heard = recorder.wait_for_sound(after=begin, timeout=20)
        while recorder.now_index() - heard < recorder.rate * 1.0:
            time.sleep(0.02)
        cancel = time.monotonic()
        speechd.say("-C")
        recorder.wait_for_silence(0.3)
        last = last_audible(recorder.samples())
        assert last is not None and last - heard < 0.6 * len(whole), "not cut short"
        cut = recorder.time_of(last) - cancel
        module_cut = recorder.time_of(last) - command_received(speechd, "STOP")
        measured.append(f"{1000 * cut:.1f} ms (module: {1000 * module_cut:.1f} ms)")
        assert module_cut < 0.050, measured
        if cut < 0.050:
            break
    print("spd-say -C to silence:", ", ".join(measured))
    assert cut < 0.050, measured


@needs_speechd
@pytest.mark.piper
def test_text_priority_replaces_the_older_text_message(
    speechd: SpeechDispatcher, recorder: Recorder, piper: PiperEngine
) -> None:
    """spd-say's default priority is ``text``, which "interrupts itself": the long
    message stops and the new one plays whole."""
    speechd.say(LONG)
    heard = wait_heard(recorder, 1.0)
    speechd.say(SHORT)
    speechd.wait_log("-> 702 END")  # the new message ended normally
    recorder.wait_for_silence(0.5)
    recorded = recorder.samples()
    new = locate(recorded, expected(piper, SHORT))
    assert new is not None and new > heard, "the new message was not played whole"
    long = expected(piper, LONG)
    assert locate(recorded, long) is None, "the older text message played to the end"
    last_of_long = last_audible(recorded, before=new)
    assert last_of_long is not None and last_of_long - heard < 0.6 * len(long)
    log = speechd.module_log
    assert log.index("-> 703 STOP") < log.index("-> 702 END")


MEDIUM = "A message of medium length, spoken to its end."


@needs_speechd
@pytest.mark.piper
def test_message_priority_waits_for_the_message_before_it(
    speechd: SpeechDispatcher, recorder: Recorder, piper: PiperEngine
) -> None:
    """``message`` does not interrupt ``message``: both play whole, in order."""
    speechd.say("-P", "message", MEDIUM)
    heard = wait_heard(recorder, 0.5)
    speechd.say("-P", "message", SHORT)
    after = speechd.wait_log("-> 702 END")
    speechd.wait_log("-> 702 END", after=after)
    recorder.wait_for_silence(0.5)
    recorded = recorder.samples()
    first = locate(recorded, expected(piper, MEDIUM))
    second = locate(recorded, expected(piper, SHORT))
    assert first is not None and first <= heard + recorder.rate // 10
    assert second is not None and second >= first + len(expected(piper, MEDIUM))
    assert "-> 703 STOP" not in speechd.module_log


@needs_speechd
@pytest.mark.piper
def test_important_cancels_the_text_being_spoken(
    speechd: SpeechDispatcher, recorder: Recorder, piper: PiperEngine
) -> None:
    """``important`` cancels the message being spoken (unless it is important too)
    and is said at once; the cancelled ``text`` message does not come back."""
    speechd.say(LONG)
    heard = wait_heard(recorder, 1.0)
    speechd.say("-P", "important", SHORT)
    speechd.wait_log("-> 702 END")
    recorder.wait_for_silence(1.0)
    recorded = recorder.samples()
    new = locate(recorded, expected(piper, SHORT))
    assert new is not None and new > heard
    assert locate(recorded, expected(piper, LONG)) is None
    assert last_audible(recorded) < new + len(expected(piper, SHORT)) + recorder.rate // 10


@needs_speechd
@pytest.mark.piper
def test_notification_is_dropped_while_a_message_plays(
    speechd: SpeechDispatcher, recorder: Recorder, piper: PiperEngine
) -> None:
    """``notification`` is cancelled when anything of another priority is spoken."""
    speechd.say(MEDIUM)
    wait_heard(recorder, 0.3)
    speechd.say("-P", "notification", SHORT)
    speechd.wait_log("-> 702 END")
    recorder.wait_for_silence(1.0)
    recorded = recorder.samples()
    assert locate(recorded, expected(piper, MEDIUM)) is not None
    assert locate(recorded, expected(piper, SHORT)) is None
    assert speechd.module_log.count("-> 200 OK SPEAKING") == 1


@needs_speechd
@pytest.mark.piper
def test_rate_and_volume_reach_ttsd(
    speechd: SpeechDispatcher, recorder: Recorder, piper: PiperEngine
) -> None:
    """``-r -50`` is Piper's length_scale 3**0.5 (slower: longer audio); ``-i -50`` is
    job volume 0.5 (quieter), both exact to the sample; the pitch is ignored cleanly."""
    speechd.say("-w", "-r", "-50", "-p", "40", TEXT)
    recorder.wait_for_silence(0.5)
    slow = expected(piper, TEXT, length_scale=length_scale(-50))
    normal = expected(piper, TEXT)
    assert len(slow) > 1.5 * len(normal)
    assert locate(recorder.samples(), slow) is not None, "not the slower speech"
    assert "pitch: no ttsd engine can change the pitch; ignored" in speechd.module_log

    speechd.say("-w", "-i", "-50", SHORT)
    recorder.wait_for_silence(0.5)
    recorded = recorder.samples()
    quiet = pa_volume(expected(piper, SHORT), 0.5)
    at = locate(recorded, quiet)
    assert at is not None, "not the speech at half volume"
    loud = np.abs(expected(piper, SHORT).astype(np.int32)).max()
    assert np.abs(recorded[at : at + len(quiet)].astype(np.int32)).max() < 0.2 * loud


@needs_speechd
@pytest.mark.piper
def test_list_voices_and_choose_one(
    speechd: SpeechDispatcher, recorder: Recorder, piper: PiperEngine
) -> None:
    """Speech Dispatcher lists the daemon's voices with their language; a voice asked
    for by name is used, and an unknown language still speaks (the default voice)."""
    listed = speechd.say("-o", "ttsd", "-L").stdout.split("\n")
    rows = [line.split() for line in listed[1:] if line.strip()]
    assert ["joe", "en-US", "none"] in rows, listed
    speechd.say("-w", "-y", "joe", SHORT)
    speechd.say("-w", "-l", "fr", "-y", "nonexistent", MEDIUM)
    recorder.wait_for_silence(0.5)
    recorded = recorder.samples()
    assert locate(recorded, expected(piper, SHORT)) is not None
    assert locate(recorded, expected(piper, MEDIUM)) is not None


@needs_speechd
@pytest.mark.piper
def test_char_and_key_are_spoken_as_words(
    speechd: SpeechDispatcher, recorder: Recorder, piper: PiperEngine
) -> None:
    speechd.say("-w", "-c", "a")
    speechd.say("-w", "-k", "shift_kp-enter")
    recorder.wait_for_silence(0.5)
    recorded = recorder.samples()
    letter = locate(recorded, expected(piper, "A"))
    key = locate(recorded, expected(piper, "shift keypad enter"))
    assert letter is not None and key is not None and key > letter


@needs_speechd
@pytest.mark.piper
def test_pause_stops_at_once_and_resume_says_the_rest_from_the_interrupted_sentence(
    speechd: SpeechDispatcher, recorder: Recorder, piper: PiperEngine
) -> None:
    """SSIP ``PAUSE``: the module stops at once and reports the last index mark the
    audio passed, then ``704 PAUSE``; on ``RESUME`` Speech Dispatcher sends the rest of
    the message from that mark, so the interrupted sentence is said again whole."""
    first, rest = LONG[: LONG.index("It goes")].strip(), LONG[LONG.index("It goes") :]
    ssip = SSIP(speechd.socket)
    try:
        ssip.speak(LONG)
        after = speechd.wait_log("-> 700-__spd_0", timeout=30)  # the second sentence began
        time.sleep(0.5)
        paused = time.monotonic()
        ssip.command("PAUSE self")
        after = speechd.wait_log("-> 704 PAUSE", after=after)
        recorder.wait_for_silence(0.5)
        recorded = recorder.samples()
        cut = last_audible(recorded)
        assert cut is not None
        # Speech Dispatcher hands SSIP's PAUSE to its speaking thread, which can take
        # a while to tell the module; from then on it is the module's and ttsd's work.
        received = command_received(speechd, "PAUSE")
        print(
            f"pause: silence {1000 * (recorder.time_of(cut) - received):.1f} ms after the "
            f"module got PAUSE, {1000 * (recorder.time_of(cut) - paused):.1f} ms after the "
            "SSIP command"
        )
        assert recorder.time_of(cut) - received < 0.050
        ssip.command("RESUME self")
        speechd.wait_log("-> 702 END", after=after, timeout=30)
    finally:
        ssip.close()
    recorder.wait_for_silence(0.5)
    recorded = recorder.samples()
    start = locate(recorded, expected(piper, first))
    again = locate(recorded, expected(piper, rest))
    assert start is not None, "the first sentence was not heard whole"
    assert again is not None and again > cut, "the rest was not said from its sentence"


# --- The module alone, on pipes, with the tone engine ---------------------------------

TONE = {"engine": "tone", "tone": {"ms_per_char": 20.0}}
TONE_LONG = "This tone goes on for a good while, long enough to be cut short. " * 3


@pytest.fixture
def module(tmp_path: Path) -> Iterator[Callable[..., ModuleProcess]]:
    """Start the module with a config: ``module({"TtsdPort": port})``."""
    started: list[ModuleProcess] = []

    def start(settings: dict[str, Any]) -> ModuleProcess:
        process = ModuleProcess(tmp_path / f"module{len(started)}", {"Debug": 1, **settings})
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def test_module_answers_every_command(
    start_daemon: Callable[..., Daemon], module: Callable[..., ModuleProcess], tmp_path: Path
) -> None:
    daemon = start_daemon(TONE)
    sd = module({"TtsdPort": daemon.port})
    sd.init()
    sd.send("LIST VOICES")
    sd.expect("200-default\tnone\tnone", "200 OK VOICE LIST SENT")  # the tone has no voices
    sd.send("SET", "rate", ".")
    sd.expect("203 OK RECEIVING SETTINGS", "302 ERROR BAD SYNTAX")
    sd.send("SET", "rate=fast", ".")
    sd.expect("203 OK RECEIVING SETTINGS", "303 ERROR INVALID PARAMETER OR VALUE")
    sd.send("STOP", "PAUSE")  # nothing plays: no reply, no event
    sd.send("CHAR")
    sd.expect("202 OK RECEIVING MESSAGE")
    sd.send("a", "b", ".")
    sd.expect("305 DATA MORE THAN ONE LINE")
    debug = tmp_path / "debug.log"
    sd.send(f"DEBUG ON {debug}")
    sd.expect("200 OK DEBUGGING ON")
    sd.send("DEBUG OFF")
    sd.expect("200 OK DEBUGGING OFF")
    assert "DEBUG ON" not in debug.read_text() and "<- DEBUG OFF" in debug.read_text()
    sd.send("FROBNICATE")
    sd.expect("300 ERR UNKNOWN COMMAND")
    assert sd.quit() == 0


def test_module_reports_begin_marks_and_end_as_the_audio_plays(
    start_daemon: Callable[..., Daemon], module: Callable[..., ModuleProcess], recorder: Recorder
) -> None:
    daemon = start_daemon(TONE)
    sd = module({"TtsdPort": daemon.port})
    sd.init()
    sd.set(rate=40, volume=-50, pitch=0, language="NULL", voice="male1")
    ssml = (
        '<speak><mark name="start"/>First &amp; one.<mark name="__spd_0"/> '
        'Second &lt;two&gt;.<mark name="__spd_1"/></speak>'
    )
    text = "First & one. Second <two>."
    sd.speak(ssml)
    begin, _ = sd.read_timed(), None
    assert begin[1] == "701 BEGIN"
    events = [sd.read_timed() for _ in range(5)]
    assert [line for _, line in events] == [
        "700-start",
        "700 INDEX MARK",
        "700-__spd_0",
        "700 INDEX MARK",
        "700-__spd_1",
    ]
    sd.expect("700 INDEX MARK", "702 END")
    # The first sentence's mark came when its audio began, the second's a sentence later.
    first_sentence = len(tone("First & one.")) / recorder.rate
    assert events[2][0] - events[0][0] > 0.8 * first_sentence
    recorder.wait_for_silence(0.2)
    # SET volume=-50 is job volume 0.5; the tone engine has no speed: rate ignored.
    assert locate(recorder.samples(), pa_volume(tone(text), 0.5)) is not None
    assert "rate: the tone engine has no speed control; ignored" in sd.log


def test_module_stop_silences_within_50ms(
    start_daemon: Callable[..., Daemon], module: Callable[..., ModuleProcess], recorder: Recorder
) -> None:
    daemon = start_daemon(TONE)
    sd = module({"TtsdPort": daemon.port})
    sd.init()
    sd.speak(TONE_LONG)
    sd.expect("701 BEGIN")
    wait_heard(recorder, 0.5)
    stop = sd.send("STOP")
    at, event = sd.read_timed()
    assert event == "703 STOP"
    recorder.wait_for_silence(0.3)
    last = last_audible(recorder.samples())
    assert last is not None
    cut = recorder.time_of(last) - stop
    print(f"module STOP: silence after {1000 * cut:.1f} ms, 703 after {1000 * (at - stop):.1f} ms")
    assert cut < 0.050
    # Ready for the next message at once.
    sd.speak("Next.")
    sd.expect("701 BEGIN", "702 END")


def test_module_pause_reports_the_marks_passed_then_704(
    start_daemon: Callable[..., Daemon], module: Callable[..., ModuleProcess], recorder: Recorder
) -> None:
    daemon = start_daemon(TONE)
    sd = module({"TtsdPort": daemon.port})
    sd.init()
    sentence = "A sentence of tone that lasts a while. "
    sd.speak(
        f'<speak>{sentence}<mark name="__spd_0"/>{sentence}<mark name="__spd_1"/>{sentence}</speak>'
    )
    sd.expect("701 BEGIN", "700-__spd_0", "700 INDEX MARK")
    time.sleep(0.3)
    pause = sd.send("PAUSE")
    sd.expect("704 PAUSE")
    recorder.wait_for_silence(0.3)
    assert recorder.time_of(last_audible(recorder.samples())) - pause < 0.050
    # The second mark was never reached: resuming from __spd_0 loses nothing.
    assert "700-__spd_1" not in [line for _, line in sd.lines]


def test_module_says_why_when_ttsd_is_unreachable_and_stays_prompt(
    module: Callable[..., ModuleProcess],
) -> None:
    port = free_port()
    sd = module({"TtsdPort": port})
    sd.init()
    asked = sd.send("LIST VOICES")
    sd.expect("200-default\tnone\tnone", "200 OK VOICE LIST SENT")  # still usable
    assert time.monotonic() - asked < 1.0
    sent = sd.send("SPEAK")
    sd.expect("202 OK RECEIVING MESSAGE")
    sd.send("<speak>Hello.</speak>", ".")
    answered, reply = sd.read_timed()
    assert reply == "200 OK SPEAKING" and answered - sent < 0.5
    sd.expect("701 BEGIN", "703 STOP")
    assert f"cannot reach ttsd at 127.0.0.1:{port}" in sd.log
    assert "start it with `ttsd serve`" in sd.log
    assert sd.quit() == 0


def test_module_reconnects_after_the_daemon_restarts(
    start_daemon: Callable[..., Daemon], module: Callable[..., ModuleProcess], recorder: Recorder
) -> None:
    port = free_port()
    first = start_daemon({**TONE, "port": port})
    sd = module({"TtsdPort": port})
    sd.init()
    sd.speak("One.")
    sd.expect("701 BEGIN", "702 END")
    first.stop()
    sd_log = sd.log
    deadline = time.monotonic() + 10
    while "connection to ttsd" not in sd_log and time.monotonic() < deadline:
        time.sleep(0.05)
        sd_log = sd.log
    start_daemon({**TONE, "port": port})  # as socket activation would, on the same port
    sd.speak("Two, after the restart.")
    sd.expect("701 BEGIN", "702 END")
    recorder.wait_for_silence(0.2)
    assert locate(recorder.samples(), tone("Two, after the restart.")) is not None


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate"
)
def test_module_starts_a_socket_activated_daemon_again_after_it_exited(
    tmp_path: Path, pulse: PulseServer, module: Callable[..., ModuleProcess], recorder: Recorder
) -> None:
    """The daemon behind ``tts.socket`` starts on the module's first connection; after
    it exited (idle exit, restart), the next message connects again and starts it."""
    port = free_port()
    config = write_config(tmp_path / "config.toml", TONE)
    env = {"TTS_CONFIG": str(config), **pulse.env()}
    activations = [SocketActivated(tmp_path / "first", port, env)]
    try:
        sd = module({"TtsdPort": port})
        sd.init()
        sd.speak("Started on demand.")
        sd.expect("701 BEGIN", "702 END", timeout=30)
        assert activations[0].started
        asyncio.run(terminate(port))
        activations[0].process.wait(15)
        activations.append(SocketActivated(tmp_path / "second", port, env))
        assert not activations[1].started
        sd.speak("Started again.")
        sd.expect("701 BEGIN", "702 END", timeout=30)
        assert activations[1].started
    finally:
        for activation in activations:
            activation.stop()
    recorder.wait_for_silence(0.2)
    recorded = recorder.samples()
    assert locate(recorded, tone("Started on demand.")) is not None
    assert locate(recorded, tone("Started again.")) is not None
    assert "connected to ttsd" in sd.log and sd.log.count("connected to ttsd") == 2


async def terminate(port: int) -> None:
    async with await Client.connect("127.0.0.1", port) as client:
        await client.terminate()


def test_module_reports_stop_when_the_daemon_dies_mid_message(
    start_daemon: Callable[..., Daemon], module: Callable[..., ModuleProcess]
) -> None:
    daemon = start_daemon(TONE)
    sd = module({"TtsdPort": daemon.port})
    sd.init()
    sd.speak(TONE_LONG)
    sd.expect("701 BEGIN")
    daemon.signal(signal.SIGKILL)
    sd.expect("703 STOP")
    assert "message 1 stopped: the connection to ttsd was lost" in sd.log


def test_speech_stops_when_the_module_dies(
    start_daemon: Callable[..., Daemon], module: Callable[..., ModuleProcess], recorder: Recorder
) -> None:
    """Jobs are queued with cancel_on_disconnect: a killed module leaves no speech."""
    daemon = start_daemon(TONE)
    sd = module({"TtsdPort": daemon.port})
    sd.init()
    sd.speak(TONE_LONG)
    sd.expect("701 BEGIN")
    wait_heard(recorder, 0.3)
    sd.process.kill()
    recorder.wait_for_silence(0.3, timeout=5)
    assert len(recorder.samples()) - last_audible(recorder.samples()) > 0


def test_module_sends_a_long_message_as_consecutive_jobs(
    start_daemon: Callable[..., Daemon], module: Callable[..., ModuleProcess], recorder: Recorder
) -> None:
    """Over ``TtsdMaxChars`` a message is cut at sentences into jobs queued back to
    back; Speech Dispatcher still sees one message: one BEGIN, its marks, one END."""
    daemon = start_daemon(TONE)
    sd = module({"TtsdPort": daemon.port, "TtsdMaxChars": 100})
    sd.init()
    one, two = "The first part is a sentence of tone. " * 2, "The second part, after it."
    sd.speak(f'<speak>{one}<mark name="__spd_0"/>{two}</speak>')
    sd.expect("701 BEGIN", "700-__spd_0", "700 INDEX MARK", "702 END", timeout=20)
    recorder.wait_for_silence(0.2)
    recorded = recorder.samples()
    first = locate(recorded, tone(one.strip()))
    assert first is not None
    after = first + len(tone(one.strip()))  # the tone depends on the length only
    assert locate(recorded[after:], tone(two)) is not None
    assert sd.log.count("queued") == 2


def test_module_keeps_up_with_a_burst_of_messages(
    start_daemon: Callable[..., Daemon], module: Callable[..., ModuleProcess], recorder: Recorder
) -> None:
    """A key held down in a screen reader: SPEAK then STOP, over and over, faster than
    ttsd's request-rate limit. Every message gets its reply and exactly one final
    event, and the last one plays."""
    daemon = start_daemon(TONE)
    sd = module({"TtsdPort": daemon.port})
    sd.init()
    for i in range(40):
        sd.speak(f"Line {i} of a document.")
        sd.send("STOP")
        events = [sd.read()]
        while events[-1] not in ("702 END", "703 STOP"):
            events.append(sd.read())
        assert events[0] == "701 BEGIN" and events.count("701 BEGIN") == 1, events
    sd.speak("The last line.")
    sd.expect("701 BEGIN", "702 END")
    recorder.wait_for_silence(0.2)
    assert locate(recorder.samples(), tone("The last line.")) is not None


# --- Pure functions ---------------------------------------------------------------------


def test_strip_ssml_keeps_the_text_and_the_marks() -> None:
    got = strip_ssml(
        '<?xml version="1.0"?><speak>Hello <emphasis>big</emphasis> world.'
        '<mark name="__spd_0"/> A &amp; B &lt;c&gt; &#233;t&eacute;.<!-- note -->'
        "<break time='1s'/>Next<p>para</p></speak>"
    )
    assert got.text == "Hello big world. A & B <c> été. Next para"
    assert got.marks == [(16, "__spd_0")]
    assert strip_ssml("no markup & no entity").text == "no markup & no entity"
    assert strip_ssml('<mark name="a>b"/>x').marks == [(0, "a>b")]


def test_characters_and_keys_become_words() -> None:
    assert [char_text(c) for c in ("a", "Z", "7", ".", " ", "é", "€", "dot")] == [
        "A",
        "Z",
        "7",
        "dot",
        "space",
        "É",
        "euro sign",
        "dot",
    ]
    assert key_text("shift_kp-enter") == "shift keypad enter"
    assert key_text("control_alt_delete") == "control alt delete"
    assert key_text("shift_a") == "shift A"
    assert key_text("f11") == "F 11"
    assert key_text("double-quote") == "double quote"
    assert spell("ab.") == "A, B, dot"


def test_rate_and_volume_mapping() -> None:
    assert length_scale(0) == 1.0
    assert length_scale(100) == pytest.approx(1 / 3, abs=1e-4)
    assert length_scale(-100) == 3.0
    assert length_scale(-50, base=1.2) == pytest.approx(1.2 * 3**0.5, abs=1e-4)
    assert length_scale(-100, base=4.0) == 5.0  # ttsd's upper bound
    assert [job_volume(v) for v in (100, 0, -50, -100)] == [1.0, 1.0, 0.5, 0.0]
    assert job_volume(-50, scale=0.8) == 0.4


def test_speak_fields_follow_the_engine() -> None:
    config = ModuleConfig(options={"noise_scale": 0})
    settings = SpeechSettings()
    settings.update({"rate": "50", "pitch": "20", "volume": "-20"})
    fields, notes = speak_fields(config, settings, "piper", ["joe"])
    assert fields == {
        "volume": 0.8,
        "priority": "message",
        "options": {"noise_scale": 0, "length_scale": length_scale(50)},
    }
    assert notes == ["pitch: no ttsd engine can change the pitch; ignored"]
    fields, notes = speak_fields(config, settings, "chatterbox", [])
    assert "length_scale" not in fields["options"]
    assert "rate: the chatterbox engine has no speed control; ignored" in notes


def test_voice_choice_and_listing() -> None:
    config = ModuleConfig.load(None)
    config.voices = [("de", "male1", "thorsten"), ("de", "female1", "eva")]
    config.voice = "joe"
    available = ["joe", "eva", "thorsten", "en_GB-alan-medium"]
    assert config.choose_voice(available, "eva", None, "en") == "eva"  # by name first
    assert config.choose_voice(available, None, "female1", "de-DE") == "eva"
    assert config.choose_voice(available, None, "male2", "de") == "thorsten"
    assert config.choose_voice(available, None, None, "en-GB") == "en_GB-alan-medium"
    assert config.choose_voice(available, None, None, "en") == "joe"  # the default fits
    assert config.choose_voice(available, "bogus", None, "fr") == "joe"
    assert voice_lines(config, available) == [
        ("joe", "en-US", "none"),
        ("eva", "de", "none"),
        ("thorsten", "de", "none"),
        ("en_GB-alan-medium", "en-GB", "none"),
    ]
    assert [r[0] for r in voice_lines(config, available, "en")] == ["joe", "en_GB-alan-medium"]
    assert [r[0] for r in voice_lines(config, available, "en-gb")] == ["en_GB-alan-medium"]


def test_module_config_file(tmp_path: Path) -> None:
    path = tmp_path / "ttsd.conf"
    path.write_text(
        "# comment\n"
        'TtsdHost "localhost"\nTTSDPORT 12345\nTtsdOption "noise_scale" 0.5\n'
        'TtsdOption "speaker_id" 3\nAddVoice "en-US" "MALE1" "joe"\nTtsdVolume 0.7\n'
        "TtsdPriority important\nSomethingElse 1\n"
    )
    config = ModuleConfig.load(path)
    assert (config.host, config.port, config.volume, config.priority) == (
        "localhost",
        12345,
        0.7,
        "important",
    )
    assert config.options == {"noise_scale": 0.5, "speaker_id": 3}
    assert config.voices == [("en-US", "male1", "joe")]
    assert config.warnings == ["unknown setting 'somethingelse' ignored"]
    path.write_text("TtsdPort 1\nTtsdPriority urgent\n")
    with pytest.raises(ConfigError, match=r"ttsd.conf:2: TtsdPriority: must be one of"):
        ModuleConfig.load(path)
    assert ModuleConfig.load(tmp_path / "missing.conf").warnings[0].endswith("using the defaults")


def test_bad_config_fails_init_with_the_reason(tmp_path: Path) -> None:
    sd = ModuleProcess(tmp_path, {"TtsdPort": "many"})
    try:
        sd.send("INIT")
        assert sd.read().startswith("399-") and "TtsdPort" in sd.lines[0][1]
        sd.expect("399 ERR CANT INIT MODULE")
        assert sd.process.wait(10) == 1
    finally:
        sd.stop()


def test_long_messages_are_cut_at_sentences() -> None:
    text = "One sentence here. " * 20
    pieces = split_long(text, 100)
    assert "".join(piece for _, piece in pieces) == text.rstrip() or all(
        text[offset : offset + len(piece)] == piece for offset, piece in pieces
    )
    assert all(len(piece) <= 100 and piece.endswith(".") for _, piece in pieces[:-1])
    assert split_long("x" * 250, 100) == [(0, "x" * 100), (100, "x" * 100), (200, "x" * 50)]
