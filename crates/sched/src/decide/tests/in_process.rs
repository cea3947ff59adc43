//! The in-process decisions: [`Policy::decide`] on its whole table, and the exact texts the
//! user reads.

use super::*;
use crate::plan::is_achievable;

fn ctx(phase: OomPhase) -> OomContext {
    OomContext {
        phase,
        step: 7,
        micro: 32,
        eval_batch: 64,
        optimizer_ooms: 1,
        in_place: false,
        backend_usable: true,
        parameters: 1_234_567,
        hint: None,
        error: "can't allocate buffer of size: 1024".into(),
    }
}

fn policy_64() -> Policy {
    Policy::new(PolicyConfig { initial: Some(32), ..PolicyConfig::new(64) })
}

/// A policy whose limit is its minimum, 32.
fn policy_64_at_min() -> Policy {
    Policy::new(PolicyConfig { min: 32, initial: Some(32), ..PolicyConfig::new(64) })
}

#[test]
fn each_phase_gets_its_decision() {
    let mut p = policy_64();
    assert_eq!(
        p.decide(&ctx(OomPhase::Train)),
        Decision::RetryStep {
            micro: 16,
            events: vec![Event::Shrink { from: 32, to: 16, reason: crate::ShrinkReason::Halved }]
        }
    );
    assert_eq!(p.limit(), 16);
    let mut p = policy_64();
    assert_eq!(p.decide(&ctx(OomPhase::Optimizer)), Decision::RetryUpdate);
    assert_eq!(p.limit(), 32, "an optimizer out-of-memory is not the micro-batch's");
    assert_eq!(p.decide(&ctx(OomPhase::Eval)), Decision::ShrinkEval { from: 64, to: 32 });
    assert!(matches!(
        p.decide(&ctx(OomPhase::Checkpoint)),
        Decision::RestartWorker { reason: RestartReason::Checkpoint, .. }
    ));
    let in_place = OomContext { in_place: true, ..ctx(OomPhase::Optimizer) };
    assert!(matches!(p.decide(&in_place), Decision::RestartWorker { reason: RestartReason::InPlaceUpdate, .. }));
    let dead = OomContext { backend_usable: false, ..ctx(OomPhase::Train) };
    assert!(matches!(p.decide(&dead), Decision::RestartWorker { reason: RestartReason::BackendUnusable, .. }));
    assert_eq!(p.state(), policy_64().state());
}

/// The texts moved from the trainer: what the user reads must not change.
#[test]
fn the_messages_are_the_ones_users_read_today() {
    let error = "can't allocate buffer of size: 1024";
    let mut p = policy_64();
    let twice = OomContext { optimizer_ooms: 2, ..ctx(OomPhase::Optimizer) };
    let Decision::GiveUp(g) = p.decide(&twice) else { panic!("a second optimizer OOM must give up") };
    assert_eq!(g.kind, GiveUpKind::UpdateDoesNotFit);
    assert_eq!(
        g.to_string(),
        "the optimizer update of step 7 ran out of memory twice, after cleanup; it needs room for the parameters, \
         their gradients and the optimizer state (1.23M parameters, 4 MiB in float32, about 4x that for AdamW), \
         independent of the micro-batch. Fix: a smaller model, `optimizer.kind = \"sgd\"`, or a device with more \
         memory."
    );
    let small = OomContext { optimizer_ooms: 2, parameters: 950, ..ctx(OomPhase::Optimizer) };
    let Decision::GiveUp(g) = p.decide(&small) else { panic!() };
    assert!(g.to_string().contains("(950 parameters, 0 MiB in float32"), "{g}");
    let k = OomContext { optimizer_ooms: 2, parameters: 12_345, ..ctx(OomPhase::Optimizer) };
    let Decision::GiveUp(g) = p.decide(&k) else { panic!() };
    assert!(g.to_string().contains("(12.3k parameters"), "{g}");

    let one = OomContext { eval_batch: 1, ..ctx(OomPhase::Eval) };
    let Decision::GiveUp(g) = p.decide(&one) else { panic!("evaluation at 1 must give up") };
    assert_eq!(g.kind, GiveUpKind::EvalDoesNotFit);
    assert_eq!(g.to_string(), format!("evaluation does not fit even one sample per micro-batch: {error}"));

    let in_place = OomContext { in_place: true, ..ctx(OomPhase::Optimizer) };
    let Decision::RestartWorker { message, .. } = p.decide(&in_place) else { panic!() };
    assert_eq!(
        message,
        format!(
            "out of memory inside the in-place optimizer update of step 7; the worker ends so the run resumes from \
             the newest checkpoint: {error}"
        )
    );
    let dead = OomContext { backend_usable: false, ..ctx(OomPhase::Train) };
    let Decision::RestartWorker { message, .. } = p.decide(&dead) else { panic!() };
    assert_eq!(message, format!("the backend is unusable after an out-of-memory at micro-batch 32: {error}"));

    // A training give-up is the policy's paragraph followed by the last error.
    let Decision::GiveUp(g) = policy_64_at_min().decide(&ctx(OomPhase::Train)) else {
        panic!("min failed: must give up")
    };
    let plain = policy_64_at_min().on_oom(32, None).unwrap_err();
    assert_eq!(g.to_string(), format!("{plain} (last error: {error})"));
    assert_eq!((g.step, g.error.as_deref()), (Some(7), Some(error)));
}

#[test]
fn give_ups_serialise_with_their_new_fields_optional() {
    let g = GiveUp::eval_does_not_fit(3, "out of memory");
    let json = serde_json::to_string(&g).unwrap();
    assert_eq!(serde_json::from_str::<GiveUp>(&json).unwrap(), g);
    // A give-up written before `step` and `error` existed still reads.
    let old: GiveUp = serde_json::from_str(r#"{"micro":4,"min":4,"reason":"r","kind":"min_does_not_fit"}"#).unwrap();
    assert_eq!((old.step, old.error.as_deref()), (None, None));
    assert!(!old.to_string().contains("last error"));
}

#[test]
fn phases_have_stable_names() {
    for p in OomPhase::ALL {
        assert_eq!(serde_json::from_value::<OomPhase>(p.as_str().into()).unwrap(), p);
        assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
    }
    assert!(serde_json::from_value::<OomPhase>("unknown".into()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Only a training-phase out-of-memory with a usable backend may change the policy: the
    /// optimizer, evaluation and checkpoint phases never touch the micro-batch.
    #[test]
    fn other_phases_never_change_the_policy(
        mut p in policy(),
        c in context(prop::sample::select(vec![OomPhase::Optimizer, OomPhase::Eval, OomPhase::Checkpoint])),
    ) {
        let before = p.state().clone();
        let _ = p.decide(&c);
        prop_assert_eq!(p.state(), &before);
    }

    /// The optimizer phase: in place restarts, an unusable backend restarts, the first
    /// failure on copies retries the update, the second gives up; never a smaller micro-batch.
    #[test]
    fn the_optimizer_table(mut p in policy(), c in context(Just(OomPhase::Optimizer))) {
        let limit = p.limit();
        match p.decide(&c) {
            Decision::RestartWorker { reason: RestartReason::InPlaceUpdate, message } => {
                prop_assert!(c.in_place);
                prop_assert!(message.contains(&c.error));
            }
            Decision::RestartWorker { reason: RestartReason::BackendUnusable, .. } => {
                prop_assert!(!c.in_place && !c.backend_usable)
            }
            Decision::RetryUpdate => prop_assert!(!c.in_place && c.backend_usable && c.optimizer_ooms < 2),
            Decision::GiveUp(g) => {
                prop_assert!(!c.in_place && c.backend_usable && c.optimizer_ooms >= 2);
                prop_assert_eq!(g.kind, GiveUpKind::UpdateDoesNotFit);
                prop_assert_eq!(g.micro, c.micro);
            }
            other => prop_assert!(false, "{:?}", other),
        }
        prop_assert_eq!(p.limit(), limit);
    }

    /// Evaluation halves its batch strictly, never below 1, and gives up exactly at 1: one
    /// shrink per halving, `floor(log2(batch))` of them.
    #[test]
    fn eval_shrinks_strictly_and_gives_up_exactly_at_1(mut p in policy(), c in context(Just(OomPhase::Eval))) {
        let c = OomContext { backend_usable: true, ..c };
        let mut batch = c.eval_batch;
        let mut shrinks = 0;
        loop {
            match p.decide(&OomContext { eval_batch: batch, ..c.clone() }) {
                Decision::ShrinkEval { from, to } => {
                    prop_assert_eq!(from, batch);
                    prop_assert!(to >= 1 && to < from, "{} -> {}", from, to);
                    prop_assert!(batch > 1);
                    batch = to;
                    shrinks += 1;
                }
                Decision::GiveUp(g) => {
                    prop_assert!(batch <= 1, "gave up at {}", batch);
                    prop_assert_eq!(g.kind, GiveUpKind::EvalDoesNotFit);
                    prop_assert!(g.to_string().contains(&c.error));
                    break;
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
        prop_assert_eq!(shrinks, c.eval_batch.checked_ilog2().unwrap_or(0) as usize, "from {}", c.eval_batch);
    }

    /// A training retry runs at the policy's new limit: achievable, within the bounds, and
    /// smaller than both the size that failed and the limit before; a give-up is one of the
    /// policy's own and carries the failure's message.
    #[test]
    fn a_training_retry_is_within_bounds_and_smaller(
        mut p in policy(),
        c in context(Just(OomPhase::Train)),
        at_limit in any::<bool>(),
    ) {
        let c = OomContext { backend_usable: true, micro: if at_limit { p.limit() } else { c.micro }, ..c };
        let n = p.config().effective_batch;
        let before = p.limit();
        let failed = if c.micro == 0 { before } else { c.micro.min(n) };
        let (lo, hi) = p.bounds();
        match p.decide(&c) {
            Decision::RetryStep { micro, events } => {
                prop_assert_eq!(micro, p.limit());
                prop_assert!(micro >= lo && micro <= hi, "{} outside [{}, {}]", micro, lo, hi);
                prop_assert!(is_achievable(n, micro));
                prop_assert!(micro < failed && micro < before, "{} after a failure at {} (limit {})", micro, failed, before);
                prop_assert!(!events.is_empty());
            }
            Decision::GiveUp(g) => {
                prop_assert!(matches!(g.kind, GiveUpKind::MinDoesNotFit | GiveUpKind::TooManyRetries), "{:?}", g.kind);
                let suffix = format!("(last error: {})", c.error);
                prop_assert!(g.to_string().ends_with(&suffix));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    /// A backend that no longer computes always ends the worker, in every phase, and leaves
    /// the policy as it was.
    #[test]
    fn an_unusable_backend_always_restarts_the_worker(mut p in policy(), c in context(phase())) {
        let c = OomContext { backend_usable: false, ..c };
        let before = p.state().clone();
        let want = if c.phase == OomPhase::Optimizer && c.in_place {
            RestartReason::InPlaceUpdate
        } else {
            RestartReason::BackendUnusable
        };
        match p.decide(&c) {
            Decision::RestartWorker { reason, message } => {
                prop_assert_eq!(reason, want);
                prop_assert!(message.ends_with(&c.error));
            }
            other => prop_assert!(false, "{:?}", other),
        }
        prop_assert_eq!(p.state(), &before);
    }

    /// An out-of-memory inside an in-place update always restarts, whatever the probe said.
    #[test]
    fn an_in_place_update_oom_restarts(mut p in policy(), c in context(Just(OomPhase::Optimizer))) {
        let c = OomContext { in_place: true, ..c };
        let restarts = matches!(p.decide(&c), Decision::RestartWorker { reason: RestartReason::InPlaceUpdate, .. });
        prop_assert!(restarts);
    }
}
