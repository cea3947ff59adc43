//! The automatic start (`initial = "auto"`) is a search, not a retry: no per-step budget.

use super::*;

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
