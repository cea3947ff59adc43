//! The one decision after a worker's death: restart it from the newest checkpoint with what
//! was running lowered, or stop.
//!
//! The supervisor reads how the worker died ([`Death`]: its exit status, the allocation note,
//! the cgroup's OOM-kill counter) and where ([`DeathAt`]: `current.json`); those reads stay in
//! the command line. [`decide_after_death`] turns them into a [`DeathDecision`]:
//!
//! - past `supervisor.max_restarts`, or a second death at the same step with the same sizes:
//!   stop;
//! - a death that is not of memory: restart with the sizes unchanged;
//! - a memory death in the forward or backward passes (or where the phase is unknown): restart
//!   with the micro-batch ceiling below the one that was running, or stop when the policy cannot
//!   go below it ([`Policy::can_go_below`]: it already was the policy's lower bound, the smallest
//!   achievable size at or above `micro_batch.min`), exactly where [`Policy::decide`] gives up
//!   in-process;
//! - in evaluation: restart with the evaluation batch below the one that was running, or stop
//!   when it already was 1 (the rule [`Policy::decide`] follows in-process);
//! - in the optimizer update: restart with the sizes unchanged (the update's memory does not
//!   depend on them) and the first update of the new worker in place;
//! - while writing a checkpoint (also a failed host allocation on the checkpoint writer thread,
//!   whatever the loop was doing): restart with the sizes unchanged.

use super::{eval_retry, OomPhase};
use crate::policy::Policy;

/// How a worker died, as far as the supervisor can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Death {
    /// The worker exited 75: its backend was unusable after an out-of-memory (or a
    /// [`RestartWorker`](super::Decision::RestartWorker) decision ended it).
    BackendUnusable,
    /// SIGKILL while the cgroup's OOM-kill counter went up: the kernel's OOM killer.
    OomKiller,
    /// A failed host allocation of this many bytes (SIGABRT with the allocator's note);
    /// `checkpoint`: on the checkpoint writer thread.
    HostAlloc {
        /// Size of the allocation that failed.
        bytes: u64,
        /// Whether it failed while writing a checkpoint.
        checkpoint: bool,
    },
    /// SIGKILL of unknown cause: `oom_counter_readable` says whether the OOM-kill counter
    /// could be read (and did not move) or not (it may have been the OOM killer).
    Killed {
        /// Whether the cgroup's OOM-kill counter was readable.
        oom_counter_readable: bool,
    },
}

impl Death {
    /// Whether this is a memory death: everything but a SIGKILL that the readable OOM-kill
    /// counter shows was not the OOM killer.
    pub fn is_memory(&self) -> bool {
        !matches!(self, Death::Killed { oom_counter_readable: true })
    }

    /// The cause in words, for messages and the `restart` event.
    pub fn describe(&self) -> String {
        match self {
            Death::BackendUnusable => "backend unusable after an out-of-memory (worker exit 75)".into(),
            Death::OomKiller => "killed by the kernel's OOM killer (SIGKILL; the cgroup's oom_kill count rose)".into(),
            Death::HostAlloc { bytes, checkpoint: false } => {
                format!("host allocation of {bytes} bytes failed (SIGABRT)")
            }
            Death::HostAlloc { bytes, checkpoint: true } => {
                format!("host allocation of {bytes} bytes failed while writing a checkpoint (SIGABRT)")
            }
            Death::Killed { oom_counter_readable: true } => {
                "killed by SIGKILL, cause unknown: not the kernel's OOM killer (the cgroup's oom_kill count did not \
                 change)"
                    .into()
            }
            Death::Killed { oom_counter_readable: false } => {
                "killed by SIGKILL, cause unknown (possibly the kernel's OOM killer; the cgroup's oom_kill count is \
                 not readable here, so it is treated as a memory death)"
                    .into()
            }
        }
    }

    /// The phase the death belongs to: a failed allocation on the checkpoint writer thread is
    /// the checkpoint's, whatever the loop was doing; otherwise `at`'s.
    pub fn phase(&self, at: &DeathAt) -> Option<OomPhase> {
        match self {
            Death::HostAlloc { checkpoint: true, .. } => Some(OomPhase::Checkpoint),
            _ => at.phase,
        }
    }
}

/// One death: where and with which sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeathAt {
    /// Step in progress.
    pub step: usize,
    /// Phase, `None` when unknown (no `current.json`).
    pub phase: Option<OomPhase>,
    /// Training micro-batch in force.
    pub micro: Option<usize>,
    /// Evaluation batch in force.
    pub eval: Option<usize>,
}

impl DeathAt {
    /// The phase's name, `unknown` when it is not known.
    pub fn phase_name(&self) -> &'static str {
        self.phase.map_or("unknown", OomPhase::as_str)
    }
}

/// What the supervisor knows besides the death itself.
#[derive(Debug, Clone, Copy)]
pub struct Supervision<'a> {
    /// The micro-batch policy the recipe configures (`Policy::new` of its configuration): it
    /// says whether a smaller micro-batch than the one that died can run
    /// ([`Policy::can_go_below`]).
    pub policy: &'a Policy,
    /// The earlier deaths of this supervisor that led to restarts, oldest first.
    pub earlier: &'a [DeathAt],
    /// Restarts so far, counting the one this death would need (1 for the first death).
    pub restarts: usize,
    /// `supervisor.max_restarts`.
    pub max_restarts: usize,
    /// The memory report appended to a stop's message (what the run needed and had).
    pub report: &'a str,
}

/// What the supervisor does after a death.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeathDecision {
    /// Restart from the newest checkpoint with these adjustments.
    Restart {
        /// Lower the training micro-batch ceiling below this size.
        lower_micro: Option<usize>,
        /// Evaluate below this evaluation batch.
        lower_eval: Option<usize>,
        /// Run the first optimizer update in place.
        in_place: bool,
        /// What is changed, in words.
        action: String,
    },
    /// Stop with this message.
    Stop {
        /// Whether the run does not fit (a memory death: exit 3); otherwise it failed (exit 1).
        does_not_fit: bool,
        /// One paragraph, ending with the memory report.
        message: String,
    },
}

/// The one decision after a worker's death (pure: tested on its whole table).
pub fn decide_after_death(death: &Death, at: &DeathAt, sup: &Supervision) -> DeathDecision {
    let memory = death.is_memory();
    let report = sup.report;
    let give_up = |why: String| DeathDecision::Stop { does_not_fit: memory, message: format!("{why} {report}") };
    if sup.restarts > sup.max_restarts {
        return DeathDecision::Stop {
            does_not_fit: memory,
            message: format!(
                "the training worker died {} times, more than supervisor.max_restarts = {} (last: {}). {report} Or \
                 raise supervisor.max_restarts.",
                sup.restarts,
                sup.max_restarts,
                death.describe()
            ),
        };
    }
    if sup.earlier.contains(at) {
        return give_up(format!(
            "the training worker died twice at step {} in {} with the same sizes ({}); restarting again cannot help.",
            at.step,
            at.phase_name(),
            death.describe()
        ));
    }
    let unchanged = |action: &str| DeathDecision::Restart {
        lower_micro: None,
        lower_eval: None,
        in_place: false,
        action: action.into(),
    };
    if !memory {
        return unchanged("sizes unchanged");
    }
    match death.phase(at) {
        Some(OomPhase::Eval) => match at.eval.map(|e| (e, eval_retry(e))) {
            Some((_, None)) => give_up(format!(
                "evaluation died of memory at its smallest size (1 sample per micro-batch) at step {}.",
                at.step
            )),
            Some((e, Some(_))) => DeathDecision::Restart {
                lower_micro: None,
                lower_eval: Some(e),
                in_place: false,
                action: format!("the evaluation batch below {e}"),
            },
            None => unchanged("sizes unchanged (evaluation batch unknown)"),
        },
        Some(OomPhase::Optimizer) => DeathDecision::Restart {
            lower_micro: None,
            lower_eval: None,
            in_place: true,
            action: "the micro-batch unchanged (the update's memory does not depend on it) and the first update \
                     in place"
                .into(),
        },
        Some(OomPhase::Checkpoint) => unchanged("sizes unchanged (the death was in a checkpoint write)"),
        Some(OomPhase::Train) | None => match at.micro {
            Some(m) if !sup.policy.can_go_below(m) => give_up(format!(
                "the training worker died of memory at step {} with the smallest micro-batch the recipe allows \
                 ({}); a smaller one cannot be tried.",
                at.step,
                smallest(sup.policy, m)
            )),
            Some(m) => DeathDecision::Restart {
                lower_micro: Some(m),
                lower_eval: None,
                in_place: false,
                action: format!("the micro-batch below {m}"),
            },
            None => unchanged("sizes unchanged (micro-batch unknown)"),
        },
    }
}

/// The micro-batch `m` that died, as the smallest one allowed: `micro_batch.min` itself, or
/// with the smallest limit the effective batch splits into at or above it.
fn smallest(policy: &Policy, m: usize) -> String {
    let cfg = policy.config();
    if m == cfg.min {
        format!("{m} = micro_batch.min")
    } else {
        format!(
            "{m}: with micro_batch.min = {} and an effective batch of {}, the smallest micro-batch limit is {}",
            cfg.min,
            cfg.effective_batch,
            policy.bounds().0
        )
    }
}
