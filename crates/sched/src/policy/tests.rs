//! Unit and property tests of the policy, driven by a simulated device whose capacity (the
//! largest micro-batch that fits) may change from step to step.

use super::*;
use crate::plan::is_achievable;
use proptest::prelude::*;

fn cfg(n: usize, min: usize, max: usize, initial: Option<usize>, ga: usize, retries: usize) -> PolicyConfig {
    PolicyConfig { effective_batch: n, min, max, initial, grow_after: ga, max_retries_per_step: retries }
}

/// What happened in one simulated step.
#[derive(Debug)]
struct StepOutcome {
    ooms: usize,
    result: Result<(), GiveUp>,
}

/// Checks the invariants that must hold between any two calls.
fn check_invariants(p: &Policy) {
    let n = p.config().effective_batch;
    let (lo, hi) = p.bounds();
    let s = p.state();
    assert!(lo <= hi, "bounds {lo} > {hi}");
    assert!(is_achievable(n, lo) && is_achievable(n, hi), "bounds not achievable: {lo} {hi} for {n}");
    assert!(hi <= p.config().max && hi <= n);
    assert!(lo >= p.config().min || lo == hi, "lo {lo} below min {}", p.config().min);
    assert!(s.limit >= lo && s.limit <= hi, "limit {} outside [{lo}, {hi}]", s.limit);
    assert!(is_achievable(n, s.limit), "limit {} not achievable for {n}", s.limit);
    assert!(s.backoff <= MAX_BACKOFF);
    if let Some(c) = s.ceiling {
        assert!(is_achievable(n, c), "ceiling {c} not achievable");
        let retest = s.limit == c && p.is_growing();
        assert!(s.limit < c || retest || p.exhausted(), "limit {} at/above ceiling {c}: {s:?}", s.limit);
    }
    assert!(s.history.len() <= HISTORY_LEN);
    assert_eq!(s.history.last(), Some(&s.limit));
}

/// `ceil(log2(x))` for `x >= 1`.
fn ceil_log2(x: usize) -> usize {
    (usize::BITS - x.max(1).saturating_sub(1).leading_zeros()) as usize
}

/// The most out-of-memory failures the first step of an automatic start may take: a halving
/// per power of two between the bounds, each possibly preceded by one predicted-fit shrink,
/// plus the final failure at the lower bound and one failed growth in a restored state.
fn search_bound(p: &Policy) -> usize {
    let (lo, hi) = p.bounds();
    2 * ceil_log2(hi.div_ceil(lo)) + 3
}

/// Runs one optimizer step on a device where micro-batches larger than `capacity` fail.
/// Checks the per-call rules as it goes and returns what happened.
fn run_step(p: &mut Policy, capacity: usize, log: &mut Vec<Event>) -> StepOutcome {
    let n = p.config().effective_batch;
    let searching = p.is_searching();
    let budget = if searching { search_bound(p) } else { p.config().max_retries_per_step };
    let mut ooms = 0;
    loop {
        let plan = p.plan();
        assert_eq!(plan.iter().sum::<usize>(), n);
        assert_eq!(plan[0], p.limit());
        match plan.iter().copied().find(|&m| m > capacity) {
            Some(m) => {
                ooms += 1;
                let before = p.limit();
                match p.on_oom(m, None) {
                    Ok(events) => {
                        assert!(p.limit() < m && p.limit() < before, "after an OOM at {m} the limit is {}", p.limit());
                        assert!(ooms <= budget, "{ooms} OOMs, budget {budget} (searching: {searching})");
                        log.extend(events);
                        check_invariants(p);
                    }
                    Err(g) => {
                        check_invariants(p);
                        match g.kind {
                            GiveUpKind::MinDoesNotFit => {
                                assert!(capacity < p.bounds().0, "gave up at min with capacity {capacity}: {g}")
                            }
                            GiveUpKind::TooManyRetries => {
                                assert!(!searching, "the automatic start gave up on its budget: {g}");
                                assert_eq!(ooms, p.config().max_retries_per_step + 1)
                            }
                        }
                        return StepOutcome { ooms, result: Err(g) };
                    }
                }
            }
            None => {
                let before = p.state().clone();
                let events = p.on_step_ok();
                for e in &events {
                    if let Event::Grow { from, to } = e {
                        assert_eq!(*from, before.limit);
                        assert!(*to > *from && *to <= p.bounds().1);
                        // (A ceiling this very step proved wrong was cleared first.)
                        if let Some(c) = p.ceiling().filter(|&c| c <= p.bounds().1) {
                            // Never above a known-bad ceiling; at it only as a re-test after the wait.
                            assert!(*to <= c, "grew to {to} above ceiling {c}");
                            if *to == c {
                                assert_eq!(next_larger(n, *from), Some(c));
                                let wait = p.config().grow_after << p.state().backoff; // after a decay in this call
                                assert!(
                                    before.clean_steps + 1 >= wait,
                                    "re-test after {} < {wait} steps",
                                    before.clean_steps + 1
                                );
                            }
                        }
                    }
                }
                log.extend(events);
                check_invariants(p);
                return StepOutcome { ooms, result: Ok(()) };
            }
        }
    }
}

fn failed_growths(log: &[Event]) -> usize {
    log.iter().filter(|e| matches!(e, Event::GrowFailed { .. })).count()
}

#[test]
fn fresh_policy_bounds_and_initial() {
    let p = Policy::new(cfg(64, 1, 64, None, 10, 8));
    assert_eq!(p.limit(), 64);
    assert_eq!(p.plan(), vec![64]);
    let p = Policy::new(cfg(64, 1, 64, Some(12), 10, 8));
    assert_eq!(p.limit(), 11);
    assert_eq!(p.plan(), vec![11, 11, 11, 11, 10, 10]);
    let p = Policy::new(cfg(96, 1, 64, None, 10, 8));
    assert_eq!(p.limit(), 48);
    assert_eq!(p.plan(), vec![48, 48]);
    // min rounded up to an achievable size, max capped at N.
    let p = Policy::new(cfg(64, 9, 500, Some(1), 10, 8));
    assert_eq!(p.bounds(), (10, 64));
    assert_eq!(p.limit(), 10);
    // No achievable size in [7, 7] for N = 10: max wins.
    let p = Policy::new(cfg(10, 7, 7, None, 10, 8));
    assert_eq!(p.bounds(), (5, 5));
    // Degenerate inputs.
    let p = Policy::new(cfg(0, 0, 0, None, 0, 0));
    assert_eq!((p.limit(), p.plan()), (1, vec![1]));
}

#[test]
fn capacity_12_settles_at_11_then_grows_back_to_64() {
    let ga = 5;
    let mut p = Policy::new(cfg(64, 1, 64, None, ga, 8));
    let mut log = Vec::new();
    let mut total_ooms = 0;
    for _ in 0..200 {
        let out = run_step(&mut p, 12, &mut log);
        out.result.unwrap();
        total_ooms += out.ooms;
    }
    assert_eq!(p.limit(), 11, "history {:?}", p.state().history);
    assert_eq!(p.ceiling(), Some(13));
    // 64 -> 32 -> 16 -> 8 (3 OOMs in step 1), binary search 11 (ok), 13 (fails), then
    // exponentially spaced re-tests of 13.
    assert!(total_ooms <= 10, "{total_ooms} OOMs: {log:?}");
    assert_eq!(&p.state().history[..5], &[64, 32, 16, 8, 11]);

    // Capacity comes back: the ceiling is re-tested after the backoff wait and forgotten,
    // then the limit doubles back to 64.
    let wait = ga << MAX_BACKOFF;
    let mut steps_to_64 = None;
    for i in 0..(wait + 200) {
        run_step(&mut p, 64, &mut log).result.unwrap();
        if p.limit() == 64 && steps_to_64.is_none() {
            steps_to_64 = Some(i);
        }
    }
    assert_eq!(p.limit(), 64);
    assert_eq!(p.ceiling(), None);
    assert!(steps_to_64.unwrap() <= wait + 4 * ga, "took {steps_to_64:?} steps");
    assert!(log.iter().any(|e| matches!(e, Event::CeilingCleared { ceiling: 13 })));
    // After a long stable period the backoff decays back to zero.
    for _ in 0..(ga << (MAX_BACKOFF + 2)) {
        run_step(&mut p, 64, &mut log).result.unwrap();
    }
    assert_eq!(p.state().backoff, 0);
}

#[test]
fn failed_retests_back_off_exponentially() {
    let ga = 4;
    let mut p = Policy::new(cfg(64, 1, 64, Some(11), ga, 8));
    let mut log = Vec::new();
    // Learn the ceiling 13 first.
    for _ in 0..1000 {
        run_step(&mut p, 12, &mut log).result.unwrap();
    }
    // Re-tests at waits ga*2, ga*4, ..., ga*64, then every ga*64 steps: about
    // log2(64) + 1000 / (ga * 64) failures, not 1000 / ga.
    let failures = failed_growths(&log);
    assert!(failures <= MAX_BACKOFF as usize + 1000 / (ga << MAX_BACKOFF) + 2, "{failures} failed growths");
    assert!(failures >= 3);
    assert_eq!(p.state().backoff, MAX_BACKOFF);
    assert_eq!(p.limit(), 11);
}

#[test]
fn oscillating_capacity_has_bounded_failed_growths() {
    for period in [1usize, 3, 7, 20, 50, 100] {
        let ga = 4;
        let mut p = Policy::new(cfg(64, 1, 64, None, ga, 8));
        let mut log = Vec::new();
        let mut ooms = 0;
        for step in 0..1000 {
            let capacity = if (step / period) % 2 == 0 { 12 } else { 40 };
            let out = run_step(&mut p, capacity, &mut log);
            out.result.unwrap();
            ooms += out.ooms;
        }
        let failures = failed_growths(&log);
        // Without backoff a policy would try to grow every `ga` steps (250 failures), and
        // without probation it would chase every rise and pay an OOM at every drop (~70 for
        // period 7). Measured: 8..12 failed growths and 11..19 OOMs.
        assert!(failures <= 20, "period {period}: {failures} failed growths, {ooms} OOMs");
        assert!(ooms <= 30, "period {period}: {ooms} OOMs");
        assert_eq!(p.state().backoff, MAX_BACKOFF);
    }
}

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
fn failed_growth_returns_to_last_good_size() {
    let mut p = Policy::new(cfg(64, 1, 64, Some(16), 2, 8));
    assert!(p.on_step_ok().is_empty());
    let ev = p.on_step_ok();
    assert_eq!(ev, vec![Event::Grow { from: 16, to: 32 }]);
    assert!(p.is_growing());
    let ev = p.on_oom(32, None).unwrap();
    assert_eq!(ev, vec![Event::GrowFailed { at: 32, back_to: 16, next_try_after_steps: 2 }]);
    assert_eq!((p.limit(), p.ceiling(), p.state().backoff), (16, Some(32), 1));
    // Only 32 is left above 16 (22 lies between): binary search tries 22 after ga steps.
    p.on_step_ok();
    assert_eq!(p.on_step_ok(), vec![Event::Grow { from: 16, to: 22 }]);
    assert!(p.on_step_ok().is_empty()); // 22 ran once: still on probation
    assert!(p.is_growing());
    assert_eq!(p.limit(), 22);
    // Now only the ceiling 32 is above: re-test after ga * 2^1 = 4 clean steps (counting the
    // step that confirmed 22).
    for _ in 0..2 {
        assert!(p.on_step_ok().is_empty());
    }
    assert_eq!(p.on_step_ok(), vec![Event::Grow { from: 22, to: 32 }]);
    // The re-test succeeds: the ceiling is forgotten.
    let ev = p.on_step_ok();
    assert_eq!(ev, vec![Event::CeilingCleared { ceiling: 32 }]);
    assert_eq!(p.ceiling(), None);
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

#[test]
fn from_state_renormalises() {
    let mut p = Policy::new(cfg(64, 1, 64, None, 3, 8));
    let mut log = Vec::new();
    for _ in 0..50 {
        run_step(&mut p, 12, &mut log).result.unwrap();
    }
    let state = p.state().clone();
    // Same config: same policy.
    let q = Policy::from_state(p.config().clone(), state.clone());
    assert_eq!(q.state(), p.state());
    // Smaller max: limit clamped.
    let q = Policy::from_state(cfg(64, 1, 8, None, 3, 8), state.clone());
    assert_eq!(q.limit(), 8);
    check_invariants(&q);
    // Larger min: limit raised to an achievable size >= min.
    let q = Policy::from_state(cfg(64, 12, 64, None, 3, 8), state.clone());
    assert_eq!(q.limit(), 13);
    check_invariants(&q);
    // A different effective batch: sizes re-rounded for the new N.
    let q = Policy::from_state(cfg(100, 1, 100, None, 3, 8), state.clone());
    check_invariants(&q);
    assert!(q.limit() <= 11);
    // Garbage state.
    let garbage =
        PolicyState { limit: 1000, ceiling: Some(3), growing_from: Some(999), backoff: 99, ..Default::default() };
    let q = Policy::from_state(cfg(64, 1, 64, None, 3, 8), garbage);
    check_invariants(&q);
    assert_eq!((q.limit(), q.ceiling(), q.state().backoff), (2, Some(3), MAX_BACKOFF));
}

#[test]
fn state_and_events_serialise() {
    let mut p = Policy::new(cfg(64, 1, 64, None, 2, 8));
    let mut log = Vec::new();
    p.observe_memory(8, 1000, 10_000);
    for i in 0..40 {
        run_step(&mut p, if i < 20 { 12 } else { 30 }, &mut log).result.unwrap();
    }
    let json = serde_json::to_string(p.state()).unwrap();
    let back: PolicyState = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, p.state());
    // Missing fields default (forward compatibility of checkpoints).
    let partial: PolicyState = serde_json::from_str(r#"{"limit": 16, "ceiling": 22}"#).unwrap();
    let q = Policy::from_state(cfg(64, 1, 64, None, 2, 8), partial);
    assert_eq!((q.limit(), q.ceiling()), (16, Some(22)));

    let e = Event::Shrink { from: 64, to: 32, reason: ShrinkReason::Halved };
    assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"kind":"shrink","from":64,"to":32,"reason":"halved"}"#);
    let e = Event::GrowFailed { at: 13, back_to: 11, next_try_after_steps: 8 };
    assert_eq!(
        serde_json::to_string(&e).unwrap(),
        r#"{"kind":"grow_failed","at":13,"back_to":11,"next_try_after_steps":8}"#
    );
    for e in &log {
        let v: serde_json::Value = serde_json::to_value(e).unwrap();
        assert_eq!(v["kind"], e.kind());
        assert_eq!(&serde_json::from_value::<Event>(v).unwrap(), e);
        assert!(!e.to_string().is_empty());
    }
    assert_eq!(Event::Grow { from: 1, to: 2 }.kind(), "grow");
}

#[test]
fn grow_after_zero_never_grows() {
    let mut p = Policy::new(cfg(64, 1, 64, None, 0, 8));
    let mut log = Vec::new();
    run_step(&mut p, 12, &mut log).result.unwrap();
    for _ in 0..100 {
        run_step(&mut p, 64, &mut log).result.unwrap();
    }
    assert_eq!(p.limit(), 8);
}

// ---------------------------------------------------------------- property tests

/// A capacity that changes over time: `(steps, capacity)` segments, repeated.
fn schedule() -> impl Strategy<Value = Vec<(usize, usize)>> {
    prop::collection::vec((1usize..40, 0usize..600), 1..8)
}

fn capacity_at(schedule: &[(usize, usize)], step: usize) -> usize {
    let period: usize = schedule.iter().map(|s| s.0).sum();
    let mut t = step % period;
    for &(len, cap) in schedule {
        if t < len {
            return cap;
        }
        t -= len;
    }
    unreachable!()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn chunks_sum_and_differ_by_at_most_one(total in 1usize..5000, limit in 1usize..6000) {
        let chunks = plan_chunks(total, limit);
        prop_assert_eq!(chunks.iter().sum::<usize>(), total);
        prop_assert_eq!(chunks.len(), total.div_ceil(limit));
        let (mx, mn) = (*chunks.iter().max().unwrap(), *chunks.iter().min().unwrap());
        prop_assert!(mx - mn <= 1);
        prop_assert!(mx <= limit);
        prop_assert_eq!(mx, max_chunk(total, limit));
        prop_assert!(chunks.windows(2).all(|w| w[0] >= w[1]));
        prop_assert!(is_achievable(total, mx));
    }

    #[test]
    fn every_step_completes_or_gives_up_within_budget(
        n in 1usize..400,
        min_frac in 0.0f64..1.0,
        max_frac in 0.0f64..1.2,
        initial in prop::option::of(0usize..500),
        ga in 0usize..12,
        retries in 0usize..12,
        sched in schedule(),
        deaths in prop::collection::vec(0usize..300, 0..3),
    ) {
        let max = ((n as f64 * max_frac) as usize).max(1);
        let min = ((max.min(n) as f64 * min_frac) as usize).max(1);
        let mut p = Policy::new(cfg(n, min, max, initial, ga, retries));
        check_invariants(&p);
        let mut log = Vec::new();
        for step in 0..300 {
            if deaths.contains(&step) {
                // The supervisor restarts from the saved state after a death at the limit.
                let failed = p.limit();
                let state = serde_json::from_str(&serde_json::to_string(p.state()).unwrap()).unwrap();
                p = Policy::from_state(p.config().clone(), state);
                p.lower_ceiling(failed);
                check_invariants(&p);
                prop_assert!(p.limit() < failed || p.exhausted());
            }
            let budget = if p.is_searching() { search_bound(&p) } else { retries + 1 };
            let out = run_step(&mut p, capacity_at(&sched, step), &mut log);
            prop_assert!(out.ooms <= budget, "{} OOMs, budget {}", out.ooms, budget);
            if out.result.is_err() {
                break;
            }
        }
    }

    #[test]
    fn never_gives_up_while_min_fits(
        n in 1usize..400,
        ga in 0usize..12,
        sched in prop::collection::vec((1usize..40, 1usize..600), 1..8),
    ) {
        // Enough retries to halve from N to 1, plus one failed growth.
        let retries = (usize::BITS - n.leading_zeros()) as usize + 2;
        let mut p = Policy::new(cfg(n, 1, n, None, ga, retries));
        let mut log = Vec::new();
        for step in 0..300 {
            let out = run_step(&mut p, capacity_at(&sched, step), &mut log);
            prop_assert!(out.result.is_ok(), "{:?}", out.result);
        }
    }

    #[test]
    fn constant_capacity_converges_to_largest_fitting_size(
        n in 1usize..300,
        capacity in 1usize..300,
        ga in 1usize..6,
    ) {
        let mut p = Policy::new(cfg(n, 1, n, None, ga, 16));
        let mut log = Vec::new();
        let mut ooms = 0;
        for _ in 0..(ga << (MAX_BACKOFF + 2)) {
            ooms += run_step(&mut p, capacity, &mut log).ooms;
        }
        let best = max_chunk(n, capacity);
        // The last step may have scheduled a re-test of the ceiling.
        prop_assert_eq!(p.state().growing_from.unwrap_or(p.limit()), best);
        // Shrinks and the binary search are logarithmic; re-tests back off exponentially.
        let log2n = (usize::BITS - n.leading_zeros()) as usize;
        prop_assert!(ooms <= 2 * log2n + MAX_BACKOFF as usize + 8, "{} OOMs", ooms);
    }

    #[test]
    fn state_round_trips_through_json(
        n in 1usize..200,
        ga in 0usize..5,
        sched in schedule(),
        observations in prop::collection::vec((1usize..200, 1u64..1_000_000_000, 1u64..2_000_000_000), 0..5),
    ) {
        let mut p = Policy::new(cfg(n, 1, n, None, ga, 64));
        for (m, peak, cap) in observations {
            p.observe_memory(m, peak, cap);
        }
        let mut log = Vec::new();
        for step in 0..100 {
            let _ = run_step(&mut p, capacity_at(&sched, step).max(1), &mut log);
        }
        let json = serde_json::to_string(p.state()).unwrap();
        let back: PolicyState = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, p.state());
        let q = Policy::from_state(p.config().clone(), back);
        prop_assert_eq!(q.limit(), p.limit());
        prop_assert_eq!(q.ceiling(), p.ceiling());
    }
}

#[test]
fn oom_during_probation_is_a_failed_growth() {
    let mut p = Policy::new(cfg(64, 1, 64, Some(16), 3, 8));
    for _ in 0..2 {
        assert!(p.on_step_ok().is_empty());
    }
    assert_eq!(p.on_step_ok(), vec![Event::Grow { from: 16, to: 32 }]);
    // 32 runs twice, then capacity drops: within probation (3 steps) -> back to 16.
    assert!(p.on_step_ok().is_empty());
    assert!(p.on_step_ok().is_empty());
    assert!(p.is_growing());
    let ev = p.on_oom(32, None).unwrap();
    assert_eq!(ev, vec![Event::GrowFailed { at: 32, back_to: 16, next_try_after_steps: 3 }]);
    assert_eq!(p.state().backoff, 1);
    // After probation an OOM is an ordinary shrink.
    let mut p = Policy::new(cfg(64, 1, 32, Some(16), 3, 8));
    for _ in 0..6 {
        p.on_step_ok();
    }
    assert_eq!(p.limit(), 32);
    assert!(!p.is_growing());
    let ev = p.on_oom(32, None).unwrap();
    assert_eq!(ev, vec![Event::Shrink { from: 32, to: 16, reason: ShrinkReason::Halved }]);
    assert_eq!(p.state().backoff, 0);
}

// ------------------------------------------- the automatic start is searched, not budgeted

/// Regression: with `initial = auto` the first step used to give up after
/// `max_retries_per_step + 1` out-of-memory failures (1024 -> ... -> 4 is nine of them with
/// the default budget of 8) although size 2 fits.
#[test]
fn auto_start_is_not_capped_by_the_retry_budget() {
    let mut p = Policy::new(cfg(1024, 1, 1024, None, 50, 8));
    let capacity = 3;
    let mut ooms = 0;
    while let Some(&m) = p.plan().iter().find(|&&m| m > capacity) {
        ooms += 1;
        p.on_oom(m, None).unwrap_or_else(|g| panic!("gave up after {ooms} OOMs at {m}: {g}"));
        check_invariants(&p);
    }
    p.on_step_ok();
    assert!(p.limit() <= capacity && p.plan().iter().all(|&m| m <= capacity), "{:?}", p.state());
    // 1024 -> 512 -> ... -> 4 -> 2: nine halvings, none of them a give-up.
    assert_eq!((p.limit(), ooms), (2, 9));
    assert_eq!(p.state().steps, 1);
}

#[test]
fn auto_start_keeps_the_budget_after_its_first_step() {
    let mut p = Policy::new(cfg(1024, 1, 1024, None, 0, 3));
    assert!(p.is_searching());
    let mut log = Vec::new();
    run_step(&mut p, 1024, &mut log).result.unwrap();
    assert!(!p.is_searching());
    // Memory drops to 3 samples: a later step has the ordinary per-step budget.
    let out = run_step(&mut p, 3, &mut log);
    let g = out.result.unwrap_err();
    assert_eq!((g.kind, out.ooms), (GiveUpKind::TooManyRetries, 4));
    assert!(g.to_string().contains("1 step(s) had completed before this one"), "{g}");
    assert_eq!(p.limit(), 64);
}

#[test]
fn auto_start_search_survives_a_restart() {
    let restart = |p: &Policy| {
        let json = serde_json::to_string(p.state()).unwrap();
        Policy::from_state(p.config().clone(), serde_json::from_str(&json).unwrap())
    };
    let mut p = Policy::new(cfg(1024, 1, 1024, None, 50, 2));
    for _ in 0..3 {
        p.on_oom(p.limit(), None).unwrap();
    }
    assert_eq!(p.limit(), 128);
    // A state saved mid-search (`checkpoint.on_oom`) resumes the search, still without a budget.
    let mut p = restart(&p);
    assert!(p.is_searching());
    let mut log = Vec::new();
    let out = run_step(&mut p, 100, &mut log);
    out.result.unwrap();
    assert_eq!((out.ooms, p.limit(), p.state().steps), (1, 64, 1));
    // Once a step has completed, a restored policy keeps the per-step budget.
    let mut p = restart(&p);
    assert!(!p.is_searching());
    for _ in 0..2 {
        p.on_oom(p.limit(), None).unwrap();
    }
    assert_eq!(p.on_oom(p.limit(), None).unwrap_err().kind, GiveUpKind::TooManyRetries);
    // A worker that dies of memory during the search is restarted still searching.
    let mut p = Policy::new(cfg(1024, 1, 1024, None, 50, 2));
    p.lower_ceiling(1024);
    let mut p = restart(&p);
    assert!(p.is_searching());
    run_step(&mut p, 3, &mut log).result.unwrap();
    assert_eq!(p.limit(), 2);
}

#[test]
fn auto_start_gives_up_only_when_min_fails_and_says_so() {
    let mut p = Policy::new(cfg(1024, 4, 1024, None, 50, 8));
    let mut log = Vec::new();
    let out = run_step(&mut p, 2, &mut log);
    let g = out.result.unwrap_err();
    // 1024, 512, ..., 4: nine sizes tried, more than the per-step budget, yet only the
    // minimum's failure ends the search.
    assert_eq!((g.kind, g.micro, g.min, out.ooms), (GiveUpKind::MinDoesNotFit, 4, 4, 9));
    let text = g.to_string();
    assert!(text.contains("searched down from 1024 sample(s) to 4 in the first step"), "{text}");
    assert!(text.contains("without finding a size that fits"), "{text}");
    assert!(!text.contains("max_retries_per_step"), "{text}");
    assert!(p.exhausted());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// An automatic start settles on a fitting, achievable size in its first step whatever the
    /// capacity, within a logarithmic number of failures, even with a misleading memory model
    /// (predicted-fit shrinks) and a restart from the saved state in the middle of the search.
    #[test]
    fn auto_start_settles_on_a_fitting_size(
        (n, capacity) in (1usize..=100_000).prop_flat_map(|n| (Just(n), 1..=n)),
        retries in 0usize..12,
        model in prop::option::of((0u64..1 << 30, 1u64..1 << 20, 1u64..1 << 36)),
        restart_after in prop::option::of(0usize..20),
    ) {
        let mut p = Policy::new(cfg(n, 1, n, None, 50, retries));
        if let Some((fixed, per, cap)) = model {
            for m in [1, 2] {
                p.observe_memory(m, fixed + per * m as u64, cap);
            }
        }
        let mut ooms = 0;
        while let Some(&m) = p.plan().iter().find(|&&m| m > capacity) {
            prop_assert!(p.is_searching());
            if restart_after == Some(ooms) {
                let json = serde_json::to_string(p.state()).unwrap();
                p = Policy::from_state(p.config().clone(), serde_json::from_str(&json).unwrap());
            }
            ooms += 1;
            let before = p.limit();
            let res = p.on_oom(m, None);
            prop_assert!(res.is_ok(), "gave up after {} OOMs at {}: {:?}", ooms, m, res);
            prop_assert!(p.limit() < before);
            check_invariants(&p);
        }
        p.on_step_ok();
        check_invariants(&p);
        prop_assert!(!p.is_searching());
        prop_assert!(is_achievable(n, p.limit()) && p.limit() <= capacity);
        prop_assert!(p.plan().iter().all(|&m| m <= capacity));
        prop_assert!(ooms <= 2 * ceil_log2(n) + 3, "{} OOMs for N = {}", ooms, n);
        if model.is_none() {
            // Plain halving: one failure per power of two, and never below half the capacity.
            prop_assert!(ooms <= ceil_log2(n), "{} OOMs for N = {}", ooms, n);
            prop_assert!(p.limit() >= max_chunk(n, (capacity + 1).div_ceil(2)));
        }
    }
}
