//! The supervisor: runs training in a child worker process and restarts it from the newest
//! checkpoint of the run when a restart can fix what killed it.
//!
//! What killed a worker is read from its exit status, the allocation note the
//! [`oomph_train::alloc::TrackingAllocator`] leaves in `worker-death.txt`, the kernel's
//! OOM-kill counter of the cgroup (`memory.events`, or `memory.oom_control` on cgroup v1),
//! and `current.json` (the step, the phase and the sizes in force). [`decide`] turns that into
//! a restart that lowers what was running (the training micro-batch for a death in forward or
//! backward, the evaluation batch for one in evaluation; nothing for the optimizer update,
//! whose memory does not depend on the micro-batch, where the restarted worker's first update
//! runs in place instead) or a stop: a death at the smallest size, or a second death at the
//! same step with the same sizes, stops at once with exit 3 and a memory report. Every
//! restarted worker resumes from the newest intact checkpoint, whatever `--resume` said.

use crate::lock::{RunLock, ENV_LOCK_FD};
use crate::{ENV_IN_PLACE_UPDATE, ENV_LOWER_CEILING, ENV_LOWER_EVAL, ENV_RESTARTS, ENV_RESUME, ENV_WORKER};
use oomph_recipe::Recipe;
use oomph_train::current::Current;
use oomph_train::error::{EXIT_DOES_NOT_FIT, EXIT_INTERRUPTED, EXIT_MEMORY_DEATH};
use oomph_train::records::{EventRecord, JsonLines};
use serde_json::{json, Map, Value};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Instant;

static CHILD: AtomicI32 = AtomicI32::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn forward(sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// How a worker died, as far as the supervisor can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Death {
    /// The worker exited 75: its backend was unusable after an out-of-memory.
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
    /// Whether this is a memory death.
    pub fn is_memory(&self) -> bool {
        !matches!(self, Death::Killed { oom_counter_readable: true })
    }

    fn describe(&self) -> String {
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
}

/// The cgroup's count of processes killed by an OOM killer, where readable (cgroup v2
/// `memory.events`, cgroup v1 `memory.oom_control`).
pub fn oom_kill_count() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut candidates = Vec::new();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        if controllers.is_empty() {
            candidates.push(format!("/sys/fs/cgroup{path}/memory.events"));
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(format!("/sys/fs/cgroup/memory{path}/memory.oom_control"));
        }
    }
    candidates.push("/sys/fs/cgroup/memory.events".into());
    candidates.push("/sys/fs/cgroup/memory/memory.oom_control".into());
    candidates.iter().find_map(|p| {
        let text = std::fs::read_to_string(p).ok()?;
        text.lines().find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
    })
}

/// Classifies a worker's exit: `None` when it is not a death a restart may fix (the worker
/// has already printed its own error).
pub fn classify(status: std::process::ExitStatus, run_dir: &Path, kills_before: Option<u64>) -> Option<Death> {
    if status.code() == Some(EXIT_MEMORY_DEATH) {
        return Some(Death::BackendUnusable);
    }
    match status.signal() {
        Some(libc::SIGKILL) => Some(match (kills_before, oom_kill_count()) {
            (Some(a), Some(b)) if b > a => Death::OomKiller,
            (Some(_), Some(_)) => Death::Killed { oom_counter_readable: true },
            _ => Death::Killed { oom_counter_readable: false },
        }),
        Some(libc::SIGABRT) => oomph_train::alloc::read_note(&run_dir.join("worker-death.txt"))
            .map(|(bytes, checkpoint)| Death::HostAlloc { bytes, checkpoint }),
        _ => None,
    }
}

/// What the supervisor does after a death.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
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
    /// Stop with this exit code and message.
    Stop {
        /// Exit code.
        code: i32,
        /// One paragraph.
        message: String,
    },
}

/// One death: where and with which sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeathAt {
    /// Step in progress.
    pub step: usize,
    /// Phase (`train`, `optimizer`, `eval`, `checkpoint`, or `unknown`).
    pub phase: String,
    /// Training micro-batch in force.
    pub micro: Option<usize>,
    /// Evaluation batch in force.
    pub eval: Option<usize>,
}

/// The one decision after a worker's death (pure: tested on its whole table).
pub fn decide(death: &Death, at: &DeathAt, min_micro: usize, earlier: &[DeathAt], report: &str) -> Decision {
    let memory = death.is_memory();
    let give_up = |why: String| Decision::Stop {
        code: if memory { EXIT_DOES_NOT_FIT } else { 1 },
        message: format!("{why} {report}"),
    };
    if earlier.contains(at) {
        return give_up(format!(
            "the training worker died twice at step {} in {} with the same sizes ({}); restarting again cannot help.",
            at.step,
            at.phase,
            death.describe()
        ));
    }
    if !memory {
        return Decision::Restart {
            lower_micro: None,
            lower_eval: None,
            in_place: false,
            action: "sizes unchanged".into(),
        };
    }
    let phase = if matches!(death, Death::HostAlloc { checkpoint: true, .. }) { "checkpoint" } else { &at.phase };
    match phase {
        "eval" => match at.eval {
            Some(e) if e <= 1 => give_up(format!(
                "evaluation died of memory at its smallest size (1 sample per micro-batch) at step {}.",
                at.step
            )),
            Some(e) => Decision::Restart {
                lower_micro: None,
                lower_eval: Some(e),
                in_place: false,
                action: format!("the evaluation batch below {e}"),
            },
            None => Decision::Restart {
                lower_micro: None,
                lower_eval: None,
                in_place: false,
                action: "sizes unchanged (evaluation batch unknown)".into(),
            },
        },
        "optimizer" => Decision::Restart {
            lower_micro: None,
            lower_eval: None,
            in_place: true,
            action: "the micro-batch unchanged (the update's memory does not depend on it) and the first update \
                     in place"
                .into(),
        },
        "checkpoint" => Decision::Restart {
            lower_micro: None,
            lower_eval: None,
            in_place: false,
            action: "sizes unchanged (the death was in a checkpoint write)".into(),
        },
        _ => match at.micro {
            Some(m) if m <= min_micro => give_up(format!(
                "the training worker died of memory at step {} with the smallest micro-batch the recipe allows \
                 ({m} = micro_batch.min); a smaller one cannot be tried.",
                at.step
            )),
            Some(m) => Decision::Restart {
                lower_micro: Some(m),
                lower_eval: None,
                in_place: false,
                action: format!("the micro-batch below {m}"),
            },
            None => Decision::Restart {
                lower_micro: None,
                lower_eval: None,
                in_place: false,
                action: "sizes unchanged (micro-batch unknown)".into(),
            },
        },
    }
}

/// The step the dead worker was on and what `current.json` says.
fn where_it_died(run_dir: &Path) -> (DeathAt, Option<Current>) {
    let current = oomph_train::current::read(&run_dir.join("current.json"));
    let last_step = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .ok()
        .and_then(|text| {
            text.lines().rev().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                (v.get("kind")? == "step").then(|| v.get("step")?.as_u64()).flatten()
            })
        })
        .unwrap_or(0) as usize;
    let at = DeathAt {
        step: current.as_ref().map(|c| c.step).unwrap_or(last_step + 1),
        phase: current.as_ref().map(|c| c.phase.clone()).unwrap_or_else(|| "unknown".into()),
        micro: current.as_ref().map(|c| c.micro_batch),
        eval: current.as_ref().map(|c| c.eval_batch),
    };
    (at, current)
}

/// What the run needed and what it had, for a memory stop.
fn memory_report(at: &DeathAt, current: Option<&Current>) -> String {
    let mut parts = vec![format!(
        "Memory report: step {}, phase {}, micro-batch {}, evaluation batch {}",
        at.step,
        at.phase,
        at.micro.map(|m| m.to_string()).unwrap_or_else(|| "unknown".into()),
        at.eval.map(|m| m.to_string()).unwrap_or_else(|| "unknown".into())
    )];
    if let Some(c) = current.filter(|c| c.parameters > 0) {
        let mib = c.parameters as f64 * 4.0 / (1024.0 * 1024.0);
        parts.push(format!(
            "{} parameters ({mib:.1} MiB in float32; gradients and AdamW's two moments take about 3x that more)",
            c.parameters
        ));
    }
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills a struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } == 0 && lim.rlim_cur != libc::RLIM_INFINITY {
        parts.push(format!("address-space limit (ulimit -v) {} MiB", lim.rlim_cur / (1024 * 1024)));
    }
    let fix = match at.phase.as_str() {
        "eval" => {
            "Fix: evaluation needs this memory even for one sample per micro-batch: use a smaller model, free \
                   memory on the machine or device, or raise the limit."
        }
        "optimizer" => {
            "Fix: the update needs room for the parameters, their gradients and the optimizer state \
                        whatever the micro-batch: use a smaller model or optimizer.kind = \"sgd\", free memory on the \
                        machine or device, or raise the limit."
        }
        "checkpoint" => {
            "Fix: writing a checkpoint needs host memory for a serialised copy of the model and optimizer \
                         state: free host memory or raise the limit."
        }
        _ => {
            "Fix: lower micro_batch.min (or micro_batch.max), use a smaller model, free memory on the machine or \
              device, or raise the limit."
        }
    };
    format!("{}. {fix}", parts.join("; "))
}

fn record_restart(run_dir: &Path, at: &DeathAt, death: &Death, restarts: usize, action: &str, wall_s: f64) {
    let mut fields = Map::new();
    fields.insert("cause".into(), json!(death.describe()));
    fields.insert("memory".into(), json!(death.is_memory()));
    fields.insert("phase".into(), json!(at.phase));
    fields.insert("micro_batch".into(), json!(at.micro));
    fields.insert("eval_batch".into(), json!(at.eval));
    fields.insert("restart".into(), json!(restarts));
    fields.insert("action".into(), json!(action));
    let rec = EventRecord { kind: "restart".into(), step: at.step, wall_s, fields };
    if let Ok(mut ev) = JsonLines::open(&run_dir.join("events.jsonl")) {
        let _ = ev.write(&rec);
    }
}

/// The supervisor stops with `code`: no worker runs any more, so `current.json` goes.
fn stop(run_dir: &Path, code: i32) -> i32 {
    let _ = std::fs::remove_file(run_dir.join("current.json"));
    code
}

/// Runs the current command line as a supervised worker until it finishes, fails for a
/// reason a restart cannot fix, or exceeds `supervisor.max_restarts`. Returns the exit code.
pub fn supervise(recipe: &Recipe, run_dir: &Path, lock: &RunLock) -> i32 {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!(
                "error: cannot find this program's own path to start a worker ({e}). Fix: run with --no-supervise."
            );
            return 1;
        }
    };
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    // SAFETY: installing handlers that only store a flag and call kill(2) on the recorded child.
    unsafe {
        libc::signal(libc::SIGINT, forward as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, forward as *const () as libc::sighandler_t);
    }
    let min_micro = oomph_train::trainer::policy_config(recipe).min;
    let started = Instant::now();
    let mut restarts = 0usize;
    let mut deaths: Vec<DeathAt> = Vec::new();
    let (mut lower_micro, mut lower_eval, mut in_place) = (None::<usize>, None::<usize>, false);
    let lock_fd = lock.fd();
    loop {
        if STOP.load(Ordering::SeqCst) {
            eprintln!(
                "oomph supervisor: interrupted between two workers; the run stops here and the same command resumes \
                 it from its newest checkpoint"
            );
            return stop(run_dir, EXIT_INTERRUPTED);
        }
        let mut cmd = Command::new(&exe);
        cmd.args(&args).env(ENV_WORKER, "1").env(ENV_RESTARTS, restarts.to_string());
        cmd.env(ENV_LOCK_FD, lock_fd.to_string());
        if restarts > 0 {
            // Every restarted worker resumes from the newest intact checkpoint of this run,
            // whatever `--resume` asked of the first one.
            cmd.env(ENV_RESUME, "auto");
        }
        if let Some(m) = lower_micro {
            cmd.env(ENV_LOWER_CEILING, m.to_string());
        }
        if let Some(e) = lower_eval {
            cmd.env(ENV_LOWER_EVAL, e.to_string());
        }
        if in_place {
            cmd.env(ENV_IN_PLACE_UPDATE, "1");
        }
        // The worker gets its own process group so a terminal's Ctrl-C reaches it exactly
        // once, forwarded by us, and inherits the run directory's lock.
        // SAFETY: setpgid, prctl and fcntl are async-signal-safe and touch no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                libc::setpgid(0, 0);
                // If the supervisor dies (closed terminal, killed), the worker checkpoints
                // and stops instead of running on as an orphan.
                #[cfg(target_os = "linux")]
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                RunLock::share(lock_fd)
            });
        }
        let kills_before = oom_kill_count();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: cannot start the training worker: {e}. Fix: run with --no-supervise.");
                return 1;
            }
        };
        CHILD.store(child.id() as i32, Ordering::SeqCst);
        if STOP.load(Ordering::SeqCst) {
            // The signal came while the worker was being started, before it could be forwarded.
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        }
        // The signal handler only forwards with kill(2); std retries waitpid on EINTR.
        let status = match child.wait() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: lost the training worker: {e}");
                return 1;
            }
        };
        CHILD.store(0, Ordering::SeqCst);
        if status.success() {
            return 0;
        }
        let interrupted = STOP.load(Ordering::SeqCst);
        let Some(death) = classify(status, run_dir, kills_before) else {
            if interrupted && (status.code() == Some(EXIT_INTERRUPTED) || status.signal() == Some(libc::SIGINT)) {
                if status.signal().is_some() {
                    eprintln!(
                        "oomph supervisor: interrupted while the worker was starting; the same command resumes the \
                         run from its newest checkpoint"
                    );
                }
                return stop(run_dir, EXIT_INTERRUPTED);
            }
            if let Some(sig) = status.signal() {
                // A worker killed by a signal printed nothing of its own.
                eprintln!(
                    "oomph supervisor: the worker died of signal {sig}{}, which is not a memory failure (no \
                     allocation failed), so it is not restarted. Its checkpoints are intact: once the cause is fixed, \
                     the same command resumes the run from the newest one.",
                    if sig == libc::SIGABRT { " (SIGABRT, an abort)" } else { "" }
                );
            }
            return stop(run_dir, status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)));
        };
        if interrupted {
            eprintln!(
                "oomph supervisor: the worker died ({}) after an interrupt; not restarting. The same command resumes \
                 the run from its newest checkpoint",
                death.describe()
            );
            return stop(run_dir, EXIT_INTERRUPTED);
        }
        let (mut at, current) = where_it_died(run_dir);
        if matches!(death, Death::HostAlloc { checkpoint: true, .. }) {
            // The checkpoint writer runs in the background: the death belongs to its step.
            at.phase = "checkpoint".into();
            if let Some(s) = current.as_ref().and_then(|c| c.checkpoint_step) {
                at.step = s;
            }
        }
        restarts += 1;
        let report = memory_report(&at, current.as_ref());
        let decision = if restarts > recipe.supervisor.max_restarts {
            Decision::Stop {
                code: if death.is_memory() { EXIT_DOES_NOT_FIT } else { 1 },
                message: format!(
                    "the training worker died {restarts} times, more than supervisor.max_restarts = {} (last: {}). \
                     {report} Or raise supervisor.max_restarts.",
                    recipe.supervisor.max_restarts,
                    death.describe()
                ),
            }
        } else {
            decide(&death, &at, min_micro, &deaths, &report)
        };
        match decision {
            Decision::Stop { code, message } => {
                record_restart(run_dir, &at, &death, restarts, "stop", started.elapsed().as_secs_f64());
                eprintln!("error: {message}");
                return stop(run_dir, code);
            }
            Decision::Restart { lower_micro: m, lower_eval: e, in_place: ip, action } => {
                record_restart(run_dir, &at, &death, restarts, &action, started.elapsed().as_secs_f64());
                eprintln!(
                    "oomph supervisor: worker died at step {} in {} ({}); restart {restarts}/{} from the newest \
                     checkpoint with {action}",
                    at.step,
                    at.phase,
                    death.describe(),
                    recipe.supervisor.max_restarts
                );
                deaths.push(at);
                lower_micro = m.or(lower_micro);
                lower_eval = e.or(lower_eval);
                in_place |= ip;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(step: usize, phase: &str, micro: usize, eval: usize) -> DeathAt {
        DeathAt { step, phase: phase.into(), micro: Some(micro), eval: Some(eval) }
    }

    fn restart(d: Decision) -> (Option<usize>, Option<usize>, bool) {
        match d {
            Decision::Restart { lower_micro, lower_eval, in_place, .. } => (lower_micro, lower_eval, in_place),
            Decision::Stop { message, .. } => panic!("expected a restart, got a stop: {message}"),
        }
    }

    fn stop(d: Decision) -> (i32, String) {
        match d {
            Decision::Stop { code, message } => (code, message),
            other => panic!("expected a stop, got {other:?}"),
        }
    }

    #[test]
    fn the_phase_that_died_is_the_one_lowered() {
        let alloc = Death::HostAlloc { bytes: 64, checkpoint: false };
        assert_eq!(restart(decide(&alloc, &at(5, "train", 32, 256), 1, &[], "")), (Some(32), None, false));
        assert_eq!(restart(decide(&alloc, &at(5, "eval", 32, 256), 1, &[], "")), (None, Some(256), false));
        assert_eq!(restart(decide(&alloc, &at(5, "optimizer", 32, 256), 1, &[], "")), (None, None, true));
        assert_eq!(restart(decide(&alloc, &at(5, "checkpoint", 32, 256), 1, &[], "")), (None, None, false));
        // A failure on the checkpoint writer thread is the checkpoint's, whatever the loop was doing.
        let ck = Death::HostAlloc { bytes: 64, checkpoint: true };
        assert_eq!(restart(decide(&ck, &at(5, "train", 32, 256), 1, &[], "")), (None, None, false));
    }

    #[test]
    fn a_death_at_the_smallest_size_stops_at_once() {
        let d = Death::BackendUnusable;
        let (code, msg) = stop(decide(&d, &at(3, "train", 4, 8), 4, &[], "REPORT"));
        assert_eq!(code, EXIT_DOES_NOT_FIT);
        assert!(msg.contains("micro_batch.min") && msg.contains("REPORT"), "{msg}");
        let (code, _) = stop(decide(&d, &at(3, "eval", 4, 1), 1, &[], ""));
        assert_eq!(code, EXIT_DOES_NOT_FIT);
    }

    #[test]
    fn a_second_death_at_the_same_step_with_the_same_sizes_stops() {
        let d = Death::HostAlloc { bytes: 1, checkpoint: false };
        let first = at(7, "optimizer", 16, 16);
        let (code, msg) = stop(decide(&d, &first, 1, std::slice::from_ref(&first), ""));
        assert_eq!(code, EXIT_DOES_NOT_FIT);
        assert!(msg.contains("twice at step 7"), "{msg}");
        // Other sizes at the same step: a restart can still help.
        restart(decide(&d, &at(7, "train", 8, 16), 1, &[at(7, "train", 16, 16)], ""));
    }

    #[test]
    fn an_unknown_sigkill_restarts_without_lowering_and_is_not_called_memory() {
        let known = Death::Killed { oom_counter_readable: true };
        assert!(!known.is_memory());
        assert!(known.describe().contains("cause unknown"));
        assert_eq!(restart(decide(&known, &at(2, "train", 32, 32), 1, &[], "")), (None, None, false));
        let (code, _) = stop(decide(&known, &at(2, "train", 32, 32), 1, &[at(2, "train", 32, 32)], ""));
        assert_eq!(code, 1, "not a memory failure, so not exit 3");
        let unreadable = Death::Killed { oom_counter_readable: false };
        assert!(unreadable.is_memory() && unreadable.describe().contains("cause unknown"));
        assert_eq!(restart(decide(&unreadable, &at(2, "train", 32, 32), 1, &[], "")), (Some(32), None, false));
        let oom = Death::OomKiller;
        assert_eq!(restart(decide(&oom, &at(2, "train", 32, 32), 1, &[], "")), (Some(32), None, false));
    }
}
