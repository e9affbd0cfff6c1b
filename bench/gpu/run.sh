#!/usr/bin/env bash
# The Chatterbox GPU benchmark in one go, for a machine without network access: install
# chatterbox-tts 0.1.7 and its missing pure-Python dependencies from the wheels in .whl/
# (bench/gpu/fetch_wheels.sh downloads them elsewhere) into a --target directory, check
# that the library imports and its watermarker loads, then run bench/chatterbox_gpu.py on
# random full-size weights. Everything goes to $OUT: chatterbox_gpu.json (rewritten after
# each measurement, so a run cut short still reports what it measured), chatterbox_gpu.log
# and chatterbox_gpu.md (the table). Meant to finish within 8 minutes on one H100/H200.
#
#   bash bench/gpu/run.sh                      # on the GPU machine, from the repo root
#   bash bench/gpu/run.sh --quick --device cpu # dry run (tiny weights) anywhere
#
# Environment: PYTHON (python3), WHEELS (.whl), SITE (/tmp/ttsd-site), OUT
# (/tmp/ttsd-bench-out), BENCH_TIMEOUT (seconds for the benchmark process, 420), BUDGET
# (seconds after which it starts no new phase, 360). Arguments go to the benchmark.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root" || exit 2
python=${PYTHON:-python3}
wheels=${WHEELS:-.whl}
site=${SITE:-/tmp/ttsd-site}
out=${OUT:-/tmp/ttsd-bench-out}
mkdir -p "$out"
exec > >(tee -a "$out/chatterbox_gpu.log") 2>&1
started=$(date +%s)
say() { echo "[run.sh $(($(date +%s) - started))s] $*"; }

say "host $(hostname), $(nproc) CPUs; python: $("$python" --version 2>&1)"
command -v nvidia-smi >/dev/null &&
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader
"$python" - <<'PY'
import importlib.metadata as md
for name in ("torch", "torchaudio", "transformers", "numpy", "scipy", "numba", "setuptools"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} missing")
PY

count=$(find "$wheels" -maxdepth 1 -type f -name '*.whl' 2>/dev/null | wc -l)
if [ "$count" -eq 0 ]; then
    say "no wheels in $wheels: run bench/gpu/fetch_wheels.sh where PyPI is reachable"
    exit 2
fi
say "installing $count wheels into $site"
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$wheels"/*.whl || { say "pip install failed"; exit 2; }
export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

say "import check"
"$python" - <<'PY' || { say "chatterbox does not import here: see above"; exit 2; }
import chatterbox.mtl_tts, chatterbox.tts, chatterbox.tts_turbo  # noqa: F401
import perth
assert perth.PerthImplicitWatermarker is not None, "perth cannot import pkg_resources"
import torch
from ttsd.engines.chatterbox import ChatterboxEngine  # noqa: F401
print(f"  chatterbox imports; CUDA: {torch.cuda.is_available()}")
PY

say "benchmark (timeout ${BENCH_TIMEOUT:-420} s, budget ${BUDGET:-360} s)"
timeout -k 10 "${BENCH_TIMEOUT:-420}" "$python" bench/chatterbox_gpu.py \
    --json "$out/chatterbox_gpu.json" --markdown "$out/chatterbox_gpu.md" \
    --budget-s "${BUDGET:-360}" "${@:---device=cuda}"
status=$?
say "benchmark exit status $status (124: stopped by the timeout; the JSON holds what was measured)"
exit "$status"
