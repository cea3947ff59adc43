//! SIMULATION ONLY: the `[faults]` recipe section. Injected failures are raised as panics
//! carrying the same kind of message a real failure carries, so they travel through exactly
//! the same classification and recovery path (`recovery::attempt`) as real ones. A simulated
//! out-of-memory first makes a real (impossible) allocation fail through the global
//! allocator, as a survivable allocation failure would.
//!
//! Faults that end the process (`die_at`, `abort_at`) or the run (`disk_full_at`) fire once
//! per *run*: the process that fired one is gone, so they are remembered in the run
//! directory's `faults-fired.txt`.

use crate::error::TrainError;
use oomph_recipe::{FaultsSection, PerRank, Phase};
use oomph_sched::oom::SIMULATED_OOM_PREFIX;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;

/// An allocation no machine can satisfy: the system allocator returns null for it (and the
/// tracking allocator notes the failure) without touching memory.
const IMPOSSIBLE: usize = 1 << 62;

/// Fault state for a run: which one-shot faults have already fired.
#[derive(Debug, Clone)]
pub struct Faults {
    cfg: FaultsSection,
    /// No fault configured (checked on every chunk: decided once).
    empty: bool,
    /// Indices of the `oom_at` (`true`) and `panic_at` (`false`) entries that fired.
    fired: BTreeSet<(bool, usize)>,
    /// Run-wide one-shot faults that fired (`die_at 0`, `disk_full_at 3`, ...), and where
    /// they are remembered.
    fired_in_run: BTreeSet<String>,
    fired_file: Option<PathBuf>,
}

/// The name of a phase as written in recipes and events.
pub fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Forward => "forward",
        Phase::Backward => "backward",
        Phase::Optimizer => "optimizer",
        Phase::Eval => "eval",
        Phase::Checkpoint => "checkpoint",
    }
}

/// A simulated fault that ends the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessFault {
    /// As a failed host allocation (`faults.die_at`).
    Die,
    /// SIGABRT that is not a memory failure (`faults.abort_at`).
    Abort,
}

impl ProcessFault {
    /// Ends the process; `when` says where, for the simulation line.
    pub fn act(self, when: &str) -> ! {
        match self {
            ProcessFault::Die => {
                eprintln!("SIMULATION: faults.die_at ends the worker {when}");
                simulated_allocation_death()
            }
            ProcessFault::Abort => {
                eprintln!("SIMULATION: faults.abort_at aborts the worker {when} (not a memory failure)");
                std::process::abort()
            }
        }
    }
}

/// Ends the process exactly as a failed host allocation does: the global allocator returns
/// null for an impossible size (the tracking allocator notes it) and the standard library's
/// handler prints `memory allocation of N bytes failed` and aborts.
pub fn simulated_allocation_death() -> ! {
    let layout = std::alloc::Layout::from_size_align(IMPOSSIBLE, 8).expect("a valid layout");
    // SAFETY: a non-zero-sized layout; the null result is handled by aborting.
    let p = unsafe { std::alloc::alloc(layout) };
    if p.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    // SAFETY: `p` was allocated with `layout` just above.
    unsafe { std::alloc::dealloc(p, layout) };
    std::process::abort()
}

/// A real allocation failure that the process survives (`try_reserve` of an impossible size),
/// as the allocator of a backend that turns failures into errors would see it.
fn survivable_allocation_failure() {
    let mut v: Vec<u8> = Vec::new();
    let _ = v.try_reserve_exact(IMPOSSIBLE);
}

impl Faults {
    /// Faults of one rank: its view of the recipe's `[faults]` section
    /// ([`FaultsSection::for_rank`]; a one-rank recipe's section is its own view).
    pub fn new(cfg: FaultsSection) -> Self {
        debug_assert!(
            cfg.simulate_memory_samples.as_ref().is_none_or(|s| s.uniform().is_some()),
            "Faults::new takes one rank's faults (FaultsSection::for_rank), not one capacity per rank"
        );
        let empty = cfg == FaultsSection::default();
        Self { cfg, empty, fired: BTreeSet::new(), fired_in_run: BTreeSet::new(), fired_file: None }
    }

    /// Faults of a run in `run_dir`: the run-wide one-shot faults that already fired there
    /// (in an earlier worker) do not fire again.
    pub fn for_run(cfg: FaultsSection, run_dir: &std::path::Path) -> Self {
        let mut f = Self::new(cfg);
        if !f.empty {
            let path = oomph_rundir::RunDir::new(run_dir).faults_fired();
            f.fired_in_run = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty())
                .collect();
            f.fired_file = Some(path);
        }
        f
    }

    /// Remembers that run-wide fault `key` fired (synced before the fault acts).
    fn remember(&mut self, key: String) {
        if let Some(path) = &self.fired_file {
            if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
                let _ = writeln!(file, "{key}");
                let _ = file.sync_all();
            }
        }
        self.fired_in_run.insert(key);
    }

    /// The first entry of run-wide list `name` due at (`step`, `phase`) that has not fired in
    /// this run; marks it fired.
    fn take_run_fault(&mut self, name: &str, step: usize, phase: Phase) -> bool {
        let list = match name {
            "die_at" => &self.cfg.die_at,
            _ => &self.cfg.abort_at,
        };
        // Keyed by what the entry says (and its place among equal entries), not by its place in
        // the list: each rank sees only its own and the shared entries (`for_rank`), so places
        // differ between ranks, while the run directory's record is one for every rank.
        let key = |i: usize, f: &oomph_recipe::FaultAt| {
            let twin = list[..i].iter().filter(|g| *g == f).count();
            let rank = f.rank.map_or("every".to_string(), |r| r.to_string());
            format!("{name} step {} {} rank {rank} #{twin}", f.step, phase_name(f.phase))
        };
        let due = list
            .iter()
            .enumerate()
            .filter(|(_, f)| f.step == step && f.phase == phase)
            .map(|(i, f)| key(i, f))
            .find(|k| !self.fired_in_run.contains(k));
        match due {
            Some(k) => {
                self.remember(k);
                true
            }
            None => false,
        }
    }

    /// Called at the start of `phase` of `step`: ends the process when `faults.die_at` (as a
    /// failed host allocation: `memory allocation of N bytes failed`, SIGABRT, with the
    /// allocation note the supervisor reads) or `faults.abort_at` (SIGABRT, no allocation
    /// failed) says so.
    pub fn check_process(&mut self, step: usize, phase: Phase) {
        if self.empty {
            return;
        }
        let when = format!("in {} of step {step}", phase_name(phase));
        if self.take_run_fault("die_at", step, phase) {
            ProcessFault::Die.act(&when);
        }
        if self.take_run_fault("abort_at", step, phase) {
            ProcessFault::Abort.act(&when);
        }
    }

    /// The process-ending fault (`faults.die_at` or `faults.abort_at` with phase `checkpoint`)
    /// due while writing the checkpoint of `step`, if any; the writer thread acts on it
    /// ([`ProcessFault::act`]), so a death is noted as the checkpoint writer's.
    pub fn checkpoint_fault(&mut self, step: usize) -> Option<ProcessFault> {
        if self.empty {
            None
        } else if self.take_run_fault("die_at", step, Phase::Checkpoint) {
            Some(ProcessFault::Die)
        } else if self.take_run_fault("abort_at", step, Phase::Checkpoint) {
            Some(ProcessFault::Abort)
        } else {
            None
        }
    }

    /// Whether the loss of `step` is to be made non-finite (`faults.nan_at`).
    pub fn nan_loss(&self, step: usize) -> bool {
        !self.empty && self.cfg.nan_at.contains(&step)
    }

    /// Whether the checkpoint of `step` is to fail as on a full disk (once per run).
    pub fn disk_full(&mut self, step: usize) -> bool {
        if self.empty || !self.cfg.disk_full_at.contains(&step) {
            return false;
        }
        let key = format!("disk_full_at {step}");
        if self.fired_in_run.contains(&key) {
            return false;
        }
        self.remember(key);
        true
    }

    /// Whether any fault is configured.
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// Whether any simulated failure is set (`faults.address_space_headroom` makes real
    /// failures, not simulated ones).
    pub fn simulates(&self) -> bool {
        let cfg = FaultsSection { address_space_headroom: None, ..self.cfg.clone() };
        cfg != FaultsSection::default()
    }

    /// `faults.address_space_headroom`: limits this process's address space (`RLIMIT_AS`) to
    /// what it maps now plus the headroom, so that later allocations past it really fail,
    /// until the returned guard is dropped (the limit in force before comes back). A limit
    /// that was already lower stays. `None` without the key.
    ///
    /// The headroom must hold everything the run allocates from here: activations, gradients,
    /// the optimizer's state and its first update's copies, and a checkpoint's host copy. On
    /// the Rust backends a failed allocation aborts the worker (the supervisor restarts it,
    /// with the limit computed again from what the new worker maps); on tch libtorch raises
    /// an error that oomph recovers from in-process.
    pub fn limit_address_space(&self) -> Result<Option<AddressSpaceLimit>, TrainError> {
        let Some(h) = &self.cfg.address_space_headroom else { return Ok(None) };
        let headroom = oomph_recipe::parse_bytes(h).map_err(|e| TrainError::BadInput(e.to_string()))?;
        let status = "/proc/self/status";
        let text = std::fs::read_to_string(status).map_err(|e| TrainError::io("reading", status.as_ref(), &e))?;
        let vm_kib: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("VmSize:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| {
                TrainError::BadInput(format!(
                    "faults.address_space_headroom needs the address space size from {status}, which does not \
                     give it (Linux only). Fix: remove the key on this system."
                ))
            })?;
        let mut before = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit into a valid struct.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut before) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(TrainError::Failed(format!("faults.address_space_headroom: getrlimit(RLIMIT_AS) failed: {e}")));
        }
        let limit = (vm_kib.saturating_mul(1024).saturating_add(headroom) as libc::rlim_t).min(before.rlim_cur);
        let now = libc::rlimit { rlim_cur: limit, rlim_max: before.rlim_max };
        // SAFETY: setrlimit on this process with a valid struct; the soft limit only goes down.
        if unsafe { libc::setrlimit(libc::RLIMIT_AS, &now) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(TrainError::Failed(format!("faults.address_space_headroom: setrlimit(RLIMIT_AS) failed: {e}")));
        }
        eprintln!(
            "SIMULATION: faults.address_space_headroom limits the worker's address space to {:.1} MiB ({} MiB \
             mapped now + {h}): allocations past it really fail",
            limit as f64 / 1048576.0,
            vm_kib / 1024
        );
        Ok(Some(AddressSpaceLimit { before }))
    }

    /// The simulated capacity (in samples per micro-batch) in force at `step`, if any.
    pub fn capacity(&self, step: usize) -> Option<usize> {
        let mut cap = self.cfg.simulate_memory_samples.as_ref().and_then(PerRank::uniform);
        let mut changes: Vec<_> = self.cfg.simulate_memory_changes.iter().collect();
        changes.sort_by_key(|c| c.step);
        for c in changes {
            if c.step <= step {
                cap = Some(c.samples);
            }
        }
        cap
    }

    /// Called at the start of `phase` of `step` with a micro-batch of `micro` samples
    /// (0 for the optimizer step). Panics with a simulated OOM or a simulated bug when the
    /// recipe says so.
    pub fn check(&mut self, step: usize, phase: Phase, micro: usize) {
        if self.is_empty() {
            return;
        }
        self.check_process(step, phase);
        if matches!(phase, Phase::Forward | Phase::Eval) {
            if let Some(cap) = self.capacity(step) {
                if micro > cap {
                    survivable_allocation_failure();
                    std::panic::panic_any(format!(
                        "{SIMULATED_OOM_PREFIX}: a micro-batch of {micro} samples does not fit the \
                         simulated capacity of {cap} samples (faults.simulate_memory_samples) in {} \
                         of step {step}",
                        phase_name(phase)
                    ));
                }
            }
        }
        let name = phase_name(phase);
        // Each entry fires once; two identical entries fire on two successive attempts.
        let due = |list: &[oomph_recipe::FaultAt], fired: &BTreeSet<(bool, usize)>, oom: bool| {
            list.iter().enumerate().position(|(i, f)| f.step == step && f.phase == phase && !fired.contains(&(oom, i)))
        };
        if let Some(i) = due(&self.cfg.oom_at, &self.fired, true) {
            self.fired.insert((true, i));
            survivable_allocation_failure();
            std::panic::panic_any(format!(
                "{SIMULATED_OOM_PREFIX}: injected by faults.oom_at in {name} of step {step}"
            ));
        }
        if let Some(i) = due(&self.cfg.panic_at, &self.fired, false) {
            self.fired.insert((false, i));
            std::panic::panic_any(format!(
                "simulated model bug injected by faults.panic_at in {name} of step {step} (not a memory failure)"
            ));
        }
    }
}

/// The address-space limit of `faults.address_space_headroom` in force: dropping it brings
/// back the limit that was in force before.
#[derive(Debug)]
pub struct AddressSpaceLimit {
    before: libc::rlimit,
}

impl Drop for AddressSpaceLimit {
    fn drop(&mut self) {
        // SAFETY: setrlimit on this process with the limit getrlimit returned (raising the soft
        // limit back up to it is allowed: it is at most the unchanged hard limit).
        unsafe { libc::setrlimit(libc::RLIMIT_AS, &self.before) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oomph_recipe::FaultAt;

    /// Each rank sees its own entries and the shared ones; the run directory's record of what
    /// fired is one for every rank, so an entry is known by what it says, not by its place.
    #[test]
    fn a_fault_fired_on_one_rank_is_never_taken_for_another_entry() {
        let dir = tempfile::tempdir().unwrap();
        let at = |step, rank| FaultAt { step, phase: Phase::Forward, rank };
        let cfg = FaultsSection { die_at: vec![at(3, Some(1)), at(5, None)], ..Default::default() };
        let mut one = Faults::for_run(cfg.for_rank(1), dir.path());
        assert!(one.take_run_fault("die_at", 3, Phase::Forward));
        // After the restart: rank 0's first entry (the shared one) has not fired yet...
        let mut zero = Faults::for_run(cfg.for_rank(0), dir.path());
        assert!(zero.take_run_fault("die_at", 5, Phase::Forward));
        // ...and once it has, no rank fires either entry again.
        let mut one = Faults::for_run(cfg.for_rank(1), dir.path());
        assert!(!one.take_run_fault("die_at", 3, Phase::Forward));
        assert!(!one.take_run_fault("die_at", 5, Phase::Forward));
    }
}
