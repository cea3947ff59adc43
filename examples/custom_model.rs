//! A program with its own model kinds, trained through oomph's whole command line
//! (`train`, `check`, `inspect`; progress, run directory, checkpoints, supervision):
//!
//! ```text
//! cargo run --release --example custom_model -- train configs/custom-model.toml
//! cargo run --example custom_model -- train configs/custom-model-debug.toml
//! cargo run --example custom_model -- train configs/custom-model-debug.toml --set model.kind=burn-train-mlp
//! ```
//!
//! It registers two kinds next to the built-in `mlp` and `gpt`:
//! - `resmlp`: a residual MLP with layer norm, written for oomph (it implements
//!   [`Objective`] directly: a micro-batch in, the **sum** of its losses out);
//! - `burn-train-mlp`: an MLP written for burn-train's `Learner` (`TrainStep` +
//!   `InferenceStep` returning a `ClassificationOutput`), trained unchanged through oomph's
//!   adapter [`BurnTrain`].

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::serde::{Deserialize, Serialize};
use burn::tensor::activation::{gelu, relu};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use oomph::data::DataInfo;
use oomph::train::adapter::BurnTrain;
use oomph::train::feed::{TabularBatch, TabularTargets};
use oomph::train::random;
use oomph::train::tensors::{correct, cross_entropy_per_row};
use oomph::train::{Evaluation, Loss, MetricSum, Models, Objective, Registry};

// `main` (oomph's command line with these kinds) and the allocation tracker the supervisor
// relies on.
oomph::main!(MyModels);

/// This program's model kinds (oomph adds its built-in ones).
struct MyModels;

impl Models for MyModels {
    fn register<B: AutodiffBackend>(r: &mut Registry<B>) {
        r.add(
            "resmlp",
            "residual MLP with layer norm, tabular classification (examples/custom_model.rs)",
            ResMlp::<B>::init,
        );
        r.add(
            "burn-train-mlp",
            "a burn-train (TrainStep/InferenceStep) MLP through oomph's adapter (examples/custom_model.rs)",
            |cfg: &BurnMlpConfig, info: &DataInfo, device: &B::Device| {
                BurnMlp::<B>::init(cfg, info, device).map(BurnTrain::new)
            },
        );
    }
}

/// `(features, classes)` of tabular classification data, or why the data does not fit.
fn tabular_shape(info: &DataInfo) -> Result<(usize, usize), String> {
    match (info.n_features, info.n_classes) {
        (Some(f), Some(c)) if info.task == "classification" => Ok((f, c)),
        _ => Err(format!(
            "this model needs tabular classification data (data.kind = \"csv\" or \"synthetic\", \
             data.task = \"classification\"), got {} ({})",
            info.kind, info.task
        )),
    }
}

// ---------------------------------------------------------------------------------------
// `resmlp`: a model written for oomph.
// ---------------------------------------------------------------------------------------

/// `[model]` keys of `kind = "resmlp"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(crate = "burn::serde", deny_unknown_fields, default)]
struct ResMlpConfig {
    /// Width of the residual stream. Default `64`.
    width: usize,
    /// Number of residual blocks. Default `2`.
    blocks: usize,
    /// Dropout inside each block, in `[0, 1)`. Default `0.1`.
    dropout: f64,
}

impl Default for ResMlpConfig {
    fn default() -> Self {
        Self { width: 64, blocks: 2, dropout: 0.1 }
    }
}

/// One pre-norm residual block: `x + W2 dropout(gelu(W1 norm(x)))`.
///
/// Dropout goes through `oomph::train::random::dropout`: its masks are keyed by (seed, step,
/// sample, call site), so splitting, retrying or resuming a step draws the same ones (burn's
/// `Dropout` draws from the backend RNG, whose masks depend on the chunk's shape).
#[derive(Module, Debug)]
struct ResBlock<B: Backend> {
    norm: LayerNorm<B>,
    up: Linear<B>,
    down: Linear<B>,
    dropout: f64,
    /// This block's dropout call site.
    site: u64,
}

impl<B: Backend> ResBlock<B> {
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = self.up.forward(self.norm.forward(x.clone()));
        x + self.down.forward(random::dropout(gelu(h), self.dropout, self.site))
    }
}

/// Embedding, residual blocks, final norm, classification head.
#[derive(Module, Debug)]
struct ResMlp<B: Backend> {
    embed: Linear<B>,
    blocks: Vec<ResBlock<B>>,
    norm: LayerNorm<B>,
    head: Linear<B>,
}

impl<B: Backend> ResMlp<B> {
    /// Builds the model for the loaded data; errors name the recipe key at fault.
    fn init(cfg: &ResMlpConfig, info: &DataInfo, device: &B::Device) -> Result<Self, String> {
        let (features, classes) = tabular_shape(info)?;
        if cfg.width == 0 {
            return Err("`model.width` must be positive".into());
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            return Err(format!("`model.dropout` = {} must be in [0, 1)", cfg.dropout));
        }
        let w = cfg.width;
        let blocks = (0..cfg.blocks)
            .map(|i| ResBlock {
                norm: LayerNormConfig::new(w).init(device),
                up: LinearConfig::new(w, 2 * w).init(device),
                down: LinearConfig::new(2 * w, w).init(device),
                dropout: cfg.dropout,
                site: random::site_at(random::site("resmlp.block.dropout"), i),
            })
            .collect();
        Ok(Self {
            embed: LinearConfig::new(features, w).init(device),
            blocks,
            norm: LayerNormConfig::new(w).init(device),
            head: LinearConfig::new(w, classes).init(device),
        })
    }

    /// Class logits `[n, classes]`.
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = self.blocks.iter().fold(self.embed.forward(x), |x, b| b.forward(x));
        self.head.forward(self.norm.forward(x))
    }
}

/// What oomph calls: generic over the backend, so it serves the autodiff model in training
/// and the inner model in evaluation.
impl<B: Backend> Objective<B> for ResMlp<B> {
    /// oomph's batches of table rows (`csv` and `synthetic` data).
    type Batch = TabularBatch<B>;

    fn loss(&self, batch: TabularBatch<B>) -> Loss<B> {
        let (x, y) = classes(batch);
        // The sum over the micro-batch, not the mean: oomph divides by the effective batch.
        Loss { sum: cross_entropy_per_row(self.forward(x), y).sum() }
    }

    fn evaluate(&self, batch: TabularBatch<B>) -> Evaluation<B> {
        let n = batch.len() as f64;
        let (x, y) = classes(batch);
        let logits = self.forward(x);
        let accuracy = correct(logits.clone(), y.clone());
        Evaluation {
            loss_sum: cross_entropy_per_row(logits, y).sum(),
            metrics: vec![MetricSum { name: "accuracy", sum: accuracy, weight: n }],
        }
    }
}

/// Features and class indices of a batch of classification rows (`init` refused other data).
fn classes<B: Backend>(batch: TabularBatch<B>) -> (Tensor<B, 2>, Tensor<B, 1, Int>) {
    match batch.targets {
        TabularTargets::Classes(y) => (batch.features, y),
        TabularTargets::Values(_) => unreachable!("the model is built for classification data only"),
    }
}

// ---------------------------------------------------------------------------------------
// `burn-train-mlp`: a model written for burn-train, as burn's examples write one.
// ---------------------------------------------------------------------------------------

/// `[model]` keys of `kind = "burn-train-mlp"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(crate = "burn::serde", deny_unknown_fields, default)]
struct BurnMlpConfig {
    /// Hidden layer width. Default `64`.
    width: usize,
}

impl Default for BurnMlpConfig {
    fn default() -> Self {
        Self { width: 64 }
    }
}

/// A two-layer MLP with burn-train's `TrainStep` and `InferenceStep`.
#[derive(Module, Debug)]
struct BurnMlp<B: Backend> {
    hidden: Linear<B>,
    output: Linear<B>,
}

impl<B: Backend> BurnMlp<B> {
    /// Builds the model for the loaded data.
    fn init(cfg: &BurnMlpConfig, info: &DataInfo, device: &B::Device) -> Result<Self, String> {
        let (features, classes) = tabular_shape(info)?;
        if cfg.width == 0 {
            return Err("`model.width` must be positive".into());
        }
        Ok(Self {
            hidden: LinearConfig::new(features, cfg.width).init(device),
            output: LinearConfig::new(cfg.width, classes).init(device),
        })
    }

    /// The forward pass both steps share; the loss is burn's mean cross-entropy.
    fn forward_classification(&self, images: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> ClassificationOutput<B> {
        let logits = self.output.forward(relu(self.hidden.forward(images)));
        let loss = CrossEntropyLossConfig::new().init(&logits.device()).forward(logits.clone(), targets.clone());
        ClassificationOutput::new(loss, logits, targets)
    }
}

/// Its input is oomph's batch of table rows, which oomph's `csv` and `synthetic` data give.
impl<B: AutodiffBackend> TrainStep for BurnMlp<B> {
    type Input = TabularBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: TabularBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        let (images, targets) = classes(batch);
        let item = self.forward_classification(images, targets);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl<B: Backend> InferenceStep for BurnMlp<B> {
    type Input = TabularBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: TabularBatch<B>) -> ClassificationOutput<B> {
        let (images, targets) = classes(batch);
        self.forward_classification(images, targets)
    }
}
