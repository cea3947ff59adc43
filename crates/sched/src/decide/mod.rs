//! The one decision after an out-of-memory: `sched` decides, `train` carries it out.
//!
//! In-process, the trainer describes the failure in an [`OomContext`] and asks
//! [`Policy::decide`]; the answer is a typed [`Decision`]:
//!
//! - inside an in-place optimizer update (the model is half-updated):
//!   [`Decision::RestartWorker`] ([`RestartReason::InPlaceUpdate`]);
//! - in any other case where the backend no longer computes after cleanup:
//!   [`Decision::RestartWorker`] ([`RestartReason::BackendUnusable`]);
//! - in the forward or backward passes: the policy's [`on_oom`](Policy::on_oom), so
//!   [`Decision::RetryStep`] at a smaller limit, or [`Decision::GiveUp`] when even the minimum
//!   fails or the step's retry budget is spent;
//! - in an optimizer update on copies: [`Decision::RetryUpdate`] the first time in a step (the
//!   micro-batch unchanged: the update's memory does not depend on it), [`Decision::GiveUp`]
//!   ([`GiveUpKind::UpdateDoesNotFit`]) the second time;
//! - in evaluation: [`Decision::ShrinkEval`] to half the evaluation batch, [`Decision::GiveUp`]
//!   ([`GiveUpKind::EvalDoesNotFit`]) when it already was 1;
//! - while writing a checkpoint: [`Decision::RestartWorker`] ([`RestartReason::Checkpoint`]).
//!
//! Only a training-phase out-of-memory changes the policy's state; every other decision
//! leaves the micro-batch limit (and the whole [`PolicyState`](crate::PolicyState)) as it was.
//!
//! Across processes, the supervisor describes a dead worker ([`death::Death`] at a
//! [`death::DeathAt`]) and asks [`death::decide_after_death`] whether to restart it, with
//! which sizes lowered, or to stop.
//!
//! **Invariant:** this module is the one place that decides what an out-of-memory leads to;
//! `train` and the supervisor in `cli` only carry the decisions out. Kept true by the
//! decision-table property tests in `decide/tests`.

pub mod death;

#[cfg(doc)]
use crate::policy::GiveUpKind;
use crate::policy::{Event, GiveUp, MemoryHint, Policy};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where an out-of-memory happened, or what a worker's main thread is doing (the phase
/// `current.json` records, so that the supervisor knows where a worker died).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OomPhase {
    /// The forward and backward passes of a step's micro-batches (the default: a worker
    /// starts there).
    #[default]
    Train,
    /// The optimizer update.
    Optimizer,
    /// Evaluation on the validation split.
    Eval,
    /// Writing a checkpoint.
    Checkpoint,
}

impl OomPhase {
    /// Every phase, in the order of a step.
    pub const ALL: [OomPhase; 4] = [OomPhase::Train, OomPhase::Optimizer, OomPhase::Eval, OomPhase::Checkpoint];

    /// The stable lowercase name (`train`, `optimizer`, `eval`, `checkpoint`), as written to
    /// `current.json` and `events.jsonl`.
    pub fn as_str(self) -> &'static str {
        match self {
            OomPhase::Train => "train",
            OomPhase::Optimizer => "optimizer",
            OomPhase::Eval => "eval",
            OomPhase::Checkpoint => "checkpoint",
        }
    }
}

impl fmt::Display for OomPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the trainer knows about one out-of-memory, after it dropped the attempt and cleaned
/// the device up.
#[derive(Debug, Clone, PartialEq)]
pub struct OomContext {
    /// Where it happened.
    pub phase: OomPhase,
    /// The optimizer step: the one in progress for `Train` and `Optimizer`, the one just
    /// completed for `Eval` and `Checkpoint` (for messages).
    pub step: usize,
    /// The training micro-batch that ran (the largest chunk of the failed plan). The minimum
    /// is the policy's own ([`Policy::bounds`]).
    pub micro: usize,
    /// The evaluation batch in force.
    pub eval_batch: usize,
    /// Out-of-memory failures of the optimizer update in this step, this one included (1 for
    /// the first; only read for `Optimizer`).
    pub optimizer_ooms: usize,
    /// Whether the failure happened inside an in-place optimizer update, which consumed the
    /// only model and optimizer handles (only read for `Optimizer`). An update on copies, or a
    /// failure before an in-place update touched anything, is `false`.
    pub in_place: bool,
    /// Whether the backend still computes after cleanup (a probe succeeded). Not read for an
    /// in-place update, which restarts the worker whatever this says, so the trainer need not
    /// probe first there.
    pub backend_usable: bool,
    /// The model's parameter count (for the message when the update does not fit).
    pub parameters: usize,
    /// Memory facts, where the backend reports them (a predicted shrink, a precise give-up).
    pub hint: Option<MemoryHint>,
    /// The failure's message (the classified out-of-memory text).
    pub error: String,
}

/// Why the worker must end so that the supervisor restarts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestartReason {
    /// The backend no longer computes after cleanup.
    BackendUnusable,
    /// The failure happened inside an in-place optimizer update: the model and optimizer are
    /// half-updated, only the newest checkpoint is sound.
    InPlaceUpdate,
    /// Writing a checkpoint ran out of memory: a fresh process resumes from the newest one
    /// and writes it again (a second death there stops the run, see [`death`]).
    Checkpoint,
}

/// What the trainer does after an out-of-memory.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Retry the same effective batch from its first chunk with the micro-batch limit
    /// `micro` (the policy's new [`limit`](Policy::limit): achievable, within the bounds,
    /// strictly smaller than the size that failed), and record `events`.
    RetryStep {
        /// The limit of the retry.
        micro: usize,
        /// The policy's changes (a shrink or a failed growth), for `events.jsonl`.
        events: Vec<Event>,
    },
    /// Run evaluation again with `to` samples per micro-batch (`1 <= to < from`).
    ShrinkEval {
        /// The evaluation batch that failed.
        from: usize,
        /// The evaluation batch of the retry.
        to: usize,
    },
    /// The update ran on copies and failed: the model and the optimizer are untouched. Run the
    /// step again at the same micro-batch (its gradients were consumed by the failed update);
    /// a second failure in the step gives up.
    RetryUpdate,
    /// End the worker (exit 75, `MemoryDeath`) so that the supervisor restarts it from the
    /// newest checkpoint; `message` is the one-line explanation for the worker's error.
    RestartWorker {
        /// Why.
        reason: RestartReason,
        /// What happened, with the failure's message.
        message: String,
    },
    /// Stop: nothing in-process can make it fit (exit 3). The [`GiveUp`]'s `Display` is the
    /// paragraph for the user, with the fix and the failure's message.
    GiveUp(GiveUp),
}

impl Policy {
    /// The one decision after an out-of-memory described by `ctx` (see the
    /// [module documentation](crate::decide) for the table). Only a training-phase failure
    /// with a usable backend changes the policy (through [`on_oom`](Self::on_oom)); the
    /// optimizer, evaluation and checkpoint phases never touch the micro-batch.
    pub fn decide(&mut self, ctx: &OomContext) -> Decision {
        let restart = |reason: RestartReason, message: String| Decision::RestartWorker { reason, message };
        let error = &ctx.error;
        if ctx.phase == OomPhase::Optimizer && ctx.in_place {
            return restart(
                RestartReason::InPlaceUpdate,
                format!(
                    "out of memory inside the in-place optimizer update of step {}; the worker ends so the run \
                     resumes from the newest checkpoint: {error}",
                    ctx.step
                ),
            );
        }
        if !ctx.backend_usable {
            let at = match ctx.phase {
                OomPhase::Train | OomPhase::Optimizer => format!("at micro-batch {}", ctx.micro),
                OomPhase::Eval => format!("in evaluation (evaluation batch {})", ctx.eval_batch),
                OomPhase::Checkpoint => format!("while writing the checkpoint of step {}", ctx.step),
            };
            return restart(
                RestartReason::BackendUnusable,
                format!("the backend is unusable after an out-of-memory {at}: {error}"),
            );
        }
        match ctx.phase {
            OomPhase::Train => match self.on_oom(ctx.micro, ctx.hint) {
                Ok(events) => Decision::RetryStep { micro: self.limit(), events },
                Err(give_up) => {
                    Decision::GiveUp(GiveUp { step: Some(ctx.step), error: Some(error.clone()), ..give_up })
                }
            },
            OomPhase::Optimizer if ctx.optimizer_ooms >= 2 => Decision::GiveUp(GiveUp::update_does_not_fit(
                ctx.step,
                ctx.micro,
                self.config().min,
                ctx.parameters,
                error,
            )),
            OomPhase::Optimizer => Decision::RetryUpdate,
            OomPhase::Eval => match eval_retry(ctx.eval_batch) {
                Some(to) => Decision::ShrinkEval { from: ctx.eval_batch, to },
                None => Decision::GiveUp(GiveUp::eval_does_not_fit(ctx.step, error)),
            },
            OomPhase::Checkpoint => restart(
                RestartReason::Checkpoint,
                format!(
                    "out of memory while writing the checkpoint of step {}; the worker ends so the run resumes \
                     from the newest checkpoint: {error}",
                    ctx.step
                ),
            ),
        }
    }
}

/// The evaluation batch to run after an out-of-memory at `batch` samples per micro-batch: half,
/// at least 1. Used in-process ([`Decision::ShrinkEval`]) and by a worker restarted after a
/// death in evaluation (the supervisor's `lower_eval`, see [`death::DeathDecision::Restart`]).
pub fn eval_batch_below(batch: usize) -> usize {
    (batch / 2).max(1)
}

/// The one rule after an out-of-memory in evaluation at `batch` samples per micro-batch, in
/// process ([`Policy::decide`]) and after a worker's death ([`death::decide_after_death`]): the
/// evaluation batch to try next ([`eval_batch_below`]), or `None` when it already was 1 (or
/// unset), so nothing smaller can be tried and the run stops.
fn eval_retry(batch: usize) -> Option<usize> {
    (batch > 1).then(|| eval_batch_below(batch))
}

#[cfg(test)]
mod tests;
