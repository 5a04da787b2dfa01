#!/usr/bin/env bash
# The GPU check: on any machine with an NVIDIA GPU, from the repository root,
#   bash benchmarks/gpu_check.sh
# makes a virtual environment with the `gpu` and `test` extras, shows the
# devices jax finds, runs the accelerator-relevant tests (models, engine,
# sharding) on the GPU, times the GPT benchmark and trains GPT-3 Small on
# synthetic data in bfloat16 for a few steps, printing each MFU. Every stage
# runs; the exit status is the number of stages that failed (0: all passed).
#
# Settings (environment): VENV (default .venv-gpu), PYTHON (default python3),
# GPT_STEPS (default 30), WORKDIR (default runs/gpu_check).
# Stages are functions called through `stage`, which shellcheck cannot follow.
# shellcheck disable=SC2329
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
VENV=${VENV:-.venv-gpu}
PYTHON=${PYTHON:-python3}
GPT_STEPS=${GPT_STEPS:-30}
WORKDIR=${WORKDIR:-runs/gpu_check}
PY=$VENV/bin/python
FAILED=0

stage() {
  local name=$1
  shift
  echo "== $name: $*"
  if "$@"; then
    echo "== $name: ok"
  else
    echo "== $name: FAILED (exit status $?)"
    FAILED=$((FAILED + 1))
  fi
}

setup() {
  [[ -x $PY ]] || "$PYTHON" -m venv "$VENV" || return 1
  "$PY" -m pip install -q --upgrade pip &&
    "$PY" -m pip install -q -e '.[gpu,test]'
}

devices() {
  JAX_PLATFORMS=cuda "$PY" -c 'import jax; print(jax.devices()); assert jax.default_backend() == "gpu"'
}

# The tests pin jax to CPU unless JAX_PLATFORMS says otherwise.
accelerator_tests() {
  JAX_PLATFORMS=cuda "$PY" -m pytest -q -m "not slow" --timeout=1800 \
    tests/test_models_transformer.py tests/test_models_attention.py \
    tests/test_models_vision.py tests/test_models_rnn.py \
    tests/test_engine.py tests/test_sharding.py
}

gpt_benchmark() {
  local out=$WORKDIR/bench_gpt.json
  mkdir -p "$WORKDIR" &&
    JAX_PLATFORMS=cuda "$PY" -m benchmarks.run --only=gpt --strategies=none --json="$out" &&
    "$PY" -c 'import json, sys
r = [r for r in json.load(open(sys.argv[1])) if r["benchmark"] == "gpt"][0]
print(f"GPT benchmark (float32): {r[\"jax_per_s\"]:.1f} sequences/s, MFU {r[\"mfu\"]:.1%} of the measured float32 matmul peak")' "$out"
}

gpt3_bf16() {
  local dir=$WORKDIR/gpt3_small_bf16
  rm -rf "$dir"
  JAX_PLATFORMS=cuda "$PY" -m experiments.gpt3 --workdir="$dir" \
    --config.model.size=gpt3-small --config.model.dtype=bfloat16 \
    --config.synthetic_data=true --config.parallelism=none --config.batch_size=8 \
    --config.num_train_steps="$GPT_STEPS" --config.warmup_steps=0 --config.log_every_steps=10 \
    --config.eval_every_steps="$GPT_STEPS" --config.checkpoint_every_steps="$GPT_STEPS" \
    --config.progress_bar=false &&
    "$PY" -c 'import json, sys
s = json.load(open(sys.argv[1]))
print(f"GPT-3 Small bfloat16: {s[\"examples_per_s\"]:.1f} sequences/s, MFU {s.get(\"mfu\", float(\"nan\")):.1%}")' "$dir/summary.json"
}

stage setup setup
stage devices devices
stage tests accelerator_tests
stage gpt_benchmark gpt_benchmark
stage gpt3_bf16 gpt3_bf16
echo "gpu_check: $FAILED stage(s) failed"
exit "$FAILED"
