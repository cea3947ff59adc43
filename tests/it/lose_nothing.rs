//! The failure paths around the first-order ones: restarts, resumes, retention, non-finite
//! steps, evaluation deaths, full disks, double launches. Each test drives the real binary
//! (supervisor and worker) on a tiny run in a temp dir; simulated failures come from the
//! `[faults]` section, real ones from resource limits.

use crate::accumulation::TOL;
use crate::util::*;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The run these tests disturb: a small MLP, AdamW at a constant learning rate, a
/// micro-batch of 16 in an effective batch of 32, checkpoints every 2 steps, 3 kept.
fn base() -> TestRecipe {
    TestRecipe::mlp()
        .set("run.seed", 5)
        .set("model.hidden", [32])
        .synthetic(400, 8, 3)
        .set("training.steps", 12)
        .set("training.effective_batch", 32)
        .set("training.eval_every", 4)
        .set("micro_batch.initial", 16)
        .set("micro_batch.grow_after", 1000)
        .set("checkpoint.every", 2)
        .set("checkpoint.keep", 3)
}

/// Checkpoint steps that count, highest first.
fn checkpoint_steps(run: &Path) -> Vec<usize> {
    oomph::train::checkpoint::list(&run.join("checkpoints")).unwrap().iter().map(|c| c.0).collect()
}

/// `--set faults.die_at=[{step=S, phase="P"}]`.
fn die_at(step: usize, phase: &str) -> String {
    format!("faults.die_at=[{{step={step}, phase=\"{phase}\"}}]")
}

#[test]
fn a_restarted_worker_resumes_from_the_newest_checkpoint_even_after_resume_never() {
    let f = Fixture::new(&base());
    let reference = f.reference("reference", &[]);
    let die = die_at(7, "forward");
    let o = f.train("never", &["--resume", "never", "--set", &die]);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    let run = f.run("never");
    let restarts = events(&run, "restart");
    assert_eq!(restarts.len(), 1, "{all}");
    assert_eq!(restarts[0]["phase"], "train");
    let resumes: Vec<u64> = events(&run, "resume").iter().map(|v| v["from_step"].as_u64().unwrap()).collect();
    assert_eq!(resumes, vec![6], "the restarted worker resumed from step 6, not from scratch: {all}");
    assert_eq!(step_lines(&run), (1..=12).collect::<Vec<_>>(), "each step once in metrics.jsonl");
    // The death lowered the micro-batch (16 -> 8): equal within the accumulation tolerance.
    let diff = max_param_diff(&reference, &run);
    assert!(diff < TOL, "differs from the undisturbed run by {diff:e}");
}

#[test]
fn a_restarted_worker_resumes_this_runs_newest_checkpoint_not_the_step_the_first_was_given() {
    let f = Fixture::new(&base());
    let reference = f.reference("reference", &[]);
    let o = f.train("run", &["--no-supervise", "--set", "training.steps=8"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(checkpoint_steps(&f.run("run")), vec![8, 6, 4]);
    // From step 4, to 12: the first worker abandons 6 and 8 and writes 6, 8, 10 (step-4 leaves
    // by retention), then dies inside the update of step 11; its successor must not look for
    // step-4 again.
    let die = die_at(11, "optimizer");
    let o = f.train("run", &["--resume", "4", "--set", &die]);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    let run = f.run("run");
    let resumes: Vec<u64> = events(&run, "resume").iter().map(|v| v["from_step"].as_u64().unwrap()).collect();
    assert_eq!(resumes, vec![4, 10], "{all}");
    let restart = &events(&run, "restart")[0];
    assert_eq!(restart["phase"], "optimizer");
    assert!(restart["action"].as_str().unwrap().contains("in place"), "{restart}");
    // A death in the update changes no size: the run is the reference, bit for bit.
    for v in step_records(&run) {
        assert_eq!(v["micro_batch"], 16, "{v}");
    }
    assert_same_bits(&reference, &run, "after a death in the update");
}

#[test]
fn resuming_from_an_earlier_step_starts_one_linear_history() {
    let f = Fixture::new(&base());
    let reference = f.reference("reference", &["--set", "training.steps=10"]);
    let run = f.run("run");
    assert!(f.train("run", &["--no-supervise"]).status.success());
    assert_eq!(checkpoint_steps(&run), vec![12, 10, 8]);
    let o = f.train("run", &["--resume", "8", "--set", "training.steps=10"]);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(all.contains("abandons the later checkpoints step-10, step-12"), "{all}");
    assert_eq!(checkpoint_steps(&run), vec![10, 8], "the new history's checkpoints are the ones kept");
    for s in [10, 12] {
        assert!(run.join(format!("checkpoints/abandoned/step-{s}/manifest.json")).is_file(), "step-{s} is kept aside");
    }
    assert_same_bits(&reference, &run, "resumed from step 8");
    // The next automatic resume continues the new history, not the abandoned one.
    let o = f.train("run", &["--set", "training.steps=10"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(events(&run, "resume").last().unwrap()["from_step"], 10);
    assert_same_bits(&reference, &run, "resumed again at the end of the new history");
}

#[test]
fn a_damaged_checkpoint_leaves_the_namespace_and_holds_no_retention_slot() {
    let f = Fixture::new(&base());
    let run = f.run("run");
    assert!(f.train("run", &["--no-supervise", "--set", "training.steps=8"]).status.success());
    let victim = run.join("checkpoints/step-8/model.mpk");
    let mut bytes = std::fs::read(&victim).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x10;
    std::fs::write(&victim, bytes).unwrap();
    let o = f.train("run", &["--set", "training.steps=12"]);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert_eq!(events(&run, "resume")[0]["from_step"], 6);
    assert!(run.join("checkpoints/damaged/step-8").is_dir(), "{all}");
    assert_eq!(checkpoint_steps(&run), vec![12, 10, 8], "three intact checkpoints are kept");
}

/// A character text with the given alphabet, `n` characters long.
fn text_file(dir: &Path, name: &str, alphabet: &str, n: usize) -> PathBuf {
    let chars: Vec<char> = alphabet.chars().collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let body: String = (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chars[(x % chars.len() as u64) as usize]
        })
        .collect();
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn resume_checks_the_data_and_the_run_length() {
    let d = tempfile::tempdir().unwrap();
    let a = text_file(d.path(), "a.txt", "abcdefghijklmnopqrstuvwxyz .,;", 4000);
    let b = text_file(d.path(), "b.txt", "0123456789", 4000);
    let f = Fixture::new(&TestRecipe::gpt(&a).set("run.seed", 2).cosine(1).set("checkpoint.every", 2));
    assert!(f.train("run", &["--no-supervise"]).status.success());
    // Another file: refused with exit 2, naming what differs and the fix.
    let other = format!("data.path={:?}", b.to_str().unwrap());
    let o = f.train("run", &["--set", &other, "--set", "training.steps=6"]);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(2), "{all}");
    assert!(all.contains("vocabulary") && all.contains("--run-dir"), "{all}");
    // The same bytes under another name are the same data.
    let copy = d.path().join("copy.txt");
    std::fs::copy(&a, &copy).unwrap();
    let same = format!("data.path={:?}", copy.to_str().unwrap());
    // A run length below the checkpoint's step is an error, not a silent no-op.
    let o = f.train("run", &["--set", &same, "--set", "training.steps=2"]);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(2), "{all}");
    assert!(all.contains("below the checkpoint's step 4"), "{all}");
    // A longer run says what it does to the schedule.
    let o = f.train("run", &["--set", &same, "--set", "training.steps=8"]);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(all.contains("run length 4 -> 8 steps") && all.contains("cosine"), "{all}");
}

#[cfg(not(feature = "tch"))]
/// A wide MLP: a training micro-batch of 16 fits in 300 MiB of address space, an
/// evaluation batch of 256 (forward only, but 256 rows of 262144 activations) does not.
fn wide_eval() -> TestRecipe {
    TestRecipe::wide()
        .synthetic(1024, 8, 3)
        .set("data.valid_fraction", 0.5)
        .set("training.steps", 4)
        .set("training.effective_batch", 16)
        .set("training.eval_every", 2)
        .set("training.eval_batch", 256)
        .set("micro_batch.initial", 16)
        .set("checkpoint.every", 1)
}

// The address-space limit of `limit_memory` is absolute: a binary built with the tch feature
// maps libtorch's libraries (several GiB) before it starts, so this runs in the default build.
#[cfg(not(feature = "tch"))]
#[test]
fn a_death_in_evaluation_lowers_the_evaluation_batch_not_the_training_one() {
    let f = Fixture::new(&wide_eval());
    let mut cmd = f.cmd("run", &[]);
    limit_memory(&mut cmd);
    let o = cmd.output().unwrap();
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    let run = f.run("run");
    let restarts = events(&run, "restart");
    assert!(!restarts.is_empty(), "evaluation at 256 must die under the limit: {all}");
    for r in &restarts {
        assert_eq!(r["phase"], "eval", "{r}");
        assert!(r["cause"].as_str().unwrap().contains("host allocation"), "{r}");
    }
    for v in lines(&run.join("metrics.jsonl")) {
        if v["kind"] == "step" {
            assert_eq!(v["micro_batch"], 16, "training keeps its micro-batch: {v}");
        } else {
            assert!(v["eval_batch"].as_u64().unwrap() < 256, "{v}");
        }
    }
}

/// A memory death in the forward pass at micro-batch 16, the smallest the policy can run with
/// `micro_batch.min = min` in an effective batch of 32, stops at once: exit 3, a memory report,
/// no restart spent.
fn a_death_at_16_stops_at_once(min: usize) {
    let f = Fixture::new(&base());
    let die = die_at(3, "forward");
    let o = f.train("run", &["--set", &format!("micro_batch.min={min}"), "--set", &die]);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(3), "{all}");
    assert!(all.contains("micro_batch.min") && all.contains("Memory report"), "{all}");
    let restarts = events(&f.run("run"), "restart");
    assert_eq!(restarts.len(), 1, "no restart was spent: {all}");
    assert_eq!(restarts[0]["action"], "stop");
}

#[test]
fn a_memory_death_at_the_smallest_size_stops_at_once_with_a_memory_report() {
    a_death_at_16_stops_at_once(16);
}

/// Regression: no effective batch of 32 splits into micro-batches of 12, so with
/// `micro_batch.min = 12` the smallest micro-batch the policy runs is 16. A death there must stop
/// like one at `micro_batch.min` itself, not restart a worker that cannot go lower.
#[test]
fn a_memory_death_at_the_smallest_achievable_size_stops_at_once_when_min_is_not_achievable() {
    a_death_at_16_stops_at_once(12);
}

#[test]
fn a_non_finite_step_is_skipped_and_never_reaches_the_weights() {
    let f = Fixture::new(&base());
    let o = f.train("run", &["--set", "faults.nan_at=[5]"]);
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    let run = f.run("run");
    let s = summary(&run);
    assert_eq!(s.nonfinite_steps, 1);
    assert_eq!(s.steps, 12);
    let step5: Vec<_> = step_records(&run).into_iter().filter(|v| v["step"] == 5).collect();
    assert_eq!(step5.len(), 1);
    assert_eq!(step5[0]["skipped"], true);
    assert!(step5[0]["loss"].is_null(), "{}", step5[0]);
    assert_eq!(events(&run, "nonfinite_step").len(), 1);
    // The report keeps the skipped step and says so.
    let o = oomph(&["report", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("non-finite 1 step(s) skipped (no update): 5"), "{}", text(&o));
    for t in tensors(&run.join("model.safetensors")).values() {
        assert!(t.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn a_diverging_run_stops_with_exit_5_and_no_checkpoint_holds_non_finite_weights() {
    let f = Fixture::new(&base());
    let o = f.train(
        "run",
        &[
            "--set",
            "optimizer.kind=sgd",
            "--set",
            "optimizer.lr=1e30",
            "--set",
            "checkpoint.every=1",
            "--set",
            "training.steps=40",
        ],
    );
    let all = text(&o);
    assert_eq!(o.status.code(), Some(5), "{all}");
    assert!(all.contains("training.max_nonfinite_steps") && all.contains("learning rate"), "{all}");
    let run = f.run("run");
    let skipped = events(&run, "nonfinite_step");
    assert_eq!(skipped.len(), 10, "the documented default: 10 in a row");
    let o = oomph(&["report", run.to_str().unwrap()]);
    assert!(text(&o).contains("DIVERGED at step"), "{}", text(&o));
    assert!(!run.join("current.json").exists(), "no worker runs any more");
    let r = base().recipe(&["optimizer.kind=sgd"]);
    let data = data_for(&r);
    let cfg: oomph::models::mlp::MlpConfig = oomph::recipe::params(&r.model.params, "model", "test").unwrap();
    for (step, dir) in oomph::train::checkpoint::list(&run.join("checkpoints")).unwrap() {
        let v = oomph::train::checkpoint::verify(&dir).unwrap();
        let model = oomph::models::mlp::init::<B>(&cfg, &data.info, &Default::default()).unwrap();
        use oomph::burn::module::Module;
        use oomph::burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
        let rec = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
        let record = Recorder::<B>::load(&rec, v.file("model.mpk").unwrap().to_vec(), &Default::default()).unwrap();
        let model = model.load_record(record);
        assert!(
            oomph::train::optim::params_finite::<B, _>(&model),
            "checkpoint of step {step} holds non-finite weights"
        );
    }
}

#[test]
fn the_automatic_start_is_bounded_by_the_size_range_not_the_retry_budget() {
    let o = oomph(&[
        "train",
        "configs/digits-mlp-debug.toml",
        "--no-supervise",
        "--run-dir",
        tempfile::tempdir().unwrap().path().join("r").to_str().unwrap(),
        "--set",
        "training.effective_batch=1024",
        "--set",
        "micro_batch.initial=\"auto\"",
        "--set",
        "faults.simulate_memory_samples=3",
        "--set",
        "training.steps=2",
    ]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn an_effective_batch_larger_than_the_training_split_is_refused_by_check_and_train() {
    for cmd in ["check", "train"] {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("r");
        let mut args = vec![cmd, "configs/digits-mlp-debug.toml", "--set", "training.effective_batch=1000000000000"];
        if cmd == "train" {
            args.extend(["--run-dir", run.to_str().unwrap()]);
        }
        let o = oomph(&args);
        let all = text(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {all}");
        assert!(all.contains("1000000000000") && all.contains("1438"), "{cmd}: names both sizes: {all}");
    }
}

#[test]
fn check_rejects_what_train_rejects() {
    let o =
        oomph(&["check", "configs/digits-mlp-debug.toml", "--set", "data.kind=\"synthetic\"", "--set", "data.noise=2"]);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(2), "{all}");
    assert!(all.contains("noise"), "{all}");
    // A model that cannot take the data.
    let o = oomph(&["check", "configs/digits-mlp-debug.toml", "--set", "model.kind=\"gpt\""]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn a_failed_checkpoint_write_loses_nothing_and_resume_auto_continues() {
    let f = Fixture::new(&base());
    let reference = f.reference("reference", &[]);
    let o = f.train("run", &["--set", "faults.disk_full_at=[6]"]);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(1), "{all}");
    assert!(all.contains("step-6.tmp") && all.contains("No space left on device") && all.contains("Fix:"), "{all}");
    let run = f.run("run");
    assert_no_tmp(&run);
    assert_eq!(checkpoint_steps(&run), vec![4, 2]);
    let o = f.train("run", &["--set", "faults.disk_full_at=[6]"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(events(&run, "resume")[0]["from_step"], 4);
    assert_eq!(step_lines(&run), (1..=12).collect::<Vec<_>>());
    assert_same_bits(&reference, &run, "after a failed checkpoint write");
}

#[test]
fn a_write_error_while_resuming_names_the_file_and_leaves_no_temporary_file() {
    let f = Fixture::new(&base());
    let run = f.run("run");
    assert!(f.train("run", &["--no-supervise"]).status.success());
    // Lose the newest checkpoints: resuming from step 8 drops the metric lines after it.
    for s in [10, 12] {
        std::fs::remove_dir_all(run.join(format!("checkpoints/step-{s}"))).unwrap();
    }
    let metrics = std::fs::metadata(run.join("metrics.jsonl")).unwrap().len();
    let recipe_len = std::fs::metadata(run.join("recipe.resolved.toml")).unwrap().len();
    // Files may not grow past this: the rewritten metrics.jsonl (2/3 of it) cannot be written.
    let limit = (metrics / 2).max(recipe_len + 64);
    assert!(limit < metrics * 2 / 3, "the fixture's metrics file is too small for this test");
    let mut cmd = f.cmd("run", &["--no-supervise"]);
    with_rlimit(&mut cmd, libc::RLIMIT_FSIZE, limit);
    let o = cmd.output().unwrap();
    let all = text(&o);
    assert_eq!(o.status.code(), Some(1), "{all}");
    assert!(all.contains("metrics.jsonl.tmp") && all.contains("File too large") && all.contains("Fix:"), "{all}");
    assert_no_tmp(&run);
    assert_eq!(std::fs::metadata(run.join("metrics.jsonl")).unwrap().len(), metrics, "nothing lost");
}

#[test]
fn an_allocation_failure_that_was_survived_does_not_make_a_later_abort_a_memory_death() {
    let f = Fixture::new(&base());
    let o = f.train(
        "run",
        &[
            "--set",
            "faults.oom_at=[{step=2, phase=\"forward\"}]",
            "--set",
            "faults.abort_at=[{step=4, phase=\"forward\"}]",
        ],
    );
    let all = text(&o);
    assert_eq!(o.status.code(), Some(128 + libc::SIGABRT), "{all}");
    assert!(events(&f.run("run"), "restart").is_empty(), "an abort that is not a memory death is not restarted: {all}");
    assert!(all.contains("not a memory failure") && all.contains("not restarted"), "and it says so: {all}");
    assert_eq!(events(&f.run("run"), "oom").len(), 1, "the survived failure happened");
    // An abort while a checkpoint is written is no memory death either.
    let o = f.train("ck", &["--set", "faults.abort_at=[{step=6, phase=\"checkpoint\"}]"]);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(128 + libc::SIGABRT), "{all}");
    assert!(events(&f.run("ck"), "restart").is_empty(), "an abort in a checkpoint write is not restarted: {all}");
    assert!(all.contains("not a memory failure") && all.contains("not restarted"), "and it says so: {all}");
}

/// Waits until `run`'s `current.json` names a worker that has done a few steps; returns its pid.
fn running_worker(run: &Path, child: &mut std::process::Child) -> i32 {
    let supervisor = child.id();
    let mut worker = None;
    wait_while_running(child, "a worker past step 3", || {
        let c = oomph::train::current::read(&run.join("current.json"));
        worker = c.filter(|c| c.step > 3 && c.pid != supervisor).map(|c| c.pid as i32);
        worker.is_some()
    });
    worker.expect("found")
}

#[test]
fn a_ctrl_c_that_arrives_while_no_worker_runs_stops_the_run() {
    let f = Fixture::new(&base());
    let mut child =
        f.cmd("run", &["--set", "training.steps=100000"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let worker = running_worker(&f.run("run"), &mut child);
    // The worker cannot react (stopped), the supervisor gets Ctrl-C and forwards it (pending at
    // the stopped worker: the supervisor has taken the interrupt), then the worker dies.
    let stopped = freeze(worker as u32);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let forwarded = || signal_pending(worker as u32, libc::SIGINT);
    wait_for(
        "the supervisor forwards the Ctrl-C to the stopped worker",
        100_000,
        Duration::from_micros(100),
        forwarded,
    );
    for p in stopped {
        // SAFETY: kill(2) on our own processes.
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
    let o = child.wait_with_output().unwrap();
    let all = text(&o);
    assert_eq!(o.status.code(), Some(130), "{all}");
    assert!(events(&f.run("run"), "restart").is_empty(), "no worker was started after the interrupt: {all}");
}

#[test]
fn a_sigkill_of_unknown_cause_is_restarted_and_said_so() {
    let f = Fixture::new(&base());
    let reference = f.reference("reference", &["--set", "training.steps=300"]);
    let mut child =
        f.cmd("run", &["--set", "training.steps=300"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let worker = running_worker(&f.run("run"), &mut child);
    // SAFETY: kill(2) on our own process.
    unsafe { libc::kill(worker, libc::SIGKILL) };
    let o = child.wait_with_output().unwrap();
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    let restarts = events(&f.run("run"), "restart");
    assert_eq!(restarts.len(), 1, "{all}");
    assert!(restarts[0]["cause"].as_str().unwrap().contains("cause unknown"), "{}", restarts[0]);
    assert!(all.contains("cause unknown"), "the restart line says so: {all}");
    let diff = max_param_diff(&reference, &f.run("run"));
    assert!(diff < TOL, "{diff:e}");
}

#[test]
fn a_second_command_on_a_running_run_directory_is_refused_and_report_and_inspect_still_work() {
    let f = Fixture::new(&base());
    let run = f.run("run");
    let mut first =
        f.cmd("run", &["--set", "training.steps=100000"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    running_worker(&run, &mut first);
    wait_while_running(&mut first, "the first checkpoint", || !checkpoint_steps(&run).is_empty());
    let o = f.train("run", &["--set", "training.steps=100000"]);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(2), "{all}");
    assert!(all.contains(&format!("pid {}", first.id())) && all.contains("in use"), "{all}");
    assert!(oomph(&["report", run.to_str().unwrap()]).status.success());
    assert!(oomph(&["inspect", run.to_str().unwrap()]).status.success());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    assert_eq!(first.wait().unwrap().code(), Some(130));
    // Released with its holders: the same command now resumes.
    let steps = format!("training.steps={}", checkpoint_steps(&run)[0] + 2);
    let o = f.train("run", &["--set", &steps]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn the_evaluation_batch_can_change_on_resume() {
    let f = Fixture::new(&base());
    let run = f.run("run");
    assert!(f
        .train("run", &["--no-supervise", "--set", "training.steps=4", "--set", "training.eval_batch=20"])
        .status
        .success());
    let o = f.train("run", &["--set", "training.steps=8", "--set", "training.eval_batch=7"]);
    assert!(o.status.success(), "{}", text(&o));
    let evals: Vec<u64> = lines(&run.join("metrics.jsonl"))
        .iter()
        .filter(|v| v["kind"] == "eval")
        .map(|v| v["eval_batch"].as_u64().unwrap())
        .collect();
    assert_eq!(evals, vec![20, 7], "{evals:?}");
}

#[test]
fn overwrite_replaces_only_a_run_and_never_empties_a_directory_that_holds_other_files() {
    let f = Fixture::new(&base());
    let run = f.run("run");
    assert!(f.train("run", &["--no-supervise", "--set", "training.steps=4"]).status.success());
    std::fs::create_dir_all(run.join("src")).unwrap();
    std::fs::write(run.join("src/main.py"), "x").unwrap();
    let o = f.train("run", &["--resume", "never", "--overwrite"]);
    let all = text(&o);
    assert_eq!(o.status.code(), Some(2), "{all}");
    assert!(all.contains("main.py") || all.contains("src"), "names what is not oomph's: {all}");
    assert!(run.join("src/main.py").is_file() && run.join("checkpoints").is_dir(), "nothing was removed");
    std::fs::remove_dir_all(run.join("src")).unwrap();
    // Nor a file inside a checkpoint.
    std::fs::write(run.join("checkpoints/step-4/notes.txt"), "mine").unwrap();
    let o = f.train("run", &["--resume", "never", "--overwrite"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(run.join("checkpoints/step-4/notes.txt").is_file());
    std::fs::remove_file(run.join("checkpoints/step-4/notes.txt")).unwrap();
    let o = f.train("run", &["--resume", "never", "--overwrite", "--set", "training.steps=4"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(events(&run, "resume").is_empty(), "started over");
    // A run that died before its first checkpoint is replaced too: its events and fired faults go.
    let early = f.run("early");
    let die = die_at(1, "forward");
    let o = f.train("early", &["--set", "micro_batch.min=16", "--set", &die]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(early.join("faults-fired.txt").is_file());
    let o = f.train("early", &["--resume", "never", "--overwrite", "--set", "training.steps=2"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(events(&early, "restart").is_empty() && !early.join("faults-fired.txt").exists(), "{}", text(&o));
    // --overwrite without --resume never is a mistake, said so.
    let o = f.train("run", &["--overwrite"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn overwrite_removes_nothing_until_the_new_recipe_data_and_model_are_known_good() {
    let f = Fixture::new(&base());
    let run = f.run("run");
    assert!(f.train("run", &["--no-supervise", "--set", "training.steps=4"]).status.success());
    let before = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    // An effective batch the data cannot fill and a model that cannot take the data (found
    // once the data is loaded), a memory limit on a CPU backend and a backend this binary
    // lacks (found by the process that opens the device, the worker): in every case,
    // supervised or not, the old run stays.
    let mut bad = vec!["training.effective_batch=100000", "model.kind=gpt", "run.gpu_memory_limit=\"1GiB\""];
    if !cfg!(feature = "cuda") {
        bad.push("run.backend=\"cuda\"");
    }
    for bad in bad {
        for mode in [&[][..], &["--no-supervise"][..]] {
            let mut args = vec!["--resume", "never", "--overwrite", "--set", bad];
            args.extend_from_slice(mode);
            let o = f.train("run", &args);
            assert_eq!(o.status.code(), Some(2), "{bad} {mode:?}: {}", text(&o));
            assert!(!text(&o).contains("removed the old run"), "{bad} {mode:?}: {}", text(&o));
            assert!(run.join("checkpoints/step-4").is_dir(), "{bad} {mode:?}: the checkpoints stay");
            let after = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
            assert_eq!(after, before, "{bad} {mode:?}: the metrics stay");
        }
    }
}

#[test]
fn a_checkpoint_directory_that_cannot_be_read_stops_the_resume_and_loses_nothing() {
    let f = Fixture::new(&base());
    let run = f.run("run");
    assert!(f.train("run", &["--no-supervise", "--set", "training.steps=4"]).status.success());
    let before = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    // `checkpoints` cannot be listed (here: it is a file; as another user, a directory
    // without read permission; on a network file system, a stale handle).
    std::fs::rename(run.join("checkpoints"), f.dir.path().join("kept")).unwrap();
    std::fs::write(run.join("checkpoints"), "").unwrap();
    for mode in [&["--no-supervise"][..], &[][..]] {
        let mut args = vec!["--set", "training.steps=8"];
        args.extend_from_slice(mode);
        let o = f.train("run", &args);
        let all = text(&o);
        assert_eq!(o.status.code(), Some(4), "{mode:?}: {all}");
        assert!(all.contains(&run.join("checkpoints").display().to_string()), "names the directory: {all}");
        assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(), before, "{mode:?}: the history stays");
    }
}

#[test]
fn overwrite_under_the_supervisor_replaces_the_run_once_and_a_restart_resumes_the_new_one() {
    let f = Fixture::new(&base());
    let run = f.run("run");
    assert!(f.train("run", &["--no-supervise"]).status.success());
    assert!(run.join("checkpoints/step-12").is_dir());
    // The first worker replaces the run, checkpoints steps 2 and 4, and dies at step 5; the
    // restarted one resumes the new run from step 4 (it must not replace it again).
    let die = die_at(5, "forward");
    let o = f.train("run", &["--resume", "never", "--overwrite", "--set", "training.steps=8", "--set", &die]);
    assert!(o.status.success(), "{}", text(&o));
    let resumed: Vec<u64> = events(&run, "resume").iter().map(|e| e["from_step"].as_u64().unwrap()).collect();
    assert_eq!(resumed, vec![4], "{}", text(&o));
    assert!(!run.join("checkpoints/step-12").exists(), "the old run's checkpoints went");
    let s = summary(&run);
    assert_eq!((s.steps, s.restarts), (8, 1));
    let steps = lines(&run.join("metrics.jsonl")).iter().filter(|v| v["kind"] == "step").count();
    assert_eq!(steps, 8, "one line per step of the new run only");
}

#[test]
fn a_typo_in_a_model_key_leaves_no_run_directory() {
    let f = Fixture::new(&base());
    for mode in [&[][..], &["--no-supervise"][..]] {
        let mut args = vec!["--set", "model.hiden=[8]"];
        args.extend_from_slice(mode);
        let o = f.train("fresh", &args);
        assert_eq!(o.status.code(), Some(2), "{mode:?}: {}", text(&o));
        assert!(text(&o).contains("model.hiden"), "{}", text(&o));
        assert!(!f.run("fresh").exists(), "{mode:?}: a run directory was left behind");
    }
}

#[test]
fn resuming_a_finished_run_adds_no_line_and_counts_restarts_across_commands() {
    let f = Fixture::new(&base());
    let run = f.run("run");
    // A worker death in one command, then the same command again after the run finished.
    let die = die_at(5, "optimizer");
    assert!(f.train("run", &["--set", &die]).status.success());
    let before = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let o = f.train("run", &["--set", &die]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(), before, "no line added or lost");
    let s = summary(&run);
    assert_eq!(s.restarts, 1, "the first command's restart still counts");
    assert_eq!(s.resumes, 2);
}
