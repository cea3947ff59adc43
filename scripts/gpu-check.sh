#!/usr/bin/env bash
# One prepared GPU check for oomph (see BENCHMARKS.md, "GPU").
#
# usage: scripts/gpu-check.sh OOMPH_BINARY OUT_DIR [--dry-run]
#
# OOMPH_BINARY is a prebuilt binary (`cargo build --release --features cuda`, stripped): the GPU
# machine needs no Rust toolchain and no network. It runs, on CUDA device 0:
#   (a) the gpt recipe with run.gpu_memory_limit = "8GiB" (an 80 GiB card behaves like an
#       8 GiB one: the rest is taken as ballast) and micro_batch.initial = the effective batch,
#       supervised: it must finish with OOM events, the effective batch unchanged and the loss
#       falling;
#   (b) the same with --no-supervise, to prove in-process recovery;
#   (c) a sweep of fixed micro-batches under the same limit (the oracle: the best one that fits)
#       and the adaptive run's throughput against it.
#   (d) with OOMPH_TCH_BINARY set to a binary built with `scripts/setup-tch.sh` (the `tch`
#       feature), (a) and (b) again on the LibTorch backend (`tch-cuda`, PyTorch's caching
#       allocator), which must also report the allocator's memory in its metrics. That binary
#       finds libtorch through its rpath, or through OOMPH_TCH_LIB (the `torch/lib` directory
#       of a PyTorch 2.9.0 on the GPU machine); a tch binary that cannot start (no libtorch)
#       fails the check, with the loader's reason.
#   (e) with a binary built with the `distributed` feature and at least two cards: every card
#       as one rank (`distributed.ranks`), the memory limit of (a) on rank 0's card only (one
#       card with less room: every rank must shrink with it), supervised; and the same without
#       the limit against one rank, for the scaling from 1 to N ranks.
#   (f) with at least two cards, any binary: every card as one process, started with the
#       variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) on
#       localhost, each process with the memory limit of (a) on its own card; it must finish
#       like (a), rank 0 writing the run.
# It prints one table and copies the run directories' small files to OUT_DIR.
# --dry-run does the same on the CPU with a tiny model and a simulated capacity (CI runs it;
# with OOMPH_TCH_BINARY, (d) runs on the tch CPU backend; (e) runs 2 ranks on the CPU, rank 1
# with room for 3 samples, when OOMPH_BINARY has the `distributed` feature; (f) runs 2
# processes on the CPU, rank 1 with room for 3 samples).
set -euo pipefail

if [ $# -lt 2 ]; then
  echo "usage: $0 OOMPH_BINARY OUT_DIR [--dry-run]" >&2
  exit 2
fi
BIN=$(realpath "$1")
OUT=$(mkdir -p "$2" && realpath "$2")
MODE=${3:-gpu}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"

if [ "$MODE" = "--dry-run" ]; then
  CARD="cpu (dry run, simulated capacity)"
  RECIPE=configs/tiny-gpt-debug.toml
  EFF=16
  COMMON=(--set run.backend=cpu --set training.steps=24 --set training.effective_batch=$EFF
          --set checkpoint.every=4 --set micro_batch.grow_after=4)
  CAP=(--set faults.simulate_memory_samples=5)
  SWEEP="16 8 6 4 3 2"
  TCH_BACKEND=tch
  NDEV=2
  DIST_CAP=(--set 'faults.simulate_memory_samples=[16, 3]')
else
  CARD=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1 || echo "unknown GPU")
  RECIPE=configs/tiny-gpt.toml
  EFF=256
  COMMON=(--set run.backend=cuda --set training.steps=60 --set training.effective_batch=$EFF
          --set model.n_layer=6 --set model.d_model=512 --set model.n_head=8 --set model.seq_len=256
          --set training.eval_every=0 --set checkpoint.every=20 --set micro_batch.grow_after=10)
  CAP=(--set 'run.gpu_memory_limit="8GiB"')
  SWEEP="256 128 96 64 48 32"
  TCH_BACKEND=tch-cuda
  NDEV=$(nvidia-smi -L 2>/dev/null | wc -l)
  DIST_CAP=("${CAP[@]}")
fi

run() { # name, extra args...
  run_with "$BIN" "$@"
}

run_with() { # binary, name, extra args...
  local bin=$1 name=$2; shift 2
  set +e
  "$bin" train "$RECIPE" --run-dir "$WORK/$name" --plain "${COMMON[@]}" "$@" >"$WORK/$name.log" 2>&1
  local rc=$?
  set -e
  echo "$rc" >"$WORK/$name.rc"
  return 0
}

run_procs() { # name, extra args...: $NDEV processes, one rank each, as torchrun starts them
  local name=$1; shift
  local port=$((29500 + RANDOM % 2000)) pids=() r rc=0
  for r in $(seq 0 $((NDEV - 1))); do
    RANK=$r WORLD_SIZE=$NDEV LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port TORCHELASTIC_RUN_ID=gpu-check \
      "$BIN" train "$RECIPE" --run-dir "$WORK/$name" --plain "${COMMON[@]}" "$@" >"$WORK/$name.rank$r.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do
    wait "$p" || rc=$?
  done
  echo "$rc" >"$WORK/$name.rc"
  cat "$WORK/$name".rank*.log >"$WORK/$name.log"
}

echo "oomph gpu-check: $CARD"
run adaptive "${CAP[@]}" --set micro_batch.initial=$EFF
run inprocess "${CAP[@]}" --set micro_batch.initial=$EFF --no-supervise
for m in $SWEEP; do
  run "fixed-$m" "${CAP[@]}" --set micro_batch.initial=$m --set micro_batch.min=$m --set micro_batch.max=$m --no-supervise
done

TCH="none"
if [ -n "${OOMPH_TCH_BINARY:-}" ]; then
  TCH_BIN=$(realpath "$OOMPH_TCH_BINARY")
  if [ -n "${OOMPH_TCH_LIB:-}" ]; then
    export LD_LIBRARY_PATH="$OOMPH_TCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  if ! "$TCH_BIN" --help >/dev/null 2>"$WORK/tch-start.err"; then
    TCH="unusable: $(head -1 "$WORK/tch-start.err" | cut -c1-200); set OOMPH_TCH_LIB to PyTorch 2.9.0's torch/lib"
  else
    TCH="$TCH_BACKEND"
    TCH_ARGS=(--set "run.backend=\"$TCH_BACKEND\"" "${CAP[@]}" --set micro_batch.initial=$EFF)
    run_with "$TCH_BIN" tch-adaptive "${TCH_ARGS[@]}"
    run_with "$TCH_BIN" tch-inprocess "${TCH_ARGS[@]}" --no-supervise
  fi
fi

DIST="one card"
if [ "$NDEV" -ge 2 ]; then
  if "$BIN" check "$RECIPE" "${COMMON[@]}" --set distributed.ranks=$NDEV >/dev/null 2>"$WORK/dist-check.err"; then
    DIST="$NDEV"
    run dist-1 --set micro_batch.initial=$EFF --no-supervise
    run dist-n "${DIST_CAP[@]}" --set distributed.ranks=$NDEV --set micro_batch.initial=$EFF
    run dist-n-free --set distributed.ranks=$NDEV --set micro_batch.initial=$EFF --no-supervise
  else
    DIST="not built in (the distributed feature)"
  fi
fi

PROCS="one card"
if [ "$NDEV" -ge 2 ]; then
  PROCS="$NDEV"
  run_procs dist-procs "${DIST_CAP[@]}" --set distributed.ranks=$NDEV --set micro_batch.initial=$EFF
fi

python3 - "$WORK" "$OUT" "$EFF" "$CARD" "$MODE" "$TCH" "$DIST" "$PROCS" $SWEEP <<'PY'
import json, os, shutil, statistics, sys
work, out, eff, card, mode, tch, dist, procs, sweep = (sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4],
                                                       sys.argv[5], sys.argv[6], sys.argv[7], sys.argv[8],
                                                       sys.argv[9:])
tch_runs = ["tch-adaptive", "tch-inprocess"] if tch in ("tch", "tch-cuda") else []
dist_runs = (["dist-n"] if dist.isdigit() else []) + (["dist-procs"] if procs.isdigit() else [])
failures = [f"libtorch backend {tch}"] if tch.startswith("unusable") else []

def load(name):
    d = os.path.join(work, name)
    rc = int(open(os.path.join(work, name + ".rc")).read().split()[0])
    steps, events = [], []
    for f, acc in (("metrics.jsonl", steps), ("events.jsonl", events)):
        p = os.path.join(d, f)
        if os.path.exists(p):
            for line in open(p):
                try:
                    acc.append(json.loads(line))
                except ValueError:
                    pass
    steps = [s for s in steps if s.get("kind") == "step"]
    summary = None
    if os.path.exists(os.path.join(d, "summary.json")):
        summary = json.load(open(os.path.join(d, "summary.json")))
    # Steady throughput: median samples/s over the second half of the steps.
    half = steps[len(steps) // 2:]
    thr = statistics.median([s["samples_per_sec"] for s in half]) if half else 0.0
    return dict(name=name, rc=rc, steps=steps, events=events, summary=summary, thr=thr, dir=d)

rows = []
oracle = None
for m in sweep:
    r = load("fixed-" + m)
    if r["rc"] == 0 and (oracle is None or r["thr"] > oracle["thr"]):
        oracle = dict(r, micro=int(m))
for name in ["adaptive", "inprocess"] + tch_runs + dist_runs:
    r = load(name)
    s = r["summary"]
    if r["rc"] != 0 or s is None:
        failures.append(f"{name}: exit {r['rc']} (see {name}.log)")
        rows.append((name, "-", "-", "-", "-", "-"))
        continue
    ooms = s["oom_events"] + sum(1 for e in r["events"] if e.get("kind") == "restart")
    if ooms == 0:
        failures.append(f"{name}: no OOM event: the limit did not bite")
    if s["samples_seen"] != s["steps"] * eff:
        failures.append(f"{name}: samples_seen {s['samples_seen']} != steps x effective")
    losses = [x["loss"] for x in r["steps"]]
    if not (len(losses) > 4 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3):
        failures.append(f"{name}: loss did not fall")
    if any(x != x for x in losses):
        failures.append(f"{name}: NaN loss")
    if name.startswith("tch") and mode != "--dry-run":
        if not any(x.get("mem_reserved") and x.get("mem_total") for x in r["steps"]):
            failures.append(f"{name}: no memory statistics in metrics.jsonl")
        if not any("backend tch-cuda:" in line for line in open(os.path.join(work, name + ".log"))):
            failures.append(f"{name}: the log does not name the tch-cuda backend")
    # The oracle ran on the burn backend: a LibTorch run is compared with the adaptive one; N
    # ranks under the limit with one rank under it.
    base = load("adaptive") if name.startswith("tch") or name.startswith("dist") else oracle
    ratio = r["thr"] / base["thr"] if base and base["thr"] else float("nan")
    rows.append((name, s["oom_events"], s["restarts"], s["micro_batch_final"], f"{s['recovery_s']:.2f}", f"{ratio:.3f}"))

print(f"card: {card}")
print(f"libtorch backend: {tch}")
print(f"ranks: {dist} (threads); {procs} (processes)")
print(f"oracle (best fixed micro-batch that fits): {oracle['micro'] if oracle else 'none'}"
      f" at {oracle['thr'] if oracle else 0:.0f} samples/s")
print(f"{'run':<13} {'ooms':>5} {'restarts':>8} {'final micro':>11} {'recovery s':>10} {'throughput':>15}")
print("  (throughput: a burn run's against the oracle, a tch run's against the burn adaptive run)")
for r in rows:
    print(f"{r[0]:<13} {r[1]:>5} {r[2]:>8} {r[3]:>11} {r[4]:>10} {r[5]:>15}")
for m in sweep:
    r = load("fixed-" + m)
    print(f"  fixed {m:>4}: exit {r['rc']}, {r['thr']:.0f} samples/s")
if "dist-n" in dist_runs:
    one, free = load("dist-1"), load("dist-n-free")
    for r in (one, free):
        if r["rc"] != 0:
            failures.append(f"{r['name']}: exit {r['rc']} (see {r['name']}.log)")
    scale = free["thr"] / one["thr"] if one["thr"] else float("nan")
    print(f"  scaling 1 -> {dist} ranks without a limit: {one['thr']:.0f} -> {free['thr']:.0f} samples/s ({scale:.2f}x)")
# Small files only.
extra = ["dist-1", "dist-n-free"] if "dist-n" in dist_runs else []
for name in ["adaptive", "inprocess"] + tch_runs + dist_runs + extra + ["fixed-" + m for m in sweep]:
    dst = os.path.join(out, name)
    os.makedirs(dst, exist_ok=True)
    for f in ("metrics.jsonl", "events.jsonl", "summary.json", "recipe.resolved.toml", "report.png"):
        p = os.path.join(work, name, f)
        if os.path.exists(p):
            shutil.copy(p, dst)
    log = os.path.join(work, name + ".log")
    if os.path.exists(log):
        shutil.copy(log, dst)
if failures:
    print("FAILED: " + "; ".join(failures))
    sys.exit(1)
print("gpu-check passed")
PY
