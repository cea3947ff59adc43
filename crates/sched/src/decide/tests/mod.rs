//! Tests of the decision table: the in-process decisions ([`Policy::decide`]) and the
//! decisions after a worker's death ([`decide_after_death`](super::death::decide_after_death)).
//! This file holds the generators shared by both.

use super::*;
use crate::policy::{GiveUpKind, PolicyConfig};
use proptest::prelude::*;

mod death;
mod in_process;

/// One call that moves a policy to another state.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// An out-of-memory at this micro-batch (0: at the limit); a give-up is ignored.
    Oom(usize),
    /// A clean step.
    Ok,
    /// The supervisor lowered the ceiling after a death at this micro-batch.
    Death(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..400).prop_map(Op::Oom),
        6 => Just(Op::Ok),
        1 => (0usize..400).prop_map(Op::Death),
    ]
}

/// A policy in any state it can reach: random bounds and start, then a random history.
fn policy() -> impl Strategy<Value = Policy> {
    (
        1usize..300,
        0.0f64..1.0,
        0.0f64..1.2,
        prop::option::of(0usize..400),
        0usize..8,
        0usize..10,
        prop::collection::vec(op(), 0..40),
    )
        .prop_map(|(n, min_frac, max_frac, initial, ga, retries, ops)| {
            let max = ((n as f64 * max_frac) as usize).max(1);
            let min = ((max.min(n) as f64 * min_frac) as usize).max(1);
            let cfg =
                PolicyConfig { effective_batch: n, min, max, initial, grow_after: ga, max_retries_per_step: retries };
            let mut p = Policy::new(cfg);
            for op in ops {
                match op {
                    Op::Oom(m) => {
                        let _ = p.on_oom(m, None);
                    }
                    Op::Ok => {
                        p.on_step_ok();
                    }
                    Op::Death(m) => {
                        p.lower_ceiling(m);
                    }
                }
            }
            p
        })
}

fn hint() -> impl Strategy<Value = MemoryHint> {
    (
        prop::option::of(1.0f64..1e9),
        prop::option::of(0u64..1 << 34),
        prop::option::of(1u64..1 << 36),
        prop::option::of(1u64..1 << 34),
    )
        .prop_map(|(bytes_per_sample, fixed_bytes, capacity_bytes, requested_bytes)| MemoryHint {
            bytes_per_sample,
            fixed_bytes,
            capacity_bytes,
            requested_bytes,
        })
}

fn phase() -> impl Strategy<Value = OomPhase> {
    prop::sample::select(OomPhase::ALL.to_vec())
}

/// A context in `phase`, with every other field random.
fn context(phase: impl Strategy<Value = OomPhase>) -> impl Strategy<Value = OomContext> {
    (
        phase,
        1usize..100_000,
        0usize..400,
        0usize..5000,
        1usize..5,
        any::<bool>(),
        any::<bool>(),
        0usize..100_000_000,
        prop::option::of(hint()),
    )
        .prop_map(
            |(phase, step, micro, eval_batch, optimizer_ooms, in_place, backend_usable, parameters, hint)| OomContext {
                phase,
                step,
                micro,
                eval_batch,
                optimizer_ooms,
                in_place,
                backend_usable,
                parameters,
                hint,
                error: format!("can't allocate buffer of size: {}", parameters + 1),
            },
        )
}
