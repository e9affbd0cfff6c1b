#!/bin/sh
# Install ttsd for the current user: a virtual environment, the systemd user units,
# and `ttsd` on the PATH. Safe to run again (it updates in place); --uninstall
# removes what it installed (your config in ~/.config/ttsd is kept).
#
#   ./install.sh [--with-chatterbox | --without-chatterbox] [--source DIR] [--serve]
#                [--python PYTHON] [--pip-args "ARGS"] [--system-site-packages]
#                [--speechd | --speechd-default]
#   ./install.sh --uninstall
set -eu

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

Options:
  --with-chatterbox       also install the Chatterbox engine (large; wants a GPU)
  --without-chatterbox    never install it (default: only when nvidia-smi finds a GPU)
  --source DIR            install ttsd from DIR (default: the directory of this script)
  --python PYTHON         Python 3.10+ to build the environment with (default: python3)
  --pip-args "ARGS"       extra arguments for pip install (e.g. "--find-links DIR")
  --system-site-packages  let the environment see the Python's own packages
  --serve                 then run the daemon in the foreground (for machines without a
                          systemd user manager: containers, SSH sessions)
  --no-system-packages    never install Debian packages (pacat), only say what is missing
  --speechd               also install the Speech Dispatcher module (spd-say, Orca and
                          browsers can then speak with ttsd's voices; docs/speechd.md)
  --speechd-default       the same, and make ttsd Speech Dispatcher's default module
  --uninstall             remove the environment, the units, the ttsd link and the
                          Speech Dispatcher module with every line added for it
EOF
}

say() { printf '%s\n' "ttsd install: $*"; }
die() { printf '%s\n' "ttsd install: error: $*" >&2; exit 1; }

here=$(cd "$(dirname "$0")" && pwd)
source_dir=$here
python=${PYTHON:-python3}
chatterbox=auto
pip_args=
venv_args=
action=install
serve=no
system_packages=yes
speechd=no

while [ $# -gt 0 ]; do
    case $1 in
        --with-chatterbox) chatterbox=yes ;;
        --without-chatterbox) chatterbox=no ;;
        --source) [ $# -ge 2 ] || die "--source needs a directory"; source_dir=$2; shift ;;
        --source=*) source_dir=${1#*=} ;;
        --python) [ $# -ge 2 ] || die "--python needs a program"; python=$2; shift ;;
        --python=*) python=${1#*=} ;;
        --pip-args) [ $# -ge 2 ] || die "--pip-args needs a value"; pip_args=$2; shift ;;
        --pip-args=*) pip_args=${1#*=} ;;
        --system-site-packages) venv_args=--system-site-packages ;;
        --uninstall) action=uninstall ;;
        --serve) serve=yes ;;
        --no-system-packages) system_packages=no ;;
        --speechd) [ "$speechd" = default ] || speechd=yes ;;
        --speechd-default) speechd=default ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

[ -n "${HOME:-}" ] || die "HOME is not set"
data_dir=${XDG_DATA_HOME:-$HOME/.local/share}/ttsd
venv=$data_dir/venv
unit_dir=${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user
bin_dir=$HOME/.local/bin
link=$bin_dir/ttsd
# Marks the units as ours, so --uninstall never removes someone else's tts.service.
marker="# Installed by ttsd install.sh"

# Speech Dispatcher (0.11+): its user config directory, and the user module directory
# it scans for sd_* programs when its config loads no module explicitly.
sd_conf_dir=${XDG_CONFIG_HOME:-$HOME/.config}/speech-dispatcher
sd_conf=$sd_conf_dir/speechd.conf
sd_module_conf=$sd_conf_dir/modules/ttsd.conf
sd_module_dir=$(dirname "${XDG_DATA_HOME:-$HOME/.local/share}")/libexec/speech-dispatcher-modules
sd_module_link=$sd_module_dir/sd_ttsd
sd_system_conf=${TTSD_SPEECHD_SYSTEM_CONF:-/etc/speech-dispatcher/speechd.conf}
# Each line install.sh adds to speechd.conf follows this comment line; a speechd.conf
# it created starts with sd_created (and the checksum of what it copied).
sd_added="# Added by ttsd install.sh (install.sh --uninstall removes the next line)"
sd_created="# Created by ttsd install.sh from"

# True when a systemd user manager answers for this user. is-system-running only
# asks; it never starts a manager.
user_manager_running() {
    command -v systemctl >/dev/null 2>&1 || return 1
    state=$(systemctl --user is-system-running 2>/dev/null) || true
    case $state in
        running|degraded|starting|initializing|maintenance) return 0 ;;
        *) return 1 ;;
    esac
}

# Escape a path for ExecStart=: "%" is a specifier, and quotes allow spaces.
unit_path() {
    printf '"%s"' "$(printf '%s' "$1" | sed 's/%/%%/g; s/\\/\\\\/g; s/"/\\"/g')"
}

# speechd.conf without the lines install.sh added (each after an sd_added line).
speechd_conf_without_ours() {
    awk -v mark="$sd_added" '$0 == mark { skip = 1; next } skip { skip = 0; next } { print }' "$1"
}

# True if speechd.conf $1 loads modules with AddModule: Speech Dispatcher then looks
# for no other module, so ours must be named there too.
speechd_loads_explicitly() {
    [ -f "$1" ] && grep -Eq '^[[:space:]]*AddModule[[:space:]]' "$1"
}

# Create the user's speechd.conf from the system one, as `spd-conf -u` does, with
# relative Include paths made absolute (the clients/ directory stays the system's).
speechd_create_conf() {
    [ -f "$sd_conf" ] && return 0
    if [ ! -f "$sd_system_conf" ]; then
        say "warning: $sd_system_conf not found (is speech-dispatcher installed?);"
        say "not creating $sd_conf"
        return 1
    fi
    mkdir -p "$sd_conf_dir"
    system_dir=$(dirname "$sd_system_conf")
    copy=$(awk -v dir="$system_dir" '
        /^[[:space:]]*Include[[:space:]]+"[^\/"]/ { sub(/"/, "\"" dir "/") }
        { print }' "$sd_system_conf")
    sum=$(printf '%s\n' "$copy" | sha256sum | cut -d' ' -f1)
    { printf '%s %s (sha256 %s)\n' "$sd_created" "$sd_system_conf" "$sum"
      printf '%s\n' "$copy"; } > "$sd_conf.new"
    mv "$sd_conf.new" "$sd_conf"
    say "created $sd_conf from $sd_system_conf"
}

# Append "$1" to the user's speechd.conf as a line of ours.
speechd_add_line() {
    printf '%s\n%s\n' "$sd_added" "$1" >> "$sd_conf"
    say "added to $sd_conf: $1"
}

speechd_install() {
    sd_ttsd=$venv/bin/sd_ttsd
    [ -x "$sd_ttsd" ] || die "$sd_ttsd was not installed"
    command -v speech-dispatcher >/dev/null 2>&1 \
        || say "note: speech-dispatcher is not installed; the module is ready for when it is"

    # The module's own config: kept if it exists (it may hold your changes).
    if [ -f "$sd_module_conf" ]; then
        say "keeping $sd_module_conf"
    else
        mkdir -p "$(dirname "$sd_module_conf")"
        { echo "$marker"; cat "$source_dir/speechd/ttsd.conf"; } > "$sd_module_conf"
        say "installed $sd_module_conf"
    fi

    # Found by Speech Dispatcher's module discovery, when its config uses discovery.
    if [ -e "$sd_module_link" ] && [ ! -L "$sd_module_link" ]; then
        say "$sd_module_link exists and is not a link; leaving it"
    else
        mkdir -p "$sd_module_dir"
        ln -sfn "$sd_ttsd" "$sd_module_link"
        say "linked $sd_module_link -> $sd_ttsd"
    fi

    # speechd.conf: our lines are rewritten on every run (the path may have changed).
    if [ -f "$sd_conf" ] && grep -qxF "$sd_added" "$sd_conf"; then
        speechd_conf_without_ours "$sd_conf" > "$sd_conf.new"
        mv "$sd_conf.new" "$sd_conf"
    fi
    effective=$sd_system_conf
    [ -f "$sd_conf" ] && effective=$sd_conf
    if speechd_loads_explicitly "$effective"; then
        if grep -Eq '^[[:space:]]*AddModule[[:space:]]+"?ttsd"?[[:space:]]' "$effective" \
            && [ "$effective" = "$sd_conf" ]; then
            say "$sd_conf already loads a module named ttsd; leaving it"
        elif speechd_create_conf; then
            speechd_add_line "AddModule \"ttsd\" \"$sd_ttsd\" \"ttsd.conf\""
        fi
    else
        say "Speech Dispatcher discovers its modules: no AddModule line needed"
    fi
    if [ "$speechd" = default ] && speechd_create_conf; then
        speechd_add_line 'DefaultModule "ttsd"'
    fi
    say "Speech Dispatcher loads modules when it starts: restart it to use ttsd"
    say "(for example: pkill -u \"\$USER\" -x speech-dispatcher; it starts again on demand)"
    say "then try: spd-say -o ttsd \"Hello from ttsd\""
}

speechd_uninstall() {
    if [ -L "$sd_module_link" ] && [ "$(readlink "$sd_module_link")" = "$venv/bin/sd_ttsd" ]; then
        rm -f "$sd_module_link"
        say "removed $sd_module_link"
        rmdir "$sd_module_dir" "$(dirname "$sd_module_dir")" 2>/dev/null || true
    fi
    if [ -f "$sd_module_conf" ] && [ "$(head -n 1 "$sd_module_conf")" = "$marker" ]; then
        rm -f "$sd_module_conf"
        say "removed $sd_module_conf"
    fi
    if [ -f "$sd_conf" ]; then
        if grep -qxF "$sd_added" "$sd_conf"; then
            speechd_conf_without_ours "$sd_conf" > "$sd_conf.new"
            mv "$sd_conf.new" "$sd_conf"
            say "removed the lines ttsd added to $sd_conf"
        fi
        first=$(head -n 1 "$sd_conf")
        case $first in
            "$sd_created "*)
                recorded=$(printf '%s\n' "$first" | sed -n 's/.*(sha256 \([0-9a-f]*\))$/\1/p')
                now=$(tail -n +2 "$sd_conf" | sha256sum | cut -d' ' -f1)
                if [ "$recorded" = "$now" ]; then
                    rm -f "$sd_conf"
                    say "removed $sd_conf (created by install.sh, unchanged since)"
                else
                    say "keeping $sd_conf: it changed since install.sh created it"
                fi
                ;;
        esac
    fi
    rmdir "$sd_conf_dir/modules" "$sd_conf_dir" 2>/dev/null || true
}

uninstall() {
    speechd_uninstall
    if user_manager_running; then
        say "stopping and disabling tts.socket and tts.service"
        systemctl --user disable --now tts.socket >/dev/null 2>&1 || true
        systemctl --user stop tts.service >/dev/null 2>&1 || true
    fi
    for unit in tts.socket tts.service; do
        if [ -f "$unit_dir/$unit" ] && grep -qF "$marker" "$unit_dir/$unit"; then
            rm -f "$unit_dir/$unit"
            say "removed $unit_dir/$unit"
        fi
    done
    if user_manager_running; then
        systemctl --user daemon-reload
    fi
    if [ -L "$link" ] && [ "$(readlink "$link")" = "$venv/bin/ttsd" ]; then
        rm -f "$link"
        say "removed $link"
    fi
    if [ -d "$data_dir" ]; then
        rm -rf "$data_dir"
        say "removed $data_dir"
    fi
    say "done (settings in ${XDG_CONFIG_HOME:-$HOME/.config}/ttsd are kept)"
}

want_chatterbox() {
    case $chatterbox in
        yes) return 0 ;;
        no) return 1 ;;
    esac
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'
}

# ttsd plays through pacat (Debian's pulseaudio-utils), which talks to PulseAudio or
# PipeWire's pulse server. Install it when it is missing and we can (root or sudo).
ensure_pacat() {
    command -v pacat >/dev/null 2>&1 && return 0
    sudo=
    [ "$(id -u)" = 0 ] || sudo="sudo -n"
    if [ "$system_packages" = yes ] && command -v apt-get >/dev/null 2>&1 \
        && { [ -z "$sudo" ] || sudo -n true 2>/dev/null; }; then
        say "installing pacat (pulseaudio-utils)"
        $sudo apt-get install -y -qq pulseaudio-utils >/dev/null 2>&1 \
            || { $sudo apt-get update -qq >/dev/null 2>&1 \
                 && $sudo apt-get install -y -qq pulseaudio-utils >/dev/null 2>&1; } \
            || say "warning: could not install pulseaudio-utils; ttsd needs its pacat to play"
    else
        say "warning: pacat is missing; install pulseaudio-utils (or your distribution's"
        say "PulseAudio client tools): ttsd needs it to play"
    fi
}

install() {
    [ -f "$source_dir/pyproject.toml" ] || die "$source_dir has no pyproject.toml (use --source)"
    source_dir=$(cd "$source_dir" && pwd)
    command -v "$python" >/dev/null 2>&1 || die "$python not found (use --python)"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "$python is older than 3.10"
    for unit in tts.socket tts.service; do
        if [ -f "$unit_dir/$unit" ] && ! grep -qF "$marker" "$unit_dir/$unit"; then
            die "$unit_dir/$unit exists and was not installed by ttsd; move it away first"
        fi
    done

    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
        say "creating a virtual environment in $venv"
        rm -rf "$venv"
        mkdir -p "$data_dir"
        # shellcheck disable=SC2086  # venv_args is one option or none
        "$python" -m venv $venv_args "$venv" || die "cannot create $venv (is python3-venv installed?)"
    else
        say "updating the virtual environment in $venv"
    fi

    extras=piper,systemd
    if want_chatterbox; then
        extras=$extras,chatterbox
        say "installing with Chatterbox (large: torch with CUDA)"
    fi
    # shellcheck disable=SC2086  # pip_args are words for pip
    if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $pip_args \
        "$source_dir[$extras]"; then
        # systemd-python compiles against libsystemd; without its headers, ttsd still
        # runs and logs to the journal through stderr, only without JOB=/CLIENT= fields.
        say "installing with systemd-python failed; retrying without it"
        say "(for structured journal fields install libsystemd-dev and pkg-config, then rerun)"
        extras=$(printf '%s' "$extras" | sed 's/,systemd//')
        # shellcheck disable=SC2086
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $pip_args \
            "$source_dir[$extras]" || die "pip install failed"
    fi
    [ -x "$venv/bin/ttsd" ] || die "$venv/bin/ttsd was not installed"
    ensure_pacat

    mkdir -p "$unit_dir" "$bin_dir"
    exec_start="ExecStart=$(unit_path "$venv/bin/ttsd") serve"
    { echo "$marker"; cat "$source_dir/systemd/tts.socket"; } > "$unit_dir/tts.socket.new"
    { echo "$marker"; cat "$source_dir/systemd/tts.service"; } \
        | LINE=$exec_start awk '/^ExecStart=/ { print ENVIRON["LINE"]; next } { print }' \
        > "$unit_dir/tts.service.new"
    mv "$unit_dir/tts.socket.new" "$unit_dir/tts.socket"
    mv "$unit_dir/tts.service.new" "$unit_dir/tts.service"
    say "installed $unit_dir/tts.socket and tts.service"

    if [ -e "$link" ] && [ ! -L "$link" ]; then
        say "$link exists and is not a link; leaving it (ttsd is $venv/bin/ttsd)"
    else
        ln -sfn "$venv/bin/ttsd" "$link"
        say "linked $link -> $venv/bin/ttsd"
    fi
    case ":$PATH:" in
        *":$bin_dir:"*) ;;
        *) say "note: $bin_dir is not on your PATH; add it to use the ttsd command" ;;
    esac
    [ "$speechd" = no ] || speechd_install

    if user_manager_running; then
        systemctl --user daemon-reload
        systemctl --user enable --now tts.socket
        # A running daemon keeps the old code until it exits; restart it if it runs.
        systemctl --user try-restart tts.service
        say "tts.socket is enabled and listening on 127.0.0.1:11500"
        say "logs: journalctl --user -u tts"
    else
        say "no systemd user manager is running, so nothing was enabled."
        if [ "$serve" = no ]; then
            say "run the daemon in the foreground with: $link serve"
            say "(or, in a session with a user manager: systemctl --user enable --now tts.socket)"
        fi
    fi
}

$action
if [ "$action" = install ] && [ "$serve" = yes ]; then
    if user_manager_running; then
        # tts.socket holds the port now; a second daemon could not bind it.
        say "not starting another daemon: systemd starts it on the first connection"
    else
        say "starting the daemon in the foreground (Ctrl-C stops it)"
        exec "$venv/bin/ttsd" serve
    fi
fi
