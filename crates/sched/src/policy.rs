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

mod events;
mod give_up;
mod memory;

pub use events::{Event, ShrinkReason};
pub use give_up::{count, GiveUp, GiveUpKind};
pub use memory::{MemoryHint, MemoryObservation};

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

    /// Whether even the lowest allowed limit is known to fail (a ceiling the policy cannot go
    /// below). Any further out-of-memory gives up.
    pub fn exhausted(&self) -> bool {
        self.state.ceiling.is_some_and(|c| !self.can_go_below(c))
    }

    /// Whether an allowed limit smaller than `micro` exists: `micro` is above the lower bound
    /// ([`bounds`](Self::bounds)`.0`, the smallest achievable size at or above `min`). The one
    /// answer to "can it run smaller than the size that failed?": [`on_oom`](Self::on_oom) (so
    /// [`decide`](Self::decide)) gives up when it is `false`, [`lower_ceiling`](Self::lower_ceiling)
    /// then stays at the lower bound, and the supervisor's decision after a worker's death
    /// ([`decide_after_death`](crate::decide_after_death)) stops instead of restarting.
    pub fn can_go_below(&self, micro: usize) -> bool {
        micro > self.lo
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
                let can_go_below = self.can_go_below(cap);
                let s = &mut self.state;
                s.ceiling = Some(s.ceiling.map_or(new_ceiling, |c| c.min(new_ceiling)));
                if !can_go_below {
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
                    return Err(GiveUp {
                        micro: failed,
                        min: self.cfg.min,
                        reason,
                        kind: GiveUpKind::MinDoesNotFit,
                        step: None,
                        error: None,
                    });
                }
                debug_assert!(to < cap, "an allowed size below {cap} exists, so the shrink goes below it");
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
            return Err(GiveUp {
                micro: failed,
                min: self.cfg.min,
                reason,
                kind: GiveUpKind::TooManyRetries,
                step: None,
                error: None,
            });
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
                let to =
                    if self.can_go_below(failed) { max_chunk(n, failed.div_ceil(2)).max(self.lo) } else { self.lo };
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

#[cfg(test)]
mod tests;
