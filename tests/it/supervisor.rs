//! The supervisor and crash safety with real processes: a real host allocation failure under
//! an address-space limit, and SIGKILL of the whole process tree at random moments.

use crate::accumulation::TOL;
use crate::util::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A wide MLP whose activations grow with the micro-batch: at 64 samples per micro-batch a
/// step needs about 300-400 MiB of address space, at 16 under 250 MiB.
fn wide() -> TestRecipe {
    TestRecipe::mlp()
        .seed(1)
        .hidden(&[262144])
        .synthetic(512, 8, 3)
        .sgd(0.05)
        .steps(6)
        .micro(64)
        .grow_after(1000)
        .checkpoint_every(2)
        .set("supervisor.max_restarts", 4)
}

fn oomph_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_oomph"));
    c.args(args).current_dir(root());
    c
}

#[test]
fn a_real_allocation_failure_kills_the_worker_and_the_supervisor_finishes_the_run() {
    let d = tempfile::tempdir().unwrap();
    let p = wide().write(d.path());
    let reference = d.path().join("reference");
    let o = oomph(&["train", p.to_str().unwrap(), "--run-dir", reference.to_str().unwrap(), "--no-supervise"]);
    assert!(o.status.success(), "{}", text(&o));

    let run = d.path().join("limited");
    let mut cmd = oomph_cmd(&["train", p.to_str().unwrap(), "--run-dir", run.to_str().unwrap()]);
    // glibc reserves 64 MiB of address space per malloc arena and thread; two arenas keep the
    // baseline small and stable so the limit bites on the activations.
    cmd.env("MALLOC_ARENA_MAX", "2");
    with_rlimit(&mut cmd, libc::RLIMIT_AS, 300 << 20);
    let o = cmd.output().unwrap();
    let all = text(&o);
    assert!(o.status.success(), "{all}");
    assert!(all.contains("memory allocation of"), "the allocation failure must be real: {all}");
    let restarts: Vec<_> = lines(&run.join("events.jsonl")).into_iter().filter(|v| v["kind"] == "restart").collect();
    assert!(!restarts.is_empty(), "{all}");
    assert!(restarts[0]["cause"].as_str().unwrap().contains("host allocation"), "{:?}", restarts[0]);
    assert_eq!(restarts[0]["micro_batch"], 64);
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["steps"], 6);
    assert_eq!(s["samples_seen"], 6 * 64, "effective batch unchanged");
    assert_eq!(s["restarts"].as_u64().unwrap() as usize, restarts.len());
    assert!(s["micro_batch_final"].as_u64().unwrap() < 64);
    let steps: Vec<_> = lines(&run.join("metrics.jsonl")).into_iter().filter(|v| v["kind"] == "step").collect();
    let numbers: Vec<u64> = steps.iter().map(|v| v["step"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (1..=6).collect::<Vec<_>>(), "each step once in metrics.jsonl");
    for st in &steps {
        assert!(st["micro_batch"].as_u64().unwrap() < 64, "{st}");
    }
    let diff = max_param_diff(&reference, &run);
    assert!(diff < TOL, "restarted run differs from the reference by {diff:e}");
}

/// A run with dropout, AdamW and a cosine schedule that checkpoints every step.
fn kill() -> TestRecipe {
    TestRecipe::mlp()
        .seed(9)
        .hidden(&[1024, 256])
        .dropout(0.1)
        .synthetic(2000, 32, 5)
        .adamw(0.003)
        .cosine(10)
        .steps(120)
        .eval_every(40)
        .micro(32)
        .checkpoint_every(1)
        .keep(2)
}

#[test]
fn sigkill_of_the_whole_tree_at_random_moments_then_rerun_is_bit_identical() {
    let d = tempfile::tempdir().unwrap();
    let p = kill().write(d.path());
    let reference = d.path().join("reference");
    let o = oomph(&["train", p.to_str().unwrap(), "--run-dir", reference.to_str().unwrap(), "--no-supervise"]);
    assert!(o.status.success(), "{}", text(&o));

    let run = d.path().join("killed");
    let args = ["train", p.to_str().unwrap(), "--run-dir", run.to_str().unwrap()];
    // A fixed pseudo-random sequence of kill delays (reproducible, but not aligned with steps).
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut kills = 0;
    for _ in 0..6 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_millis(40 + x % 400);
        let mut child = oomph_cmd(&args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let t = Instant::now();
        while t.elapsed() < delay {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if child.try_wait().unwrap().is_some() {
            break; // finished before this kill
        }
        // A machine crash: every process of the tree at once.
        kill_tree(child.id());
        let _ = child.wait();
        kills += 1;
        // Every checkpoint that counts is complete and verifiable.
        for (_, dir) in oomph::train::checkpoint::list(&run.join("checkpoints")) {
            oomph::train::checkpoint::verify(&dir)
                .unwrap_or_else(|e| panic!("a complete-looking checkpoint is damaged: {e}"));
        }
    }
    let o = oomph(&args);
    assert!(o.status.success(), "{}", text(&o));
    assert!(kills >= 3, "only {kills} kills landed before the run finished");
    let a = tensors(&reference.join("model.safetensors"));
    let b = tensors(&run.join("model.safetensors"));
    for (k, va) in &a {
        let same = va.iter().zip(&b[k]).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{k} differs after {kills} kills");
    }
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert!(s["resumes"].as_u64().unwrap() >= 1);
}

#[test]
fn sigterm_checkpoints_exits_130_and_the_same_command_resumes_identically() {
    let d = tempfile::tempdir().unwrap();
    let p = kill().checkpoint_every(50).write(d.path());
    let reference = d.path().join("reference");
    let o = oomph(&["train", p.to_str().unwrap(), "--run-dir", reference.to_str().unwrap(), "--no-supervise"]);
    assert!(o.status.success(), "{}", text(&o));
    let run = d.path().join("stopped");
    let args = ["train", p.to_str().unwrap(), "--run-dir", run.to_str().unwrap()];
    let mut child = oomph_cmd(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // Wait for a few steps, then SIGTERM the supervisor: it forwards the signal once.
    let steps_done = || lines(&run.join("metrics.jsonl")).iter().filter(|v| v["kind"] == "step").count();
    wait_while_running(&mut child, "5 steps", || steps_done() >= 5);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let ck = oomph::train::checkpoint::list(&run.join("checkpoints"));
    let (step, dir) = ck.first().expect("a checkpoint written on SIGTERM");
    let state = oomph::train::checkpoint::verify(dir).unwrap().state;
    assert_eq!(state.reason, "signal");
    assert!(*step < 120, "stopped early, at {step}");
    let o = oomph(&args);
    assert!(o.status.success(), "{}", text(&o));
    let a = tensors(&reference.join("model.safetensors"));
    let b = tensors(&run.join("model.safetensors"));
    for (k, va) in &a {
        assert!(va.iter().zip(&b[k]).all(|(x, y)| x.to_bits() == y.to_bits()), "{k} differs");
    }
}
