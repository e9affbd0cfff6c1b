#!/usr/bin/env bash
# Download the wheels bench/gpu/run.sh installs on the GPU machine (which has no network)
# into DIR (default: .whl in the repository root), for CPython PYVER (default 3.12) on
# x86-64 Linux, and keep DIR out of git (.git/info/exclude). Run it where pip reaches PyPI:
#
#   bash bench/gpu/fetch_wheels.sh            # -> .whl/, about 10 MiB
#   bash bench/gpu/fetch_wheels.sh .whl-py311 3.11   # for a dry run on Python 3.11
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dir=${1:-.whl}
pyver=${2:-3.12}
pip=${PIP:-python3 -m pip}
cd "$root"
mkdir -p "$dir"
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx "/$dir/" "$exclude" 2>/dev/null || echo "/$dir/" >>"$exclude"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
mapfile -t wanted < <(grep -v '^\s*#' bench/gpu/wheels.txt | grep -v '^\s*$')
# shellcheck disable=SC2086
$pip download --quiet --no-deps --only-binary=:all: --python-version "$pyver" \
    --implementation cp "${platforms[@]}" -d "$dir" "${wanted[@]}"
count=$(find "$dir" -type f -name '*.whl' | wc -l)
echo "fetch_wheels: $count wheels, $(du -sh "$dir" | cut -f1) in $dir" >&2
if [ "$count" -ne "${#wanted[@]}" ]; then
    echo "fetch_wheels: expected ${#wanted[@]} wheels (one per line of wheels.txt)" >&2
    exit 1
fi
