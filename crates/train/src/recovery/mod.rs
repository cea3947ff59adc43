//! The recovery boundary: runs one attempt (a step's micro-batches, an optimizer update, an
//! evaluation) and turns any failure into either an out-of-memory, which the caller recovers
//! from as `oomph_sched` decides, or the error it really is.
//!
//! Three places are checked, because a device allocation failure can surface in any of them:
//! a panic on the training thread (`catch_unwind`), the backend's `sync` result, and panics
//! recorded on *other* threads during the attempt ([`panics`]: cubecl 0.10's device runner
//! catches its own allocation panics and only logs them). A long attempt can look at the other
//! threads as it goes ([`attempt_scoped`], [`Scope::check_other_threads`]).
//!
//! **Invariant:** this module is the one place that asks `oomph_sched::classify` whether a
//! failure is an out-of-memory, and the one owner of process-wide panic state (the hook and
//! the ring in [`panics`]). Kept true by `tests::the_boundary_is_the_only_caller_of_the_classifier`.

pub mod panics;

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Why an attempt failed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// An out-of-memory failure (real or simulated): recoverable by a smaller micro-batch.
    Oom {
        /// The message that was classified as out-of-memory.
        message: String,
    },
    /// The data could not be served (an item missing, an image that does not decode, items
    /// that do not batch): bad input naming the data, never retried.
    Data {
        /// What is wrong with the data, and the fix.
        message: String,
    },
    /// Anything else: reported as the error it is, never retried.
    Other {
        /// The panic or backend error message.
        message: String,
    },
}

/// The panic payload of a [`data_fault`].
#[derive(Debug, Clone)]
pub struct DataFault(pub String);

/// Stops the attempt because the data cannot be served: the boundary reports
/// [`Failure::Data`] with `message` (which names the data at fault and the fix), and the
/// panic hook does not print it.
pub fn data_fault(message: String) -> ! {
    std::panic::panic_any(DataFault(message))
}

/// What an attempt's closure may ask the boundary while it runs.
#[derive(Debug)]
pub struct Scope {
    /// The panic ring's generation when the attempt began.
    generation: u64,
}

impl Scope {
    /// Panics (inside the boundary, which reports it as [`Failure::Oom`]) when an allocation
    /// failure was recorded on another thread (e.g. cubecl's device runner) since the attempt
    /// began, so it surfaces now rather than after the rest of the attempt. Returns normally
    /// otherwise; panics that are not out-of-memory are not its concern.
    pub fn check_other_threads(&self) {
        if let Some(rec) = panics::oom_since(self.generation) {
            std::panic::panic_any(elsewhere(&rec));
        }
    }
}

/// Runs `f` inside the recovery boundary on `device`; `f` gets a [`Scope`] to look at the
/// other threads as it goes.
pub fn attempt_scoped<B: Backend, T>(device: &B::Device, f: impl FnOnce(&Scope) -> T) -> Result<T, Failure> {
    let result = boundary::<B, T>(device, f);
    if matches!(result, Err(Failure::Oom { .. })) {
        // This thread lives on: an allocation failure it noted is not its death. Said now,
        // not after the ranks agree on it, so that another rank's abort meanwhile is not read
        // as a memory death.
        crate::alloc::survived();
    }
    result
}

fn boundary<B: Backend, T>(device: &B::Device, f: impl FnOnce(&Scope) -> T) -> Result<T, Failure> {
    panics::install_quiet_oom();
    let scope = Scope { generation: panics::generation() };
    let result = catch_unwind(AssertUnwindSafe(|| f(&scope)));
    let sync = B::sync(device);
    let oom_elsewhere = panics::oom_since(scope.generation);
    match result {
        Ok(value) => {
            if let Some(rec) = oom_elsewhere {
                drop(value);
                return Err(Failure::Oom { message: elsewhere(&rec) });
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
            if let Some(DataFault(message)) = payload.downcast_ref::<DataFault>() {
                return Err(Failure::Data { message: message.clone() });
            }
            let message = panics::panic_message(payload.as_ref());
            if oomph_sched::is_oom(&message) {
                return Err(Failure::Oom { message });
            }
            // A non-OOM panic on this thread may be the *consequence* of an allocation that
            // failed on the device's runner thread: that one is the cause.
            if let Some(rec) = oom_elsewhere {
                return Err(Failure::Oom { message: elsewhere(&rec) });
            }
            Err(Failure::Other { message })
        }
    }
}

/// Runs `f` inside the recovery boundary on `device` ([`attempt_scoped`] for a closure that
/// does not look at the other threads before it ends).
pub fn attempt<B: Backend, T>(device: &B::Device, f: impl FnOnce() -> T) -> Result<T, Failure> {
    attempt_scoped::<B, T>(device, |_| f())
}

/// Runs `f` with every panic kept quiet (recorded, not printed, on any thread) and returns
/// its value, or, when `f` panics, the *first* panic message recorded on any thread since it
/// began (the cause, e.g. a driver library missing on a device runner thread; later ones are
/// its echoes), falling back to `f`'s own panic message. For a start-up check that explains
/// the failure itself (`gpu::check_cuda`). Nothing is classified: this is not a recovery.
pub fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let _quiet = panics::quiet();
    let generation = panics::generation();
    let result = catch_unwind(AssertUnwindSafe(f));
    result.map_err(|payload| {
        panics::since(generation)
            .into_iter()
            .next()
            .map(|r| r.message)
            .unwrap_or_else(|| panics::panic_message(payload.as_ref()))
    })
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

/// After [`cleanup`]: whether the backend still computes (1 + 2 on `device`, read back). The
/// answer is `oomph_sched::OomContext::backend_usable`; a backend that does not makes the
/// worker exit so the supervisor restarts it.
pub fn probe<B: Backend>(device: &B::Device) -> bool {
    attempt::<B, _>(device, || {
        let t = Tensor::<B, 1>::from_floats([1.0, 2.0], device);
        t.sum().into_scalar().elem::<f64>()
    })
    .is_ok_and(|v| (v - 3.0).abs() < 1e-6)
}

/// The message of an out-of-memory recorded on another thread.
fn elsewhere(rec: &panics::PanicRecord) -> String {
    format!("{} (on thread '{}')", rec.message, rec.thread)
}

fn classify(message: String) -> Failure {
    if oomph_sched::is_oom(&message) {
        Failure::Oom { message }
    } else {
        Failure::Other { message }
    }
}

#[cfg(test)]
pub(crate) mod tests;
