//! The checkpointer's restore: finds the checkpoint to resume from (setting damaged ones
//! aside), checks that the recipe, the data and the run length still fit it, loads the model
//! and the optimizer, and keeps one linear history (later checkpoints are abandoned).

use crate::checkpoint::{self, TrainState};
use crate::checkpointer::Checkpointer;
use crate::error::TrainError;
use crate::objective::Objective;
use crate::optim::lr_at;
use crate::runlog::RunLog;
use crate::step::Trainable;
use burn::module::AutodiffModule;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use oomph_data::DataIdentity;
use oomph_recipe::Recipe;
use oomph_rundir::layout::{ABANDONED, CKPT_MODEL, CKPT_OPTIM, CKPT_RECIPE, DAMAGED};
use oomph_rundir::Event;
use std::path::{Path, PathBuf};

/// Where to resume from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The newest intact checkpoint, if the run directory has one.
    Auto,
    /// Never resume (the caller refuses to reuse a run directory that has checkpoints).
    Never,
    /// Exactly this step's checkpoint.
    Step(usize),
}

/// What a checkpoint must fit to be resumed.
pub struct Expect<'a> {
    /// The recipe of this run.
    pub recipe: &'a Recipe,
    /// Where the recipe came from (for messages).
    pub origin: &'a str,
    /// The run directory (for messages).
    pub run_dir: &'a Path,
    /// What the data of this run is.
    pub identity: &'a DataIdentity,
    /// Training samples of this run.
    pub train_len: usize,
    /// The run length of this run, in steps.
    pub total: usize,
}

/// A checkpoint that was resumed.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Its training state.
    pub state: TrainState,
    /// Its directory.
    pub dir: PathBuf,
    /// The recipe's `training.eval_batch` differs from the checkpoint's recipe.
    pub eval_batch_changed: bool,
}

impl Checkpointer {
    /// Restores the run from its checkpoint as `resume` says: `Ok(None)` starts the run over
    /// (checkpoints of an earlier history leave the namespace). Damaged checkpoints are set
    /// aside; a checkpoint that the recipe, the data or the run length no longer fit is an
    /// error that names the difference and the fix.
    pub fn load<B, M>(
        &self,
        resume: Resume,
        expect: &Expect,
        net: &mut Trainable<B, M>,
        device: &B::Device,
        log: &mut RunLog,
    ) -> Result<Option<Loaded>, TrainError>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B> + Objective<B>,
    {
        let root = self.root();
        let want = match resume {
            Resume::Never => return self.start_over(log).map(|()| None),
            Resume::Auto => None,
            Resume::Step(s) => Some(s),
        };
        let found = checkpoint::find(root, want).map_err(TrainError::Checkpoint)?;
        for (dir, why) in &found.skipped {
            // A damaged checkpoint never holds a retention slot: it leaves the namespace (kept
            // for inspection).
            let moved = checkpoint::set_aside(root, dir, DAMAGED)?;
            log.note(format!("skipped damaged checkpoint ({why}); moved to {}", moved.display()));
            log.event(1, Event::CheckpointSkipped { message: why.clone(), moved_to: moved.display().to_string() });
        }
        let Some(ck) = found.checkpoint else { return self.start_over(log).map(|()| None) };
        let st = ck.state.clone();
        let old_recipe = ck
            .file(CKPT_RECIPE)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| oomph_recipe::parse(t, "checkpoint", &ck.dir, &[]).ok());
        check_fits(expect, &st, old_recipe.as_ref(), &ck.dir)?;
        if let Some(old) = &old_recipe {
            for c in oomph_recipe::diff(old, expect.recipe).into_iter().filter(|c| c.resumable) {
                log.note(format!("changed on resume: {} {} -> {}", c.key, c.old, c.new));
            }
        }
        let old_total =
            st.total_steps.or_else(|| old_recipe.as_ref().map(|r| crate::trainer::total_steps(r, expect.train_len)));
        if let Some(line) = old_total.and_then(|old| schedule_change(expect.recipe, old, expect.total, st.step)) {
            log.note(line);
        }
        let rec = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
        let bad = |what: &str, e: String| {
            TrainError::Checkpoint(format!("{}: {what} cannot be loaded: {e}", ck.dir.display()))
        };
        let model_bytes = ck.file(CKPT_MODEL).ok_or_else(|| bad(CKPT_MODEL, "missing".into()))?.to_vec();
        let record = rec.load(model_bytes, device).map_err(|e| bad(CKPT_MODEL, e.to_string()))?;
        let model = net.model().clone().load_record(record);
        let optim_bytes = ck.file(CKPT_OPTIM).ok_or_else(|| bad(CKPT_OPTIM, "missing".into()))?.to_vec();
        let optim = net.optim().clone().load_bytes(optim_bytes, device).map_err(|e| bad(CKPT_OPTIM, e.to_string()))?;
        net.restore(model, optim);
        // One linear history: checkpoints later than the one resumed belong to an abandoned
        // future. They leave the `step-N` namespace (kept under `abandoned/`), so retention,
        // `--resume auto` and the final weights never pick them up.
        let abandoned = checkpoint::abandon_after(root, st.step)?;
        if !abandoned.is_empty() {
            let names: Vec<String> = abandoned.iter().map(|s| checkpoint::dir_name(*s)).collect();
            log.note(format!(
                "resuming from step {} abandons the later checkpoints {}: moved to {}",
                st.step,
                names.join(", "),
                root.join(ABANDONED).display()
            ));
            log.event(st.step, Event::Abandoned { steps: abandoned });
        }
        let eval_batch_changed =
            old_recipe.as_ref().is_some_and(|r| r.training.eval_batch != expect.recipe.training.eval_batch);
        Ok(Some(Loaded { state: st, dir: ck.dir.clone(), eval_batch_changed }))
    }

    /// No checkpoint to resume from: checkpoints of an earlier history (a library caller's
    /// `Resume::Never`) leave the namespace.
    fn start_over(&self, log: &mut RunLog) -> Result<(), TrainError> {
        let root = self.root();
        let abandoned = checkpoint::abandon_after(root, 0)?;
        if !abandoned.is_empty() {
            log.note(format!(
                "starting over abandons the existing checkpoints (steps {abandoned:?}): moved to {}",
                root.join(ABANDONED).display()
            ));
        }
        Ok(())
    }
}

/// Refuses a checkpoint whose training-relevant recipe fields, data or run length differ.
fn check_fits(expect: &Expect, st: &TrainState, old_recipe: Option<&Recipe>, dir: &Path) -> Result<(), TrainError> {
    let (origin, run_dir) = (expect.origin, expect.run_dir.display());
    if st.recipe_fingerprint != oomph_recipe::fingerprint(expect.recipe) {
        let listed = old_recipe
            .map(|old| {
                oomph_recipe::diff(old, expect.recipe)
                    .iter()
                    .filter(|c| !c.resumable)
                    .map(|c| format!("{}: {} -> {}", c.key, c.old, c.new))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "model, data, optimizer, lr_schedule, effective_batch or seed".into());
        return Err(TrainError::BadInput(format!(
            "{origin}: cannot resume the run in {run_dir} with this recipe: training-relevant fields differ from the \
             checkpoint's ({listed}). Fix: restore those values to continue the run, or train into a new --run-dir \
             (or --resume never --overwrite) to start over."
        )));
    }
    if let Some(old) = &st.data {
        let diffs = old.differences(expect.identity);
        if !diffs.is_empty() {
            return Err(TrainError::BadInput(format!(
                "{origin}: cannot resume the run in {run_dir}: its checkpoint (step {}) was trained on other data \
                 ({}). Resuming would train the saved weights on data they were not built for. Fix: point data.path \
                 back at the data the run was trained on, or train into a new --run-dir (or --resume never \
                 --overwrite) to start over on this data.",
                st.step,
                diffs.join("; ")
            )));
        }
    }
    if expect.total < st.step {
        return Err(TrainError::BadInput(format!(
            "{origin}: the run length ({} steps) is below the checkpoint's step {} in {}: the run has already gone \
             further. Fix: set training.steps to at least {} (or training.epochs to match), or resume from an \
             earlier checkpoint with --resume STEP.",
            expect.total,
            st.step,
            dir.display(),
            st.step
        )));
    }
    Ok(())
}

/// What a changed run length does to the learning-rate schedule, in one line (`None` when
/// the length did not change).
fn schedule_change(r: &Recipe, old_total: usize, total: usize, at: usize) -> Option<String> {
    if old_total == total {
        return None;
    }
    let sched = &r.lr_schedule;
    let next = at + 1;
    let (was, now) = (lr_at(next, old_total, r.optimizer.lr, sched), lr_at(next, total, r.optimizer.lr, sched));
    Some(if sched.kind == oomph_recipe::ScheduleKind::Constant {
        format!(
            "run length {old_total} -> {total} steps: the learning rate is constant{}, so the schedule is unchanged",
            if sched.warmup_steps > 0 { " after its warmup" } else { "" }
        )
    } else {
        format!(
            "run length {old_total} -> {total} steps: the {} schedule now decays over {total} steps instead of \
             {old_total}; from step {next} the learning rate follows the new schedule ({was:.4e} -> {now:.4e} at \
             step {next})",
            sched.kind
        )
    })
}
