//! Shrinking after an out-of-memory: halving, predicted fits, worker deaths and giving up.

use super::*;

#[test]
fn predicted_fit_from_observations() {
    let mut p = Policy::new(cfg(64, 1, 64, Some(8), 10, 8));
    // 1 GiB fixed + 100 MiB per sample, 4 GiB device.
    let gib = 1u64 << 30;
    let mib = 1u64 << 20;
    let cap = 4 * gib;
    p.observe_memory(4, gib + 4 * 100 * mib, cap);
    p.observe_memory(8, gib + 8 * 100 * mib, cap);
    let (fixed, per) = p.memory_model(None).unwrap();
    assert!((fixed - gib as f64).abs() < 1.0 && (per - (100 * mib) as f64).abs() < 1e-3);
    // 0.9 * 4 GiB - 1 GiB = 2662.4 MiB -> 26 samples.
    assert_eq!(p.predicted_fit(None), Some(26));
    // Pretend we are at 64 (e.g. resumed with a large limit) and it fails.
    let mut p = Policy::from_state(cfg(64, 1, 64, None, 10, 8), PolicyState { limit: 64, ..p.state().clone() });
    let ev = p.on_oom(64, None).unwrap();
    // Largest achievable <= 26 is 22.
    assert_eq!(ev, vec![Event::Shrink { from: 64, to: 22, reason: ShrinkReason::PredictedFit }]);
    // A second failure in the same step does not trust the model again: halve.
    let ev = p.on_oom(22, None).unwrap();
    assert_eq!(ev, vec![Event::Shrink { from: 22, to: 11, reason: ShrinkReason::Halved }]);
}

#[test]
fn predicted_fit_from_hint() {
    let mut p = Policy::new(cfg(128, 1, 128, None, 10, 8));
    let hint = MemoryHint {
        bytes_per_sample: Some(1000.0),
        fixed_bytes: Some(10_000),
        capacity_bytes: Some(100_000),
        requested_bytes: None,
    };
    // 0.9 * 100000 - 10000 = 80000 -> 80 samples -> achievable <= 80 for 128 is 64.
    let ev = p.on_oom(128, Some(hint)).unwrap();
    assert_eq!(ev, vec![Event::Shrink { from: 128, to: 64, reason: ShrinkReason::PredictedFit }]);
    // A model that claims the failed size fits is ignored.
    let mut p = Policy::new(cfg(128, 1, 128, None, 10, 8));
    let big = MemoryHint { capacity_bytes: Some(10_000_000), ..hint };
    let ev = p.on_oom(128, Some(big)).unwrap();
    assert_eq!(ev, vec![Event::Shrink { from: 128, to: 64, reason: ShrinkReason::Halved }]);
}

#[test]
fn gives_up_when_min_does_not_fit() {
    let mut p = Policy::new(cfg(32, 4, 32, Some(4), 10, 8));
    let hint = MemoryHint {
        bytes_per_sample: Some(2.0 * (1u64 << 30) as f64),
        fixed_bytes: Some(1 << 30),
        capacity_bytes: Some(8 << 30),
        requested_bytes: Some(1 << 30),
    };
    let g = p.on_oom(4, Some(hint)).unwrap_err();
    assert_eq!(g.kind, GiveUpKind::MinDoesNotFit);
    assert_eq!((g.micro, g.min), (4, 4));
    let text = g.to_string();
    assert!(text.contains("`micro_batch.min` = 4"), "{text}");
    assert!(text.contains("9.0 GiB") && text.contains("8.0 GiB"), "{text}");
    assert!(text.contains("lower `micro_batch.min`"), "{text}");
    assert!(text.contains("smaller model") && text.contains("seq_len"), "{text}");
    assert!(p.exhausted());
    assert_eq!(p.limit(), 4);

    // Without statistics the message says so; with min = 1 it does not suggest lowering it.
    let mut p = Policy::new(cfg(8, 1, 8, Some(1), 10, 8));
    let text = p.on_oom(1, None).unwrap_err().to_string();
    assert!(text.contains("No memory statistics"), "{text}");
    assert!(!text.contains("lower `micro_batch.min`"), "{text}");
}

#[test]
fn fixed_initial_gives_up_after_too_many_retries_in_one_step() {
    // A fixed initial size keeps the per-step budget: the fourth failure gives up.
    let mut p = Policy::new(cfg(1024, 1, 1024, Some(1024), 10, 3));
    assert!(!p.is_searching());
    for _ in 0..3 {
        p.on_oom(p.limit(), None).unwrap();
    }
    assert_eq!(p.limit(), 128);
    let g = p.on_oom(128, None).unwrap_err();
    assert_eq!(g.kind, GiveUpKind::TooManyRetries);
    let text = g.to_string();
    assert!(text.contains("`micro_batch.max_retries_per_step` = 3"), "{text}");
    assert!(text.contains("the first step, started at `micro_batch.initial` = 1024"), "{text}");
    // The state still learnt the smaller size.
    assert_eq!(p.limit(), 64);
    // A new step starts a new budget.
    p.on_step_ok();
    assert_eq!(p.state().ooms_this_step, 0);
}

#[test]
fn lower_ceiling_after_worker_death() {
    let mut p = Policy::new(cfg(64, 1, 64, None, 10, 8));
    let ev = p.lower_ceiling(64);
    assert_eq!(ev, vec![Event::Shrink { from: 64, to: 32, reason: ShrinkReason::WorkerDied }]);
    assert_eq!(p.ceiling(), Some(64));
    // A death at a size above the limit (the checkpoint predates a growth) only lowers the ceiling.
    let ev = p.lower_ceiling(40);
    assert!(ev.is_empty());
    assert_eq!((p.limit(), p.ceiling()), (32, Some(64)));
    let ev = p.lower_ceiling(32);
    assert_eq!(ev, vec![Event::Shrink { from: 32, to: 16, reason: ShrinkReason::WorkerDied }]);
    assert_eq!(p.ceiling(), Some(32));
    // A growth in flight when the worker died: back to the last good size.
    let mut p = Policy::new(cfg(64, 1, 64, Some(16), 1, 8));
    p.on_step_ok();
    assert!(p.is_growing());
    let saved = p.state().clone();
    let mut p = Policy::from_state(p.config().clone(), saved);
    let ev = p.lower_ceiling(32);
    assert_eq!(ev, vec![Event::GrowFailed { at: 32, back_to: 16, next_try_after_steps: 1 }]);
    // Death at min: exhausted.
    let mut p = Policy::new(cfg(64, 4, 64, Some(4), 10, 8));
    p.lower_ceiling(4);
    assert!(p.exhausted());
    assert_eq!(p.limit(), 4);
}
