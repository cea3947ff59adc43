//! The adaptive micro-batch policy for one effective batch.
//!
//! The policy holds the current micro-batch *limit* (always an achievable size, see
//! [`crate::plan`]) and decides how it changes:
//!
//! - **Shrink on out-of-memory.** The failed step is retried from its first chunk with a
//!   limit strictly below the failed size: roughly half of it, or — when a memory model
//!   exists (a linear fit of peak memory against micro-batch size from at least two
//!   [`Policy::observe_memory`] observations, or a [`MemoryHint`]) — the largest size the
//!   model predicts to fit with 10% headroom. A predicted size that fails again within the
//!   same step falls back to halving.
//! - **Remember the ceiling**: the smallest achievable size known to fail.
//! - **Grow back** after `grow_after` clean steps: binary search over the achievable sizes
//!   between the limit and the ceiling, or doubling (capped at `max`) when there is none.
//! - **Re-test the ceiling** only after an exponentially growing wait,
//!   `grow_after * 2^backoff` clean steps, when it is the only achievable size left above the
//!   limit: that is how memory that came back is rediscovered. A successful re-test forgets
//!   the ceiling. `backoff` is capped at [`MAX_BACKOFF`] and decays by one level after
//!   `grow_after * 2^(backoff+1)` steps without any out-of-memory.
//! - **A failed growth attempt** returns to the last good size, lowers the ceiling to the
//!   size that failed and increments `backoff`. A grown limit stays on probation for
//!   `grow_after` steps: an out-of-memory during that time also counts as a failed growth, so
//!   capacity that flaps up and down makes the policy back off instead of chasing it.
//! - **Give up** ([`GiveUp`]) when even `min` does not fit, or after more than
//!   `max_retries_per_step` out-of-memory failures within one optimizer step.
//! - **The automatic start is a search, not a retry.** With `initial = None` the first step
//!   starts at `max` and shrinks until a size fits ([`Policy::is_searching`]); the per-step
//!   budget does not apply to it, because every failure strictly lowers the limit and the
//!   search ends by itself: at most about `2 * ceil(log2(max / min)) + 2` failures (each halving
//!   may be preceded by one predicted-fit shrink), giving up only when the lower bound fails.
//!   Every later step, and every step of a fixed `initial`, keeps the budget.
//!
//! The whole state is [`PolicyState`], serialisable, stored in every checkpoint so that a
//! restarted worker does not rediscover the ceiling by crashing again.
//!
//! **Invariant:** `min_bound <= limit <= max_bound`, with both bounds achievable; when a
//! ceiling is known, `limit < ceiling` except while a deliberate re-test of the ceiling is in
//! flight (or when even the minimum is known to fail, see [`Policy::exhausted`]).

use crate::plan::{at_least, max_chunk, next_larger, next_smaller, plan_chunks};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The highest backoff level: the longest wait before re-testing a ceiling is
/// `grow_after * 2^MAX_BACKOFF` clean steps.
pub const MAX_BACKOFF: u32 = 6;

/// Fraction of the device capacity a predicted micro-batch may use (10% headroom).
pub const HEADROOM: f64 = 0.9;

/// Most limits kept in [`PolicyState::history`].
pub const HISTORY_LEN: usize = 256;

/// Most memory observations kept in [`PolicyState::observations`].
pub const MAX_OBSERVATIONS: usize = 32;

/// The policy's configuration for one effective batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyConfig {
    /// Samples per optimizer step, `N`. Treated as at least 1.
    pub effective_batch: usize,
    /// The limit never goes below this. Treated as at least 1 and at most `max`.
    pub min: usize,
    /// The limit never goes above this. Capped at `effective_batch`; 0 means `effective_batch`.
    pub max: usize,
    /// The first limit; `None` (recipe `"auto"`) starts at `max` and probes down by
    /// out-of-memory failures. Rounded down to an achievable size.
    pub initial: Option<usize>,
    /// Clean optimizer steps before trying a larger limit. 0 disables growing.
    pub grow_after: usize,
    /// Out-of-memory failures tolerated within one optimizer step; one more gives up.
    /// Does not apply while an automatic start searches for its first fitting size
    /// ([`Policy::is_searching`]): that search is bounded by the size range instead.
    pub max_retries_per_step: usize,
}

impl PolicyConfig {
    /// A configuration for `effective_batch` with the recipe defaults: `min = 1`,
    /// `max = effective_batch`, `initial = auto`, `grow_after = 50`,
    /// `max_retries_per_step = 8`.
    pub fn new(effective_batch: usize) -> Self {
        Self { effective_batch, min: 1, max: effective_batch, initial: None, grow_after: 50, max_retries_per_step: 8 }
    }
}

/// One observation of peak memory at a micro-batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryObservation {
    /// Micro-batch size (samples).
    pub micro: usize,
    /// Peak device memory in use while running it (bytes).
    pub peak_bytes: u64,
    /// Device capacity at the time (bytes).
    pub capacity_bytes: u64,
}

/// The policy's complete, serialisable state (stored in checkpoints).
///
/// Fields are public for inspection (`oomph inspect`, reports); [`Policy::from_state`]
/// re-normalises whatever it is given.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct PolicyState {
    /// The current micro-batch limit (largest chunk), always achievable for `N`.
    pub limit: usize,
    /// The smallest achievable size known to fail, if any.
    pub ceiling: Option<usize>,
    /// Successful steps at the current limit since it last changed (or since the last OOM).
    pub clean_steps: usize,
    /// Successful steps since the last out-of-memory (drives the decay of `backoff`).
    pub stable_steps: usize,
    /// Exponential backoff level for re-testing the ceiling (`0..=MAX_BACKOFF`).
    pub backoff: u32,
    /// A growth attempt in flight: the last good limit to return to if the grown one fails.
    /// Kept while the grown limit is on probation (its first `grow_after` steps).
    pub growing_from: Option<usize>,
    /// Out-of-memory failures within the current step.
    pub ooms_this_step: usize,
    /// Whether the current step already shrank to a predicted size (a second failure halves).
    pub predicted_this_step: bool,
    /// Optimizer steps completed. While it is 0 and `initial` is auto, the policy is still
    /// searching for its first fitting size ([`Policy::is_searching`]).
    pub steps: u64,
    /// Out-of-memory failures in total (including worker deaths reported to
    /// [`Policy::lower_ceiling`]).
    pub ooms: u64,
    /// Shrinks in total (not counting returns after a failed growth).
    pub shrinks: u64,
    /// Growth attempts in total (including re-tests of the ceiling).
    pub grow_attempts: u64,
    /// Growth attempts that failed.
    pub grow_failures: u64,
    /// Distinct successive limits, oldest first (the most recent [`HISTORY_LEN`]).
    pub history: Vec<usize>,
    /// Recent memory observations, at most one per micro-batch size, oldest first.
    pub observations: Vec<MemoryObservation>,
}

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

/// Optional memory facts accompanying an out-of-memory, used for a predicted shrink and for
/// a precise [`GiveUp`] message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryHint {
    /// Bytes each sample of a micro-batch needs (activations, gradients).
    pub bytes_per_sample: Option<f64>,
    /// Bytes needed independently of the micro-batch (weights, optimizer state).
    pub fixed_bytes: Option<u64>,
    /// Device capacity in bytes.
    pub capacity_bytes: Option<u64>,
    /// Size of the allocation that failed, in bytes.
    pub requested_bytes: Option<u64>,
}

/// Which limit was hit when giving up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GiveUpKind {
    /// Even the smallest allowed micro-batch (`micro_batch.min`) does not fit.
    MinDoesNotFit,
    /// More than `micro_batch.max_retries_per_step` failures within one optimizer step (never
    /// while an automatic start searches for its first fitting size).
    TooManyRetries,
}

/// The policy cannot make the step fit. Its `Display` is a paragraph for the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{}", self.render())]
pub struct GiveUp {
    /// The micro-batch size that failed last.
    pub micro: usize,
    /// The configured minimum micro-batch (`micro_batch.min`).
    pub min: usize,
    /// What exactly happened, with memory figures where known.
    pub reason: String,
    /// Which limit was hit.
    pub kind: GiveUpKind,
}

impl GiveUp {
    fn render(&self) -> String {
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
        }
    }
}

/// The adaptive micro-batch policy. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Policy {
    cfg: PolicyConfig,
    lo: usize,
    hi: usize,
    state: PolicyState,
}

impl Policy {
    /// A fresh policy: the limit starts at `initial` (rounded down to an achievable size,
    /// clamped to the bounds) or, for `initial = None`, at `max`.
    pub fn new(cfg: PolicyConfig) -> Policy {
        let mut p = Policy::bare(cfg);
        let n = p.n();
        p.state.limit = match p.cfg.initial {
            None => p.hi,
            Some(i) => max_chunk(n, i.clamp(p.lo, p.hi)).max(p.lo),
        };
        p.state.history = vec![p.state.limit];
        p
    }

    /// Resumes from a saved state. The state is re-normalised against `cfg` (whose bounds
    /// or effective batch may have changed): the limit is clamped to the bounds and rounded
    /// down to an achievable size, the ceiling rounded up to one, the limit kept below the
    /// ceiling, and the per-step counters reset. `cfg.initial` is ignored.
    pub fn from_state(cfg: PolicyConfig, state: PolicyState) -> Policy {
        let mut p = Policy::bare(cfg);
        p.state = state;
        p.normalise_state();
        p
    }

    fn bare(mut cfg: PolicyConfig) -> Policy {
        let n = cfg.effective_batch.max(1);
        cfg.effective_batch = n;
        cfg.max = if cfg.max == 0 { n } else { cfg.max.min(n) };
        cfg.min = cfg.min.clamp(1, cfg.max);
        let hi = max_chunk(n, cfg.max);
        // When no achievable size lies in [min, max], honour `max` (a memory bound).
        let lo = at_least(n, cfg.min).min(hi);
        Policy { cfg, lo, hi, state: PolicyState::default() }
    }

    fn normalise_state(&mut self) {
        let n = self.n();
        let (lo, hi) = (self.lo, self.hi);
        let round = |x: usize| max_chunk(n, x.clamp(lo, hi)).max(lo);
        let s = &mut self.state;
        s.backoff = s.backoff.min(MAX_BACKOFF);
        s.ooms_this_step = 0;
        s.predicted_this_step = false;
        s.ceiling = s.ceiling.filter(|&c| c >= 1 && c <= n).map(|c| at_least(n, c));
        s.limit = round(s.limit);
        s.growing_from = s.growing_from.map(round).filter(|&g| g < s.limit);
        if let Some(c) = s.ceiling {
            let retest_in_flight = s.limit == c && s.growing_from.is_some();
            if s.limit >= c && !retest_in_flight {
                s.limit = next_smaller(n, c).filter(|&x| x >= lo).unwrap_or(lo);
                s.growing_from = None;
                s.clean_steps = 0;
            }
        }
        if s.history.len() > HISTORY_LEN {
            let excess = s.history.len() - HISTORY_LEN;
            s.history.drain(..excess);
        }
        if s.history.last() != Some(&s.limit) {
            push_history(&mut s.history, s.limit);
        }
        if s.observations.len() > MAX_OBSERVATIONS {
            let excess = s.observations.len() - MAX_OBSERVATIONS;
            s.observations.drain(..excess);
        }
    }

    fn n(&self) -> usize {
        self.cfg.effective_batch
    }

    /// The normalised configuration.
    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// The state to store in a checkpoint.
    pub fn state(&self) -> &PolicyState {
        &self.state
    }

    /// The current micro-batch limit (the largest chunk of the next step).
    pub fn limit(&self) -> usize {
        self.state.limit
    }

    /// The chunk sizes for the step about to run (or be retried).
    pub fn plan(&self) -> Vec<usize> {
        plan_chunks(self.n(), self.state.limit)
    }

    /// The achievable bounds `(low, high)` the limit stays within: the smallest achievable
    /// size `>= min` and the largest achievable size `<= max` (if no achievable size lies
    /// between `min` and `max`, both are the latter).
    pub fn bounds(&self) -> (usize, usize) {
        (self.lo, self.hi)
    }

    /// The smallest achievable size known to fail, if any.
    pub fn ceiling(&self) -> Option<usize> {
        self.state.ceiling
    }

    /// Whether the limit is a grown one still on probation (scheduled by the last
    /// [`on_step_ok`](Self::on_step_ok), possibly as a re-test of the ceiling, or grown fewer
    /// than `grow_after` steps ago). An out-of-memory now is a failed growth.
    pub fn is_growing(&self) -> bool {
        self.state.growing_from.is_some()
    }

    /// Whether the policy is still searching for its first fitting size in an automatic start:
    /// `initial` is auto (`None`) and no optimizer step has completed yet (`steps == 0`, which a
    /// restored [`PolicyState`] carries across restarts). While searching, out-of-memory
    /// failures are not limited by `max_retries_per_step`: each one strictly lowers the limit,
    /// so the search ends on its own, and it gives up only when the lower bound fails.
    pub fn is_searching(&self) -> bool {
        self.cfg.initial.is_none() && self.state.steps == 0
    }

    /// Whether even the lowest allowed limit is known to fail (a ceiling at or below the
    /// lower bound). Any further out-of-memory gives up.
    pub fn exhausted(&self) -> bool {
        self.state.ceiling.is_some_and(|c| c <= self.lo)
    }

    /// A whole optimizer step succeeded at the current limit. Confirms a growth attempt,
    /// forgets a ceiling the step proved wrong, and may schedule growth for the next step.
    pub fn on_step_ok(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let ga = self.cfg.grow_after;
        let s = &mut self.state;
        s.steps += 1;
        s.ooms_this_step = 0;
        s.predicted_this_step = false;
        s.clean_steps = s.clean_steps.saturating_add(1);
        s.stable_steps = s.stable_steps.saturating_add(1);
        // A grown limit stays on probation for `grow_after` steps: an out-of-memory during
        // that time counts as a failed growth (back to the last good size, more backoff).
        if s.clean_steps >= ga.max(1) {
            s.growing_from = None;
        }
        if let Some(c) = s.ceiling {
            if s.limit >= c {
                s.ceiling = None;
                events.push(Event::CeilingCleared { ceiling: c });
            }
        }
        if ga > 0 && s.backoff > 0 && s.stable_steps >= ga.saturating_mul(1usize << (s.backoff + 1)) {
            s.backoff -= 1;
            s.stable_steps = 0;
        }
        if let Some(to) = self.growth_target() {
            let from = self.state.limit;
            self.state.growing_from = Some(from);
            self.state.grow_attempts += 1;
            self.set_limit(to);
            tracing::debug!(from, to, "micro-batch policy: trying a larger limit");
            events.push(Event::Grow { from, to });
        }
        events
    }

    /// The size the next step should try, if it is time to grow.
    fn growth_target(&self) -> Option<usize> {
        let s = &self.state;
        let ga = self.cfg.grow_after;
        if ga == 0 || s.limit >= self.hi || s.growing_from.is_some() {
            return None;
        }
        let n = self.n();
        let next = next_larger(n, s.limit).filter(|&x| x <= self.hi)?;
        match s.ceiling.filter(|&c| c <= self.hi) {
            Some(c) if next >= c => {
                // Only the ceiling itself is left above: re-test it after the backoff wait.
                (s.clean_steps >= self.retest_wait()).then_some(c)
            }
            Some(c) => {
                if s.clean_steps < ga {
                    return None;
                }
                let mid = max_chunk(n, s.limit + (c - s.limit) / 2);
                Some(if mid > s.limit { mid } else { next })
            }
            None => {
                if s.clean_steps < ga {
                    return None;
                }
                let doubled = max_chunk(n, s.limit.saturating_mul(2).min(self.hi));
                Some(if doubled > s.limit { doubled } else { next })
            }
        }
    }

    fn retest_wait(&self) -> usize {
        self.cfg.grow_after.saturating_mul(1usize << self.state.backoff.min(MAX_BACKOFF))
    }

    /// Clean steps before the next growth attempt from the current state.
    fn next_try_after(&self) -> usize {
        let n = self.n();
        match (next_larger(n, self.state.limit), self.state.ceiling) {
            (Some(next), Some(c)) if next >= c => self.retest_wait(),
            _ => self.cfg.grow_after,
        }
    }

    /// An out-of-memory happened while running a micro-batch of `failed_micro` samples
    /// (0: unknown, taken as the current limit). The same step will be retried from its first
    /// chunk with [`plan`](Self::plan), at a limit strictly smaller than both `failed_micro`
    /// and the current limit.
    ///
    /// A failed growth attempt returns to the last good limit; otherwise the limit is roughly
    /// halved, or set to the size the memory model (observations or `hint`) predicts to fit.
    /// Gives up when no allowed size is smaller, or when this is the
    /// `max_retries_per_step + 1`-th failure in the step (except while an automatic start
    /// [is searching](Self::is_searching) for its first fitting size); the state is still
    /// updated (ceiling lowered, limit shrunk where possible) so that a checkpoint written
    /// afterwards carries what was learnt.
    pub fn on_oom(&mut self, failed_micro: usize, hint: Option<MemoryHint>) -> Result<Vec<Event>, GiveUp> {
        let n = self.n();
        let old = self.state.limit;
        let failed = if failed_micro == 0 { old } else { failed_micro.min(n) };
        let cap = failed.min(old);
        let searching = self.is_searching();
        {
            let s = &mut self.state;
            s.ooms += 1;
            s.ooms_this_step += 1;
            s.clean_steps = 0;
            s.stable_steps = 0;
        }
        let new_ceiling = at_least(n, failed);
        let mut events = Vec::new();
        let growing_from = self.state.growing_from.take();
        match growing_from {
            Some(prev) if prev < cap => {
                let s = &mut self.state;
                s.ceiling = Some(s.ceiling.map_or(new_ceiling, |c| c.min(new_ceiling)));
                s.backoff = (s.backoff + 1).min(MAX_BACKOFF);
                s.grow_failures += 1;
                self.set_limit(prev);
                let next_try_after_steps = self.next_try_after();
                tracing::debug!(at = old, back_to = prev, "micro-batch policy: growth attempt failed");
                events.push(Event::GrowFailed { at: old, back_to: prev, next_try_after_steps });
            }
            _ => {
                let predicted = if self.state.predicted_this_step { None } else { self.predicted_fit(hint.as_ref()) };
                let (target, reason) = match predicted {
                    Some(p) if p < cap => (p, ShrinkReason::PredictedFit),
                    _ => (cap.div_ceil(2), ShrinkReason::Halved),
                };
                let to = max_chunk(n, target.max(1)).max(self.lo);
                let s = &mut self.state;
                s.ceiling = Some(s.ceiling.map_or(new_ceiling, |c| c.min(new_ceiling)));
                if to >= cap {
                    // Nothing allowed is smaller than what failed.
                    if old != self.lo {
                        self.set_limit(self.lo);
                    }
                    let mut reason = self.min_reason(failed, hint.as_ref());
                    if searching {
                        reason.push_str(&format!(
                            " The automatic start (`micro_batch.initial = \"auto\"`) searched down from \
                             {} sample(s) to {failed} in the first step without finding a size that fits.",
                            self.hi
                        ));
                    }
                    tracing::debug!(failed, "micro-batch policy: even the minimum does not fit");
                    return Err(GiveUp { micro: failed, min: self.cfg.min, reason, kind: GiveUpKind::MinDoesNotFit });
                }
                s.predicted_this_step = reason == ShrinkReason::PredictedFit;
                s.shrinks += 1;
                self.set_limit(to);
                tracing::debug!(from = old, to, %reason, "micro-batch policy: shrinking after out-of-memory");
                events.push(Event::Shrink { from: old, to, reason });
            }
        }
        if !searching && self.state.ooms_this_step > self.cfg.max_retries_per_step {
            let context = match (self.state.steps, self.cfg.initial) {
                (0, Some(initial)) => format!("It was the first step, started at `micro_batch.initial` = {initial}."),
                (steps, _) => format!("{steps} step(s) had completed before this one."),
            };
            let reason = format!(
                "{} out-of-memory failures happened in this step, more than \
                 `micro_batch.max_retries_per_step` = {} allows. {context}",
                self.state.ooms_this_step, self.cfg.max_retries_per_step
            );
            return Err(GiveUp { micro: failed, min: self.cfg.min, reason, kind: GiveUpKind::TooManyRetries });
        }
        Ok(events)
    }

    /// The supervisor restarted the worker after it died of memory while running a
    /// micro-batch of `failed_micro` samples (0: unknown, taken as the current limit). The
    /// ceiling becomes at most `failed_micro` and the limit goes strictly below it (back to
    /// the last good size if a growth attempt was in flight, else roughly half). If nothing
    /// allowed is smaller the limit stays at the lower bound and [`exhausted`](Self::exhausted)
    /// turns true: the supervisor should then stop rather than restart again.
    pub fn lower_ceiling(&mut self, failed_micro: usize) -> Vec<Event> {
        let n = self.n();
        let old = self.state.limit;
        let failed = if failed_micro == 0 { old } else { failed_micro.min(n) };
        let new_ceiling = at_least(n, failed);
        let mut events = Vec::new();
        let s = &mut self.state;
        s.ooms += 1;
        s.ooms_this_step = 0;
        s.predicted_this_step = false;
        s.clean_steps = 0;
        s.stable_steps = 0;
        s.ceiling = Some(s.ceiling.map_or(new_ceiling, |c| c.min(new_ceiling)));
        let growing_from = s.growing_from.take();
        match growing_from {
            Some(prev) if prev < failed => {
                s.backoff = (s.backoff + 1).min(MAX_BACKOFF);
                s.grow_failures += 1;
                self.set_limit(prev);
                let next_try_after_steps = self.next_try_after();
                events.push(Event::GrowFailed { at: old, back_to: prev, next_try_after_steps });
            }
            _ if old >= failed => {
                let to = max_chunk(n, failed.div_ceil(2)).max(self.lo);
                let to = if to >= failed { self.lo } else { to };
                if to != old {
                    self.state.shrinks += 1;
                    self.set_limit(to);
                    events.push(Event::Shrink { from: old, to, reason: ShrinkReason::WorkerDied });
                }
            }
            _ => {}
        }
        events
    }

    /// Records the peak memory of a micro-batch of `micro` samples and the device capacity.
    /// Two or more observations at different sizes give a linear memory model used to
    /// shrink straight to a predicted fit after an out-of-memory.
    pub fn observe_memory(&mut self, micro: usize, peak_bytes: u64, capacity_bytes: u64) {
        if micro == 0 || peak_bytes == 0 {
            return;
        }
        let obs = &mut self.state.observations;
        obs.retain(|o| o.micro != micro);
        obs.push(MemoryObservation { micro, peak_bytes, capacity_bytes });
        if obs.len() > MAX_OBSERVATIONS {
            let excess = obs.len() - MAX_OBSERVATIONS;
            obs.drain(..excess);
        }
    }

    /// The linear memory model `(fixed_bytes, bytes_per_sample)`: from `hint` when it gives
    /// `bytes_per_sample`, else a least-squares fit over the observations (at least two
    /// distinct sizes, positive slope).
    pub fn memory_model(&self, hint: Option<&MemoryHint>) -> Option<(f64, f64)> {
        let fit = self.fit();
        if let Some(per) = hint.and_then(|h| h.bytes_per_sample).filter(|b| b.is_finite() && *b > 0.0) {
            let fixed = hint.and_then(|h| h.fixed_bytes).map(|f| f as f64).or(fit.map(|(a, _)| a)).unwrap_or(0.0);
            return Some((fixed.max(0.0), per));
        }
        fit
    }

    fn fit(&self) -> Option<(f64, f64)> {
        let obs = &self.state.observations;
        if obs.len() < 2 {
            return None;
        }
        let k = obs.len() as f64;
        let mx = obs.iter().map(|o| o.micro as f64).sum::<f64>() / k;
        let my = obs.iter().map(|o| o.peak_bytes as f64).sum::<f64>() / k;
        let sxx: f64 = obs.iter().map(|o| (o.micro as f64 - mx).powi(2)).sum();
        let sxy: f64 = obs.iter().map(|o| (o.micro as f64 - mx) * (o.peak_bytes as f64 - my)).sum();
        if sxx <= 0.0 {
            return None;
        }
        let b = sxy / sxx;
        if !(b.is_finite() && b > 0.0) {
            return None;
        }
        Some(((my - b * mx).max(0.0), b))
    }

    fn capacity(&self, hint: Option<&MemoryHint>) -> Option<u64> {
        hint.and_then(|h| h.capacity_bytes)
            .or_else(|| self.state.observations.last().map(|o| o.capacity_bytes))
            .filter(|&c| c > 0)
    }

    /// The largest micro-batch the memory model predicts to fit in [`HEADROOM`] of the
    /// capacity (0 if not even one sample does), or `None` without a model or a capacity.
    pub fn predicted_fit(&self, hint: Option<&MemoryHint>) -> Option<usize> {
        let (fixed, per) = self.memory_model(hint)?;
        let capacity = self.capacity(hint)? as f64;
        let budget = capacity * HEADROOM - fixed;
        if budget <= 0.0 {
            return Some(0);
        }
        let p = (budget / per).floor();
        Some(if p >= usize::MAX as f64 { usize::MAX } else { p as usize })
    }

    fn min_reason(&self, failed: usize, hint: Option<&MemoryHint>) -> String {
        let mut parts = Vec::new();
        if let (Some((fixed, per)), Some(cap)) = (self.memory_model(hint), self.capacity(hint)) {
            let need = fixed + per * failed as f64;
            parts.push(format!(
                "The memory model estimates {} for a micro-batch of {failed} ({} fixed + {} per \
                 sample) against {} of device memory.",
                bytes(need),
                bytes(fixed),
                bytes(per),
                bytes(cap as f64)
            ));
        } else if let Some(h) = hint {
            if let (Some(req), Some(cap)) = (h.requested_bytes, h.capacity_bytes) {
                parts.push(format!(
                    "The failed allocation requested {} on a device with {} in total.",
                    bytes(req as f64),
                    bytes(cap as f64)
                ));
            } else if let Some(req) = h.requested_bytes {
                parts.push(format!("The failed allocation requested {}.", bytes(req as f64)));
            }
        }
        if parts.is_empty() {
            parts.push("No memory statistics were available to say by how much.".to_string());
        }
        if self.lo != self.cfg.min {
            parts.push(format!(
                "(With an effective batch of {}, the smallest micro-batch limit at or above the \
                 minimum is {}.)",
                self.n(),
                self.lo
            ));
        }
        parts.join(" ")
    }

    fn set_limit(&mut self, to: usize) {
        if self.state.limit != to {
            self.state.limit = to;
            self.state.clean_steps = 0;
            push_history(&mut self.state.history, to);
        }
    }
}

fn push_history(history: &mut Vec<usize>, limit: usize) {
    if history.last() == Some(&limit) {
        return;
    }
    if history.len() >= HISTORY_LEN {
        history.remove(0);
    }
    history.push(limit);
}

/// Human-readable bytes (binary units).
fn bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b.max(0.0);
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", UNITS[i])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests;
