"""Settings: defaults, then the TOML file, then ``TTS_*`` environment, then flags.

Every top-level setting ``name`` can be set as ``name = ...`` in the config file, as
``TTS_NAME`` in the environment (except ``token``: ``TTS_TOKEN`` is the *clients'*
variable, so the daemon reads its token only from the file or the token file), and
as ``--name`` on ``ttsd serve``. Engine settings live in a table named after the
engine (``[piper]``, ``[chatterbox]``, ``[tone]``, ``[remote]``). A bad value raises
:class:`ConfigError` with one line naming the setting.

This module imports nothing of ttsd: every layer may read the configuration.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

#: Names accepted by the ``engine`` setting (``ttsd.engines`` builds each of them).
ENGINE_NAMES = ("auto", "piper", "chatterbox", "tone", "remote")


class ConfigError(Exception):
    """A setting has a bad value; the message names the setting and where it came from."""


def _xdg(name: str, fallback: str) -> Path:
    value = os.environ.get(name)
    return Path(value) if value else Path.home() / fallback


def config_home() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config") / "ttsd"


def cache_home() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / "ttsd"


@dataclasses.dataclass
class Config:
    """All daemon settings. Field docs are the user-facing descriptions."""

    host: str = "127.0.0.1"
    """Address to bind when not socket-activated."""
    port: int = 11500
    """TCP port of the WebSocket API."""
    engine: str = "auto"
    """``auto``, ``piper``, ``chatterbox``, ``tone`` (a test tone, not speech) or ``remote``
    (another machine's OpenAI-compatible speech endpoint, see docs/remote.md)."""
    voice: str = ""
    """Default voice of the engine (empty: the engine's own default)."""
    voices_dir: str = ""
    """Directory of voices (empty: ``$XDG_CONFIG_HOME/ttsd/voices``)."""
    sink: str = ""
    """PulseAudio sink to play on (empty: the default sink)."""
    media_role: str = "a11y"
    """PulseAudio ``media.role`` of the stream, used by the desktop to duck or route it."""
    volume: float = 1.0
    """Default playback volume of a job, 0.0-1.0."""
    latency_ms: int = 250
    """Target buffer of the playback stream. An abort kills the stream, so a larger buffer
    does not slow it; a smaller one underruns (audible gaps) on a busy machine."""
    chunk_chars: int = 300
    """Longest text chunk handed to the engine at once."""
    first_chunk_chars: int = 120
    """Longest first chunk of a job, kept short so speech starts sooner."""
    ahead_seconds: float = 30.0
    """How much generated audio may wait ahead of playback."""
    gapless: bool = True
    """Start a job's playback only once the measured engine speed says the rest will keep
    up (no gaps); false: start with the first piece (sooner, but a slow engine leaves
    gaps)."""
    max_text_length: int = 20000
    """Longest text accepted in one request (characters)."""
    max_queue: int = 100
    """Most jobs waiting or playing at once."""
    max_queue_per_client: int = 20
    """Most jobs one connection may have waiting or playing at once."""
    max_message_bytes: int = 1048576
    """Largest request frame accepted; a bigger one closes the connection with 1009."""
    max_connections: int = 100
    """Most WebSocket connections at once; more are refused with HTTP 503."""
    max_requests_per_second: float = 50.0
    """Requests per second one connection may send (bursts up to the same number)."""
    send_buffer_limit: int = 1048576
    """Bytes of unsent events a client may fall behind by before it is dropped."""
    allowed_origins: list[str] = dataclasses.field(default_factory=list)
    """Browser origins (``https://example.org``) allowed to connect; empty: none."""
    allowed_hosts: list[str] = dataclasses.field(default_factory=list)
    """Extra ``Host`` header names accepted besides loopback and the bound address."""
    auth: str = "none"
    """``none`` or ``token``: whether clients must present the token."""
    token: str = ""
    """The token (empty: read or create ``$XDG_RUNTIME_DIR/ttsd/token``)."""
    auth_timeout: float = 10.0
    """Seconds a client may take to authenticate before it is closed with 1008."""
    idle_exit: float = 600.0
    """Seconds with no clients and no jobs before the daemon exits (0: never)."""
    engine_unload: float = 0.0
    """Seconds with no jobs before the model is unloaded (0: never)."""
    text_format: str = "auto"
    """How ``speak`` reads text that does not say: ``auto`` (markdown when it looks
    like markdown), ``text`` or ``markdown`` (see docs/text.md)."""
    code_blocks: str = "summarize"
    """What code blocks in markdown become: ``summarize`` ("a code block of 12 lines in
    Python"), ``skip`` or ``read``."""
    emoji: str = "drop"
    """``drop`` emoji, or ``name`` them ("rocket")."""
    phrase_cache_mb: float = 32.0
    """MiB of synthesized audio kept so that repeated phrases start at once (0: off)."""
    max_synthesize_per_client: int = 2
    """``synthesize`` requests one connection may have in progress at once."""
    stall_timeout: float = 5.0
    """Seconds a playback stream may make no progress before its job fails
    (``playback_stalled``): a frozen sound server never hangs a job."""
    log_level: str = "info"
    """``debug``, ``info``, ``warning`` or ``error``."""
    engines: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Per-engine tables from the config file (``[piper]``, ``[chatterbox]``, ...)."""

    def engine_settings(self, name: str, *, shared_voice: bool = True) -> dict[str, Any]:
        """The settings an engine is built with: its table plus the shared voice settings.

        The remote engine's local ``fallback`` engine (``[remote] fallback = "piper"``)
        gets its own table (``[piper]``) as ``fallback_settings``, without the shared
        ``voice``: that names a voice of the remote server, not one of the fallback's.
        """
        settings = dict(self.engines.get(name, {}))
        if self.voice and shared_voice:
            settings.setdefault("voice", self.voice)
        settings.setdefault("voices_dir", self.voices_dir or str(config_home() / "voices"))
        if name == "chatterbox":
            settings.setdefault("cache_dir", str(cache_home()))
        fallback = settings.get("fallback") if name == "remote" else None
        if isinstance(fallback, str) and fallback in ENGINE_NAMES and fallback != name:
            settings["fallback_settings"] = self.engine_settings(fallback, shared_voice=False)
        return settings


_FIELDS = {f.name: f for f in dataclasses.fields(Config) if f.name != "engines"}
#: Settings that the environment cannot set (see the module docstring).
_NOT_FROM_ENV = frozenset({"token"})
_LOG_LEVELS = ("debug", "info", "warning", "error")
_CHOICES = {
    "text_format": ("auto", "text", "markdown"),
    "code_blocks": ("summarize", "skip", "read"),
    "emoji": ("drop", "name"),
}
_AUTH_MODES = ("none", "token")
_AT_LEAST_ONE = (
    "max_synthesize_per_client",
    "max_text_length",
    "max_queue",
    "max_queue_per_client",
    "max_connections",
    "max_requests_per_second",
)
_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+")


def _convert(name: str, raw: Any, origin: str) -> Any:
    """Convert ``raw`` (a TOML value or a string) to the type of setting ``name``."""
    default = getattr(Config(), name)
    where = f"{origin}: " if origin else ""
    try:
        if isinstance(default, list):
            value: Any = _string_list(raw)
        elif isinstance(default, bool):
            value = _boolean(raw)
        elif isinstance(default, int):
            if isinstance(raw, bool | float):
                raise ValueError
            value = int(raw)
        elif isinstance(default, float):
            if isinstance(raw, bool):
                raise ValueError
            value = float(raw)
        else:
            if not isinstance(raw, str):
                raise ValueError
            value = raw
    except (TypeError, ValueError):
        kind = type(default).__name__.replace("int", "an integer").replace("float", "a number")
        kind = {"str": "a string", "list": "a list of strings", "bool": "true or false"}.get(
            kind, kind
        )
        raise ConfigError(f"{where}{name} must be {kind}, got {raw!r}") from None
    _check(name, value, where)
    return value


def _boolean(raw: Any) -> bool:
    """A TOML boolean, or true/false, yes/no, on/off, 1/0 (environment, flags)."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(raw, str) and raw.strip().lower() in ("false", "no", "off", "0"):
        return False
    raise ValueError


def _string_list(raw: Any) -> list[str]:
    """A TOML array of strings, or a comma-separated string (environment, flags)."""
    if isinstance(raw, str):
        return [item.strip() for item in raw.split(",") if item.strip()]
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        return [item.strip() for item in raw]
    raise ValueError


def _check(name: str, value: Any, where: str) -> None:
    def fail(why: str) -> None:
        raise ConfigError(f"{where}{name} {why}, got {value!r}")

    if name == "port" and not 0 <= value <= 65535:
        fail("must be a port number 0-65535")
    if name == "engine" and value not in ENGINE_NAMES:
        fail(f"must be one of {', '.join(ENGINE_NAMES)}")
    if name == "log_level" and value not in _LOG_LEVELS:
        fail(f"must be one of {', '.join(_LOG_LEVELS)}")
    if name == "volume" and not 0.0 <= value <= 1.0:
        fail("must be between 0.0 and 1.0")
    if name in ("chunk_chars", "first_chunk_chars") and not 20 <= value <= 2000:
        fail("must be between 20 and 2000")
    if name == "latency_ms" and not 5 <= value <= 2000:
        fail("must be between 5 and 2000")
    if name in _AT_LEAST_ONE and not value >= 1:
        fail("must be at least 1")
    if name == "max_message_bytes" and value < 1024:
        fail("must be at least 1024")
    if name == "send_buffer_limit" and value < 4096:
        fail("must be at least 4096")
    if name == "auth" and value not in _AUTH_MODES:
        fail(f"must be one of {', '.join(_AUTH_MODES)}")
    if name == "token" and value and (len(value) < 16 or not value.isascii() or " " in value):
        # never echo a secret into a log
        raise ConfigError(f"{where}token must be at least 16 ASCII characters without spaces")
    if name == "allowed_origins":
        for origin in value:
            if origin != "null" and not _ORIGIN.fullmatch(origin):
                raise ConfigError(
                    f"{where}{name}: {origin!r} is not an origin like https://example.org:8080"
                )
    if name == "allowed_hosts" and any(not h or "/" in h or " " in h for h in value):
        fail("must be host names")
    if (
        name in ("ahead_seconds", "idle_exit", "engine_unload", "phrase_cache_mb")
        and not value >= 0
    ):
        fail("must be zero or more")
    for setting, choices in _CHOICES.items():
        if name == setting and value not in choices:
            fail(f"must be one of {', '.join(choices)}")
    if name == "stall_timeout" and not 0.5 <= value <= 600:
        fail("must be between 0.5 and 600 seconds")
    if name == "auth_timeout" and not 0 < value <= 3600:
        fail("must be more than 0 and at most 3600 seconds")
    if name == "host" and not value:
        fail("must not be empty")


def config_path(env: Mapping[str, str]) -> Path:
    """The config file to read: ``TTS_CONFIG`` or ``$XDG_CONFIG_HOME/ttsd/config.toml``."""
    explicit = env.get("TTS_CONFIG")
    return Path(explicit).expanduser() if explicit else config_home() / "config.toml"


def load_config(
    env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Config:
    """Build the effective :class:`Config`; raise :class:`ConfigError` on any bad value.

    ``overrides`` are command-line values (strings or typed) and win over everything.
    """
    env = os.environ if env is None else env
    config = Config()
    path = config_path(env)
    if path.is_file():
        try:
            table = tomllib.loads(path.read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from None
        for key, raw in table.items():
            if isinstance(raw, dict) and key in ENGINE_NAMES:
                config.engines[key] = dict(raw)
            elif key in _FIELDS:
                setattr(config, key, _convert(key, raw, str(path)))
            else:
                raise ConfigError(f"{path}: unknown setting {key!r}")
    elif "TTS_CONFIG" in env:
        raise ConfigError(f"TTS_CONFIG: no such file {path}")
    for key in _FIELDS.keys() - _NOT_FROM_ENV:
        raw = env.get(f"TTS_{key.upper()}")
        if raw is not None and raw != "":
            setattr(config, key, _convert(key, raw.strip(), f"TTS_{key.upper()}"))
    for key, raw in (overrides or {}).items():
        if raw is not None:
            setattr(config, key, _convert(key, raw, f"--{key.replace('_', '-')}"))
    return config
