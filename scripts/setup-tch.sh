#!/usr/bin/env bash
# Builds oomph with the LibTorch backend (`run.backend = "tch"` / `"tch-cuda"`) in one command:
#
#   scripts/setup-tch.sh                        # cargo build --release --features tch
#   scripts/setup-tch.sh test --test it tch::   # any cargo command, with the feature and the env
#   scripts/setup-tch.sh --venv-only            # only install PyTorch (CI does it first, while
#                                               # the disk still has room for the download)
#
# It installs PyTorch 2.9.0 (the version torch-sys 0.22 expects) from the Python package
# registry into .venv-tch (once; PyTorch's Linux wheel brings the CUDA libraries: about 4 GB
# to download, 6.7 GB installed, 1-2 minutes on a fast link), then runs cargo with the `tch`
# feature against the libtorch inside that wheel (LIBTORCH_USE_PYTORCH=1, so torch-sys never
# downloads libtorch itself). The binaries of this package find libtorch through an rpath
# (build.rs): nothing to export, as long as .venv-tch stays where it is. PYTHON (default
# python3, 3.10 or later) makes the venv; OOMPH_TCH_VENV puts it elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${OOMPH_TCH_VENV:-$PWD/.venv-tch}"
python="${PYTHON:-python3}"
fail() { echo "setup-tch: $*" >&2; exit 2; }
if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
        || fail "$python is missing or older than 3.10 (PyTorch 2.9.0 has no wheel for it). Fix: PYTHON=python3.11 $0"
    echo "setup-tch: creating $venv" >&2
    # --clear repairs a venv a failed run left without pip.
    "$python" -m venv --clear "$venv" \
        || fail "$python -m venv failed. Fix: install Python's venv module (Debian, Ubuntu: apt install python3-venv)."
fi
if ! "$venv/bin/python" -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.9.0")' 2>/dev/null; then
    # The wheels (4 GB) and what they unpack to (6.7 GB) are both on disk before pip ends.
    need_gb=11
    free_gb=$(df -Pk "$venv" | awk 'NR == 2 { print int($4 / 1048576) }')
    [ "${free_gb:-0}" -ge "$need_gb" ] \
        || fail "installing torch==2.9.0 into $venv needs about $need_gb GB free on its disk and $(df -Ph "$venv" | awk 'NR == 2 { print $4 }') is free. Fix: free space there (cargo clean removes target/), or put the venv on a larger disk with OOMPH_TCH_VENV=/path/to/venv."
    echo "setup-tch: installing torch==2.9.0 into $venv (about 4 GB to download)" >&2
    "$venv/bin/python" -m pip install --no-cache-dir --no-compile --disable-pip-version-check torch==2.9.0 \
        | grep -E '^(Collecting|Successfully)' >&2 || true
    "$venv/bin/python" -c 'import torch' 2>/dev/null || fail "torch==2.9.0 did not install into $venv (see pip's output above)."
fi
[ "${1:-}" != "--venv-only" ] || exit 0
command -v c++ >/dev/null || fail "torch-sys compiles C++ and no c++ compiler is installed. Fix: apt install g++."
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(build --release)
cmd="${args[0]}"
echo "setup-tch: cargo $cmd --features tch ${args[*]:1}" >&2
VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" LIBTORCH_USE_PYTORCH=1 cargo "$cmd" --features tch "${args[@]:1}"
