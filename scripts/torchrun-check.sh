#!/usr/bin/env bash
# The launcher mode under the real torchrun (PyTorch 2.9.0's, from the venv of
# scripts/setup-tch.sh): two processes of OOMPH_BINARY train configs/digits-mlp-debug.toml
# with rank 1 dying at step 12 (a simulated failed host allocation, SIGABRT); rank 0 must stop
# at once, torchrun's --max-restarts must start the gang again, and the restarted gang must
# resume from rank 0's newest checkpoint and end on the losses of one uninterrupted process.
#
# usage: scripts/torchrun-check.sh OOMPH_BINARY
# (OOMPH_TCH_VENV: the venv, as for setup-tch.sh; default .venv-tch)
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OOMPH_BINARY" >&2
  exit 2
fi
BIN=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${OOMPH_TCH_VENV:-$ROOT/.venv-tch}
TORCHRUN=$VENV/bin/torchrun
if [ ! -x "$TORCHRUN" ]; then
  echo "torchrun-check: no torchrun at $TORCHRUN. Fix: scripts/setup-tch.sh --venv-only installs PyTorch 2.9.0 (and torchrun) there." >&2
  exit 2
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"
RECIPE=configs/digits-mlp-debug.toml
ARGS=(--plain --set training.steps=40 --set checkpoint.every=4 --set distributed.ranks=2 --set distributed.timeout_s=600)
DIE=(--set 'faults.die_at=[{step=12, phase="backward", rank=1}]')
env -u RANK -u WORLD_SIZE "$BIN" train "$RECIPE" --run-dir "$WORK/one" --no-supervise --plain \
  --set training.steps=40 --set checkpoint.every=4 >"$WORK/one.log" 2>&1 \
  || { cat "$WORK/one.log"; echo "torchrun-check: the one-process reference failed" >&2; exit 1; }
set +e
timeout 600 "$TORCHRUN" --no-python --nproc-per-node 2 --max-restarts 2 --master-port $((29500 + RANDOM % 2000)) \
  "$BIN" train "$RECIPE" --run-dir "$WORK/two" "${ARGS[@]}" "${DIE[@]}" >"$WORK/two.log" 2>&1
rc=$?
set -e
python3 - "$WORK" "$rc" <<'PY'
import json, sys
work, rc = sys.argv[1], int(sys.argv[2])
log = open(f"{work}/two.log").read()
failures = []
if rc != 0:
    failures.append(f"torchrun exited {rc}")
if "rank 1 is gone" not in log:
    failures.append("rank 0 did not name rank 1 when it died")
try:
    one, two = (json.load(open(f"{work}/{n}/summary.json")) for n in ("one", "two"))
except OSError as e:
    one, two = None, None
    failures.append(f"no summary: {e}")
if two:
    if two.get("ranks") != 2:
        failures.append(f"ranks {two.get('ranks')} != 2")
    if (two["restarts"], two["resumes"]) != (1, 1):
        failures.append(f"restarts/resumes {two['restarts']}/{two['resumes']} != 1/1")
    if two["samples_seen"] != one["samples_seen"]:
        failures.append("samples_seen differs from one process")
    d = abs(two["valid_loss"] - one["valid_loss"])
    print(f"torchrun-check: 2 processes (rank 1 killed at step 12, restarted by torchrun) vs 1: "
          f"valid loss {two['valid_loss']:.6f} vs {one['valid_loss']:.6f} (|diff| {d:.1e})")
    if d > 1e-4:
        failures.append(f"valid loss differs from one process by {d:.1e}")
if failures:
    print(log[-6000:])
    print("torchrun-check FAILED: " + "; ".join(failures))
    sys.exit(1)
print("torchrun-check passed")
PY
