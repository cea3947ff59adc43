//! The supervisor: runs training in a child worker process and restarts it from the newest
//! checkpoint when it dies of memory, with the micro-batch ceiling lowered below the size that
//! was running.
//!
//! Memory deaths: exit code 75 (the worker found its backend unusable after an OOM), SIGKILL
//! (what the kernel's OOM killer sends), and SIGABRT after a failed host allocation (noted by
//! [`crate::alloc::TrackingAllocator`] in `worker-death.txt`). Any other death stops the
//! supervisor with the worker's own exit code; the worker has already printed its error.

use crate::{ENV_LOWER_CEILING, ENV_RESTARTS, ENV_WORKER};
use oomph_recipe::Recipe;
use oomph_train::error::{EXIT_DOES_NOT_FIT, EXIT_MEMORY_DEATH};
use oomph_train::records::{EventRecord, JsonLines};
use serde_json::{json, Map, Value};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Instant;

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Why a worker died, when it was a memory death.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryDeath {
    /// The worker exited 75: its backend was unusable after an out-of-memory.
    BackendUnusable,
    /// SIGKILL, as the kernel's OOM killer sends.
    Killed,
    /// SIGABRT after a failed host allocation of this many bytes.
    HostAlloc(u64),
}

impl MemoryDeath {
    fn describe(&self) -> String {
        match self {
            MemoryDeath::BackendUnusable => "backend unusable after an out-of-memory (worker exit 75)".into(),
            MemoryDeath::Killed => "killed by SIGKILL (the kernel's OOM killer sends it)".into(),
            MemoryDeath::HostAlloc(n) => format!("host allocation of {n} bytes failed (SIGABRT)"),
        }
    }
}

/// Classifies a worker's exit: `Some` for memory deaths.
pub fn memory_death(status: std::process::ExitStatus, run_dir: &Path) -> Option<MemoryDeath> {
    if status.code() == Some(EXIT_MEMORY_DEATH) {
        return Some(MemoryDeath::BackendUnusable);
    }
    match status.signal() {
        Some(libc::SIGKILL) => Some(MemoryDeath::Killed),
        Some(libc::SIGABRT) => {
            let note = std::fs::read_to_string(run_dir.join("worker-death.txt")).unwrap_or_default();
            note.lines()
                .find_map(|l| l.strip_prefix("alloc-failure "))
                .and_then(|n| n.trim().parse().ok())
                .map(MemoryDeath::HostAlloc)
        }
        _ => None,
    }
}

/// The step the dead worker was on (one past the last step in `metrics.jsonl`) and the
/// micro-batch in force (`current.json`, rewritten whenever the limit changes).
fn current(run_dir: &Path) -> (usize, Option<usize>) {
    let v: Value = std::fs::read_to_string(run_dir.join("current.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    let micro = v.get("micro_batch").and_then(|s| s.as_u64()).map(|m| m as usize);
    let last_step = std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .ok()
        .and_then(|text| {
            text.lines().rev().find_map(|l| {
                let v: Value = serde_json::from_str(l).ok()?;
                (v.get("kind")? == "step").then(|| v.get("step")?.as_u64()).flatten()
            })
        })
        .unwrap_or(0) as usize;
    let step = (last_step + 1).max(v.get("step").and_then(|s| s.as_u64()).unwrap_or(0) as usize);
    (step, micro)
}

/// Runs the current command line as a supervised worker until it finishes, fails for a
/// reason other than memory, or exceeds `supervisor.max_restarts`. Returns the exit code.
pub fn supervise(recipe: &Recipe, run_dir: &Path) -> i32 {
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
    let _ = std::fs::create_dir_all(run_dir);
    // SAFETY: installing handlers that only call kill(2) on the recorded child.
    unsafe {
        libc::signal(libc::SIGINT, forward as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, forward as *const () as libc::sighandler_t);
    }
    let started = Instant::now();
    let mut restarts = 0usize;
    let mut lower: Option<usize> = None;
    loop {
        let mut cmd = Command::new(&exe);
        cmd.args(&args).env(ENV_WORKER, "1").env(ENV_RESTARTS, restarts.to_string());
        if let Some(m) = lower {
            cmd.env(ENV_LOWER_CEILING, m.to_string());
        }
        // The worker gets its own process group so a terminal's Ctrl-C reaches it exactly
        // once, forwarded by us.
        // SAFETY: setpgid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::setpgid(0, 0);
                // If the supervisor dies (closed terminal, killed), the worker checkpoints
                // and stops instead of running on as an orphan.
                #[cfg(target_os = "linux")]
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: cannot start the training worker: {e}. Fix: run with --no-supervise.");
                return 1;
            }
        };
        CHILD.store(child.id() as i32, Ordering::SeqCst);
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
        let Some(death) = memory_death(status, run_dir) else {
            return status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        };
        let (step, micro) = current(run_dir);
        restarts += 1;
        let mut fields = Map::new();
        fields.insert("cause".into(), json!(death.describe()));
        fields.insert("micro_batch".into(), json!(micro));
        fields.insert("restart".into(), json!(restarts));
        let rec = EventRecord { kind: "restart".into(), step, wall_s: started.elapsed().as_secs_f64(), fields };
        if let Ok(mut ev) = JsonLines::open(&run_dir.join("events.jsonl")) {
            let _ = ev.write(&rec);
        }
        if restarts > recipe.supervisor.max_restarts {
            eprintln!(
                "error: the training worker died of memory {restarts} times ({}), more than supervisor.max_restarts = {}. \
                 The last micro-batch was {}. Fix: lower micro_batch.max or micro_batch.initial, use a smaller \
                 model, or raise supervisor.max_restarts.",
                death.describe(),
                recipe.supervisor.max_restarts,
                micro.map(|m| m.to_string()).unwrap_or_else(|| "unknown".into())
            );
            return EXIT_DOES_NOT_FIT;
        }
        eprintln!(
            "oomph supervisor: worker died at step {step} ({}); restart {restarts}/{} from the newest checkpoint with \
             the micro-batch below {}",
            death.describe(),
            recipe.supervisor.max_restarts,
            micro.map(|m| m.to_string()).unwrap_or_else(|| "the last one".into())
        );
        lower = micro.or(lower);
    }
}
