//! `events.jsonl`: one line per event, appended as the run goes.
//!
//! Every kind of event is a variant of the one [`Event`] enum, serialised here with a `kind`
//! tag (the micro-batch policy's own events, [`oomph_sched::Event`], are carried whole by
//! [`Event::Policy`] and tagged by `oomph_sched` the same way); a line is an [`EventLine`]:
//! `{"kind":"shrink","step":8,"wall_s":1.25,"from":64,"reason":"halved","to":32}` (the kind,
//! the step it belongs to, seconds since the run started, then the event's fields).
//!
//! Reading is tolerant: a torn line (a worker killed mid-write) or a kind this version does
//! not know is skipped and counted. Two older shapes still read: a policy event that carried
//! its `kind` twice, and an evaluation shrink written as `"kind":"shrink"` with
//! `"scope":"eval"` (read as [`Event::EvalShrink`]).

use crate::error::{read_optional, Error};
use crate::metrics::JsonLines;
use serde::ser::{Error as _, SerializeMap};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use std::fmt;
use std::path::Path;

/// The `action` of a [`Event::Restart`] that stopped the run instead of restarting it.
pub const RESTART_STOP: &str = "stop";

/// Why the evaluation micro-batch went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalShrinkReason {
    /// Evaluation ran out of memory in this worker; the batch was halved.
    Oom,
    /// A worker died of memory while evaluating; its successor halved the batch.
    WorkerDied,
}

/// Everything that is recorded in `events.jsonl`. Field names and shapes are the file format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// An out-of-memory in the worker (recovered from, unless a `give_up` or a worker death
    /// follows).
    Oom {
        /// `forward`, `backward`, `optimizer` or `eval`.
        phase: String,
        /// The micro-batch (or evaluation batch) that ran out of memory.
        micro_batch: usize,
        /// What the backend said.
        message: String,
    },
    /// The run does not fit even at the smallest size; it stops (exit 3).
    GiveUp {
        /// The phase that does not fit, where it is not the training micro-batch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phase: Option<String>,
        /// The training micro-batch that failed last, where it is the micro-batch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        micro_batch: Option<usize>,
        /// One paragraph: what did not fit and the fix.
        message: String,
    },
    /// A checkpoint was written (in the background; recorded when the write ended).
    Checkpoint {
        /// `every`, `oom`, `final` or `signal`.
        reason: String,
        /// Its directory (empty in older files).
        #[serde(default)]
        path: String,
        /// Seconds the background write took (0 in older files).
        #[serde(default)]
        write_s: f64,
        /// Seconds the training loop waited for it (0 in older files).
        #[serde(default)]
        stall_s: f64,
    },
    /// A resume found a damaged checkpoint and moved it aside.
    CheckpointSkipped {
        /// What is wrong with it.
        message: String,
        /// Where it was moved (`checkpoints/damaged/...`).
        moved_to: String,
    },
    /// A checkpoint was not written because the weights are not finite.
    CheckpointRefused {
        /// Why it was due (`every`, `oom`, `final`, `signal`).
        reason: String,
        /// One paragraph.
        message: String,
    },
    /// The worker resumed from a checkpoint.
    Resume {
        /// The checkpoint's step.
        from_step: usize,
        /// The checkpoint's directory.
        checkpoint: String,
        /// The micro-batch limit restored from it.
        micro_batch: usize,
    },
    /// Checkpoints later than the one resumed were moved to `checkpoints/abandoned/`.
    Abandoned {
        /// Their steps.
        steps: Vec<usize>,
    },
    /// `micro_batch.initial = "auto"` found its size (recorded after step 1).
    AutoSettled {
        /// The micro-batch step 1 ran with.
        micro_batch: usize,
        /// Its number of chunks.
        chunks: usize,
        /// Out-of-memory events it took to get there.
        ooms: usize,
    },
    /// A step was skipped because its loss or gradient norm was not finite.
    NonfiniteStep {
        /// The loss, as text (`NaN`, `inf`, ...).
        loss: String,
        /// Whether every gradient element was finite.
        gradients_finite: bool,
        /// The gradient norm as text, where it was computed.
        grad_norm: Option<String>,
        /// The learning rate of the step.
        lr: f64,
        /// Non-finite steps in a row, this one included.
        in_a_row: usize,
    },
    /// Too many non-finite steps in a row: the run stops (exit 5).
    Diverged {
        /// One paragraph.
        message: String,
    },
    /// The evaluation micro-batch went down (it is not the training limit).
    EvalShrink {
        /// Previous evaluation batch.
        from: usize,
        /// New evaluation batch.
        to: usize,
        /// Why.
        reason: EvalShrinkReason,
    },
    /// The supervisor restarted a dead worker, or stopped (`action` = [`RESTART_STOP`]).
    Restart {
        /// How the worker died, in words.
        cause: String,
        /// Whether it was a memory death (false in older files).
        #[serde(default)]
        memory: bool,
        /// The phase it died in (`train`, `optimizer`, `eval`, `checkpoint` or `unknown`).
        #[serde(default = "unknown")]
        phase: String,
        /// The training micro-batch in force, where known.
        #[serde(default)]
        micro_batch: Option<usize>,
        /// The evaluation batch in force, where known.
        #[serde(default)]
        eval_batch: Option<usize>,
        /// Restarts so far, this one included.
        restart: usize,
        /// What the restarted worker changes, in words, or [`RESTART_STOP`].
        #[serde(default)]
        action: String,
    },
    /// A change of the training micro-batch limit, decided and tagged by the policy
    /// (`shrink`, `grow`, `grow_failed`, `ceiling_cleared`). Untagged here, so last: a line
    /// is read as this only when its `kind` is none of the kinds above.
    #[serde(untagged)]
    Policy(oomph_sched::Event),
}

fn unknown() -> String {
    "unknown".into()
}

impl Event {
    /// The `kind` written to the file, e.g. `"oom"`, `"eval_shrink"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Oom { .. } => "oom",
            Event::GiveUp { .. } => "give_up",
            Event::Checkpoint { .. } => "checkpoint",
            Event::CheckpointSkipped { .. } => "checkpoint_skipped",
            Event::CheckpointRefused { .. } => "checkpoint_refused",
            Event::Resume { .. } => "resume",
            Event::Abandoned { .. } => "abandoned",
            Event::AutoSettled { .. } => "auto_settled",
            Event::NonfiniteStep { .. } => "nonfinite_step",
            Event::Diverged { .. } => "diverged",
            Event::EvalShrink { .. } => "eval_shrink",
            Event::Restart { .. } => "restart",
            Event::Policy(p) => p.kind(),
        }
    }

    /// The event's free-text message (a backend's error, a paragraph with a fix), if it
    /// has one.
    pub fn message(&self) -> Option<&str> {
        match self {
            Event::Oom { message, .. }
            | Event::GiveUp { message, .. }
            | Event::CheckpointSkipped { message, .. }
            | Event::CheckpointRefused { message, .. }
            | Event::Diverged { message } => Some(message),
            _ => None,
        }
    }

    /// The micro-batch policy's event this is, for the kinds the policy decides.
    pub fn policy(&self) -> Option<&oomph_sched::Event> {
        match self {
            Event::Policy(p) => Some(p),
            _ => None,
        }
    }

    /// Whether this is a restart the supervisor carried out (not its final stop).
    pub fn is_restart(&self) -> bool {
        matches!(self, Event::Restart { action, .. } if action != RESTART_STOP)
    }
}

impl From<oomph_sched::Event> for Event {
    fn from(e: oomph_sched::Event) -> Self {
        Event::Policy(e)
    }
}

/// One line in words, without the free-text message ([`Event::message`]).
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Oom { phase, micro_batch, .. } => write!(f, "out of memory in {phase} at micro-batch {micro_batch}"),
            Event::GiveUp { phase, micro_batch, .. } => {
                f.write_str("does not fit")?;
                if let Some(p) = phase {
                    write!(f, " in {p}")?;
                }
                if let Some(m) = micro_batch {
                    write!(f, " (last micro-batch {m})")?;
                }
                Ok(())
            }
            Event::Checkpoint { reason, path, write_s, stall_s } => {
                write!(f, "checkpoint ({reason}) {path} written in {write_s:.3}s, the loop waited {stall_s:.3}s")
            }
            Event::CheckpointSkipped { moved_to, .. } => write!(f, "damaged checkpoint moved to {moved_to}"),
            Event::CheckpointRefused { reason, .. } => write!(f, "checkpoint ({reason}) refused: weights not finite"),
            Event::Resume { from_step, checkpoint, micro_batch } => {
                write!(f, "resumed from step {from_step} ({checkpoint}) at micro-batch {micro_batch}")
            }
            Event::Abandoned { steps } => write!(f, "later checkpoints abandoned (steps {steps:?})"),
            Event::AutoSettled { micro_batch, chunks, ooms } => {
                write!(f, "micro-batch auto settled at {micro_batch} ({chunks} chunks, {ooms} out-of-memory events)")
            }
            Event::NonfiniteStep { loss, gradients_finite, grad_norm, lr, in_a_row } => {
                write!(
                    f,
                    "step skipped: loss {loss}, gradients {}, gradient norm {}, lr {lr:.4e}, {in_a_row} in a row",
                    if *gradients_finite { "finite" } else { "not finite" },
                    grad_norm.as_deref().unwrap_or("-")
                )
            }
            Event::Diverged { .. } => f.write_str("diverged"),
            Event::EvalShrink { from, to, reason } => write!(
                f,
                "evaluation batch {from} -> {to} ({})",
                match reason {
                    EvalShrinkReason::Oom => "out of memory; halved",
                    EvalShrinkReason::WorkerDied => "worker died of memory",
                }
            ),
            Event::Restart { cause, phase, restart, action, .. } if action == RESTART_STOP => {
                write!(f, "worker died in {phase} ({cause}); stopped after {restart} restart(s)")
            }
            Event::Restart { cause, phase, restart, action, .. } => {
                write!(f, "worker died in {phase} ({cause}); restart {restart} with {action}")
            }
            Event::Policy(p) => p.fmt(f),
        }
    }
}

/// One line of `events.jsonl`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EventLine {
    /// The optimizer step the event belongs to.
    pub step: usize,
    /// Seconds since the run started (all workers).
    pub wall_s: f64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

impl EventLine {
    /// An event of `step` at `wall_s`.
    pub fn new(step: usize, wall_s: f64, event: impl Into<Event>) -> Self {
        Self { step, wall_s, event: event.into() }
    }
}

/// Written as `{"kind":..,"step":..,"wall_s":..,` then the event's fields.
impl Serialize for EventLine {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Value::Object(mut fields) = serde_json::to_value(&self.event).map_err(S::Error::custom)? else {
            return Err(S::Error::custom("an event serialises as an object"));
        };
        fields.remove("kind");
        let mut map = s.serialize_map(Some(fields.len() + 3))?;
        map.serialize_entry("kind", self.event.kind())?;
        map.serialize_entry("step", &self.step)?;
        map.serialize_entry("wall_s", &self.wall_s)?;
        for (k, v) in &fields {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// `[kind] step N: what happened (the message, cut at a word after 160 characters …)`, the
/// line a console shows.
impl fmt::Display for EventLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] step {}: {}", self.event.kind(), self.step, self.event)?;
        if let Some(m) = self.event.message() {
            // Long messages (a divergence, a give-up) are printed whole as the run's error.
            let mut short: String = m.chars().take(160).collect();
            let cut = short.len() < m.len();
            if cut {
                // At a word boundary, so no number is cut in half.
                short.truncate(short.rfind(' ').unwrap_or(short.len()));
            }
            write!(f, " ({short}{})", if cut { " …" } else { "" })?;
        }
        Ok(())
    }
}

/// Appends one event line to `path` (opened, written, flushed and closed: for a writer that
/// records one event, such as the supervisor).
pub fn append_event(path: &Path, line: &EventLine) -> Result<(), Error> {
    JsonLines::open(path)?.write(line)
}

/// Parses one line; `None` when it is torn, not an object, or of an unknown kind.
fn parse_event(line: &str) -> Option<EventLine> {
    // Through a map: an older policy event carried its `kind` twice, which a map tolerates.
    let Ok(Value::Object(mut m)) = serde_json::from_str::<Value>(line) else { return None };
    if m.get("kind").and_then(Value::as_str) == Some("shrink") && m.get("scope").and_then(Value::as_str) == Some("eval")
    {
        // Older evaluation shrinks: `"kind":"shrink", "scope":"eval"`.
        m.remove("scope");
        m.insert("kind".into(), Value::from("eval_shrink"));
    }
    EventLine::deserialize(Value::Object(m)).ok()
}

/// Parses the text of `events.jsonl` in file order; returns the events and the number of
/// non-blank lines that did not parse (torn, unknown kind).
fn parse_events(text: &str) -> (Vec<EventLine>, usize) {
    let mut skipped = 0;
    let events = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let e = parse_event(l);
            skipped += usize::from(e.is_none());
            e
        })
        .collect();
    (events, skipped)
}

/// Reads `events.jsonl` at `path`: the events in file order and the number of non-blank lines
/// that did not parse (torn, unknown kind). A missing file holds no events.
pub fn read_events(path: &Path) -> Result<(Vec<EventLine>, usize), Error> {
    Ok(read_optional(path)?.map(|t| parse_events(&t)).unwrap_or_default())
}

/// The run's one linear history: a `resume` from the checkpoint at step `S` abandons what
/// the previous worker did after `S`, so the events read before it that belong to a step
/// after `S` are dropped (as the policy state restored from the checkpoint drops them),
/// except `restart` and `resume` events themselves.
pub fn linear_history(events: impl IntoIterator<Item = EventLine>) -> Vec<EventLine> {
    let mut out: Vec<EventLine> = Vec::new();
    for e in events {
        if let Event::Resume { from_step, .. } = e.event {
            out.retain(|k| k.step <= from_step || matches!(k.event, Event::Restart { .. } | Event::Resume { .. }));
        }
        out.push(e);
    }
    out
}

/// Worker restarts recorded over the whole run (every supervisor invocation), not counting
/// the supervisors' final stops.
pub fn restarts(events: &[EventLine]) -> usize {
    events.iter().filter(|e| e.event.is_restart()).count()
}

#[cfg(test)]
mod tests;
