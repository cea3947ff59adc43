//! Helpers shared by oomph's benchmarks: recipes, in-process runs through the real trainer,
//! the plain hand-written burn loop they are compared with, and small statistics.
//!
//! Everything here measures *ratios* inside one process: absolute times on a shared machine
//! drift from run to run, ratios of interleaved measurements do not (much).
#![allow(dead_code)]

use burn::backend::{Autodiff, Flex, NdArray};
use burn::module::AutodiffModule;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor};
use oomph::data::{DataInfo, Sampler, Splits};
use oomph::models::gpt::{Gpt, GptConfig};
use oomph::models::mlp::{Mlp, MlpConfig};
use oomph::models::Builtin;
use oomph::recipe::Recipe;
use oomph::train::events::read_events;
use oomph::train::feed::{Feed, TabularBatch, TabularTargets, TokenBatch};
use oomph::train::metrics::read_metrics;
use oomph::train::tensors::cross_entropy_per_row;
use oomph::train::{Data, InnerBatch, Loss, Models, Objective, Registry, Resume, Session, Silent};
use oomph::train::{EventLine, StepRecord, Summary};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The CPU default backend (flex), with autodiff.
pub type Fx = Autodiff<Flex>;
/// The ndarray CPU backend, with autodiff.
pub type Nd = Autodiff<NdArray<f32>>;

/// The repository root (recipes in `configs/` refer to `../data/`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A recipe text parsed as if it were a file in `configs/`, with `--set` overrides.
pub fn recipe_text(text: &str, overrides: &[String]) -> Recipe {
    oomph::recipe::parse(text, "bench.toml", &root().join("configs"), overrides).unwrap_or_else(|e| panic!("{e}"))
}

/// A shipped recipe (`configs/NAME`) with `--set` overrides.
pub fn shipped(name: &str, overrides: &[String]) -> Recipe {
    let text = std::fs::read_to_string(root().join("configs").join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    recipe_text(&text, overrides)
}

/// `--set` overrides from string slices.
pub fn sets(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Loads the data a built-in model kind needs.
pub fn data_for(recipe: &Recipe) -> Splits {
    let mut reg = Registry::<Fx>::new();
    Builtin::register(&mut reg);
    let p = reg.prepare(&recipe.model.kind, &recipe.model.params, "bench.toml").unwrap_or_else(|e| panic!("{e}"));
    oomph::data::load(&recipe.data, recipe.run.seed, p.needs().seq_len).unwrap_or_else(|e| panic!("{e}"))
}

/// A silent in-process session in `dir`.
pub fn session<B: AutodiffBackend>(recipe: Recipe, dir: &Path) -> Session<B> {
    let mut s = Session::new(recipe, "bench.toml", Default::default(), dir);
    s.observer = Box::new(Silent);
    s.resume = Resume::Auto;
    s
}

/// What an in-process run left behind.
pub struct RunOut {
    /// Every `step` line of `metrics.jsonl`.
    pub steps: Vec<StepRecord>,
    /// Every line of `events.jsonl`.
    pub events: Vec<EventLine>,
    /// The summary.
    pub summary: Summary,
    /// Seconds of the whole `train` call, as seen by the caller.
    pub call_s: f64,
    /// The run directory (deleted on drop).
    pub dir: tempfile::TempDir,
}

impl RunOut {
    /// Wall seconds of the training loop: from the start of `train` to the end of the last
    /// step (excludes the final evaluation, checkpoint and weights export).
    pub fn loop_s(&self) -> f64 {
        self.steps.last().map(|s| s.wall_s).unwrap_or(0.0)
    }

    /// Per-step wall times (differences of consecutive `wall_s`), for steps `from+1..`.
    pub fn step_times(&self, from: usize) -> Vec<f64> {
        step_times(&self.steps, from)
    }

    /// Events of one kind.
    pub fn events(&self, kind: &str) -> usize {
        self.events.iter().filter(|e| e.event.kind() == kind).count()
    }
}

/// Per-step wall times from consecutive `wall_s`: the time of step `k` is
/// `wall_s[k] - wall_s[k-1]`, for `k > from` (`from >= 1`). This covers the whole loop
/// iteration: sampling, the step, the policy, metrics and any checkpoint snapshot.
pub fn step_times(steps: &[StepRecord], from: usize) -> Vec<f64> {
    steps
        .windows(2)
        .filter(|w| w[1].step > from.max(1) && w[1].step == w[0].step + 1)
        .map(|w| w[1].wall_s - w[0].wall_s)
        .collect()
}

/// Trains `recipe` in-process with a registry on backend `B`.
pub fn train_with<B: AutodiffBackend>(reg: &Registry<B>, recipe: Recipe, data: &Splits) -> RunOut {
    let dir = tempfile::Builder::new().prefix("oomph-bench-").tempdir().expect("temp dir");
    let p = reg.prepare(&recipe.model.kind, &recipe.model.params, "bench.toml").unwrap_or_else(|e| panic!("{e}"));
    let data = Data::<B>::from_splits(data.clone());
    let t = Instant::now();
    let summary = p.train(session::<B>(recipe, dir.path()), &data).unwrap_or_else(|e| panic!("{e}"));
    let call_s = t.elapsed().as_secs_f64();
    let steps: Vec<StepRecord> = step_lines(&dir.path().join("metrics.jsonl"));
    let events = event_lines(&dir.path().join("events.jsonl"));
    RunOut { steps, events, summary, call_s, dir }
}

/// Trains `recipe` in-process with the built-in models on backend `B`.
pub fn train_builtin<B: AutodiffBackend>(recipe: Recipe, data: &Splits) -> RunOut {
    let mut reg = Registry::<B>::new();
    Builtin::register(&mut reg);
    train_with(&reg, recipe, data)
}

// ---------------------------------------------------------------------------------------
// The plain hand-written burn loop.

/// The mean loss a plain loop computes, written with burn primitives only (the same math as
/// oomph's `cross_entropy_per_row`, averaged instead of summed), on the model's own batches.
pub trait PlainLoss<B: Backend>: Objective<B> {
    /// Mean cross-entropy of the batch.
    fn mean_loss(&self, batch: Self::Batch) -> Tensor<B, 1>;
}

fn mean_cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let n = targets.dims()[0];
    let logp = burn::tensor::activation::log_softmax(logits, 1);
    logp.gather(1, targets.reshape([n, 1])).reshape([n]).neg().mean()
}

/// Features and classes of a batch of classification rows.
fn classes<B: Backend>(batch: TabularBatch<B>) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
    match batch.targets {
        TabularTargets::Classes(y) => (batch.features, y),
        TabularTargets::Values(_) => panic!("classification rows expected"),
    }
}

impl<B: Backend> PlainLoss<B> for Mlp<B> {
    fn mean_loss(&self, batch: TabularBatch<B>) -> Tensor<B, 1> {
        let (x, y) = classes(batch);
        mean_cross_entropy(self.forward(x), y)
    }
}

impl<B: Backend> PlainLoss<B> for Gpt<B> {
    fn mean_loss(&self, batch: TokenBatch<B>) -> Tensor<B, 1> {
        let [n, t] = batch.targets.dims();
        let logits = self.forward(batch.inputs);
        let vocab = logits.dims()[2];
        mean_cross_entropy(logits.reshape([n * t, vocab]), batch.targets.reshape([n * t]))
    }
}

/// The training feed of `data` for model `M` (the one oomph's trainer draws from).
pub fn train_feed<B, M>(data: &Data<B>) -> &dyn Feed<B, M::Batch>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Objective<B>,
    M::InnerModule: Objective<B::InnerBackend>,
{
    &*data.feeds::<M::Batch, InnerBatch<B, M>>().expect("the model takes the data").train
}

/// A built-in model, built exactly as oomph builds it (same seed, same init).
#[allow(clippy::large_enum_variant)]
pub enum Builtins<B: Backend> {
    /// `kind = "mlp"`.
    Mlp(Mlp<B>),
    /// `kind = "gpt"`.
    Gpt(Gpt<B>),
}

/// Builds the recipe's built-in model after seeding the backend with the run seed, as
/// oomph's registry does.
pub fn build<B: Backend>(recipe: &Recipe, data: &Splits, device: &B::Device) -> Builtins<B> {
    B::seed(device, recipe.run.seed);
    match recipe.model.kind.as_str() {
        "mlp" => {
            let cfg: MlpConfig = oomph::recipe::params(&recipe.model.params, "model", "bench").unwrap();
            Builtins::Mlp(oomph::models::mlp::init(&cfg, &data.info, device).unwrap())
        }
        "gpt" => {
            let cfg: GptConfig = oomph::recipe::params(&recipe.model.params, "model", "bench").unwrap();
            Builtins::Gpt(oomph::models::gpt::init(&cfg, &data.info, device).unwrap())
        }
        k => panic!("no plain loop for model kind {k}"),
    }
}

/// A plain training loop's state: model, AdamW (configured from the recipe, as oomph
/// configures it), the sampler and the data.
pub struct Plain<'a, B: AutodiffBackend, M: AutodiffModule<B> + Objective<B>> {
    model: Option<M>,
    optim: burn::optim::adaptor::OptimizerAdaptor<burn::optim::AdamW, M, B>,
    sampler: Sampler,
    data: &'a dyn Feed<B, M::Batch>,
    n: usize,
    lr: f64,
    device: B::Device,
}

impl<'a, B: AutodiffBackend, M: AutodiffModule<B> + PlainLoss<B>> Plain<'a, B, M> {
    /// The loop's state at step 0.
    pub fn new(model: M, recipe: &Recipe, data: &'a dyn Feed<B, M::Batch>) -> Self {
        let o = &recipe.optimizer;
        let optim = AdamWConfig::new()
            .with_beta_1(o.betas[0] as f32)
            .with_beta_2(o.betas[1] as f32)
            .with_epsilon(o.eps as f32)
            .with_weight_decay(o.weight_decay as f32)
            .init::<B, M>();
        Self {
            model: Some(model),
            optim,
            sampler: Sampler::new(data.len(), recipe.run.seed, true),
            data,
            n: recipe.training.effective_batch,
            lr: o.lr,
            device: Default::default(),
        }
    }

    /// One step: gather the batch, forward, mean loss, backward, `from_grads`, AdamW step,
    /// and read the loss (as any loop that logs it does). Returns the loss.
    pub fn step(&mut self) -> f64 {
        let idx = self.sampler.next_batch(self.n);
        let batch = self.data.batch(&idx, &self.device);
        let model = self.model.take().expect("model");
        let loss = model.mean_loss(batch);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let value: f64 = loss.into_scalar().elem();
        self.model = Some(self.optim.step(self.lr, model, grads));
        value
    }

    /// Runs `steps` steps; returns each step's wall time.
    pub fn run(&mut self, steps: usize) -> Vec<f64> {
        (0..steps)
            .map(|_| {
                let t = Instant::now();
                black_box(self.step());
                t.elapsed().as_secs_f64()
            })
            .collect()
    }
}

/// Per-step wall times of a plain loop of `steps` steps on the recipe's built-in model.
pub fn plain_run<B: AutodiffBackend>(recipe: &Recipe, data: &Splits, steps: usize) -> Vec<f64> {
    let device = B::Device::default();
    let feeds = Data::<B>::from_splits(data.clone());
    match build::<B>(recipe, data, &device) {
        Builtins::Mlp(m) => Plain::<B, _>::new(m, recipe, train_feed::<B, Mlp<B>>(&feeds)).run(steps),
        Builtins::Gpt(m) => Plain::<B, _>::new(m, recipe, train_feed::<B, Gpt<B>>(&feeds)).run(steps),
    }
}

// ---------------------------------------------------------------------------------------
// Statistics and tables.

/// The median (of a copy).
pub fn median(v: &[f64]) -> f64 {
    quantile(v, 0.5)
}

/// The `q`-quantile (linear interpolation) of a copy.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// `median [min..max]` formatted with `digits` decimals.
pub fn spread(v: &[f64], digits: usize) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.d$} [{:.d$}..{:.d$}]", median(v), min, max, d = digits)
}

/// Prints a markdown table.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    println!("| {} |", header.join(" | "));
    println!("|{}|", header.iter().map(|_| "---").collect::<Vec<_>>().join("|"));
    for r in rows {
        println!("| {} |", r.join(" | "));
    }
    println!();
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Total size of the files under `dir` (recursively).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

// ---------------------------------------------------------------------------------------
// A synthetic model of at least 100 M parameters.

/// `[model]` keys of the synthetic big MLP.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BigConfig {
    /// Width of the square hidden layers.
    pub width: usize,
    /// Number of square `width x width` layers.
    pub depth: usize,
}

impl Default for BigConfig {
    fn default() -> Self {
        Self { width: 7100, depth: 2 }
    }
}

/// A plain MLP with `depth` square `width x width` layers: 101 M parameters by default.
#[derive(Module, Debug)]
pub struct Big<B: Backend> {
    layers: Vec<Linear<B>>,
}

impl<B: Backend> Big<B> {
    /// Synthetic (randomly initialised) weights sized for the data.
    pub fn new(c: &BigConfig, info: &DataInfo, device: &B::Device) -> Self {
        let mut dims = vec![info.n_features.unwrap_or(1)];
        dims.extend(std::iter::repeat_n(c.width, c.depth + 1));
        dims.push(info.n_classes.unwrap_or(2));
        Self { layers: dims.windows(2).map(|w| LinearConfig::new(w[0], w[1]).init(device)).collect() }
    }

    /// Logits.
    pub fn forward(&self, mut x: Tensor<B, 2>) -> Tensor<B, 2> {
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(x);
            if i < last {
                x = burn::tensor::activation::relu(x);
            }
        }
        x
    }
}

impl<B: Backend> Objective<B> for Big<B> {
    type Batch = TabularBatch<B>;
    fn loss(&self, batch: TabularBatch<B>) -> Loss<B> {
        let (x, y) = classes(batch);
        Loss { sum: cross_entropy_per_row(self.forward(x), y).sum() }
    }
}

impl<B: Backend> PlainLoss<B> for Big<B> {
    fn mean_loss(&self, batch: TabularBatch<B>) -> Tensor<B, 1> {
        let (x, y) = classes(batch);
        mean_cross_entropy(self.forward(x), y)
    }
}

/// The recipe of the big model (synthetic data, AdamW, one chunk of 16).
pub const BIG: &str = r#"
[run]
name = "big"
seed = 3
[model]
kind = "big"
[data]
kind = "synthetic"
samples = 256
features = 32
classes = 4
valid_fraction = 0.0
[optimizer]
kind = "adamw"
lr = 1e-4
[training]
steps = 8
effective_batch = 16
[micro_batch]
initial = 16
[checkpoint]
keep = 2
"#;

/// A registry with the big model as `kind = "big"`.
pub fn big_registry() -> Registry<Fx> {
    let mut reg = Registry::<Fx>::new();
    reg.add("big", "synthetic 101 M parameter MLP", |c: &BigConfig, info: &DataInfo, d: &burn::tensor::Device<Fx>| {
        Ok(Big::<Fx>::new(c, info, d))
    });
    reg
}

/// The big recipe, its data and the model (seeded as the trainer seeds it).
pub fn big_setup(overrides: &[String]) -> (Recipe, Splits, Big<Fx>) {
    let r = recipe_text(BIG, overrides);
    let data = oomph::data::load(&r.data, r.run.seed, None).unwrap_or_else(|e| panic!("{e}"));
    let device = Default::default();
    <Fx as Backend>::seed(&device, r.run.seed);
    let m = Big::<Fx>::new(&BigConfig::default(), &data.info, &device);
    (r, data, m)
}

// ---------------------------------------------------------------------------------------
// oomph's own step components, composed without the loop around them.

/// Which of oomph's components a [`pieces_run`] step uses (the real ones, from `oomph-train`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Pieces {
    /// The step component alone: `Trainable::attempt` (accumulation with the loss sum x 1/W,
    /// the gradient check, the update, inside the recovery boundaries, with the re-seed).
    #[default]
    Step,
    /// The step and the run log around it: `current.json` at each phase, one
    /// `metrics.jsonl` line per step (as the loop writes them), and the policy's bookkeeping.
    StepAndLog,
}

/// The steps of a `metrics.jsonl`, one per step number (none while it does not exist).
pub fn step_lines(path: &Path) -> Vec<StepRecord> {
    read_metrics(path).unwrap_or_else(|e| panic!("{e}")).map(|m| m.steps).unwrap_or_default()
}

/// The events of an `events.jsonl`, in file order (none while it does not exist).
pub fn event_lines(path: &Path) -> Vec<EventLine> {
    read_events(path).unwrap_or_else(|e| panic!("{e}")).0
}

/// Per-step wall times of `steps` steps that compose oomph's real step components as the
/// loop does (no evaluation, no checkpoints), so the overhead table measures the trainer's own
/// code and cannot drift from it.
pub fn pieces_run<M>(model: M, r: &Recipe, data: &Splits, steps: usize, p: Pieces) -> Vec<f64>
where
    M: AutodiffModule<Fx> + Objective<Fx>,
    M::InnerModule: Objective<<Fx as AutodiffBackend>::InnerBackend>,
{
    let feeds = Data::<Fx>::from_splits(data.clone());
    let feed = train_feed::<Fx, M>(&feeds);
    use oomph::recipe::Phase;
    use oomph::train::faults::Faults;
    use oomph::train::runlog::{position, RunLog};
    use oomph::train::step::{Outcome, StepInput, Trainable};
    let device: burn::tensor::Device<Fx> = Default::default();
    let mut net = Trainable::new(model, oomph::train::optim::Optim::<M, Fx>::new(&r.optimizer), false);
    let mut sampler = Sampler::new(feed.len(), r.run.seed, true);
    let mut faults = Faults::new(Default::default());
    let mut policy = oomph::sched::Policy::new(oomph::train::trainer::policy_config(r));
    let n = r.training.effective_batch;
    let d = tempfile::tempdir().unwrap();
    let mut log = (p == Pieces::StepAndLog).then(|| RunLog::open(d.path(), Box::new(Silent), Vec::new()).unwrap());
    let mut times = Vec::with_capacity(steps);
    for step in 1..=steps {
        let t = Instant::now();
        let indices = sampler.next_batch(n);
        let plan = policy.plan();
        let lr = oomph::train::optim::lr_at(step, steps, r.optimizer.lr, &r.lr_schedule);
        let input = StepInput {
            step,
            indices: &indices,
            all: &indices,
            plan: &plan,
            lr,
            clip: r.optimizer.grad_clip_norm,
            seed: r.run.seed,
        };
        let mut enter = |phase: Phase| {
            if let Some(l) = &mut log {
                l.position(&position(phase, step - 1, &policy, n, 0, None));
            }
        };
        let loss = match net.attempt(feed, input, &device, &mut faults, &mut enter) {
            Outcome::Updated { loss, .. } => loss,
            other => panic!("step {step}: {other:?}"),
        };
        if let Some(l) = &mut log {
            black_box(policy.on_step_ok());
            let rec = StepRecord {
                step,
                samples_seen: (step * n) as u64,
                loss,
                lr,
                micro_batch: plan[0],
                chunks: plan.len(),
                samples_per_sec: n as f64 / t.elapsed().as_secs_f64().max(1e-9),
                wall_s: l.wall(),
                ..Default::default()
            };
            l.step(&rec, steps).unwrap();
        }
        black_box(loss);
        times.push(t.elapsed().as_secs_f64());
    }
    times
}
