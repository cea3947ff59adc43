//! The training loop: a page that reads top to bottom. Each concern is a component: the
//! [`Checkpointer`] (cadence, background writes, retention, restore and its checks), the
//! [`RunLog`] (metrics, events, `current.json`, summary, console), the step
//! ([`Trainable::attempt`]: accumulation and the update, returning a typed outcome) and
//! evaluation ([`attempt_eval`]). After an out-of-memory the loop asks `oomph_sched` what to
//! do and carries it out.
//!
//! **Invariant:** no optimizer update is applied to a partial or failed gradient: after an OOM
//! the same effective batch is retried from its first chunk (`tests/it/recovery.rs`).

use crate::checkpointer::Checkpointer;
use crate::error::TrainError;
use crate::evaluation::attempt_eval;
use crate::faults::{phase_name, Faults};
use crate::feed::{Data, ModelFeeds};
use crate::objective::Objective;
use crate::optim::{lr_at, Optim};
use crate::recovery::cleanup;
pub use crate::resume::Resume;
use crate::runlog::{position, worker_phase, RunLog};
pub use crate::session::{check_data_fits, policy_config, total_steps, Session};
use crate::signals;
pub use crate::step::step_seed;
use crate::step::{GradCheck, Outcome, StepInput, Trainable};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use oomph_data::Sampler;
use oomph_recipe::{MicroInitial, Phase};
use oomph_rundir::events::EvalShrinkReason;
use oomph_rundir::{EvalRecord, Summary};
use oomph_rundir::{Event, RunDir};
use oomph_sched::decide::{Decision, OomContext, OomPhase};
use oomph_sched::{MemoryHint, Policy};
use std::sync::atomic::Ordering;
use std::time::Instant;

mod ranks;
mod state;

use state::{Completed, Tally};

/// One run of the loop, generic over backend and model.
struct Run<'a, B, M>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Objective<B>,
    M::InnerModule: Objective<B::InnerBackend>,
{
    s: Session<B>,
    data: &'a Data<B>,
    feeds: &'a ModelFeeds<B, M>,
    net: Trainable<B, M>,
    policy: Policy,
    sampler: Sampler,
    faults: Faults,
    log: RunLog,
    /// This rank's end of the gang when several ranks train (`[distributed]`).
    link: Option<crate::gang::Link<B::InnerBackend>>,
    ckpt: Checkpointer,
    /// The main thread's phase, as written to `current.json`.
    phase: Phase,
    step: usize,
    total: usize,
    eval_batch: usize,
    last_eval: Option<EvalRecord>,
    tally: Tally,
    parameters: usize,
}

/// Trains a model built by `init` on `data` according to `session`; returns the summary
/// (also written to `summary.json`). The data must give the model's batch type.
pub fn train<B, M>(
    session: Session<B>,
    data: &Data<B>,
    init: impl FnOnce(&B::Device) -> M,
) -> Result<Summary, TrainError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Objective<B> + 'static,
    M::InnerModule: Objective<B::InnerBackend>,
{
    let recipe = session.recipe.clone();
    let feeds = crate::feed::feeds_for::<B, M>(data, &recipe, &session.origin)?;
    let run_dir = session.run_dir.clone();
    std::fs::create_dir_all(&run_dir).map_err(|e| {
        TrainError::BadInput(format!(
            "cannot create the run directory {}: {e}. Fix: pick a writable --run-dir.",
            run_dir.display()
        ))
    })?;
    check_data_fits(&recipe, &session.origin, data)?;
    // One writer of the run directory: rank 0 of a launch's processes.
    if session.process.as_ref().is_none_or(|p| p.rank == 0) {
        let resolved = RunDir::new(&run_dir).recipe();
        std::fs::write(&resolved, oomph_recipe::to_toml_string(&recipe))
            .map_err(|e| TrainError::io("writing", &resolved, &e))?;
    }
    B::seed(&session.device, recipe.run.seed);
    let model = init(&session.device);
    if session.process.is_some() {
        return ranks::train_process(session, data, feeds, model);
    }
    if recipe.distributed.ranks > 1 {
        return ranks::train_ranks(session, data, feeds, model);
    }
    let mut run = Run::open(session, data, feeds, model, None)?;
    run.resume()?;
    run.banner();
    // Lifted again when `train` returns, whatever the outcome.
    let _limit = run.faults.limit_address_space()?;
    signals::install();
    run.go()
}

impl<'a, B, M> Run<'a, B, M>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Objective<B> + 'static,
    M::InnerModule: Objective<B::InnerBackend>,
{
    /// A run of `model` in `session`, before it resumes; `link` makes it one rank of several
    /// (a rank other than 0 writes nothing to the run directory).
    fn open(
        mut session: Session<B>,
        data: &'a Data<B>,
        feeds: &'a ModelFeeds<B, M>,
        model: M,
        link: Option<crate::gang::Link<B::InnerBackend>>,
    ) -> Result<Self, TrainError> {
        let recipe = &session.recipe;
        let run_dir = session.run_dir.clone();
        let rank = link.as_ref().map_or(0, |l| l.rank());
        let parameters = model.num_params();
        let policy = Policy::new(policy_config(recipe));
        let total = total_steps(recipe, data.train_len());
        let observer = std::mem::replace(&mut session.observer, Box::new(crate::progress::Silent));
        let log = if rank == 0 {
            RunLog::open(&run_dir, observer, std::mem::take(&mut session.banner))?
        } else {
            RunLog::follower(&run_dir)
        };
        Ok(Run {
            data,
            feeds,
            net: Trainable::new(model, Optim::new(&recipe.optimizer), session.first_update_in_place),
            sampler: Sampler::new(data.train_len(), recipe.run.seed, true),
            faults: Faults::for_run(recipe.faults.for_rank(rank), &run_dir),
            log,
            link,
            ckpt: Checkpointer::new(&run_dir, &recipe.checkpoint),
            phase: Phase::Forward,
            step: 0,
            total,
            eval_batch: recipe.training.eval_batch.unwrap_or(policy.limit()).max(1),
            policy,
            last_eval: None,
            tally: Tally::default(),
            parameters,
            s: session,
        })
    }

    /// Runs the loop to its end, then waits for the checkpoint in flight.
    fn go(&mut self) -> Result<Summary, TrainError> {
        let result = self.run_loop();
        let written = self.settle_writer();
        // The loop is over (settling the writer wrote a position of its own).
        crate::alloc::set_thread_position(None);
        // The supervisor reads `current.json` after a memory death; after anything else no
        // worker runs any more.
        // Neither after a memory death, nor (rank 0 of a launch) after another rank's failure:
        // the launch's restart reads where the gang was.
        let launched = self.s.process.is_some() && self.leader();
        let keep = |e: &TrainError| {
            matches!(e, TrainError::MemoryDeath { .. }) || (launched && matches!(e, TrainError::Gang(_)))
        };
        if matches!(&result, Err(e) if !keep(e)) {
            self.log.clear_position();
        }
        let summary = result?;
        written?;
        Ok(summary)
    }

    /// Whether this run writes the run directory: the only rank, or rank 0 of several.
    fn leader(&self) -> bool {
        self.link.as_ref().is_none_or(|l| l.rank() == 0)
    }
}

impl<B, M> Run<'_, B, M>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Objective<B> + 'static,
    M::InnerModule: Objective<B::InnerBackend>,
{
    fn run_loop(&mut self) -> Result<Summary, TrainError> {
        let eval_every = self.s.recipe.training.eval_every;
        self.check_ranks_agree()?;
        while self.step < self.total {
            let stop = match &self.link {
                None => self.stop_wanted(),
                Some(l) => l.stop_agreed(),
            };
            if stop {
                self.checkpoint("signal")?;
                self.settle_writer()?;
                return Err(TrainError::Interrupted { step: self.step });
            }
            if self.ckpt.finished() {
                self.settle_writer()?;
            }
            let had_oom = self.train_step()?;
            if eval_every > 0 && self.step.is_multiple_of(eval_every) && self.step < self.total {
                self.evaluate()?;
            }
            if let Some(reason) = self.ckpt.due(self.step, had_oom).filter(|_| self.step < self.total) {
                self.checkpoint(reason)?;
            }
            let every = self.s.recipe.distributed.check_every;
            if every > 0 && self.step.is_multiple_of(every) {
                self.check_ranks_agree()?;
            }
        }
        if self.last_eval.as_ref().is_none_or(|e| e.step != self.step) && self.data.valid_len() > 0 {
            self.evaluate()?;
        }
        if !self.checkpoint("final")? {
            return Err(TrainError::final_weights_not_finite(self.step));
        }
        self.finish()
    }

    /// Runs one optimizer step, retrying the same effective batch after OOMs as `sched`
    /// decides. Returns whether an OOM happened.
    fn train_step(&mut self) -> Result<bool, TrainError> {
        let step = self.step + 1;
        let r = &self.s.recipe;
        let all = self.sampler.next_batch(r.training.effective_batch);
        let indices = match &self.link {
            Some(l) => crate::gang::shard(&all, l.rank(), l.world()),
            None => &all[..],
        };
        let (lr, clip, seed) =
            (lr_at(step, self.total, r.optimizer.lr, &r.lr_schedule), r.optimizer.grad_clip_norm, r.run.seed);
        let t0 = Instant::now();
        let mut had_oom = false;
        let mut optimizer_ooms = 0;
        loop {
            let plan = oomph_sched::plan_chunks(indices.len(), self.policy.limit());
            let t_attempt = Instant::now();
            let input = StepInput { step, indices, all: &all, plan: &plan, lr, clip, seed };
            let stop = self.link.is_some() && self.stop_wanted();
            let outcome = {
                let Run { net, feeds, s, faults, log, policy, eval_batch, parameters, ckpt, phase: now, link, .. } =
                    self;
                let mut enter = |phase: Phase| {
                    *now = phase;
                    log.position(&position(phase, step - 1, policy, *eval_batch, *parameters, ckpt.writing()))
                };
                match link {
                    None => net.attempt(&*feeds.train, input, &s.device, faults, &mut enter),
                    Some(link) => net.attempt_ranked(&*feeds.train, input, &s.device, faults, &mut enter, link, stop),
                }
            };
            match outcome {
                Outcome::Updated { loss, grad_norm } => {
                    let done = Completed { step, loss, lr, plan: &plan, started: t0, grad_norm, skipped: false };
                    self.finish_step(&done, had_oom)?;
                    return Ok(had_oom);
                }
                Outcome::NonFinite { loss, check } => {
                    let grad_norm = check.norm.filter(|n| n.is_finite());
                    let done = Completed { step, loss, lr, plan: &plan, started: t0, grad_norm, skipped: true };
                    self.skip_step(&done, check, had_oom)?;
                    return Ok(had_oom);
                }
                Outcome::Failed(e) => return Err(e),
                Outcome::Oom { phase, message, consumed } => {
                    had_oom = true;
                    if phase == Phase::Optimizer {
                        optimizer_ooms += 1;
                    }
                    // The policy's own size (the largest shard's chunk), the same on every rank.
                    let micro = self.policy.plan()[0];
                    if let Decision::RetryStep { events, .. } =
                        self.on_oom(phase, micro, message, consumed, optimizer_ooms)?
                    {
                        self.log.policy_events(step, events);
                        self.write_position();
                    }
                    self.tally.recovery_s += t_attempt.elapsed().as_secs_f64();
                }
            }
        }
    }

    /// After an out-of-memory: cleans up (unless an in-place update consumed the handles),
    /// records it, probes the backend and asks `sched`. Carries out the decisions that end the
    /// worker or the run; returns the others (retry the step, retry the update, shrink the
    /// evaluation batch) for the caller to carry out.
    fn on_oom(
        &mut self,
        at_phase: Phase,
        micro: usize,
        error: String,
        in_place: bool,
        optimizer_ooms: usize,
    ) -> Result<Decision, TrainError> {
        let (step, phase) = worker_phase(at_phase, self.step);
        // The event belongs to the step in progress whatever the phase.
        let at = self.step + 1;
        let size = if phase == OomPhase::Eval { self.eval_batch } else { micro };
        if !in_place {
            cleanup::<B>(&self.s.device);
            if let Some(release) = &self.s.release {
                release();
            }
            crate::alloc::survived();
        }
        self.tally.oom_events += 1;
        let oom = Event::Oom { phase: phase_name(at_phase).into(), micro_batch: size, message: error.clone() };
        self.log.event(at, oom);
        let mut backend_usable = in_place || crate::recovery::probe::<B>(&self.s.device);
        let mut hint = self
            .s
            .memory
            .as_ref()
            .and_then(|probe| probe())
            .map(|m| MemoryHint { capacity_bytes: Some(m.capacity), ..Default::default() });
        if let Some(link) = &mut self.link {
            // One decision for every rank: usable only if every rank's backend is, and no
            // memory model (each rank's device has its own).
            let rows = link.agree(&[f64::from(u8::from(backend_usable))])?;
            backend_usable = rows.iter().all(|r| r[0] != 0.0);
            hint = None;
        }
        let ctx = OomContext {
            phase,
            step,
            micro,
            eval_batch: self.eval_batch,
            optimizer_ooms,
            in_place,
            backend_usable,
            parameters: self.parameters,
            hint,
            error,
        };
        match self.policy.decide(&ctx) {
            Decision::RestartWorker { message, .. } => Err(TrainError::MemoryDeath { micro, message }),
            Decision::GiveUp(g) => {
                let msg = g.to_string();
                let (phase, micro_batch) = match phase {
                    OomPhase::Train => (None, Some(micro)),
                    p => (Some(p.as_str().to_string()), None),
                };
                self.log.event(at, Event::GiveUp { phase, micro_batch, message: msg.clone() });
                Err(TrainError::DoesNotFit(msg))
            }
            d => Ok(d),
        }
    }

    /// A step whose loss or gradient norm is not finite: no update; recorded as a skipped step
    /// (its samples count as consumed, so resuming and the sampler stay in step); after
    /// `training.max_nonfinite_steps` in a row the run stops.
    fn skip_step(&mut self, done: &Completed, check: GradCheck, had_oom: bool) -> Result<(), TrainError> {
        let (step, loss, lr) = (done.step, done.loss, done.lr);
        self.tally.nonfinite_steps += 1;
        self.tally.nonfinite_run += 1;
        self.finish_step(done, had_oom)?;
        let in_a_row = self.tally.nonfinite_run;
        let event = Event::NonfiniteStep {
            loss: loss.to_string(),
            gradients_finite: check.finite,
            grad_norm: check.norm.map(|n| n.to_string()),
            lr,
            in_a_row,
        };
        self.log.event(step, event);
        let limit = self.s.recipe.training.max_nonfinite_steps;
        if in_a_row < limit {
            return Ok(());
        }
        self.log.flush()?;
        self.settle_writer()?;
        let msg = TrainError::diverged_message(in_a_row, limit, step, loss, lr, self.ckpt.newest());
        self.log.event(step, Event::Diverged { message: msg.clone() });
        Err(TrainError::Diverged(msg))
    }

    /// Records a completed step (`skipped`: completed without an update, as non-finite).
    fn finish_step(&mut self, done: &Completed, had_oom: bool) -> Result<(), TrainError> {
        let (step, plan) = (done.step, done.plan);
        let n = self.s.recipe.training.effective_batch;
        self.step = step;
        self.tally.samples_seen += n as u64;
        if !done.skipped {
            self.tally.last_loss = Some(done.loss);
            self.tally.nonfinite_run = 0;
        }
        // Any allocation failure noted during this step was survived.
        crate::alloc::survived();
        let evs = self.policy.on_step_ok();
        let mem = self.s.memory.as_ref().and_then(|probe| probe());
        if let (Some(m), None) = (mem, &self.link) {
            self.policy.observe_memory(plan[0], m.reserved, m.capacity);
        }
        let rec = self.step_record(done, mem);
        self.log.step(&rec, self.total)?;
        if step == 1 && self.s.recipe.micro_batch.initial == MicroInitial::Auto {
            let event = Event::AutoSettled { micro_batch: plan[0], chunks: plan.len(), ooms: self.tally.oom_events };
            self.log.event(step, event);
        }
        if !evs.is_empty() || had_oom {
            self.log.policy_events(step + 1, evs);
            self.write_position();
        }
        Ok(())
    }

    /// Evaluates on the validation split; after an out-of-memory, evaluation runs again at the
    /// size `sched` decides.
    fn evaluate(&mut self) -> Result<(), TrainError> {
        let src = &*self.feeds.valid;
        let len = src.eval_indices().len();
        if len == 0 {
            return Ok(());
        }
        loop {
            self.eval_batch = self.eval_batch.min(len).max(1);
            let eb = self.eval_batch;
            self.enter(Phase::Eval);
            let t = Instant::now();
            let mut out = attempt_eval::<B, M>(self.net.model(), src, eb, &self.s.device, self.step, &mut self.faults);
            if let Some(link) = &mut self.link {
                // Every rank evaluates the whole split (the same model, the same numbers); an
                // out-of-memory on any rank shrinks every rank's evaluation batch.
                // Data faults and other failures end this rank (the board stops the others).
                if let Err(crate::recovery::Failure::Data { message }) = &out {
                    return Err(TrainError::BadInput(format!(
                        "the validation data cannot be served after step {}: {message}",
                        self.step
                    )));
                }
                if let Err(crate::recovery::Failure::Other { message }) = &out {
                    return Err(TrainError::Failed(format!(
                        "evaluation after step {} failed with an error that is not an out-of-memory: {message}",
                        self.step
                    )));
                }
                let oom = matches!(out, Err(crate::recovery::Failure::Oom { .. }));
                let rows = link.agree(&[f64::from(u8::from(oom))])?;
                if let (false, Some(r)) = (oom, rows.iter().position(|r| r[0] != 0.0)) {
                    let message = format!("rank {r} ran out of memory in evaluation (evaluation batch {eb})");
                    out = Err(crate::recovery::Failure::Oom { message });
                }
            }
            match out {
                Ok((valid_loss, metrics)) => {
                    let rec = EvalRecord {
                        step: self.step,
                        samples_seen: self.tally.samples_seen,
                        valid_loss,
                        metrics,
                        eval_batch: eb,
                        wall_s: self.log.wall(),
                    };
                    self.log.eval(&rec)?;
                    self.last_eval = Some(rec);
                    return Ok(());
                }
                Err(crate::recovery::Failure::Data { message }) => {
                    return Err(TrainError::BadInput(format!(
                        "the validation data cannot be served after step {}: {message}",
                        self.step
                    )))
                }
                Err(crate::recovery::Failure::Other { message }) => {
                    return Err(TrainError::Failed(format!(
                        "evaluation after step {} failed with an error that is not an out-of-memory: {message}",
                        self.step
                    )))
                }
                Err(crate::recovery::Failure::Oom { message }) => {
                    if let Decision::ShrinkEval { from, to } = self.on_oom(Phase::Eval, eb, message, false, 0)? {
                        self.log.event(self.step + 1, Event::EvalShrink { from, to, reason: EvalShrinkReason::Oom });
                        self.eval_batch = to;
                    }
                    self.tally.recovery_s += t.elapsed().as_secs_f64();
                }
            }
        }
    }

    /// Saves a checkpoint of the step just done (in the background; waits for the previous
    /// write first). Non-finite weights are refused with an event (returns `false`).
    fn checkpoint(&mut self, reason: &str) -> Result<bool, TrainError> {
        self.log.flush()?;
        self.settle_writer()?;
        self.enter(Phase::Checkpoint);
        if !self.leader() {
            // Rank 0 writes the checkpoints of every rank (they hold the same state).
            return Ok(true);
        }
        let state = self.state(reason);
        let recipe_text = oomph_recipe::to_toml_string(&self.s.recipe);
        let saved = self.ckpt.save::<B, M>(self.net.model(), self.net.optim(), state, recipe_text, &mut self.faults)?;
        if !saved {
            let msg = format!(
                "the weights after step {} are not finite; no checkpoint is written, so the newest one stays the \
                 last with finite weights",
                self.step
            );
            tracing::warn!("{msg}");
            self.log.event(self.step, Event::CheckpointRefused { reason: reason.into(), message: msg });
        }
        self.write_position();
        Ok(saved)
    }

    /// Waits for the checkpoint write in flight and records its completion.
    fn settle_writer(&mut self) -> Result<(), TrainError> {
        if !self.leader() {
            // No write of its own (and the process-wide checkpoint death note is rank 0's).
            return Ok(());
        }
        let waited = self.ckpt.wait();
        self.write_position();
        if let Some(w) = waited? {
            let event = Event::Checkpoint {
                reason: w.reason,
                path: w.dir.display().to_string(),
                write_s: crate::runlog::round_us(w.write_s),
                stall_s: crate::runlog::round_us(w.stall_s),
            };
            self.log.event(w.step, event);
        }
        Ok(())
    }

    /// Whether this process was asked to stop (a signal, or the session's flag).
    fn stop_wanted(&self) -> bool {
        signals::stop_requested() || self.s.stop.load(Ordering::SeqCst)
    }

    /// With several ranks: compares a checksum of every rank's parameters (they must be the
    /// same model).
    fn check_ranks_agree(&mut self) -> Result<(), TrainError> {
        match &mut self.link {
            Some(link) => link.check_same::<B, M>(self.net.model(), self.step),
            None => Ok(()),
        }
    }

    /// Enters `phase` (recorded in `current.json`).
    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.write_position();
    }

    fn write_position(&mut self) {
        let c = position(self.phase, self.step, &self.policy, self.eval_batch, self.parameters, self.ckpt.writing());
        self.log.position(&c);
    }
}
