//! oomph-sched: the pure, burn-free half of oomph's out-of-memory resilience.
//!
//! - [`plan`]: how an effective batch of `N` samples is split into micro-batches whose sizes
//!   differ by at most one, and which micro-batch limits are *achievable* for `N`.
//! - [`policy`]: the adaptive micro-batch policy: shrink on out-of-memory, remember the
//!   failing ceiling, grow back after clean steps, back off exponentially when growing fails,
//!   give up clearly when even the minimum does not fit. Its state is serialisable so that a
//!   checkpoint carries it across restarts.
//! - [`oom`]: the one place that decides whether a failure message is an out-of-memory, plus
//!   a process-wide panic recorder ([`oom::panics`]) that sees panics raised on any thread.
//!
//! **Invariant:** this crate never depends on burn; everything here is unit-testable without a
//! device.

#![warn(missing_docs)]

pub mod oom;
pub mod plan;
pub mod policy;

pub use oom::{classify, is_oom, panics, OomKind, SIMULATED_OOM_PREFIX};
pub use plan::{max_chunk, next_larger, next_smaller, plan_chunks};
pub use policy::{Event, GiveUp, GiveUpKind, MemoryHint, Policy, PolicyConfig, PolicyState, ShrinkReason};
