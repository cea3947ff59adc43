//! Unit and property tests of the policy, driven by a simulated device whose capacity (the
//! largest micro-batch that fits) may change from step to step. This file holds the simulated
//! device and the invariants checked after every call; the tests are grouped by topic.

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
                            kind => panic!("a training-phase out-of-memory gave up as {kind:?}: {g}"),
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

mod auto_start;
mod growth;
mod properties;
mod shrink;
mod state;
