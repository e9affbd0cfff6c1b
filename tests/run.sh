#!/usr/bin/env bash
# Run the test suite on a fresh Debian/Ubuntu machine: installs what the tests need
# (system packages as root or via sudo, a virtual environment in .venv), then pytest.
# Idempotent: a second run only runs the tests. Arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

packages=(pulseaudio pulseaudio-utils libsystemd-dev pkg-config systemd nodejs chromium curl
          speech-dispatcher speech-dispatcher-espeak-ng espeak-ng)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" ||
        missing+=("$package")
done
if ((${#missing[@]})); then
    echo "tests/run.sh: installing ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

venv=${TTSD_VENV:-$root/.venv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
fi
extras=${TTSD_EXTRAS:-piper,chatterbox,systemd,dev,bench}
"$venv/bin/pip" install -q -e ".[$extras]"

exec "$venv/bin/python" -m pytest "$@"
