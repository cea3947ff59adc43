//! A run's inputs besides the model and the data ([`Session`]), and what the recipe implies
//! for the loop: the run length, the policy's configuration, and the data-dependent checks.

use crate::backend::{CacheRelease, MemoryProbe};
use crate::error::TrainError;
use crate::faults::Faults;
use crate::feed::Data;
use crate::progress::Observer;
use crate::resume::Resume;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::Backend;
use oomph_data::DataInfo;
use oomph_recipe::{MicroInitial, Recipe};
use oomph_sched::{Policy, PolicyConfig};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Everything a run needs besides the model and the data.
pub struct Session<B: Backend> {
    /// The validated recipe.
    pub recipe: Recipe,
    /// Where the recipe came from (for messages).
    pub origin: String,
    /// The device to train on.
    pub device: B::Device,
    /// Human-readable backend and device, e.g. `ndarray (cpu)`.
    pub backend_name: String,
    /// The run directory.
    pub run_dir: PathBuf,
    /// Progress front-end.
    pub observer: Box<dyn Observer>,
    /// Resume policy.
    pub resume: Resume,
    /// Set by a supervisor after a worker died of memory at this micro-batch: the policy's
    /// ceiling is lowered below it on resume.
    pub lower_ceiling: Option<usize>,
    /// Set by a supervisor after a worker died of memory while evaluating with this
    /// evaluation micro-batch: evaluation runs below it on resume.
    pub lower_eval: Option<usize>,
    /// Set by a supervisor after a worker died inside an optimizer update: this process's
    /// first update runs in place too (the copy-based first update needs room for a second
    /// copy of the parameters and optimizer state).
    pub first_update_in_place: bool,
    /// Supervisor restarts so far (added to the summary).
    pub restarts: usize,
    /// Extra lines for the start-up banner (e.g. device memory).
    pub banner: Vec<String>,
    /// Set to stop the run at the next step boundary (checkpoint, then
    /// [`TrainError::Interrupted`]), as a first Ctrl-C does.
    pub stop: Arc<AtomicBool>,
    /// Device memory statistics, where the backend reports them.
    pub memory: Option<MemoryProbe>,
    /// Releases the backend allocator's cache after a failed attempt, where burn does not.
    pub release: Option<CacheRelease>,
    /// This process's place among the processes of a launch (torchrun, Slurm): one rank of
    /// `world`, joined to the others over TCP ([`crate::gang::tcp`]). `None`: the process
    /// trains alone, or with `distributed.ranks` threads.
    pub process: Option<oomph_rundir::Launch>,
}

impl<B: Backend> Session<B> {
    /// The session of a rank other than 0 of several: the same run on `device`, showing
    /// nothing and writing nothing (rank 0 does), without the process-wide memory probes.
    pub fn follower(&self, device: B::Device) -> Self {
        Self {
            recipe: self.recipe.clone(),
            origin: self.origin.clone(),
            device,
            backend_name: self.backend_name.clone(),
            run_dir: self.run_dir.clone(),
            observer: Box::new(crate::progress::Silent),
            resume: self.resume,
            lower_ceiling: self.lower_ceiling,
            lower_eval: self.lower_eval,
            first_update_in_place: self.first_update_in_place,
            restarts: self.restarts,
            banner: Vec::new(),
            stop: self.stop.clone(),
            memory: None,
            release: None,
            process: None,
        }
    }

    /// A session with defaults: no output (`Silent`), resume `Auto`, no supervisor state.
    pub fn new(recipe: Recipe, origin: &str, device: B::Device, run_dir: &Path) -> Self {
        Self {
            recipe,
            origin: origin.to_string(),
            device,
            backend_name: std::any::type_name::<B>().to_string(),
            run_dir: run_dir.to_path_buf(),
            observer: Box::new(crate::progress::Silent),
            resume: Resume::Auto,
            lower_ceiling: None,
            lower_eval: None,
            first_update_in_place: false,
            restarts: 0,
            banner: Vec::new(),
            stop: Arc::default(),
            memory: None,
            release: None,
            process: None,
        }
    }

    /// The start-up banner's lines for a run at `step` of `total` (before the notes gathered
    /// while resuming).
    pub fn banner_lines(
        &self,
        policy: &Policy,
        info: &DataInfo,
        parameters: usize,
        total: usize,
        step: usize,
        faults: &Faults,
    ) -> Vec<String> {
        let r = &self.recipe;
        let plan = policy.plan();
        let (min, max) = policy.bounds();
        let mut lines = vec![
            format!("oomph: {} ({})", r.run.name, self.origin),
            format!("backend {} | run dir {}", self.backend_name, self.run_dir.display()),
            format!("model {} | {} parameters", r.model.kind, oomph_sched::policy::count(parameters)),
            format!("data {}", info.description),
            format!(
                "effective {} = {}{} chunk{} x {}{} | micro-batch min {min} max {max} (initial {}) | {total} steps",
                r.training.effective_batch,
                match r.distributed.ranks {
                    1 => String::new(),
                    n => format!("{n} ranks x "),
                },
                plan.len(),
                if plan.len() == 1 { "" } else { "s" },
                plan[0],
                match (r.distributed.ranks, plan.iter().any(|&c| c != plan[0])) {
                    (1, true) => format!(" (sizes {plan:?})"),
                    (1, false) => String::new(),
                    (n, _) => {
                        let all: Vec<usize> = (0..r.training.effective_batch).collect();
                        let shards: Vec<usize> = (0..n).map(|k| crate::gang::shard(&all, k, n).len()).collect();
                        format!(" (the largest shard; shards {shards:?})")
                    }
                },
                match r.micro_batch.initial {
                    MicroInitial::Auto => "auto".to_string(),
                    // A size above a rank's shard starts at the shard, as the policy does.
                    MicroInitial::Fixed(m) => m.min(max).to_string(),
                },
            ),
        ];
        if r.micro_batch.initial == MicroInitial::Auto && step == 0 {
            lines.push(format!(
                "micro-batch auto: trying {} first, then the largest size that fits (OOM probing{})",
                plan[0],
                if self.memory.is_some() { " and the device's memory statistics" } else { "" }
            ));
        }
        let d = &r.distributed;
        if d.ranks > 1 {
            let how = match &self.process {
                Some(l) => format!(
                    "{} ranks, one process each (started by {}, joined over TCP at {})",
                    d.ranks,
                    l.launcher.name(),
                    l.master()
                ),
                None => format!("{} ranks in this process (threads, burn's collective)", d.ranks),
            };
            lines.push(format!(
                "distributed: {how}, each on its shard of every step | parameters compared every {} steps | \
                 collective deadline {} s",
                d.check_every, d.timeout_s
            ));
        }
        if faults.simulates() {
            lines.push("SIMULATION: [faults] is set; injected OOMs are simulated, not real".into());
        }
        lines
    }
}

/// Number of optimizer steps a recipe asks for, given the training split's size.
pub fn total_steps(recipe: &Recipe, train_len: usize) -> usize {
    match (recipe.training.steps, recipe.training.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => (e * train_len).div_ceil(recipe.training.effective_batch).max(1),
        (None, None) => 100,
    }
}

/// Checks what can only be checked against the loaded data: an effective batch no larger than
/// the training split.
pub fn check_data_fits<B: AutodiffBackend>(recipe: &Recipe, origin: &str, data: &Data<B>) -> Result<(), TrainError> {
    let n = recipe.training.effective_batch;
    let len = data.train_len();
    if n > len {
        return Err(TrainError::BadInput(format!(
            "{origin}: `training.effective_batch` = {n} is larger than the training split, which holds {len} \
             samples ({}): one step would hold some samples more than once. Fix: set \
             training.effective_batch to at most {len}, or use more data.",
            data.info.description
        )));
    }
    Ok(())
}

/// The policy configuration a recipe implies.
pub fn policy_config(recipe: &Recipe) -> PolicyConfig {
    // With several ranks the micro-batch splits each rank's shard: the largest shard is the
    // policy's batch (the shards differ by at most one sample).
    let n = recipe.training.effective_batch.div_ceil(recipe.distributed.ranks.max(1));
    let mb = &recipe.micro_batch;
    let max = mb.max.unwrap_or(n).min(n).max(1);
    PolicyConfig {
        effective_batch: n,
        min: mb.min.min(max),
        max,
        initial: match mb.initial {
            MicroInitial::Auto => None,
            MicroInitial::Fixed(m) => Some(m.min(max)),
        },
        grow_after: mb.grow_after,
        max_retries_per_step: mb.max_retries_per_step,
    }
}
