"""The module's configuration file, Speech Dispatcher's ``SET`` values, and how they
become the fields of a ttsd ``speak`` request.

The configuration file is the one named in ``AddModule`` (``ttsd.conf``), in Speech
Dispatcher's syntax: one ``Name value`` per line, values optionally in double quotes,
``#`` comments, names case-insensitive (see ``docs/speechd.md`` for every setting).

Mapping (SSIP values run from -100 to 100, 0 being the voice's normal):

* ``rate`` -> Piper's ``length_scale`` (duration per phoneme), exponentially:
  ``length_scale = base * 3 ** (-rate / 100)``, so 100 speaks 3 times faster and
  -100 3 times slower, like the espeak module's 80-449 words per minute around 170.
  Other engines have no speed control: the rate is ignored (logged once).
* ``volume`` -> the job's volume (0.0-1.0): 0 and above are full volume (a module
  cannot play louder than the stream's 100 %), below 0 it falls linearly to silence at
  -100, times ``TtsdVolume``. ttsd's volume is PulseAudio's stream volume, a
  perceptual (cubic) scale.
* ``pitch`` and ``pitch_range``: no ttsd engine has them; ignored (logged once).
* ``synthesis_voice``, ``voice`` (``male1``...) and ``language`` choose a ttsd voice:
  see :meth:`ModuleConfig.choose_voice`.
* ``spelling_mode=on`` spells the text out; ``punctuation_mode`` and ``cap_let_recogn``
  are Speech Dispatcher's own business (it replaces symbols before the module sees
  the text).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ttsd.protocol.requests import PRIORITIES

#: The shipped Piper voice and its language (ttsd's ``voices`` reply has names only).
KNOWN_LANGUAGES = {"joe": "en-US"}

# Piper's voice files are named language_REGION-name-quality ("de_DE-thorsten-medium").
_PIPER_NAME = re.compile(r"^([a-z]{2,3})_([A-Z]{2})-")

#: SSIP voice types (``SET self VOICE_TYPE``), as Speech Dispatcher sends them.
VOICE_TYPES = (
    "male1",
    "male2",
    "male3",
    "female1",
    "female2",
    "female3",
    "child_male",
    "child_female",
)


class ConfigError(Exception):
    """The module's configuration file is wrong; the message names file and line."""


def voice_language(name: str, declared: dict[str, str] | None = None) -> str:
    """The language of ttsd voice ``name``: declared by ``AddVoice``, known, from a
    Piper file name, else ``none`` (Speech Dispatcher's word for unknown)."""
    if declared and name in declared:
        return declared[name]
    if name in KNOWN_LANGUAGES:
        return KNOWN_LANGUAGES[name]
    match = _PIPER_NAME.match(Path(name).name)
    if match:
        return f"{match.group(1)}-{match.group(2)}"
    return "none"


def same_language(wanted: str, have: str) -> int:
    """2 if the tags are equal, 1 if the primary languages are (``en`` and ``en-GB``),
    else 0. Case and ``_``/``-`` do not matter."""
    wanted, have = wanted.lower().replace("_", "-"), have.lower().replace("_", "-")
    if wanted == have:
        return 2
    return int(wanted.split("-")[0] == have.split("-")[0])


@dataclass
class ModuleConfig:
    """Everything ``ttsd.conf`` can set; the defaults are used without a file."""

    #: ttsd's address; None: the client's defaults (TTS_HOST/TTS_PORT, ttsd's config,
    #: 127.0.0.1:11500).
    host: str | None = None
    port: int | None = None
    #: The daemon's token when it runs with ``auth = "token"`` (default: the client's).
    token: str | None = None
    #: Voice when Speech Dispatcher asks for none that ttsd has (None: ttsd's default).
    voice: str | None = None
    #: ttsd priority of the jobs (Speech Dispatcher orders its own messages itself).
    priority: str = "message"
    #: Engine options sent with every job (``TtsdOption "noise_scale" 0``).
    options: dict[str, Any] = field(default_factory=dict)
    #: Scale of the job volume, 0.0-1.0.
    volume: float = 1.0
    #: ``AddVoice "language" "voice type" "ttsd voice"`` entries, in order.
    voices: list[tuple[str, str, str]] = field(default_factory=list)
    #: Seconds without speech after which the connection is closed (0: never), so a
    #: socket-activated daemon may exit when idle.
    idle_disconnect: float = 60.0
    #: Seconds to wait for the daemon (a socket-activated one starts meanwhile).
    connect_timeout: float = 10.0
    #: Longest text sent in one job; longer messages become consecutive jobs.
    max_chars: int = 10000
    #: Log everything, whatever Speech Dispatcher's log level (``Debug 1``).
    debug: bool = False
    #: Problems that did not stop the module (unknown settings), for the log.
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path | None) -> ModuleConfig:
        """Read ``path``; a missing file means the defaults (logged by the caller)."""
        config = cls()
        if path is None:
            return config
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            config.warnings.append(f"{path}: no such file; using the defaults")
            return config
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from None
        for number, line in enumerate(lines, 1):
            try:
                words = shlex.split(line, comments=True)
            except ValueError as exc:
                raise ConfigError(f"{path}:{number}: {exc}") from None
            if words:
                try:
                    config._set(words[0].lower(), words[1:])
                except (ValueError, TypeError) as exc:
                    raise ConfigError(f"{path}:{number}: {words[0]}: {exc}") from None
        return config

    def _set(self, name: str, args: list[str]) -> None:
        def one() -> str:
            if len(args) != 1:
                raise ValueError(f"takes one value, got {len(args)}")
            return args[0]

        if name == "ttsdhost":
            self.host = one() or None
        elif name == "ttsdport":
            port = int(one())
            if not 0 < port < 65536:
                raise ValueError(f"{port} is not a port number")
            self.port = port
        elif name == "ttsdtoken":
            self.token = one() or None
        elif name == "ttsdvoice":
            self.voice = one() or None
        elif name == "ttsdpriority":
            value = one()
            if value not in PRIORITIES:
                raise ValueError(f"must be one of {', '.join(PRIORITIES)}")
            self.priority = value
        elif name == "ttsdoption":
            if len(args) != 2:
                raise ValueError('takes a name and a value: TtsdOption "noise_scale" 0')
            self.options[args[0]] = _option_value(args[1])
        elif name == "ttsdvolume":
            volume = float(one())
            if not 0.0 <= volume <= 1.0:
                raise ValueError("must be between 0.0 and 1.0")
            self.volume = volume
        elif name == "ttsdidledisconnect":
            self.idle_disconnect = max(0.0, float(one()))
        elif name == "ttsdconnecttimeout":
            self.connect_timeout = max(0.1, float(one()))
        elif name == "ttsdmaxchars":
            self.max_chars = max(100, int(one()))
        elif name == "addvoice":
            if len(args) != 3:
                raise ValueError('takes a language, a voice type and a voice: "en" "MALE1" "joe"')
            language, kind, voice = args
            if kind.lower() not in VOICE_TYPES:
                raise ValueError(f"voice type must be one of {', '.join(VOICE_TYPES)}")
            self.voices.append((language, kind.lower(), voice))
        elif name == "debug":
            self.debug = one() not in ("0", "")
        else:
            self.warnings.append(f"unknown setting {name!r} ignored")

    @property
    def declared_languages(self) -> dict[str, str]:
        """Voice -> language, from the ``AddVoice`` lines (the first one wins)."""
        languages: dict[str, str] = {}
        for language, _, voice in self.voices:
            languages.setdefault(voice, language)
        return languages

    def choose_voice(
        self,
        available: list[str],
        synthesis_voice: str | None,
        voice_type: str | None,
        language: str | None,
    ) -> str | None:
        """The ttsd voice for a message, or None for ttsd's default.

        In order: the voice named by ``SET SYNTHESIS_VOICE`` if ttsd has it; the
        ``AddVoice`` entry for the language and voice type (then for the language);
        a ttsd voice of that language; ``TtsdVoice``; ttsd's default. A voice or
        language ttsd does not have falls through, as Speech Dispatcher expects
        ("a bogus voice name still speaks").
        """
        if synthesis_voice and synthesis_voice in available:
            return synthesis_voice
        if language:
            ranked: list[tuple[int, int, str]] = []
            for order, (lang, kind, voice) in enumerate(self.voices):
                score = same_language(language, lang)
                if score and (not available or voice in available):
                    ranked.append((-(2 * score + (kind == voice_type)), order, voice))
            if ranked:
                return min(ranked)[2]
            declared = self.declared_languages
            scored = [(same_language(language, voice_language(v, declared)), v) for v in available]
            best = max((score for score, _ in scored), default=0)
            if best:
                # The closest match (the region too if any voice has it); among equals
                # the configured voice, else the first.
                matches = [v for score, v in scored if score == best]
                return self.voice if self.voice in matches else matches[0]
        return self.voice


def _option_value(raw: str) -> Any:
    """A config value as JSON when it parses (numbers, true/false), else the string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@dataclass
class SpeechSettings:
    """The values of Speech Dispatcher's last ``SET`` (they apply to later messages)."""

    rate: int = 0
    pitch: int = 0
    pitch_range: int = 0
    volume: int = 0
    voice_type: str | None = None
    language: str | None = None
    synthesis_voice: str | None = None
    spelling: bool = False
    punctuation_mode: str | None = None
    cap_let_recogn: str | None = None

    _INTS = ("rate", "pitch", "pitch_range", "volume")

    def update(self, values: dict[str, str]) -> list[str]:
        """Apply ``SET`` lines; return the names whose value is invalid (the rest
        apply). ``NULL`` clears a string setting."""
        bad = []
        for name, raw in values.items():
            if name in self._INTS:
                try:
                    setattr(self, name, max(-100, min(100, int(raw))))
                except ValueError:
                    bad.append(name)
                continue
            value = None if raw in ("NULL", "") else raw
            if name == "voice":
                self.voice_type = value.lower() if value else None
            elif name == "language":
                # "c" is the C locale: no language chosen.
                self.language = None if value is None or value.lower() == "c" else value
            elif name == "synthesis_voice":
                self.synthesis_voice = value
            elif name == "spelling_mode":
                self.spelling = value == "on"
            elif name == "punctuation_mode":
                self.punctuation_mode = value
            elif name == "cap_let_recogn":
                self.cap_let_recogn = value
            # Unknown names are accepted and ignored: newer servers may send more.
        return bad


def length_scale(rate: int, base: float = 1.0) -> float:
    """Piper's ``length_scale`` for SSIP ``rate`` (-100..100), within ttsd's 0.1-5.0."""
    return round(min(5.0, max(0.1, base * 3.0 ** (-rate / 100.0))), 4)


def job_volume(volume: int, scale: float = 1.0) -> float:
    """The job volume (0.0-1.0) for SSIP ``volume`` (-100..100)."""
    return round(scale * min(1.0, max(0.0, (volume + 100) / 100.0)), 4)


def speak_fields(
    config: ModuleConfig,
    settings: SpeechSettings,
    engine: str,
    voices: list[str],
) -> tuple[dict[str, Any], list[str]]:
    """The ``speak`` fields (``voice``, ``volume``, ``options``, ``priority``) for the
    current settings on ``engine``, and notes on what was not applied."""
    notes = []
    options = dict(config.options)
    if settings.rate:
        if engine in ("piper", "auto"):
            base = options.get("length_scale", 1.0)
            base = float(base) if isinstance(base, int | float) else 1.0
            options["length_scale"] = length_scale(settings.rate, base)
        else:
            notes.append(f"rate: the {engine} engine has no speed control; ignored")
    if settings.pitch or settings.pitch_range:
        notes.append("pitch: no ttsd engine can change the pitch; ignored")
    fields: dict[str, Any] = {
        "volume": job_volume(settings.volume, config.volume),
        "priority": config.priority,
    }
    voice = config.choose_voice(
        voices, settings.synthesis_voice, settings.voice_type, settings.language
    )
    if voice:
        fields["voice"] = voice
    if options:
        fields["options"] = options
    return fields, notes


def voice_lines(
    config: ModuleConfig,
    voices: list[str],
    language: str | None = None,
    variant: str | None = None,
) -> list[tuple[str, str, str]]:
    """``(name, language, variant)`` rows for ``LIST VOICES``, filtered as Speech
    Dispatcher's own modules filter them (a language matches its regional variants)."""
    declared = config.declared_languages
    rows = [(name, voice_language(name, declared), "none") for name in voices]
    if language:
        wanted = language.lower().replace("_", "-")
        rows = [r for r in rows if wanted in (r[1].lower(), r[1].lower().split("-")[0])]
        if variant:
            rows = [r for r in rows if r[2].lower() == variant.lower()]
    return rows
