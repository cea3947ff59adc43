//! SIMULATION ONLY: the `[faults]` recipe section. Injected failures are raised as panics
//! carrying the same kind of message a real failure carries, so they travel through exactly
//! the same classification and recovery path (`recovery::attempt`) as real ones.

use oomph_recipe::{FaultsSection, Phase};
use oomph_sched::oom::SIMULATED_OOM_PREFIX;
use std::collections::BTreeSet;

/// Fault state for a run: which one-shot faults have already fired.
#[derive(Debug, Clone)]
pub struct Faults {
    cfg: FaultsSection,
    /// No fault configured (checked on every chunk: decided once).
    empty: bool,
    /// Indices of the `oom_at` (`true`) and `panic_at` (`false`) entries that fired.
    fired: BTreeSet<(bool, usize)>,
}

/// The name of a phase as written in recipes and events.
pub fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Forward => "forward",
        Phase::Backward => "backward",
        Phase::Optimizer => "optimizer",
        Phase::Eval => "eval",
    }
}

impl Faults {
    /// Faults from the recipe's `[faults]` section.
    pub fn new(cfg: FaultsSection) -> Self {
        let empty = cfg == FaultsSection::default();
        Self { cfg, empty, fired: BTreeSet::new() }
    }

    /// Whether any fault is configured.
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// The simulated capacity (in samples per micro-batch) in force at `step`, if any.
    pub fn capacity(&self, step: usize) -> Option<usize> {
        let mut cap = self.cfg.simulate_memory_samples;
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
        if matches!(phase, Phase::Forward | Phase::Eval) {
            if let Some(cap) = self.capacity(step) {
                if micro > cap {
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
