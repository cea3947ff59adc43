#!/usr/bin/env bash
# oomph on LibTorch against oomph on flex and against a plain PyTorch loop, on the shipped
# recipes of the built-in models, in one run (BENCHMARKS.md, section 9).
#
# usage: benches/tch-vs-pytorch.sh [ROUNDS] [THREADS]     (default: 3 rounds, every CPU)
#
# Needs `scripts/setup-tch.sh` first (target/release/oomph with the tch feature, .venv-tch;
# OOMPH_TCH_VENV names another venv; Python 3.11+ for tomllib). Each recipe runs with
# evaluation and checkpoints off and the micro-batch fixed at the effective batch (one chunk
# per step, as the plain loop); a run's step time is the median of its steps after the first
# 20 (oomph: from metrics.jsonl; PyTorch: benches/pytorch/plain_loop.py). The three loops
# take turns within each round; the table gives the median over the rounds and, for the
# ratios, [min..max]. libtorch and PyTorch get the same thread count (flex uses its own pool).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
threads="${2:-$(nproc)}"
venv="${OOMPH_TCH_VENV:-$PWD/.venv-tch}"
py="$venv/bin/python"
bin=target/release/oomph
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
median_step_ms() { # metrics.jsonl
    "$py" - "$1" <<'PY'
import json, statistics, sys
w = [json.loads(l)["wall_s"] for l in open(sys.argv[1]) if '"kind":"step"' in l]
print(f"{statistics.median(b - a for a, b in zip(w[20:], w[21:])) * 1e3:.4f}")
PY
}
echo "threads: $threads (libtorch and PyTorch); $rounds rounds; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
recipes=(digits-mlp-debug digits-mlp tiny-gpt-debug tiny-gpt)
for ((round = 0; round < rounds; round++)); do
    for r in "${recipes[@]}"; do
        recipe=configs/$r.toml
        read -r eff steps < <("$py" -c "import tomllib; t = tomllib.load(open('$recipe', 'rb'))['training']; \
print(t['effective_batch'], max(t.get('steps', 100), 120))")
        common=(--no-supervise --plain --set training.steps="$steps" --set training.eval_every=0
                --set checkpoint.every=0 --set micro_batch.initial="$eff" --set micro_batch.grow_after=100000)
        for backend in cpu tch; do
            OMP_NUM_THREADS=$threads "$bin" train "$recipe" --run-dir "$work/run" "${common[@]}" \
                --set "run.backend=\"$backend\"" --resume never --overwrite >"$work/log" 2>&1 \
                || { cat "$work/log" >&2; exit 1; }
            echo "$r $backend $(median_step_ms "$work/run/metrics.jsonl")" >>"$work/times"
        done
        ms=$("$py" benches/pytorch/plain_loop.py "$recipe" "$steps" 20 "$threads" 2>"$work/log" | awk '/median_ms/ {print $2}')
        [ -n "$ms" ] || { cat "$work/log" >&2; exit 1; }
        echo "$r pytorch $ms" >>"$work/times"
    done
done
"$py" - "$work/times" "${recipes[@]}" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
print()
print("| recipe | flex ms/step | tch ms/step | plain PyTorch ms/step | flex / tch | tch / PyTorch |")
print("|---|---|---|---|---|---|")
for r in sys.argv[2:]:
    t = {b: [float(x) for name, bb, x in rows if name == r and bb == b] for b in ("cpu", "tch", "pytorch")}
    med = {b: statistics.median(v) for b, v in t.items()}
    def spread(a, b):
        q = [x / y for x, y in zip(t[a], t[b])]
        return f"{statistics.median(q):.3f} [{min(q):.3f}..{max(q):.3f}]"
    print(f"| {r} | {med['cpu']:.3f} | {med['tch']:.3f} | {med['pytorch']:.3f} | {spread('cpu', 'tch')} | {spread('tch', 'pytorch')} |")
PY
