//! What a run carries across processes and reports at its end: the counters ([`Tally`]),
//! resuming from a checkpoint (and what a supervisor asked for after a worker's death), the
//! state a checkpoint records, the step's metrics line and the final summary. The loop in
//! `trainer.rs` calls these; none of them decides anything.

use super::Run;
use crate::checkpoint::TrainState;
use crate::error::TrainError;
use crate::export::save_safetensors;
use crate::objective::Objective;
use crate::resume::{Expect, Loaded};
use crate::session::policy_config;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use oomph_data::Sampler;
use oomph_rundir::events::EvalShrinkReason;
use oomph_rundir::{Event, RunDir, StepRecord, Summary};
use oomph_sched::Policy;
use std::time::Instant;

/// The run's counters, carried across restarts in the checkpoint's state.
#[derive(Debug, Clone, Default)]
pub(super) struct Tally {
    pub(super) samples_seen: u64,
    pub(super) last_loss: Option<f64>,
    pub(super) oom_events: usize,
    pub(super) recovery_s: f64,
    pub(super) resumes: usize,
    /// Steps skipped because their loss or gradient norm was not finite, in total and in a row.
    pub(super) nonfinite_steps: usize,
    pub(super) nonfinite_run: usize,
}

/// One completed step, as its metrics line records it.
pub(super) struct Completed<'p> {
    pub(super) step: usize,
    pub(super) loss: f64,
    pub(super) lr: f64,
    pub(super) plan: &'p [usize],
    /// When the step's first attempt started.
    pub(super) started: Instant,
    pub(super) grad_norm: Option<f64>,
    /// Completed without an update (non-finite).
    pub(super) skipped: bool,
}

impl<B, M> Run<'_, B, M>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Objective<B> + 'static,
    M::InnerModule: Objective<B::InnerBackend>,
{
    /// Resumes from the checkpoint the session asks for, or starts over; then applies what a
    /// supervisor asked for after a worker's death.
    pub(super) fn resume(&mut self) -> Result<(), TrainError> {
        let identity = self.data.identity();
        let expect = Expect {
            recipe: &self.s.recipe,
            origin: &self.s.origin,
            run_dir: &self.s.run_dir,
            identity: &identity,
            train_len: self.data.train_len(),
            total: self.total,
        };
        let loaded = self.ckpt.load(self.s.resume, &expect, &mut self.net, &self.s.device, &mut self.log)?;
        let step = loaded.as_ref().map_or(0, |l| l.state.step);
        // Lines a dead worker left after the checkpoint are dropped: those steps run again.
        self.last_eval = self.log.truncate(step)?;
        if let Some(Loaded { state: st, dir, eval_batch_changed }) = loaded {
            let mut policy = st.policy.clone();
            let shard = |ranks: usize| self.s.recipe.training.effective_batch.div_ceil(ranks.max(1));
            let (was, now) = (shard(st.ranks), shard(self.s.recipe.distributed.ranks));
            if was != now && policy.limit >= was {
                // Another number of ranks: a limit that was the old shard, not a memory bound,
                // becomes the new shard (below any ceiling memory set).
                policy.limit = usize::MAX;
                policy.growing_from = None;
            }
            self.policy = Policy::from_state(policy_config(&self.s.recipe), policy);
            self.sampler = Sampler::with_cursor(self.data.train_len(), st.seed, true, st.cursor);
            self.step = st.step;
            // The evaluation batch learned by the run (lowered after OOMs) holds unless the
            // recipe now asks for another one.
            self.eval_batch = match (eval_batch_changed, self.s.recipe.training.eval_batch) {
                (true, Some(b)) => b,
                (true, None) => self.policy.limit(),
                (false, _) => st.eval_batch,
            }
            .max(1);
            self.tally = Tally {
                samples_seen: st.samples_seen,
                last_loss: st.last_loss,
                oom_events: st.oom_events,
                recovery_s: st.recovery_s,
                resumes: st.resumes + 1,
                nonfinite_steps: st.nonfinite_steps,
                nonfinite_run: st.nonfinite_run,
            };
            self.log.resume_wall(st.wall_s);
            let checkpoint = dir.display().to_string();
            self.log.event(st.step, Event::Resume { from_step: st.step, checkpoint, micro_batch: self.policy.limit() });
            self.log.note(format!("resuming from {} (step {}/{})", dir.display(), st.step, self.total));
        }
        self.lower_after_death();
        self.write_position();
        Ok(())
    }

    /// Applies what the death of a previous worker (or gang) asks: a lower ceiling of the
    /// micro-batch, a smaller evaluation batch.
    pub(super) fn lower_after_death(&mut self) {
        if let Some(m) = self.s.lower_ceiling {
            let evs = self.policy.lower_ceiling(m);
            self.log.policy_events(self.step + 1, evs);
        }
        if let Some(e) = self.s.lower_eval {
            let to = oomph_sched::eval_batch_below(e);
            if to < self.eval_batch {
                let event = Event::EvalShrink { from: self.eval_batch, to, reason: EvalShrinkReason::WorkerDied };
                self.log.event(self.step + 1, event);
                self.eval_batch = to;
            }
        }
    }

    /// The start-up banner.
    pub(super) fn banner(&mut self) {
        let lines =
            self.s.banner_lines(&self.policy, &self.data.info, self.parameters, self.total, self.step, &self.faults);
        self.log.start(self.step, self.total, lines);
    }

    /// The state a checkpoint written now carries.
    pub(super) fn state(&self, reason: &str) -> TrainState {
        let t = &self.tally;
        TrainState {
            step: self.step,
            samples_seen: t.samples_seen,
            cursor: self.sampler.cursor(),
            policy: self.policy.state().clone(),
            eval_batch: self.eval_batch,
            seed: self.s.recipe.run.seed,
            recipe_fingerprint: oomph_recipe::fingerprint(&self.s.recipe),
            last_loss: t.last_loss,
            oom_events: t.oom_events,
            recovery_s: t.recovery_s,
            wall_s: self.log.wall(),
            restarts: self.s.restarts,
            resumes: t.resumes,
            reason: reason.into(),
            data: Some(self.data.identity()),
            total_steps: Some(self.total),
            nonfinite_steps: t.nonfinite_steps,
            nonfinite_run: t.nonfinite_run,
            ranks: self.s.recipe.distributed.ranks,
        }
    }

    /// The metrics line of a completed step, with the device memory read after it.
    pub(super) fn step_record(&self, c: &Completed, mem: Option<crate::backend::MemoryStats>) -> StepRecord {
        let n = self.s.recipe.training.effective_batch;
        StepRecord {
            step: c.step,
            samples_seen: self.tally.samples_seen,
            loss: c.loss,
            lr: c.lr,
            micro_batch: c.plan[0],
            chunks: c.plan.len(),
            samples_per_sec: n as f64 / c.started.elapsed().as_secs_f64().max(1e-9),
            wall_s: self.log.wall(),
            oom_events: self.tally.oom_events,
            grad_norm: c.grad_norm,
            skipped: c.skipped,
            mem_used: mem.map(|m| m.in_use),
            mem_reserved: mem.map(|m| m.reserved),
            mem_total: mem.map(|m| m.capacity),
        }
    }

    /// Writes the final weights and `summary.json`.
    pub(super) fn finish(&mut self) -> Result<Summary, TrainError> {
        self.log.flush()?;
        self.settle_writer()?;
        let model_path = RunDir::new(&self.s.run_dir).model();
        if self.leader() {
            save_safetensors::<B, M>(self.net.model(), &model_path)?;
        }
        let ev = self.last_eval.clone();
        let t = &self.tally;
        let summary = Summary {
            name: self.s.recipe.run.name.clone(),
            steps: self.step,
            samples_seen: t.samples_seen,
            effective_batch: self.s.recipe.training.effective_batch,
            train_loss: t.last_loss,
            valid_loss: ev.as_ref().map(|e| e.valid_loss),
            valid_accuracy: ev.as_ref().and_then(|e| e.metrics.get("accuracy").copied()),
            valid_metrics: ev.map(|e| e.metrics).unwrap_or_default(),
            wall_s: self.log.wall(),
            oom_events: t.oom_events,
            micro_batch_final: self.policy.limit(),
            micro_batch_history: self.policy.state().history.clone(),
            recovery_s: t.recovery_s,
            restarts: self.log.restarts_in_run().max(self.s.restarts),
            resumes: t.resumes,
            parameters: self.parameters,
            model_path: model_path.display().to_string(),
            checkpoint_stall_s: self.ckpt.stall_s(),
            nonfinite_steps: t.nonfinite_steps,
            ranks: Some(self.s.recipe.distributed.ranks),
        };
        self.log.finish(&summary)?;
        Ok(summary)
    }
}
