//! The checkpointer: the loop calls [`Checkpointer::save`] and [`Checkpointer::load`]; this
//! component owns the cadence, the snapshot, the background write, retention (in
//! [`crate::checkpoint`]) and the restore with its recipe, data and run-length checks
//! (`crate::resume`).
//!
//! **Invariant:** a checkpoint never holds non-finite weights: `save` refuses them and the
//! newest checkpoint stays the last finite one (`tests/it/lose_nothing.rs`,
//! `a_non_finite_step_is_skipped_and_never_reaches_the_weights`).

use crate::checkpoint::{self, Payload, TrainState};
use crate::error::TrainError;
use crate::faults::Faults;
use crate::optim::{params_finite, Optim};
use burn::module::AutodiffModule;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use oomph_recipe::CheckpointSection;
use oomph_rundir::layout::{CKPT_MODEL, CKPT_OPTIM, CKPT_RECIPE, CKPT_STATE};
use oomph_rundir::{Error, RunDir};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Instant;

/// A finished checkpoint write.
#[derive(Debug, Clone)]
pub struct Written {
    /// The step it holds.
    pub step: usize,
    /// Why it was written (`every`, `oom`, `final`, `signal`).
    pub reason: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Seconds the background write took.
    pub write_s: f64,
    /// Seconds the loop waited for it.
    pub stall_s: f64,
}

struct Pending {
    step: usize,
    reason: String,
    started: Instant,
    handle: JoinHandle<Result<PathBuf, Error>>,
}

/// Checkpoints of one run: `checkpoints/step-N/` under the run directory.
pub struct Checkpointer {
    root: PathBuf,
    every: usize,
    on_oom: bool,
    keep: usize,
    pending: Option<Pending>,
    stall_s: f64,
}

impl Checkpointer {
    /// The checkpointer of the run in `run_dir`, with the recipe's `[checkpoint]` section.
    pub fn new(run_dir: &Path, cfg: &CheckpointSection) -> Self {
        Self {
            root: RunDir::new(run_dir).checkpoints(),
            every: cfg.every,
            on_oom: cfg.on_oom,
            keep: cfg.keep,
            pending: None,
            stall_s: 0.0,
        }
    }

    /// The checkpoints directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Why a checkpoint is due after `step` (`None`: not due): every `checkpoint.every` steps,
    /// and after a step that recovered from an out-of-memory when `checkpoint.on_oom` is set.
    pub fn due(&self, step: usize, had_oom: bool) -> Option<&'static str> {
        if had_oom && self.on_oom {
            Some("oom")
        } else if self.every > 0 && step.is_multiple_of(self.every) {
            Some(if had_oom { "oom" } else { "every" })
        } else {
            None
        }
    }

    /// The step whose checkpoint is being written in the background, if any.
    pub fn writing(&self) -> Option<usize> {
        self.pending.as_ref().map(|p| p.step)
    }

    /// Seconds the loop has waited for checkpoints (snapshots plus waits for a previous write).
    pub fn stall_s(&self) -> f64 {
        self.stall_s
    }

    /// Snapshots the model and optimizer on this thread (cheap: tensor handles) and
    /// serialises and writes them with `state` on a background thread (where the simulated
    /// `[faults]` of a checkpoint write act). A write still in
    /// flight must have been waited for ([`Checkpointer::wait`]). Weights that are not finite
    /// are never written: returns `Ok(false)`, and the checkpoints before stay the newest.
    pub fn save<B, M>(
        &mut self,
        model: &M,
        optim: &Optim<M, B>,
        state: TrainState,
        recipe_text: String,
        faults: &mut Faults,
    ) -> Result<bool, TrainError>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B> + 'static,
    {
        debug_assert!(self.pending.is_none(), "wait for the previous write first");
        if !params_finite::<B, M>(model) {
            return Ok(false);
        }
        let (process_fault, disk_full) = (faults.checkpoint_fault(state.step), faults.disk_full(state.step));
        let t = Instant::now();
        let record = model.clone().into_record();
        let optim = optim.clone();
        let (step, reason) = (state.step, state.reason.clone());
        let root = self.root.clone();
        let keep = self.keep;
        let handle = std::thread::Builder::new()
            .name("oomph-checkpoint".into())
            .spawn(move || {
                crate::alloc::mark_checkpoint_thread();
                if let Some(f) = process_fault {
                    f.act(&format!("while writing the checkpoint of step {step}"));
                }
                let failed = |what: &'static str, e: String| {
                    Error::new(what, &root.join(checkpoint::dir_name(step)), std::io::Error::other(e))
                };
                let rec = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
                let model = rec.record(record, ()).map_err(|e| failed("serialising the model for", e.to_string()))?;
                let optim = optim.to_bytes().map_err(|e| failed("serialising the optimizer for", e.to_string()))?;
                let state = serde_json::to_vec_pretty(&state)
                    .map_err(|e| failed("serialising the state for", e.to_string()))?;
                let payload = Payload {
                    step,
                    files: vec![
                        (CKPT_MODEL.into(), model),
                        (CKPT_OPTIM.into(), optim),
                        (CKPT_RECIPE.into(), recipe_text.into_bytes()),
                        (CKPT_STATE.into(), state),
                    ],
                    simulate_full_disk: disk_full,
                };
                checkpoint::write(&root, &payload, keep)
            })
            .map_err(|e| TrainError::Failed(format!("cannot start the checkpoint writer: {e}")))?;
        self.pending = Some(Pending { step, reason, started: t, handle });
        self.stall_s += t.elapsed().as_secs_f64();
        Ok(true)
    }

    /// Whether a write is in flight and has finished (waiting for it then costs nothing).
    pub fn finished(&self) -> bool {
        self.pending.as_ref().is_some_and(|p| p.handle.is_finished())
    }

    /// Waits for the write in flight, if any, and returns what it wrote. A failed write
    /// leaves the checkpoints before it intact; the error says so and names the path.
    pub fn wait(&mut self) -> Result<Option<Written>, TrainError> {
        let Some(p) = self.pending.take() else {
            crate::alloc::checkpoint_survived();
            return Ok(None);
        };
        let t = Instant::now();
        let joined = p.handle.join();
        let dir =
            joined.map_err(|_| TrainError::Failed("the checkpoint writer thread panicked".into()))?.map_err(|e| {
                TrainError::Failed(format!(
                    "writing the checkpoint of step {} failed: {e}. The partial checkpoint was removed and {}. {}",
                    p.step,
                    self.newest()
                        .map(|(s, d)| format!(
                            "the checkpoints before it are intact (newest: {}, step {s})",
                            d.display()
                        ))
                        .unwrap_or_else(|| "no earlier checkpoint exists".into()),
                    crate::error::io_fix(&e.source)
                ))
            })?;
        crate::alloc::checkpoint_survived();
        let stall_s = t.elapsed().as_secs_f64();
        self.stall_s += stall_s;
        Ok(Some(Written { step: p.step, reason: p.reason, dir, write_s: p.started.elapsed().as_secs_f64(), stall_s }))
    }

    /// The newest intact checkpoint: its step and directory (for messages: `None` also when
    /// the directory cannot be listed, which the next resume reports).
    pub fn newest(&self) -> Option<(usize, PathBuf)> {
        checkpoint::list(&self.root).ok()?.into_iter().next()
    }
}
