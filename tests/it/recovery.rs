//! In-process recovery from out-of-memory failures (simulated through `[faults]`, which uses
//! the same classification and recovery path as real ones): the same effective batch is
//! retried, the micro-batch settles, grows back, and the result equals an undisturbed run.

use crate::accumulation::TOL;
use crate::util::*;

/// 30 steps of 64 samples, starting in one chunk, growing back after 10 clean steps.
fn base() -> TestRecipe {
    TestRecipe::mlp()
        .set("run.seed", 5)
        .set("training.eval_every", 10)
        .set("micro_batch.initial", 64)
        .set("micro_batch.grow_after", 10)
}

#[test]
fn simulated_capacity_settles_and_matches_an_undisturbed_run() {
    let reference = tempfile::tempdir().unwrap();
    train_builtin(base().recipe(&[]), reference.path()).unwrap();
    let d = tempfile::tempdir().unwrap();
    let s =
        train_builtin(base().recipe(&["faults.simulate_memory_samples=12", "micro_batch.grow_after=1000"]), d.path())
            .unwrap();
    assert_eq!(s.steps, 30);
    assert_eq!(s.samples_seen, 30 * 64, "the effective batch never changes");
    // 64 -> 32 -> 16 -> 8 fit under 12; chunks of 8 (8 chunks).
    assert!(s.oom_events >= 3, "{s:?}");
    assert!(s.micro_batch_final <= 12, "{s:?}");
    for st in step_records(d.path()) {
        assert!(st["micro_batch"].as_u64().unwrap() <= 12, "{st}");
    }
    let ooms = events(d.path(), "oom");
    assert_eq!(ooms[0]["micro_batch"], 64);
    assert_eq!(ooms[0]["phase"], "forward");
    assert!(ooms[0]["message"].as_str().unwrap().contains("simulated"), "{}", ooms[0]);
    assert!(!events(d.path(), "shrink").is_empty());
    assert!(s.recovery_s > 0.0, "the failed attempts' time is recorded: {s:?}");
    let diff = max_param_diff(reference.path(), d.path());
    assert!(diff < TOL, "recovered run differs from the undisturbed one by {diff:e}");
}

#[test]
fn an_oom_in_every_phase_is_recovered_without_changing_the_result() {
    let reference = tempfile::tempdir().unwrap();
    train_builtin(base().recipe(&[]), reference.path()).unwrap();
    let d = tempfile::tempdir().unwrap();
    let faults = r#"faults.oom_at=[{step=3, phase="forward"}, {step=5, phase="backward"}, {step=7, phase="optimizer"}, {step=10, phase="eval"}]"#;
    let s = train_builtin(base().recipe(&[faults, "micro_batch.grow_after=1000"]), d.path()).unwrap();
    assert_eq!(s.steps, 30);
    let phases: Vec<String> =
        events(d.path(), "oom").iter().map(|e| e["phase"].as_str().unwrap().to_string()).collect();
    assert_eq!(phases, ["forward", "backward", "optimizer", "eval"]);
    // Forward/backward OOMs shrink the training micro-batch; the optimizer OOM does not; the
    // eval OOM shrinks only the evaluation micro-batch (its own event kind).
    let shrinks = events(d.path(), "shrink");
    assert_eq!(shrinks.len(), 2, "{shrinks:?}");
    let eval_shrinks = events(d.path(), "eval_shrink");
    assert_eq!(eval_shrinks.len(), 1, "{eval_shrinks:?}");
    assert_eq!(eval_shrinks[0]["reason"], "oom");
    let evals: Vec<_> = lines(&d.path().join("metrics.jsonl")).into_iter().filter(|v| v["kind"] == "eval").collect();
    assert_eq!(evals.len(), 3, "the evaluation at step 10 was redone, once");
    let diff = max_param_diff(reference.path(), d.path());
    assert!(diff < TOL, "differs by {diff:e}");
}

#[test]
fn the_limit_grows_back_when_room_returns_and_a_step_runs_in_one_chunk_again() {
    let d = tempfile::tempdir().unwrap();
    let r = base().recipe(&[
        "training.steps=120",
        "training.eval_every=0",
        "faults.simulate_memory_samples=12",
        "faults.simulate_memory_changes=[{step=40, samples=64}]",
        "micro_batch.grow_after=5",
    ]);
    let s = train_builtin(r, d.path()).unwrap();
    assert_eq!(s.micro_batch_final, 64, "{s:?}");
    let st = step_records(d.path());
    // While the room is 12 samples, a step of 64 needs at least 6 chunks...
    for v in &st[15..35] {
        assert!(v["micro_batch"].as_u64().unwrap() <= 12 && v["chunks"].as_u64().unwrap() >= 6, "{v}");
    }
    // ...once it returns (step 40), the limit climbs back without another OOM...
    let room = 40;
    assert!(events(d.path(), "oom").iter().all(|e| e["step"].as_u64().unwrap() <= room), "an OOM after step {room}");
    let climb: Vec<u64> = events(d.path(), "grow")
        .iter()
        .filter(|e| e["step"].as_u64().unwrap() > room)
        .map(|e| e["to"].as_u64().unwrap())
        .collect();
    assert!(climb.len() >= 2 && climb.windows(2).all(|w| w[0] < w[1]), "{climb:?}");
    assert_eq!(climb.last(), Some(&64), "{climb:?}");
    // ...and the last 20 steps run in one chunk of 64 again.
    for v in &st[100..120] {
        assert!(v["micro_batch"] == 64 && v["chunks"] == 1, "{v}");
    }
}

#[test]
fn oscillating_room_backs_off_instead_of_thrashing() {
    let d = tempfile::tempdir().unwrap();
    // Room alternates 12 / 40 every 10 steps for 300 steps.
    let changes: Vec<String> =
        (1..30).map(|i| format!("{{step={}, samples={}}}", i * 10, if i % 2 == 1 { 40 } else { 12 })).collect();
    let set = format!("faults.simulate_memory_changes=[{}]", changes.join(","));
    let r = base().recipe(&[
        "training.steps=300",
        "training.eval_every=0",
        "faults.simulate_memory_samples=12",
        &set,
        "micro_batch.grow_after=3",
    ]);
    let s = train_builtin(r, d.path()).unwrap();
    assert_eq!(s.steps, 300);
    let failed = events(d.path(), "grow_failed").len();
    // Without back-off every low phase would cost an OOM (15 drops); with it, fewer.
    assert!(s.oom_events < 40, "{} OOMs over 300 steps", s.oom_events);
    assert!(failed <= 12, "{failed} failed growth attempts");
    let waits: Vec<u64> =
        events(d.path(), "grow_failed").iter().filter_map(|e| e["next_try_after_steps"].as_u64()).collect();
    assert!(waits.windows(2).any(|w| w[1] > w[0]), "back-off never increased: {waits:?}");
}

#[test]
fn when_even_min_does_not_fit_the_run_exits_3_with_advice() {
    let d = tempfile::tempdir().unwrap();
    let p = base().write(d.path());
    let run = d.path().join("run");
    let o = oomph(&[
        "train",
        p.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
        "--set",
        "faults.simulate_memory_samples=3",
        "--set",
        "micro_batch.min=4",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("micro_batch.min"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(events(&run, "give_up").len(), 1);
}

#[test]
fn a_non_oom_panic_is_reported_not_retried() {
    let d = tempfile::tempdir().unwrap();
    let p = base().write(d.path());
    let run = d.path().join("run");
    let o = oomph(&[
        "train",
        p.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
        "--set",
        r#"faults.panic_at=[{step=4, phase="forward"}]"#,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("simulated model bug"), "{err}");
    assert!(err.contains("not an out-of-memory"), "{err}");
    assert!(events(&run, "oom").is_empty(), "a bug must not be retried as memory");
    assert_eq!(step_records(&run).len(), 3);
}

#[test]
fn an_oom_raised_on_another_thread_is_caught_by_the_boundary() {
    use oomph::train::recovery::{attempt, Failure};
    // Panic records are process-wide: no other in-process run may panic meanwhile.
    let _turn = serial();
    // As cubecl's device runner does: the allocation panics on another thread, which catches
    // it; the training thread itself sees nothing.
    let r = attempt::<B, _>(&Default::default(), || {
        std::thread::spawn(|| {
            let _ = std::panic::catch_unwind(|| {
                panic!("called `Result::unwrap()` on an `Err` value: can't allocate buffer of size: 1073741824");
            });
        })
        .join()
        .unwrap();
        42
    });
    match r {
        Err(Failure::Oom { message }) => assert!(message.contains("can't allocate buffer"), "{message}"),
        other => panic!("expected an OOM, got {other:?}"),
    }
    // And a non-OOM panic elsewhere is not mistaken for one.
    let r = attempt::<B, _>(&Default::default(), || {
        std::thread::spawn(|| {
            let _ = std::panic::catch_unwind(|| panic!("index out of bounds: the len is 3 but the index is 7"));
        })
        .join()
        .unwrap();
        1
    });
    assert!(matches!(r, Ok(1)), "{r:?}");
}

#[test]
fn an_optimizer_oom_is_retried_once_then_exits_3() {
    let d = tempfile::tempdir().unwrap();
    let p = base().write(d.path());
    // Once: recovered (the whole step is redone after cleanup).
    let run = d.path().join("once");
    let o = oomph(&[
        "train",
        p.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
        "--set",
        r#"faults.oom_at=[{step=4, phase="optimizer"}]"#,
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // Twice in the same step: there is no micro-batch to shrink; exit 3 with the memory involved.
    let run = d.path().join("twice");
    let twice = r#"faults.oom_at=[{step=4, phase="optimizer"}, {step=4, phase="optimizer"}]"#;
    let o = oomph(&["train", p.to_str().unwrap(), "--run-dir", run.to_str().unwrap(), "--set", twice]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("optimizer update") && err.contains("parameters"), "{err}");
    assert_eq!(step_records(&run).len(), 3, "no update was applied at step 4");
}

/// A backend whose allocator caches what burn's `memory_cleanup` does not release (LibTorch's
/// CUDA cache) gets its release hook called once per failed attempt, after the attempt's
/// tensors are dropped and before the retry.
#[test]
fn the_backend_cache_release_runs_after_every_failed_attempt() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let d = tempfile::tempdir().unwrap();
    let r = base().recipe(&["faults.simulate_memory_samples=12", "micro_batch.grow_after=1000"]);
    let data = data_for(&r);
    let mut s = session(r, d.path());
    let released = Arc::new(AtomicUsize::new(0));
    let count = released.clone();
    s.release = Some(Arc::new(move || {
        count.fetch_add(1, Ordering::SeqCst);
    }));
    let summary = train_session(s, &data).unwrap();
    assert!(summary.oom_events >= 3, "{summary:?}");
    assert_eq!(released.load(Ordering::SeqCst), summary.oom_events, "{summary:?}");
}
