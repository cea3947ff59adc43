#!/usr/bin/env bash
# oomph on LibTorch against oomph on flex and against a plain PyTorch loop, on the shipped
# recipes of the built-in models, in one run (BENCHMARKS.md, "LibTorch backend").
#
# usage: benches/tch-vs-pytorch.sh [THREADS]      (default: every CPU)
#
# Needs `scripts/setup-tch.sh` first (target/release/oomph with the tch feature, .venv-tch;
# OOMPH_TCH_VENV names another venv). Each recipe runs with evaluation and checkpoints off
# and the micro-batch fixed at the effective batch (one chunk per step, as the plain loop);
# the step time is the median of the steps after the first 20 (oomph: from metrics.jsonl;
# PyTorch: benches/pytorch/plain_loop.py). libtorch and PyTorch get the same thread count.
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-$(nproc)}"
venv="${OOMPH_TCH_VENV:-$PWD/.venv-tch}"
bin=target/release/oomph
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
median_step_ms() { # metrics.jsonl
    python3 - "$1" <<'PY'
import json, statistics, sys
w = [json.loads(l)["wall_s"] for l in open(sys.argv[1]) if '"kind":"step"' in l]
print(f"{statistics.median(b - a for a, b in zip(w[20:], w[21:])) * 1e3:.3f}")
PY
}
echo "threads: $threads (libtorch and PyTorch); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo
echo "| recipe | flex ms/step | tch ms/step | plain PyTorch ms/step | flex / tch | tch / PyTorch |"
echo "|---|---|---|---|---|---|"
for r in digits-mlp-debug digits-mlp tiny-gpt-debug tiny-gpt; do
    recipe=configs/$r.toml
    eff=$(python3 -c "import tomllib,sys; print(tomllib.load(open('$recipe','rb'))['training']['effective_batch'])")
    steps=$(python3 -c "import tomllib,sys; print(max(tomllib.load(open('$recipe','rb'))['training'].get('steps', 100), 120))")
    common=(--no-supervise --plain --set training.steps="$steps" --set training.eval_every=0 --set checkpoint.every=0
            --set micro_batch.initial="$eff" --set micro_batch.grow_after=100000)
    declare -A ms=()
    for backend in cpu tch; do
        OMP_NUM_THREADS=$threads "$bin" train "$recipe" --run-dir "$work/$r-$backend" "${common[@]}" \
            --set "run.backend=\"$backend\"" >"$work/$r-$backend.log" 2>&1
        ms[$backend]=$(median_step_ms "$work/$r-$backend/metrics.jsonl")
    done
    py=$("$venv/bin/python" benches/pytorch/plain_loop.py "$recipe" "$steps" 20 "$threads" 2>/dev/null | awk '/median_ms/ {print $2}')
    python3 -c "f,t,p=${ms[cpu]},${ms[tch]},$py; print(f'| {\"$r\"} | {f:.3f} | {t:.3f} | {p:.3f} | {f/t:.2f} | {t/p:.3f} |')"
done
