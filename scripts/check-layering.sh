#!/usr/bin/env bash
# Four invariants of ARCHITECTURE.md. The layering: the burn-free crates never depend on burn or
# cubecl, directly or through another crate, so a recipe can be checked, a policy tested, a
# run directory read and a report drawn wherever the crates build, without a device.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for crate in oomph-recipe oomph-sched oomph-data oomph-report oomph-rundir; do
    if ! tree=$(cargo tree --offline -p "$crate" -e normal,build --prefix none 2>&1); then
        echo "check-layering: cargo tree -p $crate failed:"
        echo "$tree"
        exit 1
    fi
    if bad=$(echo "$tree" | grep -E '^(burn|cubecl)[a-z0-9_-]* ' | sort -u) && [ -n "$bad" ]; then
        echo "check-layering: $crate depends on burn (it must stay burn-free):"
        echo "$bad"
        status=1
    else
        echo "check-layering: $crate is burn-free"
    fi
done
# The default build stays pure Rust: LibTorch (torch-sys, tch, burn-tch) comes only with the
# tch feature.
if torch=$(cargo tree --offline -p oomph -e normal,build --prefix none 2>&1 | grep -E '^(torch-sys|tch|burn-tch) ' | sort -u) \
    && [ -n "$torch" ]; then
    echo "check-layering: the default build depends on LibTorch (only the tch feature may):"
    echo "$torch"
    status=1
else
    echo "check-layering: the default build has no LibTorch"
fi
# Only the command line prints to stdout: libraries log through `tracing` and report
# progress through the `Observer` trait (stderr). Doc comments (`//!`, `///`) may show it.
if hits=$(grep -rnE '\bprint(ln)?!' crates/{recipe,sched,data,train,models,report,rundir}/src | grep -vE '^[^:]+:[0-9]+:\s*//') && [ -n "$hits" ]; then
    echo "check-layering: a library prints to stdout (only crates/cli may):"
    echo "$hits"
    status=1
else
    echo "check-layering: no library prints to stdout"
fi
# Errors are values until `main` prints them, once: no other line of the workspace writes
# "error:" to stderr (`main_with` in crates/cli/src/lib.rs is the one that does).
if hits=$(grep -rnE 'eprint(ln)?!\("error' crates/*/src src | grep -vE '^crates/cli/src/lib.rs:') && [ -n "$hits" ]; then
    echo "check-layering: an error is printed outside main (return it instead):"
    echo "$hits"
    status=1
elif [ "$(grep -cE 'eprint(ln)?!\("error' crates/cli/src/lib.rs)" != 1 ]; then
    echo "check-layering: crates/cli/src/lib.rs must print errors in one place (main_with)"
    status=1
else
    echo "check-layering: errors are printed once, by main"
fi
exit $status
