#!/usr/bin/env bash
# Builds oomph with the LibTorch backend (`run.backend = "tch"` / `"tch-cuda"`) in one command:
#
#   scripts/setup-tch.sh                      # cargo build --release --features tch
#   scripts/setup-tch.sh test --test it tch   # any cargo command, with the feature and the env
#
# It installs PyTorch 2.9.0 (the version torch-sys 0.22 expects) from the Python package
# registry into .venv-tch (once; about 6.7 GB with the CUDA libraries PyTorch's Linux wheel
# depends on, 1-2 minutes on a fast link), then builds with the `tch` feature against the
# libtorch inside that wheel (LIBTORCH_USE_PYTORCH=1; torch-sys's own download is never used).
# The binary finds libtorch through an rpath (build.rs): no LD_LIBRARY_PATH to export, as long
# as .venv-tch stays where it is. PYTHON (default python3) is the interpreter for the venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${OOMPH_TCH_VENV:-$PWD/.venv-tch}"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    echo "setup-tch: creating $venv" >&2
    "$python" -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.9.0")' 2>/dev/null; then
    echo "setup-tch: installing torch==2.9.0 into $venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check torch==2.9.0
fi
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(build --release)
cmd="${args[0]}"
echo "setup-tch: cargo $cmd --features tch ${args[*]:1}" >&2
VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" LIBTORCH_USE_PYTORCH=1 cargo "$cmd" --features tch "${args[@]:1}"
