//! The supervisor: runs training in a child worker process and restarts it from the newest
//! checkpoint of the run when a restart can fix what killed it.
//!
//! What killed a worker is read from its exit status, the allocation note the
//! [`oomph_train::alloc::TrackingAllocator`] leaves in `worker-death.txt`, the kernel's
//! OOM-kill counter of the cgroup (`memory.events`, or `memory.oom_control` on cgroup v1),
//! and `current.json` (the step, the phase and the sizes in force); those reads stay here.
//! What the death leads to is `oomph_sched`'s decision, [`decide_after_death`]: a restart
//! that lowers what was running (the training micro-batch for a death in forward or backward,
//! the evaluation batch for one in evaluation; nothing for the optimizer update, whose memory
//! does not depend on the micro-batch, where the restarted worker's first update runs in place
//! instead) or a stop: a death at the smallest size, a second death at the same step with the
//! same sizes, or more deaths than `supervisor.max_restarts`, stops with exit 3 (when it is a
//! memory death) and a memory report. Every restarted worker resumes from the newest intact
//! checkpoint, whatever `--resume` said.

use crate::lock::RunLock;
use crate::{Failure, Outcome};
use oomph_recipe::Recipe;
use oomph_rundir::current::{self, Current, WorkerPhase};
use oomph_rundir::events::{self, Event, EventLine, RESTART_STOP};
use oomph_rundir::note::{self, Note};
use oomph_rundir::{metrics, RunDir, WorkerEnv};
use oomph_sched::{decide_after_death, Death, DeathAt, DeathDecision, Policy, Supervision};
use oomph_train::error::{TrainError, EXIT_INTERRUPTED, EXIT_MEMORY_DEATH};
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
        Some(libc::SIGABRT) => note::read_note(&RunDir::new(run_dir).worker_death())
            .map(|n| Death::HostAlloc { bytes: n.bytes, checkpoint: n.checkpoint() }),
        _ => None,
    }
}

/// Where the dead worker was, and what `current.json` says. The note of a failed host
/// allocation, when it says where its thread was, is more exact than `current.json`: with
/// several ranks in one process, `current.json` holds the gang's earliest position and the
/// note the failing rank's. A note of the checkpoint writer thread belongs to the checkpoint
/// in flight, whatever the loop was doing.
fn where_it_died(run_dir: &Path, note: Option<&Note>) -> (DeathAt, Option<Current>) {
    let rd = RunDir::new(run_dir);
    let current = current::read(&rd.current());
    let mut at = match &current {
        Some(c) => DeathAt { step: c.step, phase: Some(c.phase), micro: Some(c.micro_batch), eval: Some(c.eval_batch) },
        None => {
            DeathAt { step: metrics::last_step(&rd.metrics()).unwrap_or(0) + 1, phase: None, micro: None, eval: None }
        }
    };
    if let Some(phase) = note.and_then(|n| n.phase) {
        at.phase = Some(phase);
        let writing = current.as_ref().and_then(|c| c.checkpoint_step).filter(|_| phase == WorkerPhase::Checkpoint);
        if let Some(step) = note.and_then(|n| n.step).or(writing) {
            at.step = step;
        }
    }
    (at, current)
}

/// What the run needed and what it had, for a memory stop.
fn memory_report(at: &DeathAt, current: Option<&Current>) -> String {
    let mut parts = vec![format!(
        "Memory report: step {}, phase {}, micro-batch {}, evaluation batch {}",
        at.step,
        at.phase_name(),
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
    let fix = match at.phase {
        Some(WorkerPhase::Eval) => {
            "Fix: evaluation needs this memory even for one sample per micro-batch: use a smaller model, free \
                   memory on the machine or device, or raise the limit."
        }
        Some(WorkerPhase::Optimizer) => {
            "Fix: the update needs room for the parameters, their gradients and the optimizer state \
                        whatever the micro-batch: use a smaller model or optimizer.kind = \"sgd\", free memory on the \
                        machine or device, or raise the limit."
        }
        Some(WorkerPhase::Checkpoint) => {
            "Fix: writing a checkpoint needs host memory for a serialised copy of the model and optimizer \
                         state: free host memory or raise the limit."
        }
        Some(WorkerPhase::Train) | None => {
            "Fix: lower micro_batch.min (or micro_batch.max), use a smaller model, free memory on the machine or \
              device, or raise the limit."
        }
    };
    format!("{}. {fix}", parts.join("; "))
}

fn record_restart(run_dir: &Path, at: &DeathAt, death: &Death, restarts: usize, action: &str, wall_s: f64) {
    let event = Event::Restart {
        cause: death.describe(),
        memory: death.is_memory(),
        phase: at.phase_name().into(),
        micro_batch: at.micro,
        eval_batch: at.eval,
        restart: restarts,
        action: action.into(),
    };
    if let Err(e) = events::append_event(&RunDir::new(run_dir).events(), &EventLine::new(at.step, wall_s, event)) {
        tracing::warn!("could not record the restart: {e}");
    }
}

/// What the death of a launch's previous attempt asks of the restarted one.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Lowering {
    /// The micro-batch ceiling goes below this size.
    pub lower_micro: Option<usize>,
    /// Evaluation runs below this evaluation batch.
    pub lower_eval: Option<usize>,
    /// The first update runs in place.
    pub in_place: bool,
}

/// Rank 0 of a launcher's restart (torchrun `--max-restarts`, a requeued Slurm job): what the
/// death of the previous attempt asks, decided as the supervisor decides after a worker's
/// death ([`decide_after_death`]). A death is known by the allocation-failure note a rank left
/// (its own file for each rank, [`RunDir::worker_death_of`]) with `current.json`, which rank 0
/// keeps when another rank's failure stopped it; a death with no note (a kill, a backend that
/// became unusable) restarts at the sizes of the checkpoint. Records the restart as an event;
/// an error when the death cannot be helped (the smallest micro-batch died).
pub fn after_launch_death(
    recipe: &Recipe,
    run_dir: &Path,
    launch: &oomph_rundir::Launch,
) -> Result<Lowering, TrainError> {
    let rd = RunDir::new(run_dir);
    let dead = launch.restarts.saturating_sub(1);
    let notes: Vec<std::path::PathBuf> = (0..launch.world).map(|r| rd.worker_death_of(r, dead)).collect();
    let note = notes.iter().find_map(|p| note::read_note(p));
    for p in notes.iter().skip(1) {
        // Read once (rank 0's own is emptied when it arms it).
        let _ = std::fs::remove_file(p);
    }
    let Some(note) = note else { return Ok(Lowering::default()) };
    let death = Death::HostAlloc { bytes: note.bytes, checkpoint: note.checkpoint() };
    let (at, current) = where_it_died(run_dir, Some(&note));
    let policy = Policy::new(oomph_train::trainer::policy_config(recipe));
    let report = memory_report(&at, current.as_ref());
    // The launcher counts the restarts and bounds them.
    let sup = Supervision {
        policy: &policy,
        earlier: &[],
        restarts: launch.restarts,
        max_restarts: usize::MAX,
        report: &report,
    };
    match decide_after_death(&death, &at, &sup) {
        DeathDecision::Stop { does_not_fit, message } => {
            record_restart(run_dir, &at, &death, launch.restarts, RESTART_STOP, 0.0);
            Err(if does_not_fit { TrainError::DoesNotFit(message) } else { TrainError::Failed(message) })
        }
        DeathDecision::Restart { lower_micro, lower_eval, in_place, action } => {
            record_restart(run_dir, &at, &death, launch.restarts, &action, 0.0);
            eprintln!(
                "oomph: the launch's previous attempt died at step {} in {} ({}); {} restart {} resumes from the \
                 newest checkpoint with {action}",
                at.step,
                at.phase_name(),
                death.describe(),
                launch.launcher.name(),
                launch.restarts
            );
            Ok(Lowering { lower_micro, lower_eval, in_place })
        }
    }
}

/// The supervisor stops with `failure`: no worker runs any more, so `current.json` goes.
fn stop(run_dir: &Path, failure: Failure) -> Outcome {
    let _ = std::fs::remove_file(RunDir::new(run_dir).current());
    Err(failure)
}

/// Runs the current command line as a supervised worker until it finishes, fails for a
/// reason a restart cannot fix, or exceeds `supervisor.max_restarts`. With `replaces`
/// (`--resume never --overwrite` on a directory that holds a run), the worker removes the old
/// run once its recipe, data, model and device are known good; until a worker has done so,
/// the next one is told to.
pub fn supervise(recipe: &Recipe, run_dir: &Path, lock: &RunLock, replaces: bool) -> Outcome {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            return Err(TrainError::Failed(format!(
                "cannot find this program's own path to start a worker ({e}). Fix: run with --no-supervise."
            ))
            .into())
        }
    };
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    // SAFETY: installing handlers that only store a flag and call kill(2) on the recorded child.
    unsafe {
        libc::signal(libc::SIGINT, forward as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, forward as *const () as libc::sighandler_t);
    }
    // The workers' own policy: its lower bound, not `micro_batch.min`, is the smallest size
    // they can run (the smallest achievable one at or above it).
    let policy = Policy::new(oomph_train::trainer::policy_config(recipe));
    let started = Instant::now();
    let mut restarts = 0usize;
    let mut deaths: Vec<DeathAt> = Vec::new();
    let (mut lower_micro, mut lower_eval, mut in_place) = (None::<usize>, None::<usize>, false);
    let mut replace_pending = replaces;
    let lock_fd = lock.fd();
    loop {
        if STOP.load(Ordering::SeqCst) {
            eprintln!(
                "oomph supervisor: interrupted between two workers; the run stops here and the same command resumes \
                 it from its newest checkpoint"
            );
            return stop(run_dir, Failure::Code(EXIT_INTERRUPTED));
        }
        let mut cmd = Command::new(&exe);
        cmd.args(&args);
        WorkerEnv {
            // Every restarted worker resumes from the newest intact checkpoint of this run,
            // whatever `--resume` asked of the first one.
            resume: (restarts > 0).then(|| "auto".into()),
            lower_ceiling: lower_micro,
            lower_eval,
            in_place_update: in_place,
            restarts,
            lock_fd: Some(lock_fd),
            replace: replace_pending,
        }
        .apply(&mut cmd);
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
                let message = format!("cannot start the training worker: {e}. Fix: run with --no-supervise.");
                return Err(TrainError::Failed(message).into());
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
            Err(e) => return Err(TrainError::Failed(format!("lost the training worker: {e}")).into()),
        };
        CHILD.store(0, Ordering::SeqCst);
        if status.success() {
            return Ok(());
        }
        // A worker that got as far as its run (it wrote `current.json`) had removed the old one.
        if replace_pending && current::read(&RunDir::new(run_dir).current()).is_some_and(|c| c.pid == child.id()) {
            replace_pending = false;
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
                return stop(run_dir, Failure::Code(EXIT_INTERRUPTED));
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
            // The worker told its own error; its exit code is the command's.
            return stop(run_dir, Failure::Code(status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))));
        };
        if interrupted {
            eprintln!(
                "oomph supervisor: the worker died ({}) after an interrupt; not restarting. The same command resumes \
                 the run from its newest checkpoint",
                death.describe()
            );
            return stop(run_dir, Failure::Code(EXIT_INTERRUPTED));
        }
        let note = match death {
            Death::HostAlloc { .. } => note::read_note(&RunDir::new(run_dir).worker_death()),
            _ => None,
        };
        let (at, current) = where_it_died(run_dir, note.as_ref());
        restarts += 1;
        let report = memory_report(&at, current.as_ref());
        let sup = Supervision {
            policy: &policy,
            earlier: &deaths,
            restarts,
            max_restarts: recipe.supervisor.max_restarts,
            report: &report,
        };
        let decision = decide_after_death(&death, &at, &sup);
        match decision {
            DeathDecision::Stop { does_not_fit, message } => {
                record_restart(run_dir, &at, &death, restarts, RESTART_STOP, started.elapsed().as_secs_f64());
                let error = if does_not_fit { TrainError::DoesNotFit(message) } else { TrainError::Failed(message) };
                return stop(run_dir, error.into());
            }
            DeathDecision::Restart { lower_micro: m, lower_eval: e, in_place: ip, action } => {
                record_restart(run_dir, &at, &death, restarts, &action, started.elapsed().as_secs_f64());
                eprintln!(
                    "oomph supervisor: worker died at step {} in {} ({}); restart {restarts}/{} from the newest \
                     checkpoint with {action}",
                    at.step,
                    at.phase_name(),
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

    #[test]
    fn where_it_died_comes_from_current_json_else_from_the_last_step_recorded() {
        let d = tempfile::tempdir().unwrap();
        let rd = RunDir::new(d.path());
        let step = |n: usize| {
            format!(
                r#"{{"kind":"step","step":{n},"samples_seen":9,"loss":1.0,"lr":0.1,"micro_batch":8,"chunks":1,"samples_per_sec":1.0,"wall_s":0.1,"oom_events":0}}"#
            )
        };
        let eval =
            r#"{"kind":"eval","step":2,"samples_seen":9,"valid_loss":1.0,"metrics":{},"eval_batch":4,"wall_s":0.2}"#;
        std::fs::write(rd.metrics(), format!("{}\n{}\n{eval}\n{{\"kind\":\"st", step(1), step(2))).unwrap();
        let (at, current) = where_it_died(d.path(), None);
        assert_eq!(at, DeathAt { step: 3, phase: None, micro: None, eval: None });
        assert_eq!((at.phase_name(), current), ("unknown", None));
        let mut f = current::CurrentFile::open(&rd.current()).unwrap();
        let c = Current {
            pid: 1,
            step: 5,
            phase: WorkerPhase::Eval,
            micro_batch: 16,
            eval_batch: 32,
            ..Default::default()
        };
        f.write(&c);
        drop(f);
        let (at, current) = where_it_died(d.path(), None);
        assert_eq!(at, DeathAt { step: 5, phase: Some(WorkerPhase::Eval), micro: Some(16), eval: Some(32) });
        assert_eq!(current, Some(c.clone()));
        // A note that says where its thread was (a rank still training step 6) wins.
        let note = |phase, step| Note { bytes: 64, phase: Some(phase), step };
        let (at, _) = where_it_died(d.path(), Some(&note(WorkerPhase::Train, Some(6))));
        assert_eq!(at, DeathAt { step: 6, phase: Some(WorkerPhase::Train), micro: Some(16), eval: Some(32) });
        // The checkpoint writer's note belongs to the checkpoint in flight.
        let mut f = current::CurrentFile::open(&rd.current()).unwrap();
        f.write(&Current { checkpoint_step: Some(4), ..c });
        drop(f);
        let (at, _) = where_it_died(d.path(), Some(&note(WorkerPhase::Checkpoint, None)));
        assert_eq!((at.step, at.phase), (4, Some(WorkerPhase::Checkpoint)));
        // A note without a position: `current.json` says.
        let (at, _) = where_it_died(d.path(), Some(&Note { bytes: 64, phase: None, step: None }));
        assert_eq!((at.step, at.phase), (5, Some(WorkerPhase::Eval)));
    }

    #[test]
    fn a_restart_is_recorded_as_a_typed_event() {
        let d = tempfile::tempdir().unwrap();
        let death = Death::HostAlloc { bytes: 64, checkpoint: false };
        let at = DeathAt { step: 4, phase: None, micro: Some(8), eval: None };
        record_restart(d.path(), &at, &death, 1, "the micro-batch below 8", 2.5);
        record_restart(d.path(), &at, &death, 2, RESTART_STOP, 3.0);
        let (lines, skipped) = events::read_events(&RunDir::new(d.path()).events()).unwrap();
        assert_eq!((lines.len(), skipped), (2, 0));
        assert_eq!(
            lines[0],
            EventLine::new(
                4,
                2.5,
                Event::Restart {
                    cause: death.describe(),
                    memory: true,
                    phase: "unknown".into(),
                    micro_batch: Some(8),
                    eval_batch: None,
                    restart: 1,
                    action: "the micro-batch below 8".into(),
                }
            )
        );
        assert_eq!(events::restarts(&lines), 1, "the final stop is not a restart");
    }
}
