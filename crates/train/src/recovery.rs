//! The recovery boundary: runs one attempt (a step's micro-batches, an optimizer update, an
//! evaluation) and turns any failure into either an out-of-memory, which the caller recovers
//! from, or the error it really is.
//!
//! Three places are checked, because a device allocation failure can surface in any of them:
//! a panic on the training thread (`catch_unwind`), the backend's `sync` result, and panics
//! recorded on *other* threads during the attempt (cubecl 0.10's device runner catches its own
//! allocation panics and only logs them). The one decision of what counts as
//! out-of-memory is `oomph_sched::oom::classify`.

use burn::tensor::backend::Backend;
use oomph_sched::oom;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Why an attempt failed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// An out-of-memory failure (real or simulated): recoverable by a smaller micro-batch.
    Oom {
        /// The message that was classified as out-of-memory.
        message: String,
    },
    /// Anything else: reported as the error it is, never retried.
    Other {
        /// The panic or backend error message.
        message: String,
    },
}

impl Failure {
    /// The failure's message.
    pub fn message(&self) -> &str {
        match self {
            Failure::Oom { message } | Failure::Other { message } => message,
        }
    }
}

/// Runs `f` inside the recovery boundary on `device`.
pub fn attempt<B: Backend, T>(device: &B::Device, f: impl FnOnce() -> T) -> Result<T, Failure> {
    oom::panics::install_quiet_oom();
    let generation = oom::panics::generation();
    let result = catch_unwind(AssertUnwindSafe(f));
    let sync = B::sync(device);
    let oom_elsewhere = oom::panics::oom_since(generation).map(|(record, _)| record);
    match result {
        Ok(value) => {
            if let Some(rec) = oom_elsewhere {
                drop(value);
                return Err(Failure::Oom { message: format!("{} (on thread '{}')", rec.message, rec.thread) });
            }
            match sync {
                Ok(()) => Ok(value),
                Err(e) => {
                    drop(value);
                    Err(classify(format!("{e:?}")))
                }
            }
        }
        Err(payload) => {
            let message = oom::panics::panic_message(payload.as_ref());
            if oom::is_oom(&message) {
                return Err(Failure::Oom { message });
            }
            // A non-OOM panic on this thread may be the *consequence* of an allocation that
            // failed on the device's runner thread: that one is the cause.
            if let Some(rec) = oom_elsewhere {
                return Err(Failure::Oom { message: format!("{} (on thread '{}')", rec.message, rec.thread) });
            }
            Err(Failure::Other { message })
        }
    }
}

/// What an attempt's closure may ask the boundary while it runs.
pub struct Scope {
    generation: u64,
}

impl Scope {
    /// Panics (inside the boundary) when an allocation failure was recorded on another thread
    /// (e.g. cubecl's device runner) since the attempt began, so it surfaces now rather than
    /// after the rest of the attempt.
    pub fn check_other_threads(&self) {
        if let Some((rec, _)) = oom::panics::oom_since(self.generation) {
            std::panic::panic_any(format!("{} (on thread '{}')", rec.message, rec.thread));
        }
    }
}

/// [`attempt`] for a closure that checks other threads as it goes ([`Scope`]).
pub fn attempt_scoped<B: Backend, T>(device: &B::Device, f: impl FnOnce(&Scope) -> T) -> Result<T, Failure> {
    oom::panics::install_quiet_oom();
    let scope = Scope { generation: oom::panics::generation() };
    attempt::<B, T>(device, || f(&scope))
}

fn classify(message: String) -> Failure {
    if oom::is_oom(&message) {
        Failure::Oom { message }
    } else {
        Failure::Other { message }
    }
}

/// After a failed attempt: wait for the device, then release what the attempt cached.
/// Everything the attempt allocated (loss, outputs, gradients, accumulator) must already be
/// dropped by the caller.
pub fn cleanup<B: Backend>(device: &B::Device) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let _ = B::sync(device);
        B::memory_cleanup(device);
    }));
}
