//! Checkpoints and resume: a run stopped at step k and resumed is bit-identical to an
//! uninterrupted one; damaged checkpoints are skipped; changed recipes are refused with a
//! diff; `--resume` and `inspect` behave.

use crate::util::*;
use oomph::train::{EvalRecord, EventLine, Observer, Resume, StepRecord, Summary, TrainError};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Dropout, AdamW moments, a cosine schedule with warmup, gradient clipping, shuffling over
/// several epochs and a micro-batch split: everything a resume must restore.
fn base() -> TestRecipe {
    TestRecipe::mlp()
        .set("run.seed", 11)
        .set("model.hidden", [32])
        .set("model.dropout", 0.2)
        .synthetic(300, 8, 3)
        .set("optimizer.grad_clip_norm", 1.0)
        .cosine(5)
        .set("lr_schedule.final_lr_fraction", 0.1)
        .set("training.effective_batch", 48)
        .set("training.eval_every", 10)
        .set("micro_batch.initial", 20)
        .set("micro_batch.grow_after", 7)
        .set("checkpoint.every", 5)
        .set("checkpoint.keep", 3)
}
/// Asks the run to stop after step `at`, as a first Ctrl-C would.
struct StopAt {
    at: usize,
    flag: Arc<AtomicBool>,
}

impl Observer for StopAt {
    fn start(&mut self, _: usize, _: usize, _: &[String]) {}
    fn step(&mut self, r: &StepRecord, _: usize) {
        if r.step == self.at {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
    fn eval(&mut self, _: &EvalRecord) {}
    fn event(&mut self, _: &EventLine) {}
    fn finish(&mut self, _: &Summary) {}
}

fn interrupted_at(dir: &Path, at: usize, overrides: &[&str]) {
    let r = base().recipe(overrides);
    let data = data_for(&r);
    let mut s = session(r, dir);
    let flag = Arc::new(AtomicBool::new(false));
    s.observer = Box::new(StopAt { at, flag: flag.clone() });
    s.stop = flag;
    match train_session(s, &data) {
        Err(TrainError::Interrupted { step }) => assert_eq!(step, at),
        other => panic!("expected an interruption at {at}, got {other:?}"),
    }
}

#[test]
fn stopped_and_resumed_is_bit_identical() {
    let full = tempfile::tempdir().unwrap();
    train_builtin(base().recipe(&[]), full.path()).unwrap();
    let d = tempfile::tempdir().unwrap();
    interrupted_at(d.path(), 13, &[]);
    let s = train_builtin(base().recipe(&[]), d.path()).unwrap();
    assert_eq!(s.steps, 30);
    assert_eq!(s.resumes, 1);
    assert_same_bits(full.path(), d.path(), "stopped at 13 and resumed");
    // metrics.jsonl holds each step once, as if never interrupted.
    assert_eq!(step_lines(d.path()), (1..=30).collect::<Vec<_>>());
}

#[test]
fn resume_from_a_periodic_checkpoint_replays_the_lost_steps_exactly() {
    let full = tempfile::tempdir().unwrap();
    train_builtin(base().recipe(&[]), full.path()).unwrap();
    let d = tempfile::tempdir().unwrap();
    interrupted_at(d.path(), 13, &[]);
    // As if the process died after step 13 without its exit checkpoint: step-10 is the newest.
    std::fs::remove_dir_all(d.path().join("checkpoints/step-13")).unwrap();
    let s = train_builtin(base().recipe(&[]), d.path()).unwrap();
    assert_eq!(s.steps, 30);
    assert_same_bits(full.path(), d.path(), "resumed from step 10");
}

#[test]
fn a_damaged_newest_checkpoint_is_skipped_with_a_warning() {
    let full = tempfile::tempdir().unwrap();
    train_builtin(base().recipe(&[]), full.path()).unwrap();
    for damage in ["truncate", "flip"] {
        let d = tempfile::tempdir().unwrap();
        interrupted_at(d.path(), 13, &[]);
        let victim = d.path().join("checkpoints/step-13/model.mpk");
        let mut bytes = std::fs::read(&victim).unwrap();
        if damage == "truncate" {
            bytes.truncate(bytes.len() / 2);
        } else {
            let i = bytes.len() / 2;
            bytes[i] ^= 0x40;
        }
        std::fs::write(&victim, bytes).unwrap();
        let s = train_builtin(base().recipe(&[]), d.path()).unwrap();
        assert_eq!(s.steps, 30);
        let skipped = events(d.path(), "checkpoint_skipped");
        assert_eq!(skipped.len(), 1, "{damage}");
        let resumed = events(d.path(), "resume");
        assert_eq!(resumed[0]["from_step"], 10, "{damage}: fell back to step 10");
        assert_same_bits(full.path(), d.path(), damage);
    }
}

#[test]
fn a_changed_recipe_is_refused_with_a_diff_and_allowed_changes_pass() {
    let d = tempfile::tempdir().unwrap();
    interrupted_at(d.path(), 6, &[]);
    let err = train_builtin(base().recipe(&["optimizer.lr=0.5", "model.hidden=[8]"]), d.path()).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.exit_code(), 2, "{msg}");
    assert!(msg.contains("optimizer.lr") && msg.contains("0.5") && msg.contains("model.hidden"), "{msg}");
    // Steps, cadence and micro-batch bounds may change.
    let s = train_builtin(base().recipe(&["training.steps=12", "checkpoint.every=3", "micro_batch.max=24"]), d.path())
        .unwrap();
    assert_eq!(s.steps, 12);
}

#[test]
fn resume_flags_and_inspect_on_the_binary() {
    let d = tempfile::tempdir().unwrap();
    let p = base().write(d.path());
    let run = d.path().join("run");
    let (p, run_s) = (p.to_str().unwrap(), run.to_str().unwrap());
    let o = oomph(&["train", p, "--run-dir", run_s]);
    assert!(o.status.success(), "{}", text(&o));
    // never: refuses an existing run...
    let o = oomph(&["train", p, "--run-dir", run_s, "--resume", "never"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--overwrite"), "{}", text(&o));
    // ...unless told to overwrite.
    let o = oomph(&["train", p, "--run-dir", run_s, "--resume", "never", "--overwrite", "--set", "training.steps=10"]);
    assert!(o.status.success(), "{}", text(&o));
    // A step that has a checkpoint; one that does not.
    let o = oomph(&["train", p, "--run-dir", run_s, "--resume", "5", "--set", "training.steps=12"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming from"), "{}", text(&o));
    let o = oomph(&["train", p, "--run-dir", run_s, "--resume", "7"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    // inspect: a run directory shows its newest checkpoint.
    let o = oomph(&["inspect", run_s]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in
        ["verified", "model.mpk", "optim.mpk", "state.json", "sampler cursor", "micro-batch policy", "step 12"]
    {
        assert!(out.contains(needle), "inspect lacks {needle}: {out}");
    }
    let ck = run.join("checkpoints/step-12/optim.mpk");
    std::fs::write(&ck, b"garbage").unwrap();
    let o = oomph(&["inspect", run.join("checkpoints/step-12").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
}

#[test]
fn resume_never_in_the_library_starts_fresh() {
    let d = tempfile::tempdir().unwrap();
    train_builtin(base().recipe(&["training.steps=6"]), d.path()).unwrap();
    let r = base().recipe(&["training.steps=6"]);
    let data = data_for(&r);
    let mut s = session(r, d.path());
    s.resume = Resume::Never;
    let sum = train_session(s, &data).unwrap();
    assert_eq!(sum.resumes, 0);
}

#[test]
fn a_finished_run_leaves_no_current_json() {
    // `current.json` says what a running worker is doing; once the run has finished, no
    // worker runs, and a supervisor must not read a stale position.
    let d = tempfile::tempdir().unwrap();
    let recipe = TestRecipe::mlp().set("training.steps", 4).set("checkpoint.every", 2);
    train_builtin(recipe.recipe(&[]), d.path()).unwrap();
    assert!(d.path().join("summary.json").is_file());
    assert!(!d.path().join("current.json").exists(), "current.json outlived the finished run");
}
