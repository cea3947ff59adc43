//! [`GiveUp`]: nothing in-process can make the work fit; its `Display` is the paragraph the user
//! reads, with the fix.

use serde::{Deserialize, Serialize};

/// Which limit was hit when giving up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GiveUpKind {
    /// Even the smallest allowed micro-batch (`micro_batch.min`) does not fit.
    MinDoesNotFit,
    /// More than `micro_batch.max_retries_per_step` failures within one optimizer step (never
    /// while an automatic start searches for its first fitting size).
    TooManyRetries,
    /// Evaluation ran out of memory with one sample per micro-batch.
    EvalDoesNotFit,
    /// The optimizer update ran out of memory twice in one step: its memory (parameters,
    /// gradients, optimizer state) does not depend on the micro-batch.
    UpdateDoesNotFit,
}

/// Nothing in-process can make the work fit. Its `Display` is one paragraph for the user: what
/// happened, the memory figures where known, the fix, and the failure's own message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{}", self.render())]
pub struct GiveUp {
    /// The micro-batch size that failed last (the evaluation batch for
    /// [`GiveUpKind::EvalDoesNotFit`]).
    pub micro: usize,
    /// The configured minimum micro-batch (`micro_batch.min`).
    pub min: usize,
    /// What exactly happened, with memory figures where known (for
    /// [`GiveUpKind::UpdateDoesNotFit`], the parameters and their size; empty for
    /// [`GiveUpKind::EvalDoesNotFit`], whose failure message says it).
    pub reason: String,
    /// Which limit was hit.
    pub kind: GiveUpKind,
    /// The optimizer step (in progress, or just completed for evaluation), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    /// The message of the failure that ended it, when known. Rendered by every kind except
    /// [`GiveUpKind::UpdateDoesNotFit`], whose text names the memory the update needs instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl GiveUp {
    /// Evaluation does not fit even one sample per micro-batch after `step`; `error` is the
    /// failure's message.
    pub fn eval_does_not_fit(step: usize, error: &str) -> GiveUp {
        GiveUp {
            micro: 1,
            min: 1,
            reason: String::new(),
            kind: GiveUpKind::EvalDoesNotFit,
            step: Some(step),
            error: Some(error.to_string()),
        }
    }

    /// The optimizer update of `step` ran out of memory twice, at micro-batch `micro`
    /// (`min`: `micro_batch.min`), for a model of `parameters` parameters; `error` is the last
    /// failure's message.
    pub fn update_does_not_fit(step: usize, micro: usize, min: usize, parameters: usize, error: &str) -> GiveUp {
        GiveUp {
            micro,
            min,
            reason: format!(
                "{} parameters, {} MiB in float32, about 4x that for AdamW",
                count(parameters),
                parameters * 4 / (1024 * 1024)
            ),
            kind: GiveUpKind::UpdateDoesNotFit,
            step: Some(step),
            error: Some(error.to_string()),
        }
    }

    fn render(&self) -> String {
        let text = self.render_kind();
        match (&self.error, self.kind) {
            (Some(e), GiveUpKind::MinDoesNotFit | GiveUpKind::TooManyRetries) => format!("{text} (last error: {e})"),
            _ => text,
        }
    }

    fn render_kind(&self) -> String {
        match self.kind {
            GiveUpKind::MinDoesNotFit => {
                let lower_min = if self.min > 1 {
                    "lower `micro_batch.min` (the effective batch stays the same; it is only split \
                     into more micro-batches), "
                } else {
                    ""
                };
                format!(
                    "out of memory: a micro-batch of {} sample(s) does not fit on this device, and \
                     the step cannot be split further because `micro_batch.min` = {}. {} To fix \
                     this: {}use a smaller model or a shorter `seq_len`, or run on a device with \
                     more free memory.",
                    self.micro, self.min, self.reason, lower_min
                )
            }
            GiveUpKind::TooManyRetries => format!(
                "out of memory too many times within one optimizer step: {} The last failure was \
                 at a micro-batch of {} sample(s) (`micro_batch.min` = {}). Either the starting \
                 micro-batch was far too large for this device (each failure roughly halves it) \
                 or free memory is shrinking (another process on the device?). To fix this: \
                 raise `micro_batch.max_retries_per_step`, set `micro_batch.initial` closer to \
                 what fits (or to \"auto\", whose first step searches down from `micro_batch.max` \
                 without this limit), or free device memory.",
                self.reason, self.micro, self.min
            ),
            GiveUpKind::EvalDoesNotFit => format!(
                "evaluation does not fit even one sample per micro-batch: {}",
                self.error.as_deref().unwrap_or("out of memory")
            ),
            GiveUpKind::UpdateDoesNotFit => format!(
                "the optimizer update{} ran out of memory twice, after cleanup; it needs room for the \
                 parameters, their gradients and the optimizer state ({}), independent of the micro-batch. \
                 Fix: a smaller model, `optimizer.kind = \"sgd\"`, or a device with more memory.",
                self.step.map(|s| format!(" of step {s}")).unwrap_or_default(),
                self.reason
            ),
        }
    }
}

/// A count in a few characters: `950`, `12.3k`, `1.23M`.
pub fn count(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.1}k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}
