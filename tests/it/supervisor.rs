//! The supervisor and crash safety with real processes: a real host allocation failure under
//! an address-space limit, and SIGKILL of the whole process tree at random moments.

#[cfg(not(feature = "tch"))]
use crate::accumulation::TOL;
use crate::util::*;
use std::process::Stdio;

#[cfg(not(feature = "tch"))]
/// A wide MLP whose activations grow with the micro-batch: at 64 samples per micro-batch a
/// step needs about 300-400 MiB of address space, at 16 under 250 MiB.
fn wide() -> TestRecipe {
    TestRecipe::wide()
        .synthetic(512, 8, 3)
        .set("training.steps", 6)
        .set("micro_batch.initial", 64)
        .set("checkpoint.every", 2)
}

// The address-space limit of `limit_memory` is absolute: a binary built with the tch feature
// maps libtorch's libraries (several GiB) before it starts, so this runs in the default build.
#[cfg(not(feature = "tch"))]
#[test]
fn a_real_allocation_failure_kills_the_worker_and_the_supervisor_finishes_the_run() {
    let f = Fixture::new(&wide());
    let reference = f.reference("reference", &[]);

    let mut cmd = f.cmd("limited", &[]);
    limit_memory(&mut cmd);
    let o = cmd.output().unwrap();
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(all.contains("memory allocation of"), "the allocation failure must be real: {all}");
    let run = f.run("limited");
    let restarts = events(&run, "restart");
    assert!(!restarts.is_empty(), "{all}");
    assert!(restarts[0]["cause"].as_str().unwrap().contains("host allocation"), "{:?}", restarts[0]);
    assert_eq!(restarts[0]["micro_batch"], 64);
    let s = summary(&run);
    assert_eq!(s.steps, 6);
    assert_eq!(s.samples_seen, 6 * 64, "effective batch unchanged");
    assert_eq!(s.restarts, restarts.len());
    assert!(s.micro_batch_final < 64);
    assert_eq!(step_lines(&run), (1..=6).collect::<Vec<_>>(), "each step once in metrics.jsonl");
    for st in &step_records(&run) {
        assert!(st["micro_batch"].as_u64().unwrap() < 64, "{st}");
    }
    let diff = max_param_diff(&reference, &run);
    assert!(diff < TOL, "restarted run differs from the reference by {diff:e}");
}

/// `faults.address_space_headroom` on a Rust backend: the worker limits its own address space
/// when training starts, a real allocation past it aborts the worker, and the supervisor
/// restarts it smaller until the run fits (relative to what each worker maps, so this holds
/// in a build with the tch feature too, whose binary maps libtorch's libraries).
#[test]
fn the_address_space_headroom_makes_real_deaths_that_the_supervisor_recovers_from() {
    let recipe = TestRecipe::wide()
        .synthetic(512, 8, 3)
        .set("training.steps", 6)
        .set("micro_batch.initial", 64)
        .set("checkpoint.every", 2);
    let f = Fixture::new(&recipe);
    let reference = f.reference("reference", &[]);
    let o = f
        .cmd("limited", &["--set", "faults.address_space_headroom=\"150MiB\""])
        .env("MALLOC_ARENA_MAX", "1")
        .output()
        .unwrap();
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(all.contains("memory allocation of"), "the allocation failure must be real: {all}");
    let run = f.run("limited");
    let restarts = events(&run, "restart");
    assert!(!restarts.is_empty() && restarts[0]["cause"].as_str().unwrap().contains("host allocation"), "{all}");
    let s = summary(&run);
    assert_eq!((s.steps, s.samples_seen), (6, 6 * 64), "effective batch unchanged");
    assert!(s.micro_batch_final < 64);
    let diff = max_param_diff(&reference, &run);
    assert!(diff < crate::accumulation::TOL, "restarted run differs from the reference by {diff:e}");
}

/// A run with dropout, AdamW and a cosine schedule that checkpoints every step.
fn kill() -> TestRecipe {
    TestRecipe::mlp()
        .set("run.seed", 9)
        .set("model.hidden", [1024, 256])
        .set("model.dropout", 0.1)
        .synthetic(2000, 32, 5)
        .adamw(0.003)
        .cosine(10)
        .set("training.steps", 120)
        .set("training.eval_every", 40)
        .set("micro_batch.initial", 32)
        .set("checkpoint.every", 1)
        .set("checkpoint.keep", 2)
}

#[test]
fn sigkill_of_the_whole_tree_at_random_moments_then_rerun_is_bit_identical() {
    let f = Fixture::new(&kill());
    let reference = f.reference("reference", &[]);
    let run = f.run("killed");
    // A fixed pseudo-random sequence of kill moments (reproducible, but not aligned with the
    // checkpoints): each launch is killed once its worker reaches a step 1 to 5 steps past the
    // newest checkpoint, the one it resumed from. A moment set by the run's progress, not by
    // the clock: each launch gains only a few of the 120 steps, so all 6 kills land before the
    // run ends (a run that ends first fails the wait).
    let mut rng = Rng(0x2545F4914F6CDD1D);
    let kills = 6;
    for n in 1..=kills {
        let newest = oomph::train::checkpoint::list(&run.join("checkpoints")).unwrap().first().map_or(0, |c| c.0);
        let at = newest + rng.step(1, 6);
        let mut child = f.cmd("killed", &[]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let supervisor = child.id();
        wait_while_running(&mut child, &format!("kill {n} at step {at}"), || {
            worker_position(&run, supervisor).is_some_and(|c| c.step >= at)
        });
        // A machine crash: every process of the tree at once.
        kill_tree(supervisor);
        let _ = child.wait();
        // Every checkpoint that counts is complete and verifiable.
        for (_, dir) in oomph::train::checkpoint::list(&run.join("checkpoints")).unwrap() {
            oomph::train::checkpoint::verify(&dir)
                .unwrap_or_else(|e| panic!("a complete-looking checkpoint is damaged: {e}"));
        }
    }
    let o = f.train("killed", &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_same_bits(&reference, &run, &format!("after {kills} kills"));
    assert!(summary(&run).resumes >= 1);
}

#[test]
fn sigterm_checkpoints_exits_130_and_the_same_command_resumes_identically() {
    let f = Fixture::new(&kill().set("checkpoint.every", 50));
    let reference = f.reference("reference", &[]);
    let run = f.run("stopped");
    let mut child = f.cmd("stopped", &[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // Wait for a few steps, then SIGTERM the supervisor: it forwards the signal once.
    wait_while_running(&mut child, "5 steps", || step_lines(&run).len() >= 5);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let ck = oomph::train::checkpoint::list(&run.join("checkpoints")).unwrap();
    let (step, dir) = ck.first().expect("a checkpoint written on SIGTERM");
    let state = oomph::train::checkpoint::verify(dir).unwrap().state;
    assert_eq!(state.reason, "signal");
    assert!(*step < 120, "stopped early, at {step}");
    let o = f.train("stopped", &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_same_bits(&reference, &run, "stopped by SIGTERM and resumed");
}
