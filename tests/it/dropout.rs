//! Dropout does not depend on how the effective batch is split: the built-in models draw their
//! masks keyed by `(seed, step, sample, call site)` (`oomph::train::random`), so an undisturbed
//! run, a run whose micro-batch shrinks after simulated OOMs and a run with micro-batch 5 end
//! with the same parameters, within the accumulation tolerance. A control run without dropout
//! shows that dropout really acts (it moves the parameters by far more than the tolerance).

use crate::accumulation::TOL;
use crate::util::*;
use oomph::train::Summary;
use tempfile::TempDir;

fn mlp() -> TestRecipe {
    TestRecipe::mlp()
        .set("run.seed", 11)
        .set("model.hidden", [32, 32])
        .set("model.dropout", 0.1)
        .set("training.steps", 20)
        .set("training.effective_batch", 48)
        .set("training.eval_every", 0)
        .set("micro_batch.initial", 48)
        .set("micro_batch.grow_after", 100000)
}

/// tiny-gpt-debug (configs/tiny-gpt-debug.toml), smaller still, with dropout.
fn gpt() -> TestRecipe {
    TestRecipe::gpt(&root().join("data/shakespeare_tragedies.txt"))
        .set("run.seed", 7)
        .set("model.seq_len", 16)
        .set("model.dropout", 0.1)
        .set("data.valid_fraction", 0.02)
        .set("training.steps", 8)
        .set("training.effective_batch", 10)
        .set("training.eval_every", 0)
        .set("micro_batch.initial", 12)
        .set("micro_batch.grow_after", 100000)
}

fn run(r: &TestRecipe, overrides: &[&str]) -> (TempDir, Summary) {
    let d = tempfile::tempdir().unwrap();
    let s = train_builtin(r.recipe(overrides), d.path()).unwrap();
    (d, s)
}

/// Undisturbed vs simulated OOMs (capacity `cap`) vs micro-batch 5 vs no dropout.
fn split_invariant(r: &TestRecipe, steps: usize, batch: usize, cap: usize) {
    let (full, s) = run(r, &[]);
    assert_eq!((s.steps, s.oom_events, s.micro_batch_final), (steps, 0, batch), "{s:?}");

    let cap_set = format!("faults.simulate_memory_samples={cap}");
    let (oom, s) = run(r, &[&cap_set]);
    assert_eq!(s.samples_seen, (steps * batch) as u64, "{s:?}");
    assert!(s.oom_events >= 1 && s.micro_batch_final <= cap, "the simulated OOMs did not shrink the split: {s:?}");

    let (m5, s) = run(r, &["micro_batch.initial=5", "micro_batch.max=5"]);
    assert_eq!((s.steps, s.micro_batch_final), (steps, 5), "{s:?}");

    let (d_oom, d_m5) = (max_param_diff(full.path(), oom.path()), max_param_diff(full.path(), m5.path()));
    eprintln!("max |diff| vs undisturbed: simulated OOMs {d_oom:e}, micro 5 {d_m5:e}");
    assert!(d_oom < TOL && d_m5 < TOL, "dropout depends on the split: simulated OOMs {d_oom:e}, micro 5 {d_m5:e}");

    // Dropout is really on: without it the parameters end elsewhere.
    let (off, _) = run(r, &["model.dropout=0.0"]);
    let d_off = max_param_diff(full.path(), off.path());
    eprintln!("max |diff| dropout 0.1 vs 0: {d_off:e}");
    assert!(d_off > 100.0 * TOL, "dropout 0.1 and 0 end {d_off:e} apart: is dropout on?");
}

#[test]
fn mlp_dropout_is_the_same_however_the_batch_is_split() {
    split_invariant(&mlp(), 20, 48, 12);
}

#[test]
fn gpt_dropout_is_the_same_however_the_batch_is_split() {
    split_invariant(&gpt(), 8, 10, 4);
}
