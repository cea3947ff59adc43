//! The decision after a worker's death, on its whole table (moved with the decision from the
//! supervisor in `crates/cli/src/supervise.rs`).

use super::*;
use crate::decide::death::{decide_after_death, Death, DeathAt, DeathDecision, Supervision};

fn at(step: usize, phase: OomPhase, micro: usize, eval: usize) -> DeathAt {
    DeathAt { step, phase: Some(phase), micro: Some(micro), eval: Some(eval) }
}

/// The policy of an effective batch of 64 with `micro_batch.min = min`.
fn policy_64(min: usize) -> Policy {
    Policy::new(PolicyConfig { min, ..PolicyConfig::new(64) })
}

/// The decision within the restart budget, for an effective batch of 64 with
/// `micro_batch.min = min`.
fn decide(death: &Death, at: &DeathAt, min: usize, earlier: &[DeathAt], report: &str) -> DeathDecision {
    let policy = policy_64(min);
    decide_after_death(death, at, &Supervision { policy: &policy, earlier, restarts: 1, max_restarts: 3, report })
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

/// Regression: the smallest micro-batch is the policy's lower bound, the smallest achievable
/// size at or above `micro_batch.min`. No effective batch of 64 splits into micro-batches of
/// 30, so with `micro_batch.min = 30` it is 32: a death at 32 stops at once, with the numbers,
/// where a restart could only die again (the policy cannot go below 32 either).
#[test]
fn a_death_at_the_policys_achievable_minimum_stops() {
    let d = Death::OomKiller;
    let (does_not_fit, msg) = stop(decide(&d, &at(3, Train, 32, 8), 30, &[], "REPORT"));
    assert!(does_not_fit);
    assert_eq!(
        msg,
        "the training worker died of memory at step 3 with the smallest micro-batch the recipe allows (32: with \
         micro_batch.min = 30 and an effective batch of 64, the smallest micro-batch limit is 32); a smaller one \
         cannot be tried. REPORT"
    );
    let mut restarted = policy_64(30);
    restarted.lower_ceiling(32);
    assert!(restarted.exhausted(), "a restarted worker could not go below 32 either");
    assert_eq!(restart(decide(&d, &at(3, Train, 64, 8), 30, &[], "")), (Some(64), None, false));
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
    let policy = policy_64(1);
    let sup = Supervision { policy: &policy, earlier: &[], restarts: 4, max_restarts: 3, report: "REPORT" };
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

/// A fresh policy with the configuration of `p`, searching from its upper bound (no retry
/// budget in the way): what the in-process decision says depends only on the bounds.
fn fresh(p: &Policy) -> Policy {
    Policy::new(PolicyConfig { initial: None, ..p.config().clone() })
}

/// A training-phase context at micro-batch `micro`.
fn train_oom(micro: usize) -> OomContext {
    OomContext {
        phase: Train,
        step: 3,
        micro,
        eval_batch: 1,
        optimizer_ooms: 1,
        in_place: false,
        backend_usable: true,
        parameters: 1,
        hint: None,
        error: "out of memory".into(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// The rows common to every phase: a stop is exit 3 exactly for memory deaths and carries
    /// the report; a death past the budget or repeated with the same sizes stops; a restart
    /// lowers nothing after a death that is not of memory, and otherwise at most what was
    /// running in the phase that died (the update's death runs the next update in place).
    #[test]
    fn the_death_table(
        d in death(),
        a in death_at(),
        p in policy(),
        earlier in prop::collection::vec(death_at(), 0..4),
        restarts in 1usize..6,
        max_restarts in 0usize..6,
    ) {
        let sup = Supervision { policy: &p, earlier: &earlier, restarts, max_restarts, report: "REPORT" };
        let memory = d.is_memory();
        let phase = d.phase(&a);
        match decide_after_death(&d, &a, &sup) {
            DeathDecision::Stop { does_not_fit, message } => {
                prop_assert_eq!(does_not_fit, memory);
                prop_assert!(message.contains("REPORT"), "{}", message);
            }
            DeathDecision::Restart { lower_micro, lower_eval, in_place, action } => {
                prop_assert!(restarts <= max_restarts && !earlier.contains(&a), "past the budget or repeated");
                prop_assert!(!action.is_empty());
                if !memory {
                    prop_assert_eq!((lower_micro, lower_eval, in_place), (None, None, false));
                }
                prop_assert!(lower_micro.is_none() || (matches!(phase, Some(Train) | None) && lower_micro == a.micro));
                prop_assert!(lower_eval.is_none() || (phase == Some(Eval) && lower_eval == a.eval));
                prop_assert_eq!(in_place, memory && phase == Some(Optimizer));
            }
        }
    }

    /// Cross-check with the policy: a memory death in training (restart budget left, not a
    /// repeat) stops exactly when the policy cannot run a smaller micro-batch than the one that
    /// died: where the in-process decision at that size gives up (`MinDoesNotFit`), and where a
    /// restarted worker's `lower_ceiling` would leave the policy exhausted. Otherwise the
    /// restart lowers the ceiling below it, and the restarted worker really runs smaller.
    #[test]
    fn a_training_death_stops_exactly_where_the_policy_cannot_go_lower(
        p in policy(),
        frac in 0.0f64..1.0,
        unknown_phase in any::<bool>(),
    ) {
        let hi = p.bounds().1;
        // A size the policy runs: at most its upper bound (current.json records its limit).
        let m = 1 + ((hi - 1) as f64 * frac) as usize;
        let a = DeathAt { step: 3, phase: (!unknown_phase).then_some(Train), micro: Some(m), eval: Some(8) };
        let sup = Supervision { policy: &p, earlier: &[], restarts: 1, max_restarts: 3, report: "REPORT" };
        let stops = matches!(decide_after_death(&Death::OomKiller, &a, &sup), DeathDecision::Stop { .. });
        let in_process = fresh(&p).decide(&train_oom(m));
        let gives_up = matches!(&in_process, Decision::GiveUp(g) if g.kind == GiveUpKind::MinDoesNotFit);
        prop_assert_eq!(stops, gives_up, "death at {} vs in-process {:?}", m, in_process);
        let mut restarted = fresh(&p);
        restarted.lower_ceiling(m);
        prop_assert_eq!(stops, restarted.exhausted(), "death at {}, bounds {:?}", m, p.bounds());
        if !stops {
            prop_assert!(restarted.limit() < m, "restarted at {} after a death at {}", restarted.limit(), m);
        }
    }

    /// Cross-check with the in-process rule: a memory death in evaluation stops exactly when
    /// evaluation in-process gives up at that batch (`EvalDoesNotFit`); otherwise the restart
    /// evaluates below it, at the batch the in-process shrink would use.
    #[test]
    fn an_evaluation_death_follows_the_in_process_rule(mut p in policy(), e in 0usize..5000) {
        let a = DeathAt { step: 3, phase: Some(Eval), micro: Some(8), eval: Some(e) };
        let sup = Supervision { policy: &p, earlier: &[], restarts: 1, max_restarts: 3, report: "REPORT" };
        let death = decide_after_death(&Death::OomKiller, &a, &sup);
        let ctx = OomContext { phase: Eval, eval_batch: e, ..train_oom(8) };
        match (death, p.decide(&ctx)) {
            (DeathDecision::Stop { .. }, Decision::GiveUp(g)) => prop_assert_eq!(g.kind, GiveUpKind::EvalDoesNotFit),
            (DeathDecision::Restart { lower_eval: Some(below), .. }, Decision::ShrinkEval { from, to }) => {
                prop_assert_eq!((below, from), (e, e));
                prop_assert_eq!(crate::eval_batch_below(below), to);
            }
            (death, in_process) => prop_assert!(false, "death {:?} vs in-process {:?}", death, in_process),
        }
    }
}
