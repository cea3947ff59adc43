//! The trainer's error type and its mapping to process exit codes.

use thiserror::Error;

/// Exit code: bad input (recipe, data, arguments).
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit code: does not fit even at the minimum micro-batch.
pub const EXIT_DOES_NOT_FIT: i32 = 3;
/// Exit code: no usable checkpoint.
pub const EXIT_CHECKPOINT: i32 = 4;
/// Exit code: the run diverged: `training.max_nonfinite_steps` consecutive steps had a
/// non-finite loss or gradient norm (each was skipped; no weights were changed by them).
pub const EXIT_DIVERGED: i32 = 5;
/// Exit code: a rank of several failed in a way that is not one of the above (a collective
/// call that failed or passed `distributed.timeout_s`, a rank that stopped because another
/// did): the ranks stopped together, none waits forever.
pub const EXIT_GANG: i32 = 6;
/// Exit code: the worker died of memory in a way the process cannot survive; the supervisor
/// restarts it from the newest checkpoint.
pub const EXIT_MEMORY_DEATH: i32 = 75;
/// Exit code: interrupted (Ctrl-C / SIGTERM) after a final checkpoint.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Why a training run stopped early.
#[derive(Debug, Error)]
pub enum TrainError {
    /// The recipe, the data or the arguments are wrong.
    #[error("{0}")]
    BadInput(String),
    /// Even the minimum micro-batch does not fit, or too many OOMs in one step.
    #[error("{0}")]
    DoesNotFit(String),
    /// No usable checkpoint (all corrupt, or the requested one is missing).
    #[error("{0}")]
    Checkpoint(String),
    /// The process must die so the supervisor restarts it (backend unusable after an OOM).
    #[error("{message}")]
    MemoryDeath {
        /// Micro-batch that was running.
        micro: usize,
        /// What happened.
        message: String,
    },
    /// Too many consecutive non-finite steps; the weights were never touched by them.
    #[error("{0}")]
    Diverged(String),
    /// Interrupted by a signal after a final checkpoint at `step`.
    #[error("interrupted at step {step}; the run was checkpointed and resumes with the same command")]
    Interrupted {
        /// Step of the checkpoint written before stopping.
        step: usize,
    },
    /// Anything else: a model panic that is not an OOM, an I/O error, ...
    #[error("{0}")]
    Failed(String),
    /// Another rank failed, or a collective call passed its deadline.
    #[error("{0}")]
    Gang(String),
}

impl TrainError {
    /// The process exit code for this error (see the README's table).
    pub fn exit_code(&self) -> i32 {
        match self {
            TrainError::BadInput(_) => EXIT_BAD_INPUT,
            TrainError::DoesNotFit(_) => EXIT_DOES_NOT_FIT,
            TrainError::Checkpoint(_) => EXIT_CHECKPOINT,
            TrainError::Diverged(_) => EXIT_DIVERGED,
            TrainError::MemoryDeath { .. } => EXIT_MEMORY_DEATH,
            TrainError::Interrupted { .. } => EXIT_INTERRUPTED,
            TrainError::Failed(_) => 1,
            TrainError::Gang(_) => EXIT_GANG,
        }
    }
}

impl TrainError {
    /// An I/O failure, named by its operation and path, with a fix that fits its cause.
    /// `op` is a verb phrase such as `"writing"`; the error's own text follows.
    pub fn io(op: &str, path: &std::path::Path, e: &std::io::Error) -> Self {
        TrainError::Failed(format!("{op} {} failed: {e}. {}", path.display(), io_fix(e)))
    }
}

impl TrainError {
    /// The run ended at `step` with weights that are not finite: nothing final was written.
    pub fn final_weights_not_finite(step: usize) -> Self {
        TrainError::Diverged(format!(
            "the weights after the last step ({step}) are not finite, so neither a final checkpoint nor \
             model.safetensors was written; the newest checkpoint holds the last finite weights. Fix: lower \
             optimizer.lr or set optimizer.grad_clip_norm, and start over in a new --run-dir."
        ))
    }

    /// The paragraph for a run that stopped after `in_a_row` non-finite steps (the limit is
    /// `training.max_nonfinite_steps`), the last at `step`; `newest` is the newest checkpoint.
    pub fn diverged_message(
        in_a_row: usize,
        limit: usize,
        step: usize,
        loss: f64,
        lr: f64,
        newest: Option<(usize, std::path::PathBuf)>,
    ) -> String {
        let last_good = newest
            .map(|(s, d)| format!("the newest checkpoint, {} (step {s}), holds finite weights", d.display()))
            .unwrap_or_else(|| "no checkpoint was written yet".into());
        format!(
            "the run diverged: {in_a_row} steps in a row (training.max_nonfinite_steps = {limit}) ended with a \
             non-finite loss or gradient, the last at step {step} (loss {loss}, learning rate {lr:.4e}). None of \
             them changed the weights; {last_good}. Fix: lower optimizer.lr, set optimizer.grad_clip_norm or add \
             warmup (lr_schedule.warmup_steps), and start over in a new --run-dir (or --resume never --overwrite)."
        )
    }
}

impl From<oomph_rundir::Error> for TrainError {
    fn from(e: oomph_rundir::Error) -> Self {
        match &e.to {
            None => TrainError::io(e.op, &e.path, &e.source),
            // A rename names both paths.
            Some(to) => TrainError::io(&format!("{} {} to", e.op, e.path.display()), to, &e.source),
        }
    }
}

/// The fix for an I/O error, by its cause.
pub fn io_fix(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => {
            "Fix: free disk space (or point --run-dir at a larger disk), then run the same command again: it \
             resumes from the newest intact checkpoint (--resume auto)"
        }
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
            "Fix: make the run directory writable (or pick another --run-dir), then run the same command again"
        }
        _ => "Fix: check that the run directory's disk is healthy and writable, then run the same command again",
    }
}
