//! Property tests of the policy's invariants under capacities that change over time.

use super::*;

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
