//! oomph-sched: the pure, burn-free half of oomph's out-of-memory resilience.
//!
//! - [`plan`]: how an effective batch of `N` samples is split into micro-batches whose sizes
//!   differ by at most one, and which micro-batch limits are *achievable* for `N`.
//! - [`policy`]: the adaptive micro-batch policy: shrink on out-of-memory, remember the
//!   failing ceiling, grow back after clean steps, back off exponentially when growing fails,
//!   give up clearly when even the minimum does not fit. Its state is serialisable so that a
//!   checkpoint carries it across restarts.
//! - [`decide`]: the one decision after an out-of-memory, as a typed result: in-process
//!   ([`Policy::decide`]: retry the step smaller, shrink evaluation, retry the update, restart
//!   the worker, give up) and after a worker's death ([`decide_after_death`]: restart with
//!   lowered sizes, or stop).
//! - [`oom`]: the one classifier that says whether a failure message is an out-of-memory.
//!
//! **Invariant:** this crate never depends on burn; everything here is unit-testable without a
//! device. It is also free of process-wide state (no statics, locks or panic hooks): the
//! recorder of panics raised on other threads lives in `oomph-train`'s recovery boundary,
//! which asks [`classify`] about what it records.

#![warn(missing_docs)]

pub mod decide;
pub mod oom;
pub mod plan;
pub mod policy;

pub use decide::death::{decide_after_death, Death, DeathAt, DeathDecision, Supervision};
pub use decide::{eval_batch_below, Decision, OomContext, OomPhase, RestartReason};
pub use oom::{classify, is_oom, OomKind, SIMULATED_OOM_PREFIX};
pub use plan::{max_chunk, next_larger, next_smaller, plan_chunks};
pub use policy::{Event, GiveUp, GiveUpKind, MemoryHint, Policy, PolicyConfig, PolicyState, ShrinkReason};

#[cfg(test)]
mod tidy;
