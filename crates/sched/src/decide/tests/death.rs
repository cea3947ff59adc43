//! The decision after a worker's death, on its whole table (moved with the decision from the
//! supervisor in `crates/cli/src/supervise.rs`).

use super::*;
use crate::decide::death::{decide_after_death, Death, DeathAt, DeathDecision, Supervision};

fn at(step: usize, phase: OomPhase, micro: usize, eval: usize) -> DeathAt {
    DeathAt { step, phase: Some(phase), micro: Some(micro), eval: Some(eval) }
}

/// The decision within the restart budget.
fn decide(death: &Death, at: &DeathAt, min_micro: usize, earlier: &[DeathAt], report: &str) -> DeathDecision {
    decide_after_death(death, at, &Supervision { min_micro, earlier, restarts: 1, max_restarts: 3, report })
}

fn restart(d: DeathDecision) -> (Option<usize>, Option<usize>, bool) {
    match d {
        DeathDecision::Restart { lower_micro, lower_eval, in_place, .. } => (lower_micro, lower_eval, in_place),
        DeathDecision::Stop { message, .. } => panic!("expected a restart, got a stop: {message}"),
    }
}

fn stop(d: DeathDecision) -> (bool, String) {
    match d {
        DeathDecision::Stop { does_not_fit, message } => (does_not_fit, message),
        other => panic!("expected a stop, got {other:?}"),
    }
}

use OomPhase::{Checkpoint, Eval, Optimizer, Train};

#[test]
fn the_phase_that_died_is_the_one_lowered() {
    let alloc = Death::HostAlloc { bytes: 64, checkpoint: false };
    assert_eq!(restart(decide(&alloc, &at(5, Train, 32, 256), 1, &[], "")), (Some(32), None, false));
    assert_eq!(restart(decide(&alloc, &at(5, Eval, 32, 256), 1, &[], "")), (None, Some(256), false));
    assert_eq!(restart(decide(&alloc, &at(5, Optimizer, 32, 256), 1, &[], "")), (None, None, true));
    assert_eq!(restart(decide(&alloc, &at(5, Checkpoint, 32, 256), 1, &[], "")), (None, None, false));
    // A failure on the checkpoint writer thread is the checkpoint's, whatever the loop was doing.
    let ck = Death::HostAlloc { bytes: 64, checkpoint: true };
    assert_eq!(restart(decide(&ck, &at(5, Train, 32, 256), 1, &[], "")), (None, None, false));
    // Without `current.json` nothing is known but the step.
    let unknown = DeathAt { step: 5, phase: None, micro: None, eval: None };
    assert_eq!(restart(decide(&alloc, &unknown, 1, &[], "")), (None, None, false));
    assert_eq!(unknown.phase_name(), "unknown");
}

#[test]
fn a_death_at_the_smallest_size_stops_at_once() {
    let d = Death::BackendUnusable;
    let (does_not_fit, msg) = stop(decide(&d, &at(3, Train, 4, 8), 4, &[], "REPORT"));
    assert!(does_not_fit);
    assert!(msg.contains("micro_batch.min") && msg.contains("REPORT"), "{msg}");
    let (does_not_fit, _) = stop(decide(&d, &at(3, Eval, 4, 1), 1, &[], ""));
    assert!(does_not_fit);
}

#[test]
fn a_second_death_at_the_same_step_with_the_same_sizes_stops() {
    let d = Death::HostAlloc { bytes: 1, checkpoint: false };
    let first = at(7, Optimizer, 16, 16);
    let (does_not_fit, msg) = stop(decide(&d, &first, 1, std::slice::from_ref(&first), ""));
    assert!(does_not_fit);
    assert!(msg.contains("twice at step 7 in optimizer"), "{msg}");
    // Other sizes at the same step: a restart can still help.
    restart(decide(&d, &at(7, Train, 8, 16), 1, &[at(7, Train, 16, 16)], ""));
}

#[test]
fn an_unknown_sigkill_restarts_without_lowering_and_is_not_called_memory() {
    let known = Death::Killed { oom_counter_readable: true };
    assert!(!known.is_memory());
    assert!(known.describe().contains("cause unknown"));
    assert_eq!(restart(decide(&known, &at(2, Train, 32, 32), 1, &[], "")), (None, None, false));
    let (does_not_fit, _) = stop(decide(&known, &at(2, Train, 32, 32), 1, &[at(2, Train, 32, 32)], ""));
    assert!(!does_not_fit, "not a memory failure, so not exit 3");
    let unreadable = Death::Killed { oom_counter_readable: false };
    assert!(unreadable.is_memory() && unreadable.describe().contains("cause unknown"));
    assert_eq!(restart(decide(&unreadable, &at(2, Train, 32, 32), 1, &[], "")), (Some(32), None, false));
    let oom = Death::OomKiller;
    assert_eq!(restart(decide(&oom, &at(2, Train, 32, 32), 1, &[], "")), (Some(32), None, false));
}

#[test]
fn more_deaths_than_max_restarts_stop_with_the_report() {
    let d = Death::OomKiller;
    let sup = Supervision { min_micro: 1, earlier: &[], restarts: 4, max_restarts: 3, report: "REPORT" };
    let (does_not_fit, msg) = stop(decide_after_death(&d, &at(9, Train, 32, 32), &sup));
    assert!(does_not_fit);
    assert_eq!(
        msg,
        format!(
            "the training worker died 4 times, more than supervisor.max_restarts = 3 (last: {}). REPORT Or raise \
             supervisor.max_restarts.",
            d.describe()
        )
    );
    let sup = Supervision { restarts: 3, ..sup };
    restart(decide_after_death(&d, &at(9, Train, 32, 32), &sup));
}

#[test]
fn a_worker_restarted_after_an_evaluation_death_evaluates_below_it() {
    let d = Death::OomKiller;
    let (_, lower_eval, _) = restart(decide(&d, &at(5, Eval, 32, 256), 1, &[], ""));
    assert_eq!(lower_eval.map(crate::eval_batch_below), Some(128));
    for e in 2..1000 {
        let below = crate::eval_batch_below(e);
        assert!((1..e).contains(&below), "{e} -> {below}");
    }
    assert_eq!(crate::eval_batch_below(1), 1);
}

fn death() -> impl Strategy<Value = Death> {
    prop_oneof![
        Just(Death::BackendUnusable),
        Just(Death::OomKiller),
        (any::<u64>(), any::<bool>()).prop_map(|(bytes, checkpoint)| Death::HostAlloc { bytes, checkpoint }),
        any::<bool>().prop_map(|oom_counter_readable| Death::Killed { oom_counter_readable }),
    ]
}

fn death_at() -> impl Strategy<Value = DeathAt> {
    (0usize..50, prop::option::of(phase()), prop::option::of(0usize..64), prop::option::of(0usize..64))
        .prop_map(|(step, phase, micro, eval)| DeathAt { step, phase, micro, eval })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// The whole table, restated: a stop is exit 3 exactly for memory deaths; a death past the
    /// budget or repeated with the same sizes stops; otherwise the phase that died decides
    /// what is lowered, and a death at the smallest size stops.
    #[test]
    fn the_death_table(
        d in death(),
        a in death_at(),
        min_micro in 1usize..16,
        earlier in prop::collection::vec(death_at(), 0..4),
        restarts in 1usize..6,
        max_restarts in 0usize..6,
    ) {
        let sup = Supervision { min_micro, earlier: &earlier, restarts, max_restarts, report: "REPORT" };
        let decision = decide_after_death(&d, &a, &sup);
        let memory = d.is_memory();
        let must_stop = restarts > max_restarts || earlier.contains(&a);
        let phase = if matches!(d, Death::HostAlloc { checkpoint: true, .. }) { Some(Checkpoint) } else { a.phase };
        let expected = if must_stop {
            None
        } else if !memory {
            Some((None, None, false))
        } else {
            match phase {
                Some(Eval) => match a.eval {
                    Some(e) if e <= 1 => None,
                    e => Some((None, e, false)),
                },
                Some(Optimizer) => Some((None, None, true)),
                Some(Checkpoint) => Some((None, None, false)),
                Some(Train) | None => match a.micro {
                    Some(m) if m <= min_micro => None,
                    m => Some((m, None, false)),
                },
            }
        };
        match (decision, expected) {
            (DeathDecision::Stop { does_not_fit, message }, None) => {
                prop_assert_eq!(does_not_fit, memory);
                prop_assert!(message.contains("REPORT"), "{}", message);
            }
            (DeathDecision::Restart { lower_micro, lower_eval, in_place, action }, Some(want)) => {
                prop_assert_eq!((lower_micro, lower_eval, in_place), want);
                prop_assert!(!action.is_empty());
            }
            (got, want) => prop_assert!(false, "got {:?}, the table says {:?}", got, want),
        }
    }
}
