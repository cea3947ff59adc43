//! The training loop: exact gradient accumulation over an adaptive micro-batch, in-process
//! OOM recovery, evaluation, checkpoints, and the run directory.
//!
//! **Invariant:** a step consumes exactly `effective_batch` samples; its gradient is the
//! gradient of `sum(loss_i) / sum(weight_i)` over all its chunks, whatever the split.
//! **Invariant:** no optimizer update is applied to a partial or failed gradient: after an OOM
//! the same effective batch is retried from its first chunk.

use crate::backend::MemoryProbe;
use crate::checkpoint::{self, Payload, TrainState};
use crate::current::{Current, CurrentFile};
use crate::error::TrainError;
use crate::faults::{phase_name, Faults};
use crate::objective::Objective;
use crate::optim::{clip_to, lr_at, params_finite, reduce_grads, Optim, Reduce};
use crate::progress::Observer;
use crate::random;
use crate::records::{EvalRecord, EventRecord, JsonLines, StepRecord, Summary};
use crate::recovery::{attempt, cleanup, Failure};
use crate::signals;
use burn::module::{AutodiffModule, Module};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use oomph_data::{Batch, Sampler, Source, Splits};
use oomph_recipe::{MicroInitial, Phase, Recipe};
use oomph_sched::{Event, MemoryHint, Policy, PolicyConfig};
use serde_json::{json, Map, Value};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// `metrics.jsonl` is flushed at most this often (and at every checkpoint, evaluation and
/// the end): lines after the newest checkpoint are re-run on resume anyway, and a flush per
/// step costs measurably on small models (BENCHMARKS.md, section 1).
const METRICS_FLUSH: std::time::Duration = std::time::Duration::from_millis(100);

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
}

impl<B: Backend> Session<B> {
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
        }
    }
}

/// Backend seed for step `step` of a run seeded with `seed` (SplitMix64 of both), so a
/// resumed or retried step draws exactly the same random numbers.
pub fn step_seed(seed: u64, step: usize) -> u64 {
    let mut z = seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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
pub fn check_data_fits(recipe: &Recipe, origin: &str, data: &Splits) -> Result<(), TrainError> {
    let n = recipe.training.effective_batch;
    let len = data.train.len();
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
    let n = recipe.training.effective_batch;
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

/// The background checkpoint write in flight, if any.
struct Writer {
    handle: Option<JoinHandle<Result<PathBuf, checkpoint::WriteError>>>,
    /// Step and reason of the write in flight, and the checkpoints directory.
    pending: Option<(usize, String, Instant, PathBuf)>,
}

/// A finished checkpoint write.
struct Written {
    step: usize,
    reason: String,
    dir: PathBuf,
    write_s: f64,
}

impl Writer {
    /// Waits for the write in flight; returns seconds stalled and what was written.
    fn wait(&mut self) -> Result<(f64, Option<Written>), TrainError> {
        let t = Instant::now();
        let Some(h) = self.handle.take() else { return Ok((0.0, None)) };
        let joined = h.join();
        let pending = self.pending.take();
        let dir = joined.map_err(|_| TrainError::Failed("the checkpoint writer thread panicked".into()))?.map_err(
            |e| {
                let (step, root) = pending.as_ref().map(|p| (p.0, p.3.clone())).unwrap_or_default();
                let intact = checkpoint::list(&root)
                    .first()
                    .map(|(s, d)| format!("the checkpoints before it are intact (newest: {}, step {s})", d.display()))
                    .unwrap_or_else(|| "no earlier checkpoint exists".into());
                TrainError::Failed(format!(
                    "writing the checkpoint of step {step} failed: {e}. The partial checkpoint was removed and {intact}. \
                     {}",
                    crate::error::io_fix(&e.source)
                ))
            },
        )?;
        let stalled = t.elapsed().as_secs_f64();
        let written = pending.map(|(step, reason, started, _)| Written {
            step,
            reason,
            dir,
            write_s: started.elapsed().as_secs_f64(),
        });
        Ok((stalled, written))
    }

    /// Whether the write in flight has finished (joining it then costs nothing).
    fn finished(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| h.is_finished())
    }
}

/// One run of the loop, generic over backend and model.
struct Run<'a, B: AutodiffBackend, M: AutodiffModule<B>> {
    s: Session<B>,
    data: &'a Splits,
    /// The model; `None` only while an in-place update runs.
    model: Option<M>,
    /// The optimizer; `None` only while an in-place update runs.
    optim: Option<Optim<M, B>>,
    /// Optimizer updates completed by this process.
    updates_done: usize,
    /// `current.json`, mapped.
    current: Option<CurrentFile>,
    /// The main thread's phase, as written to `current.json`.
    phase: Phase,
    policy: Policy,
    sampler: Sampler,
    faults: Faults,
    step: usize,
    total: usize,
    samples_seen: u64,
    eval_batch: usize,
    last_loss: Option<f64>,
    oom_events: usize,
    recovery_s: f64,
    wall_before: f64,
    resumes: usize,
    started: Instant,
    metrics: JsonLines,
    events: JsonLines,
    fingerprint: String,
    writer: Writer,
    last_eval: Option<EvalRecord>,
    checkpoint_stall_s: f64,
    /// Steps skipped because their loss or gradient norm was not finite, in total and in a row.
    nonfinite_steps: usize,
    nonfinite_run: usize,
    /// The model's parameter count.
    parameters: usize,
}

/// Trains a model built by `init` on `data` according to `session`; returns the summary
/// (also written to `summary.json`).
pub fn train<B, M>(
    session: Session<B>,
    data: &Splits,
    init: impl FnOnce(&B::Device) -> M,
) -> Result<Summary, TrainError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Objective<B> + 'static,
    M::InnerModule: Objective<B::InnerBackend>,
{
    let recipe = session.recipe.clone();
    let run_dir = session.run_dir.clone();
    std::fs::create_dir_all(&run_dir).map_err(|e| {
        TrainError::BadInput(format!(
            "cannot create the run directory {}: {e}. Fix: pick a writable --run-dir.",
            run_dir.display()
        ))
    })?;
    check_data_fits(&recipe, &session.origin, data)?;
    let resolved = run_dir.join("recipe.resolved.toml");
    std::fs::write(&resolved, oomph_recipe::to_toml_string(&recipe))
        .map_err(|e| TrainError::io("writing", &resolved, &e))?;
    B::seed(&session.device, recipe.run.seed);
    let model = init(&session.device);
    let parameters = model.num_params();
    let optim = Optim::new(&recipe.optimizer);
    let cfg = policy_config(&recipe);
    let policy = Policy::new(cfg.clone());
    let train_len = data.train.len();
    let total = total_steps(&recipe, train_len);
    let eval_batch = recipe.training.eval_batch.unwrap_or(policy.limit()).max(1);
    let mut run = Run {
        data,
        model: Some(model),
        optim: Some(optim),
        updates_done: 0,
        current: None,
        phase: Phase::Forward,
        policy,
        sampler: Sampler::new(train_len, recipe.run.seed, true),
        faults: Faults::for_run(recipe.faults.clone(), &run_dir),
        step: 0,
        total,
        samples_seen: 0,
        eval_batch,
        last_loss: None,
        oom_events: 0,
        recovery_s: 0.0,
        wall_before: 0.0,
        resumes: 0,
        started: Instant::now(),
        metrics: JsonLines::open_with(&run_dir.join("metrics.jsonl"), METRICS_FLUSH)?,
        events: JsonLines::open(&run_dir.join("events.jsonl"))?,
        fingerprint: oomph_recipe::fingerprint(&recipe),
        writer: Writer { handle: None, pending: None },
        last_eval: None,
        checkpoint_stall_s: 0.0,
        nonfinite_steps: 0,
        nonfinite_run: 0,
        parameters,
        s: session,
    };
    run.resume_if_any(cfg)?;
    run.banner();
    signals::install();
    let result = run.run_loop();
    let written = run.settle_writer();
    if let Err(e) = &result {
        // The supervisor reads `current.json` after a memory death; after anything else no
        // worker runs any more.
        if !matches!(e, TrainError::MemoryDeath { .. }) {
            drop(run.current.take());
            let _ = std::fs::remove_file(run_dir.join("current.json"));
        }
    }
    let summary = result?;
    written?;
    Ok(summary)
}

impl<B, M> Run<'_, B, M>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Objective<B> + 'static,
    M::InnerModule: Objective<B::InnerBackend>,
{
    fn model(&self) -> &M {
        self.model.as_ref().expect("the model is only taken during an update")
    }

    fn optim(&self) -> &Optim<M, B> {
        self.optim.as_ref().expect("the optimizer is only taken during an update")
    }

    fn wall(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Records an event of the step in progress.
    fn event(&mut self, kind: &str, fields: Value) {
        self.event_at(kind, self.step + 1, fields)
    }

    /// Records an event belonging to `step`.
    fn event_at(&mut self, kind: &str, step: usize, fields: Value) {
        let fields = match fields {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let rec = EventRecord { kind: kind.into(), step, wall_s: self.wall_before + self.wall(), fields };
        if let Err(e) = self.events.write(&rec) {
            tracing::warn!("could not write events.jsonl: {e}");
        }
        tracing::info!(kind, step = rec.step, "event");
        self.s.observer.event(&rec);
    }

    fn policy_events(&mut self, evs: Vec<Event>) {
        for e in evs {
            let mut v = serde_json::to_value(&e).unwrap_or(Value::Null);
            // The record carries the kind itself.
            if let Value::Object(m) = &mut v {
                m.remove("kind");
            }
            self.event(e.kind(), v);
        }
        self.write_current();
    }

    /// `current.json`: the step, phase and sizes in force, read by the supervisor after a
    /// worker died without a word (see [`crate::current`]).
    fn write_current(&mut self) {
        if self.current.is_none() {
            self.current = CurrentFile::open(&self.s.run_dir.join("current.json"));
        }
        let checkpoint_step = self.writer.pending.as_ref().map(|p| p.0);
        // Evaluation and checkpoints belong to the step just done; training to the next one.
        let (step, phase) = match self.phase {
            Phase::Forward | Phase::Backward => (self.step + 1, "train"),
            Phase::Optimizer => (self.step + 1, "optimizer"),
            Phase::Eval => (self.step, "eval"),
            Phase::Checkpoint => (self.step, "checkpoint"),
        };
        let c = Current {
            pid: std::process::id(),
            step,
            phase: phase.to_string(),
            micro_batch: self.policy.limit(),
            eval_batch: self.eval_batch,
            min_micro_batch: self.policy.bounds().0,
            parameters: self.parameters,
            checkpoint_step,
        };
        if let Some(f) = &mut self.current {
            f.write(&c);
        }
    }

    /// Enters `phase` (recorded in `current.json`).
    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.write_current();
    }

    fn ckpt_root(&self) -> PathBuf {
        self.s.run_dir.join("checkpoints")
    }

    fn resume_if_any(&mut self, cfg: PolicyConfig) -> Result<(), TrainError> {
        let want = match self.s.resume {
            Resume::Never => return self.start_fresh(),
            Resume::Auto => None,
            Resume::Step(s) => Some(s),
        };
        let root = self.ckpt_root();
        let found = checkpoint::find(&root, want).map_err(TrainError::Checkpoint)?;
        for (dir, why) in &found.skipped {
            // A damaged checkpoint never holds a retention slot: it leaves the namespace (kept
            // for inspection).
            let moved = checkpoint::set_aside(&root, dir, checkpoint::DAMAGED)
                .map_err(|e| TrainError::io(e.op, &e.path, &e.source))?;
            let line = format!("skipped damaged checkpoint ({why}); moved to {}", moved.display());
            tracing::info!("{line}");
            self.s.banner.push(line);
            self.event("checkpoint_skipped", json!({ "message": why, "moved_to": moved.display().to_string() }));
        }
        let Some(ck) = found.checkpoint else { return self.start_fresh() };
        let st = ck.state.clone();
        let old_recipe = ck
            .file("recipe.toml")
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| oomph_recipe::parse(t, "checkpoint", &ck.dir, &[]).ok());
        let changes = old_recipe.as_ref().map(|old| oomph_recipe::diff(old, &self.s.recipe));
        if st.recipe_fingerprint != self.fingerprint {
            let listed = changes
                .as_ref()
                .map(|c| {
                    c.iter()
                        .filter(|c| !c.resumable)
                        .map(|c| format!("{}: {} -> {}", c.key, c.old, c.new))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "model, data, optimizer, lr_schedule, effective_batch or seed".into());
            return Err(TrainError::BadInput(format!(
                "{}: cannot resume the run in {} with this recipe: training-relevant fields differ from the \
                 checkpoint's ({listed}). Fix: restore those values to continue the run, or train into a new \
                 --run-dir (or --resume never --overwrite) to start over.",
                self.s.origin,
                self.s.run_dir.display()
            )));
        }
        if let Some(old) = &st.data {
            let diffs = old.differences(&self.data.identity);
            if !diffs.is_empty() {
                return Err(TrainError::BadInput(format!(
                    "{}: cannot resume the run in {}: its checkpoint (step {}) was trained on other data ({}). \
                     Resuming would train the saved weights on data they were not built for. Fix: point data.path \
                     back at the data the run was trained on, or train into a new --run-dir (or --resume never \
                     --overwrite) to start over on this data.",
                    self.s.origin,
                    self.s.run_dir.display(),
                    st.step,
                    diffs.join("; ")
                )));
            }
        }
        if self.total < st.step {
            return Err(TrainError::BadInput(format!(
                "{}: the run length ({} steps) is below the checkpoint's step {} in {}: the run has already gone \
                 further. Fix: set training.steps to at least {} (or training.epochs to match), or resume from an \
                 earlier checkpoint with --resume STEP.",
                self.s.origin,
                self.total,
                st.step,
                ck.dir.display(),
                st.step
            )));
        }
        for c in changes.unwrap_or_default() {
            if c.resumable {
                let line = format!("changed on resume: {} {} -> {}", c.key, c.old, c.new);
                tracing::info!("{line}");
                self.s.banner.push(line);
            }
        }
        let old_total = st.total_steps.or_else(|| old_recipe.as_ref().map(|r| total_steps(r, self.data.train.len())));
        if let Some(line) = old_total.and_then(|old| self.schedule_change(old, st.step)) {
            tracing::info!("{line}");
            self.s.banner.push(line);
        }
        let rec = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
        let bad = |what: &str, e: String| {
            TrainError::Checkpoint(format!("{}: {what} cannot be loaded: {e}", ck.dir.display()))
        };
        let model_bytes = ck.file("model.mpk").ok_or_else(|| bad("model.mpk", "missing".into()))?.to_vec();
        let record = rec.load(model_bytes, &self.s.device).map_err(|e| bad("model.mpk", e.to_string()))?;
        self.model = Some(self.model().clone().load_record(record));
        let optim_bytes = ck.file("optim.mpk").ok_or_else(|| bad("optim.mpk", "missing".into()))?.to_vec();
        self.optim = Some(
            self.optim()
                .clone()
                .load_bytes(optim_bytes, &self.s.device)
                .map_err(|e| bad("optim.mpk", e.to_string()))?,
        );
        // One linear history: checkpoints later than the one resumed belong to an abandoned
        // future. They leave the `step-N` namespace (kept under `abandoned/`), so retention,
        // `--resume auto` and the final weights never pick them up.
        let abandoned =
            checkpoint::abandon_after(&root, st.step).map_err(|e| TrainError::io(e.op, &e.path, &e.source))?;
        if !abandoned.is_empty() {
            let names: Vec<String> = abandoned.iter().map(|s| checkpoint::dir_name(*s)).collect();
            let line = format!(
                "resuming from step {} abandons the later checkpoints {}: moved to {}",
                st.step,
                names.join(", "),
                root.join(checkpoint::ABANDONED).display()
            );
            tracing::info!("{line}");
            self.s.banner.push(line);
            self.event_at("abandoned", st.step, json!({ "steps": abandoned }));
        }
        self.policy = Policy::from_state(cfg, st.policy.clone());
        self.sampler = Sampler::with_cursor(self.data.train.len(), st.seed, true, st.cursor);
        self.step = st.step;
        self.samples_seen = st.samples_seen;
        // The evaluation batch learned by the run (lowered after OOMs) holds unless the recipe
        // now asks for another one.
        let eval_changed =
            old_recipe.as_ref().is_some_and(|r| r.training.eval_batch != self.s.recipe.training.eval_batch);
        self.eval_batch = match (eval_changed, self.s.recipe.training.eval_batch) {
            (true, Some(b)) => b,
            (true, None) => self.policy.limit(),
            (false, _) => st.eval_batch,
        }
        .max(1);
        self.last_loss = st.last_loss;
        self.oom_events = st.oom_events;
        self.recovery_s = st.recovery_s;
        self.wall_before = st.wall_s;
        self.resumes = st.resumes + 1;
        self.nonfinite_steps = st.nonfinite_steps;
        self.nonfinite_run = st.nonfinite_run;
        self.truncate_metrics(st.step)?;
        self.event_at("resume", st.step, json!({ "from_step": st.step, "checkpoint": ck.dir.display().to_string(), "micro_batch": self.policy.limit() }));
        self.s.banner.push(format!("resuming from {} (step {}/{})", ck.dir.display(), st.step, self.total));
        self.finish_resume()
    }

    /// What a changed run length does to the learning-rate schedule, in one line (`None` when
    /// the length did not change).
    fn schedule_change(&self, old_total: usize, at: usize) -> Option<String> {
        if old_total == self.total {
            return None;
        }
        let r = &self.s.recipe;
        let sched = &r.lr_schedule;
        let next = at + 1;
        let (was, now) =
            (lr_at(next, old_total, r.optimizer.lr, sched), lr_at(next, self.total, r.optimizer.lr, sched));
        Some(if sched.kind == "constant" {
            format!(
                "run length {old_total} -> {} steps: the learning rate is constant{}, so the schedule is unchanged",
                self.total,
                if sched.warmup_steps > 0 { " after its warmup" } else { "" }
            )
        } else {
            format!(
                "run length {old_total} -> {} steps: the {} schedule now decays over {} steps instead of {old_total}; \
                 from step {next} the learning rate follows the new schedule ({was:.4e} -> {now:.4e} at step {next})",
                self.total, sched.kind, self.total
            )
        })
    }

    /// No checkpoint to resume from: lines a dead worker left in `metrics.jsonl` before its
    /// first checkpoint are dropped, since every step is run again, and checkpoints of an
    /// earlier history (a library caller's `Resume::Never`) leave the namespace.
    fn start_fresh(&mut self) -> Result<(), TrainError> {
        let root = self.ckpt_root();
        let abandoned = checkpoint::abandon_after(&root, 0).map_err(|e| TrainError::io(e.op, &e.path, &e.source))?;
        if !abandoned.is_empty() {
            let line = format!(
                "starting over abandons the existing checkpoints (steps {abandoned:?}): moved to {}",
                root.join(checkpoint::ABANDONED).display()
            );
            tracing::info!("{line}");
            self.s.banner.push(line);
        }
        self.truncate_metrics(0)?;
        self.finish_resume()
    }

    fn finish_resume(&mut self) -> Result<(), TrainError> {
        if let Some(m) = self.s.lower_ceiling {
            let evs = self.policy.lower_ceiling(m);
            self.policy_events(evs);
        }
        if let Some(e) = self.s.lower_eval {
            let to = (e / 2).max(1);
            if to < self.eval_batch {
                let from = self.eval_batch;
                self.event("shrink", json!({ "from": from, "to": to, "reason": "worker_died", "scope": "eval" }));
                self.eval_batch = to;
            }
        }
        self.write_current();
        Ok(())
    }

    /// Keeps only the metric lines up to `step` (steps after it are re-run).
    fn truncate_metrics(&mut self, step: usize) -> Result<(), TrainError> {
        let path = self.metrics.path().to_path_buf();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(TrainError::io("reading", &path, &e)),
        };
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                    .is_some_and(|s| s as usize <= step)
            })
            .collect();
        // An evaluation already recorded at the step resumed from is not run again.
        self.last_eval = kept
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_str::<EvalRecord>(l).ok())
            .find(|e| e.kind == "eval" && e.step == step);
        let mut body = kept.join("\n");
        if !body.is_empty() {
            body.push('\n');
        }
        if body.len() == text.len() {
            return Ok(());
        }
        let tmp = path.with_extension("jsonl.tmp");
        let written = std::fs::write(&tmp, body)
            .map_err(|e| TrainError::io("writing", &tmp, &e))
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| TrainError::io("renaming into place", &tmp, &e)));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.metrics = JsonLines::open_with(&path, METRICS_FLUSH)?;
        Ok(())
    }

    fn banner(&mut self) {
        let r = &self.s.recipe;
        let n = r.training.effective_batch;
        let plan = self.policy.plan();
        let (min, max) = self.policy.bounds();
        let info = &self.data.info;
        let mut lines = vec![
            format!("oomph: {} ({})", r.run.name, self.s.origin),
            format!("backend {} | run dir {}", self.s.backend_name, self.s.run_dir.display()),
            format!("model {} | {} parameters", r.model.kind, fmt_count(self.parameters)),
            format!("data {}", info.description),
            format!(
                "effective {} = {} chunk{} x {}{} | micro-batch min {} max {} (initial {}) | {} steps",
                n,
                plan.len(),
                if plan.len() == 1 { "" } else { "s" },
                plan[0],
                if plan.iter().any(|&c| c != plan[0]) { format!(" (sizes {plan:?})") } else { String::new() },
                min,
                max,
                match r.micro_batch.initial {
                    MicroInitial::Auto => "auto".to_string(),
                    MicroInitial::Fixed(m) => m.to_string(),
                },
                self.total
            ),
        ];
        if r.micro_batch.initial == MicroInitial::Auto && self.step == 0 {
            lines.push(format!(
                "micro-batch auto: trying {} first, then the largest size that fits (OOM probing{})",
                plan[0],
                if self.s.memory.is_some() { " and the device's memory statistics" } else { "" }
            ));
        }
        if !self.faults.is_empty() {
            lines.push("SIMULATION: [faults] is set; injected OOMs are simulated, not real".into());
        }
        lines.append(&mut self.s.banner.clone());
        for l in &lines {
            tracing::info!("{l}");
        }
        self.s.observer.start(self.step, self.total, &lines);
    }

    fn run_loop(&mut self) -> Result<Summary, TrainError> {
        let every = self.s.recipe.checkpoint.every;
        let eval_every = self.s.recipe.training.eval_every;
        while self.step < self.total {
            if signals::stop_requested() || self.s.stop.load(Ordering::SeqCst) {
                self.checkpoint("signal")?;
                self.settle_writer()?;
                return Err(TrainError::Interrupted { step: self.step });
            }
            self.poll_writer()?;
            let had_oom = self.train_step()?;
            if eval_every > 0 && self.step.is_multiple_of(eval_every) && self.step < self.total {
                self.evaluate()?;
            }
            let due = (every > 0 && self.step.is_multiple_of(every)) || (had_oom && self.s.recipe.checkpoint.on_oom);
            if due && self.step < self.total {
                self.checkpoint(if had_oom { "oom" } else { "every" })?;
            }
        }
        if self.last_eval.as_ref().is_none_or(|e| e.step != self.step) && !self.data.valid.is_empty() {
            self.evaluate()?;
        }
        if !self.checkpoint("final")? {
            return Err(TrainError::Diverged(format!(
                "the weights after the last step ({}) are not finite, so neither a final checkpoint nor \
                 model.safetensors was written; the newest checkpoint holds the last finite weights. Fix: lower \
                 optimizer.lr or set optimizer.grad_clip_norm, and start over in a new --run-dir.",
                self.step
            )));
        }
        self.finish()
    }

    /// Runs one optimizer step, retrying the same effective batch after OOMs. Returns whether
    /// an OOM happened.
    fn train_step(&mut self) -> Result<bool, TrainError> {
        let step = self.step + 1;
        let n = self.s.recipe.training.effective_batch;
        let indices = self.sampler.next_batch(n);
        let lr = lr_at(step, self.total, self.s.recipe.optimizer.lr, &self.s.recipe.lr_schedule);
        let clip = self.s.recipe.optimizer.grad_clip_norm;
        let t0 = Instant::now();
        let mut had_oom = false;
        let mut optimizer_ooms = 0;
        loop {
            let plan = self.policy.plan();
            let micro = plan[0];
            let t_attempt = Instant::now();
            self.enter(Phase::Forward);
            B::seed(&self.s.device, step_seed(self.s.recipe.run.seed, step));
            let phase = Cell::new(Phase::Forward);
            let device = self.s.device.clone();
            let model = self.model.as_ref().expect("model");
            let faults = &mut self.faults;
            let src = &self.data.train;
            let generation = oomph_sched::panics::generation();
            let seed = self.s.recipe.run.seed;
            let out = attempt::<B, _>(&device, || {
                accumulate::<B, M>(
                    model,
                    src,
                    &indices,
                    &plan,
                    &device,
                    step,
                    faults,
                    &phase,
                    generation,
                    seed,
                    clip.is_some(),
                )
            });
            let (mut grads, loss, check) = match out {
                Ok(v) => v,
                Err(f) => {
                    had_oom = true;
                    self.recover(f, step, phase.get(), micro, t_attempt)?;
                    continue;
                }
            };
            if !(loss.is_finite() && check.finite) {
                // Never let a non-finite loss or gradient reach the weights: the step is skipped.
                drop(grads);
                self.skip_step(step, loss, check, lr, &plan, t0, had_oom)?;
                return Ok(had_oom);
            }
            let norm = check.norm.unwrap_or(0.0);
            self.enter(Phase::Optimizer);
            let phase = Cell::new(Phase::Optimizer);
            let out = if self.updates_done == 0 && !self.s.first_update_in_place {
                // The first update of a process allocates the optimizer state (Adam's moments):
                // it runs on copies of the handles, so a failed update leaves the model and the
                // optimizer untouched and is retried in-process.
                let mut optim = self.optim().clone();
                let model = self.model().clone();
                let faults = &mut self.faults;
                attempt::<B, _>(&device, || {
                    faults.check(step, Phase::Optimizer, 0);
                    if let Some(c) = clip {
                        clip_to::<B, M>(&model, &mut grads, norm, c);
                    }
                    let m = optim.step(lr, model, grads);
                    (m, optim)
                })
            } else {
                // Later updates (and, after a worker died inside an update, the first one too)
                // consume the only handles, so the backend updates parameters and moments in
                // place (no second copy: a lower memory peak, and faster). Simulated faults
                // still fire before anything is touched; a real failure inside the update leaves
                // a half-updated model, so the worker ends and the supervisor resumes from the
                // newest checkpoint.
                let faults = &mut self.faults;
                match attempt::<B, _>(&device, || faults.check(step, Phase::Optimizer, 0)) {
                    Err(f) => Err(f),
                    Ok(()) => {
                        let model = self.model.take().expect("model");
                        let mut optim = self.optim.take().expect("optimizer");
                        let updated = attempt::<B, _>(&device, move || {
                            if let Some(c) = clip {
                                clip_to::<B, M>(&model, &mut grads, norm, c);
                            }
                            let m = optim.step(lr, model, grads);
                            (m, optim)
                        });
                        match updated {
                            Ok(v) => Ok(v),
                            Err(Failure::Oom { message }) => {
                                self.oom_events += 1;
                                self.event(
                                    "oom",
                                    json!({ "phase": "optimizer", "micro_batch": micro, "message": message }),
                                );
                                return Err(TrainError::MemoryDeath {
                                    micro,
                                    message: format!(
                                        "out of memory inside the in-place optimizer update of step {step}; the \
                                         worker ends so the run resumes from the newest checkpoint: {message}"
                                    ),
                                });
                            }
                            Err(Failure::Other { message }) => {
                                return Err(TrainError::Failed(format!(
                                    "the optimizer update of step {step} failed (not an out-of-memory): {message}"
                                )))
                            }
                        }
                    }
                }
            };
            match out {
                Ok((m, o)) => {
                    self.model = Some(m);
                    self.optim = Some(o);
                    self.updates_done += 1;
                    self.finish_step(step, loss, lr, &plan, t0, check.norm, had_oom, false)?;
                    return Ok(had_oom);
                }
                Err(f) => {
                    had_oom = true;
                    optimizer_ooms += 1;
                    let is_oom = matches!(f, Failure::Oom { .. });
                    self.recover(f, step, phase.get(), micro, t_attempt).or_else(|e| match e {
                        // The optimizer OOM itself is not the policy's to shrink.
                        TrainError::DoesNotFit(_) if is_oom && optimizer_ooms < 2 => Ok(()),
                        e => Err(e),
                    })?;
                    if optimizer_ooms >= 2 {
                        let msg = format!(
                            "the optimizer update of step {step} ran out of memory twice, after cleanup; it \
                             needs room for the parameters, their gradients and the optimizer state ({} \
                             parameters, {} MiB in float32, about 4x that for AdamW), independent of the \
                             micro-batch. Fix: a smaller model, `optimizer.kind = \"sgd\"`, or a device \
                             with more memory.",
                            fmt_count(self.parameters),
                            self.parameters * 4 / (1024 * 1024)
                        );
                        self.event("give_up", json!({ "phase": "optimizer", "message": msg }));
                        return Err(TrainError::DoesNotFit(msg));
                    }
                }
            }
        }
    }

    /// A step whose loss or gradient norm is not finite: no update; recorded as a skipped step
    /// (its samples count as consumed, so resuming and the sampler stay in step); after
    /// `training.max_nonfinite_steps` in a row the run stops.
    #[allow(clippy::too_many_arguments)]
    fn skip_step(
        &mut self,
        step: usize,
        loss: f64,
        check: GradCheck,
        lr: f64,
        plan: &[usize],
        t0: Instant,
        had_oom: bool,
    ) -> Result<(), TrainError> {
        self.nonfinite_steps += 1;
        self.nonfinite_run += 1;
        self.finish_step(step, loss, lr, plan, t0, check.norm.filter(|n| n.is_finite()), had_oom, true)?;
        self.event_at(
            "nonfinite_step",
            step,
            json!({
                "loss": loss.to_string(),
                "gradients_finite": check.finite,
                "grad_norm": check.norm.map(|n| n.to_string()),
                "lr": lr,
                "in_a_row": self.nonfinite_run
            }),
        );
        let limit = self.s.recipe.training.max_nonfinite_steps;
        if self.nonfinite_run >= limit {
            self.metrics.flush()?;
            self.settle_writer()?;
            let last_good = checkpoint::list(&self.ckpt_root())
                .first()
                .map(|(s, d)| format!("the newest checkpoint, {} (step {s}), holds finite weights", d.display()))
                .unwrap_or_else(|| "no checkpoint was written yet".into());
            let msg = format!(
                "the run diverged: {} steps in a row (training.max_nonfinite_steps = {limit}) ended with a \
                 non-finite loss or gradient, the last at step {step} (loss {loss}, learning rate {lr:.4e}). \
                 None of them changed the weights; {last_good}. Fix: lower optimizer.lr, set \
                 optimizer.grad_clip_norm or add warmup (lr_schedule.warmup_steps), and start over in a new \
                 --run-dir (or --resume never --overwrite).",
                self.nonfinite_run
            );
            self.event_at("diverged", step, json!({ "message": msg }));
            return Err(TrainError::Diverged(msg));
        }
        Ok(())
    }

    /// Handles a failed attempt: non-OOM failures end the run as what they are; OOMs are
    /// recorded, cleaned up, and fed to the policy.
    fn recover(
        &mut self,
        f: Failure,
        step: usize,
        phase: Phase,
        micro: usize,
        t_attempt: Instant,
    ) -> Result<(), TrainError> {
        let message = match f {
            Failure::Other { message } => {
                return Err(TrainError::Failed(format!(
                    "training failed in {} of step {step} (micro-batch {micro}) with an error that is not \
                     an out-of-memory, so it is not retried: {message}",
                    phase_name(phase)
                )))
            }
            Failure::Oom { message } => message,
        };
        cleanup::<B>(&self.s.device);
        crate::alloc::survived();
        self.oom_events += 1;
        self.event("oom", json!({ "phase": phase_name(phase), "micro_batch": micro, "message": message }));
        if !probe::<B>(&self.s.device) {
            return Err(TrainError::MemoryDeath {
                micro,
                message: format!("the backend is unusable after an out-of-memory at micro-batch {micro}: {message}"),
            });
        }
        if phase != Phase::Optimizer {
            let hint = self
                .s
                .memory
                .as_ref()
                .and_then(|probe| probe())
                .map(|m| MemoryHint { capacity_bytes: Some(m.capacity), ..Default::default() });
            match self.policy.on_oom(micro, hint) {
                Ok(evs) => self.policy_events(evs),
                Err(give_up) => {
                    let msg = format!("{give_up} (last error: {message})");
                    self.event("give_up", json!({ "micro_batch": micro, "message": msg }));
                    return Err(TrainError::DoesNotFit(msg));
                }
            }
        }
        self.recovery_s += t_attempt.elapsed().as_secs_f64();
        Ok(())
    }

    /// Records a completed step (`skipped`: completed without an update, as non-finite).
    #[allow(clippy::too_many_arguments)]
    fn finish_step(
        &mut self,
        step: usize,
        loss: f64,
        lr: f64,
        plan: &[usize],
        t0: Instant,
        grad_norm: Option<f64>,
        had_oom: bool,
        skipped: bool,
    ) -> Result<(), TrainError> {
        let n = self.s.recipe.training.effective_batch;
        self.step = step;
        self.samples_seen += n as u64;
        if !skipped {
            self.last_loss = Some(loss);
            self.nonfinite_run = 0;
        }
        // Any allocation failure noted during this step was survived.
        crate::alloc::survived();
        let evs = self.policy.on_step_ok();
        let mem = self.s.memory.as_ref().and_then(|probe| probe());
        if let Some(m) = mem {
            self.policy.observe_memory(plan[0], m.reserved, m.capacity);
        }
        let dt = t0.elapsed().as_secs_f64();
        let rec = StepRecord {
            kind: "step".into(),
            step,
            samples_seen: self.samples_seen,
            loss,
            lr,
            micro_batch: plan[0],
            chunks: plan.len(),
            samples_per_sec: n as f64 / dt.max(1e-9),
            wall_s: self.wall_before + self.wall(),
            oom_events: self.oom_events,
            grad_norm,
            skipped,
            mem_used: mem.map(|m| m.in_use),
            mem_reserved: mem.map(|m| m.reserved),
            mem_total: mem.map(|m| m.capacity),
        };
        self.metrics.write(&rec)?;
        self.s.observer.step(&rec, self.total);
        if step == 1 && self.s.recipe.micro_batch.initial == MicroInitial::Auto {
            self.event_at(
                "auto_settled",
                step,
                json!({ "micro_batch": plan[0], "chunks": plan.len(), "ooms": self.oom_events }),
            );
        }
        if !evs.is_empty() || had_oom {
            self.policy_events(evs);
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<(), TrainError> {
        let src = &self.data.valid;
        if src.is_empty() {
            return Ok(());
        }
        let indices = eval_indices(src);
        loop {
            self.eval_batch = self.eval_batch.min(indices.len()).max(1);
            let eb = self.eval_batch;
            self.enter(Phase::Eval);
            let t = Instant::now();
            let inner = self.model().valid();
            let device = self.s.device.clone();
            let faults = &mut self.faults;
            let step = self.step;
            let out = attempt::<B, _>(&device, || {
                evaluate_on::<B::InnerBackend, M::InnerModule>(&inner, src, &indices, eb, &device, step, faults)
            });
            drop(inner);
            match out {
                Ok((loss, metrics)) => {
                    let rec = EvalRecord {
                        kind: "eval".into(),
                        step: self.step,
                        samples_seen: self.samples_seen,
                        valid_loss: loss,
                        metrics,
                        eval_batch: eb,
                        wall_s: self.wall_before + self.wall(),
                    };
                    self.metrics.write(&rec)?;
                    self.metrics.flush()?;
                    self.s.observer.eval(&rec);
                    self.last_eval = Some(rec);
                    return Ok(());
                }
                Err(Failure::Other { message }) => {
                    return Err(TrainError::Failed(format!(
                        "evaluation after step {} failed with an error that is not an out-of-memory: {message}",
                        self.step
                    )))
                }
                Err(Failure::Oom { message }) => {
                    cleanup::<B>(&self.s.device);
                    crate::alloc::survived();
                    self.oom_events += 1;
                    self.event("oom", json!({ "phase": "eval", "micro_batch": eb, "message": message }));
                    if eb <= 1 {
                        let msg = format!("evaluation does not fit even one sample per micro-batch: {message}");
                        self.event("give_up", json!({ "phase": "eval", "message": msg }));
                        return Err(TrainError::DoesNotFit(msg));
                    }
                    let to = eb / 2;
                    self.event("shrink", json!({ "from": eb, "to": to, "reason": "oom", "scope": "eval" }));
                    self.eval_batch = to;
                    self.recovery_s += t.elapsed().as_secs_f64();
                }
            }
        }
    }

    fn state(&self, reason: &str) -> TrainState {
        TrainState {
            step: self.step,
            samples_seen: self.samples_seen,
            cursor: self.sampler.cursor(),
            policy: self.policy.state().clone(),
            eval_batch: self.eval_batch,
            seed: self.s.recipe.run.seed,
            recipe_fingerprint: self.fingerprint.clone(),
            last_loss: self.last_loss,
            oom_events: self.oom_events,
            recovery_s: self.recovery_s,
            wall_s: self.wall_before + self.wall(),
            restarts: self.s.restarts,
            resumes: self.resumes,
            reason: reason.into(),
            data: Some(self.data.identity.clone()),
            total_steps: Some(self.total),
            nonfinite_steps: self.nonfinite_steps,
            nonfinite_run: self.nonfinite_run,
        }
    }

    /// Waits for the checkpoint write in flight and records its completion.
    fn settle_writer(&mut self) -> Result<(), TrainError> {
        let waited = self.writer.wait();
        if waited.is_ok() {
            crate::alloc::checkpoint_survived();
        }
        if self.writer.pending.is_none() {
            self.write_current();
        }
        let (stall, written) = waited?;
        self.checkpoint_stall_s += stall;
        if let Some(w) = written {
            self.event_at(
                "checkpoint",
                w.step,
                json!({
                    "reason": w.reason,
                    "path": w.dir.display().to_string(),
                    "write_s": round_ms(w.write_s),
                    "stall_s": round_ms(stall),
                }),
            );
        }
        Ok(())
    }

    /// Records a finished background write without waiting for one that is still running.
    fn poll_writer(&mut self) -> Result<(), TrainError> {
        if self.writer.finished() {
            self.settle_writer()?;
        }
        Ok(())
    }

    /// Snapshots the state on this thread (cheap: tensor handles) and serialises and writes
    /// it on a background thread; waits for the previous write first. Weights that are not
    /// finite are never written: the step is refused with an event (returns `false`), and the
    /// checkpoints before it stay the newest.
    fn checkpoint(&mut self, reason: &str) -> Result<bool, TrainError> {
        self.metrics.flush()?;
        self.settle_writer()?;
        self.enter(Phase::Checkpoint);
        if !params_finite::<B, M>(self.model()) {
            let msg = format!(
                "the weights after step {} are not finite; no checkpoint is written, so the newest one stays the \
                 last with finite weights",
                self.step
            );
            tracing::warn!("{msg}");
            self.event_at("checkpoint_refused", self.step, json!({ "reason": reason, "message": msg }));
            return Ok(false);
        }
        let t = Instant::now();
        let record = self.model().clone().into_record();
        let optim = self.optim().clone();
        let state = self.state(reason);
        let root = self.ckpt_root();
        let keep = self.s.recipe.checkpoint.keep;
        let recipe_text = oomph_recipe::to_toml_string(&self.s.recipe);
        let step = self.step;
        let fault = self.faults.checkpoint_fault(step);
        let simulate_full_disk = self.faults.disk_full(step);
        let writer_root = root.clone();
        let handle = std::thread::Builder::new()
            .name("oomph-checkpoint".into())
            .spawn(move || {
                crate::alloc::mark_checkpoint_thread();
                if let Some(f) = fault {
                    f.act(&format!("while writing the checkpoint of step {step}"));
                }
                let failed = |what: &'static str, e: String| checkpoint::WriteError {
                    op: what,
                    path: writer_root.join(checkpoint::dir_name(step)),
                    source: std::io::Error::other(e),
                };
                let rec = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
                let model = rec.record(record, ()).map_err(|e| failed("serialising the model for", e.to_string()))?;
                let optim = optim.to_bytes().map_err(|e| failed("serialising the optimizer for", e.to_string()))?;
                let state = serde_json::to_vec_pretty(&state)
                    .map_err(|e| failed("serialising the state for", e.to_string()))?;
                let payload = Payload {
                    step,
                    files: vec![
                        ("model.mpk".into(), model),
                        ("optim.mpk".into(), optim),
                        ("recipe.toml".into(), recipe_text.into_bytes()),
                        ("state.json".into(), state),
                    ],
                    simulate_full_disk,
                };
                checkpoint::write(&writer_root, &payload, keep)
            })
            .map_err(|e| TrainError::Failed(format!("cannot start the checkpoint writer: {e}")))?;
        self.writer.handle = Some(handle);
        self.writer.pending = Some((step, reason.to_string(), t, root));
        self.checkpoint_stall_s += t.elapsed().as_secs_f64();
        self.write_current();
        Ok(true)
    }

    /// Worker restarts over the whole run (every supervisor invocation): the restart events
    /// the supervisors recorded, except their final "stop" decisions.
    fn restarts_in_run(&self) -> usize {
        let n = crate::records::read_lines::<EventRecord>(&self.s.run_dir.join("events.jsonl"))
            .iter()
            .filter(|e| e.kind == "restart" && e.fields.get("action").and_then(|a| a.as_str()) != Some("stop"))
            .count();
        n.max(self.s.restarts)
    }

    fn finish(&mut self) -> Result<Summary, TrainError> {
        self.metrics.flush()?;
        self.settle_writer()?;
        let model_path = self.s.run_dir.join("model.safetensors");
        save_safetensors::<B, M>(self.model(), &model_path)?;
        let ev = self.last_eval.clone();
        let history = self.policy.state().history.clone();
        let summary = Summary {
            name: self.s.recipe.run.name.clone(),
            steps: self.step,
            samples_seen: self.samples_seen,
            effective_batch: self.s.recipe.training.effective_batch,
            train_loss: self.last_loss,
            valid_loss: ev.as_ref().map(|e| e.valid_loss),
            valid_accuracy: ev.as_ref().and_then(|e| e.metrics.get("accuracy").copied()),
            valid_metrics: ev.map(|e| e.metrics).unwrap_or_default(),
            wall_s: self.wall_before + self.wall(),
            oom_events: self.oom_events,
            micro_batch_final: self.policy.limit(),
            micro_batch_history: history,
            recovery_s: self.recovery_s,
            restarts: self.restarts_in_run(),
            resumes: self.resumes,
            parameters: self.parameters,
            model_path: model_path.display().to_string(),
            checkpoint_stall_s: self.checkpoint_stall_s,
            nonfinite_steps: self.nonfinite_steps,
        };
        let text = serde_json::to_string_pretty(&summary).map_err(|e| TrainError::Failed(e.to_string()))?;
        write_atomically(&self.s.run_dir.join("summary.json"), text.as_bytes())?;
        let _ = std::fs::remove_file(self.s.run_dir.join("current.json"));
        self.s.observer.finish(&summary);
        Ok(summary)
    }
}

/// Writes `bytes` to `path` through a temporary file renamed into place, so `path` always
/// holds either its old or its new contents.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, bytes)
        .map_err(|e| TrainError::io("writing", &tmp, &e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| TrainError::io("renaming into place", &tmp, &e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Writes the model's weights as safetensors (readable by any safetensors tool), through a
/// temporary file renamed into place, so a failed or interrupted write never leaves a
/// truncated file where the previous weights were.
pub fn save_safetensors<B: Backend, M: Module<B>>(model: &M, path: &Path) -> Result<(), TrainError> {
    use burn::store::{ModuleSnapshot, SafetensorsStore};
    let tmp = path.with_extension("safetensors.tmp");
    let mut store = SafetensorsStore::from_file(&tmp).overwrite(true);
    let saved = model.save_into(&mut store).map_err(|e| e.to_string()).and_then(|()| {
        drop(store);
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())
    });
    if saved.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    saved.map_err(|e| {
        TrainError::Failed(format!(
            "writing the final weights {} failed: {e}. The run's checkpoints are intact. Fix: free disk space or \
             make the run directory writable, then run the same command again (it resumes from the final \
             checkpoint and writes the weights).",
            path.display()
        ))
    })
}

/// What a step learned about its gradients.
#[derive(Debug, Clone, Copy)]
struct GradCheck {
    /// Every gradient element is finite.
    finite: bool,
    /// The global L2 norm, when it was computed (gradient clipping needs it).
    norm: Option<f64>,
}

/// The forward and backward passes of one attempt at a step: every chunk's loss sum is
/// divided by the effective batch's total weight before its backward pass, so the summed
/// gradients are those of the mean loss. Returns the gradients, the mean loss and the
/// gradients' global L2 norm.
#[allow(clippy::too_many_arguments)]
fn accumulate<B, M>(
    model: &M,
    src: &Source,
    indices: &[usize],
    plan: &[usize],
    device: &B::Device,
    step: usize,
    faults: &mut Faults,
    phase: &Cell<Phase>,
    generation: u64,
    seed: u64,
    with_norm: bool,
) -> (GradientsParams, f64, GradCheck)
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Objective<B>,
{
    // Each chunk's batch is built when it runs (and once before, for its weight): host memory
    // follows the micro-batch, not the effective batch.
    let mut chunks = Vec::with_capacity(plan.len());
    let mut offset = 0;
    for &size in plan {
        chunks.push(&indices[offset..offset + size]);
        offset += size;
    }
    // One chunk (the common case): its batch is built once and reused.
    let mut prebuilt = (chunks.len() == 1).then(|| src.batch(chunks[0]));
    let total: f64 = match &prebuilt {
        Some(b) => model.weight(b),
        None => chunks.iter().map(|c| model.weight(&src.batch(c))).sum(),
    };
    let scale = 1.0 / total.max(f64::MIN_POSITIVE);
    let mut acc = GradientsAccumulator::<M>::new();
    let mut single = None;
    let mut loss_sum: Option<Tensor<B::InnerBackend, 1>> = None;
    for chunk in &chunks {
        let batch = prebuilt.take().unwrap_or_else(|| src.batch(chunk));
        phase.set(Phase::Forward);
        faults.check(step, Phase::Forward, batch.len());
        let mut loss = random::with_chunk(seed, step, chunk, || model.loss(&batch, device)).sum.mul_scalar(scale);
        if faults.nan_loss(step) {
            loss = loss.mul_scalar(f64::NAN);
        }
        drop(batch);
        let detached = loss.clone().inner();
        loss_sum = Some(match loss_sum {
            Some(t) => t + detached,
            None => detached,
        });
        phase.set(Phase::Backward);
        faults.check(step, Phase::Backward, chunk.len());
        let grads = GradientsParams::from_grads(loss.backward(), model);
        // A device allocation that failed on another thread (cubecl's runner) surfaces here,
        // at the end of the micro-batch, rather than after the remaining chunks.
        if let Some((rec, _)) = oomph_sched::panics::oom_since(generation) {
            std::panic::panic_any(format!("{} (on thread '{}')", rec.message, rec.thread));
        }
        if plan.len() == 1 {
            single = Some(grads);
        } else {
            acc.accumulate(model, grads);
        }
    }
    let grads = single.unwrap_or_else(|| acc.grads());
    // The loss and the gradient check come back in one device read: the squared norm when
    // clipping needs the norm, otherwise the plain sum (finite exactly when every element is).
    let how = if with_norm { Reduce::Squares } else { Reduce::Sum };
    let check = reduce_grads::<B, M>(model, &grads, how);
    let (loss, check) = match (loss_sum, check) {
        (Some(l), Some(q)) => {
            let v: Vec<f64> = Tensor::cat(vec![l, q], 0).into_data().iter::<f64>().collect();
            (v[0], v[1])
        }
        (Some(l), None) => (l.into_scalar().elem::<f64>(), 0.0),
        (None, _) => (f64::NAN, f64::NAN),
    };
    let grads_check = GradCheck { finite: check.is_finite(), norm: with_norm.then(|| check.sqrt()) };
    (grads, loss, grads_check)
}

/// Indices evaluated: every sample for tabular data, non-overlapping windows for text.
fn eval_indices(src: &Source) -> Vec<usize> {
    match src {
        Source::Text { seq_len, .. } => (0..src.len()).step_by((*seq_len).max(1)).collect(),
        _ => (0..src.len()).collect(),
    }
}

fn evaluate_on<B: Backend, M: Objective<B>>(
    model: &M,
    src: &Source,
    indices: &[usize],
    eval_batch: usize,
    device: &B::Device,
    step: usize,
    faults: &mut Faults,
) -> (f64, BTreeMap<String, f64>) {
    let mut loss: Option<Tensor<B, 1>> = None;
    let mut weight = 0.0;
    let mut metrics: BTreeMap<&'static str, (Tensor<B, 1>, f64)> = BTreeMap::new();
    for chunk in indices.chunks(eval_batch) {
        faults.check(step.max(1), Phase::Eval, chunk.len());
        let batch: Batch = src.batch(chunk);
        weight += model.weight(&batch);
        let e = model.evaluate(&batch, device);
        loss = Some(match loss {
            Some(t) => t + e.loss_sum,
            None => e.loss_sum,
        });
        for m in e.metrics {
            let entry = metrics.remove(m.name);
            metrics.insert(
                m.name,
                match entry {
                    Some((t, w)) => (t + m.sum, w + m.weight),
                    None => (m.sum, m.weight),
                },
            );
        }
    }
    let loss = loss.map(|t| t.into_scalar().elem::<f64>() / weight.max(f64::MIN_POSITIVE)).unwrap_or(f64::NAN);
    let metrics = metrics
        .into_iter()
        .map(|(k, (t, w))| (k.to_string(), t.into_scalar().elem::<f64>() / w.max(f64::MIN_POSITIVE)))
        .collect();
    (loss, metrics)
}

/// After cleanup, checks that the device still computes. A backend left unusable by an OOM
/// makes the worker exit so the supervisor restarts it from the newest checkpoint.
fn probe<B: Backend>(device: &B::Device) -> bool {
    attempt::<B, _>(device, || {
        let t = Tensor::<B, 1>::from_floats([1.0, 2.0], device);
        t.sum().into_scalar().elem::<f64>()
    })
    .is_ok_and(|v| (v - 3.0).abs() < 1e-6)
}

/// Seconds rounded to the microsecond for event lines.
fn round_ms(s: f64) -> f64 {
    (s * 1e6).round() / 1e6
}

fn fmt_count(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{:.2}M", n as f64 / 1e6)
    } else if n >= 1_000 {
        format!("{:.1}k", n as f64 / 1e3)
    } else {
        n.to_string()
    }
}
