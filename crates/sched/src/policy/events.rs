//! The policy's events: changes of the micro-batch limit, for `events.jsonl` and logs.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a shrink happened and how its size was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShrinkReason {
    /// Out-of-memory; the limit was roughly halved.
    Halved,
    /// Out-of-memory; the limit went to the size the memory model predicts to fit.
    PredictedFit,
    /// The worker died of memory (reported by the supervisor); the limit was halved.
    WorkerDied,
}

impl ShrinkReason {
    /// A stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            ShrinkReason::Halved => "halved",
            ShrinkReason::PredictedFit => "predicted_fit",
            ShrinkReason::WorkerDied => "worker_died",
        }
    }
}

impl fmt::Display for ShrinkReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of the micro-batch limit, for `events.jsonl` and logs.
///
/// Serialised with a `kind` tag equal to [`Event::kind`], e.g.
/// `{"kind":"shrink","from":64,"to":32,"reason":"halved"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// The limit went down after an out-of-memory.
    Shrink {
        /// Previous limit.
        from: usize,
        /// New limit.
        to: usize,
        /// Why and how.
        reason: ShrinkReason,
    },
    /// The next step will try a larger limit (possibly a re-test of the ceiling).
    Grow {
        /// Current (good) limit.
        from: usize,
        /// Limit the next step tries.
        to: usize,
    },
    /// A growth attempt ran out of memory; the limit is back to the last good size.
    GrowFailed {
        /// The size that failed (the new ceiling).
        at: usize,
        /// The last good size, now the limit.
        back_to: usize,
        /// Clean steps before the policy tries to grow again.
        next_try_after_steps: usize,
    },
    /// A step succeeded at or above the remembered ceiling, which is therefore forgotten.
    CeilingCleared {
        /// The forgotten ceiling.
        ceiling: usize,
    },
}

impl Event {
    /// `"shrink"`, `"grow"`, `"grow_failed"` or `"ceiling_cleared"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Shrink { .. } => "shrink",
            Event::Grow { .. } => "grow",
            Event::GrowFailed { .. } => "grow_failed",
            Event::CeilingCleared { .. } => "ceiling_cleared",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Shrink { from, to, reason } => {
                write!(
                    f,
                    "micro-batch limit {from} -> {to} ({})",
                    match reason {
                        ShrinkReason::Halved => "out of memory; halved",
                        ShrinkReason::PredictedFit => "out of memory; predicted fit",
                        ShrinkReason::WorkerDied => "worker died of memory",
                    }
                )
            }
            Event::Grow { from, to } => {
                write!(f, "micro-batch limit {from} -> {to} (trying larger)")
            }
            Event::GrowFailed { at, back_to, next_try_after_steps } => write!(
                f,
                "micro-batch {at} ran out of memory; back to {back_to}, next try after \
                 {next_try_after_steps} clean steps"
            ),
            Event::CeilingCleared { ceiling } => {
                write!(f, "micro-batch {ceiling} fits again; forgetting that ceiling")
            }
        }
    }
}
