//! Growing back: the binary search, the re-tests of the ceiling with exponential back-off, probation.

use super::*;

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
fn grow_after_zero_never_grows() {
    let mut p = Policy::new(cfg(64, 1, 64, None, 0, 8));
    let mut log = Vec::new();
    run_step(&mut p, 12, &mut log).result.unwrap();
    for _ in 0..100 {
        run_step(&mut p, 64, &mut log).result.unwrap();
    }
    assert_eq!(p.limit(), 8);
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
