//! Training a burn model on a burn dataset with oomph: the pieces a burn user already has (a
//! `Dataset`, a `Batcher` to the model's own batch type, a model with burn-train's
//! `TrainStep` and `InferenceStep`), trained through oomph's whole command line (progress,
//! checkpoints, resume, supervision, report):
//!
//! ```text
//! cargo run --release --example burn_dataset -- train configs/burn-dataset.toml
//! cargo run --example burn_dataset -- train configs/burn-dataset-debug.toml
//! ```
//!
//! The data is the shipped digits (`data/digits.csv`: 8x8 grey images, a label each), read
//! by this program into its own items, split into burn `SelectionDataset`s, and batched into
//! 4-d image tensors by its own `Batcher`. What oomph
//! adds is one registration line each for the data (`add_data`) and the model (`add`); the
//! recipe names them with `data.kind = "program"`, `data.name` and `model.kind`.

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::transform::SelectionDataset;
use burn::data::dataset::{Dataset, InMemDataset};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::serde::{Deserialize, Serialize};
use burn::tensor::activation::relu;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use oomph::data::DataInfo;
use oomph::train::adapter::BurnTrain;
use oomph::train::{Batched, Data, DataRequest, Models, Registry};
use std::path::Path;
use std::sync::Arc;

oomph::main!(Digits);

/// This program's data and model.
struct Digits;

impl Models for Digits {
    fn register<B: AutodiffBackend>(r: &mut Registry<B>) {
        r.add_data("digit-images", "the digits of a csv (64 pixels, label) as 8x8 images", load::<B>);
        r.add(
            "digits-cnn",
            "a small convolutional network for 8x8 digit images",
            |c: &CnnConfig, _: &DataInfo, d: &B::Device| Ok(BurnTrain::new(Cnn::<B>::init(c, d))),
        );
    }
}

// ---------------------------------------------------------------------------------------
// The data: a burn `Dataset` of images and a `Batcher` to the model's batch type.
// ---------------------------------------------------------------------------------------

/// One image: 64 pixels (0..16, row-major 8x8) and its digit.
#[derive(Debug, Clone)]
struct DigitImage {
    pixels: Vec<f32>,
    label: u8,
}

/// The model's batch: images `[n, 1, 8, 8]` scaled to `[0, 1]`, and their digits `[n]`.
struct DigitBatch<B: Backend> {
    images: Tensor<B, 4>,
    targets: Tensor<B, 1, Int>,
}

/// Stacks images into a [`DigitBatch`] on any backend (the autodiff one for training, its
/// inner one for evaluation).
#[derive(Clone)]
struct DigitBatcher;

impl<B: Backend> Batcher<B, DigitImage, DigitBatch<B>> for DigitBatcher {
    fn batch(&self, items: Vec<DigitImage>, device: &B::Device) -> DigitBatch<B> {
        let n = items.len();
        let pixels: Vec<f32> = items.iter().flat_map(|i| i.pixels.iter().map(|p| p / 16.0)).collect();
        let labels: Vec<i64> = items.iter().map(|i| i64::from(i.label)).collect();
        DigitBatch {
            images: Tensor::from_data(TensorData::new(pixels, [n, 1, 8, 8]), device),
            targets: Tensor::from_data(TensorData::new(labels, [n]), device),
        }
    }
}

/// Reads `p0..p63,label` rows (a header first) into images.
fn read_images(path: &Path) -> Result<Vec<DigitImage>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let mut images = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1).filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |what: &str| format!("`{}`, line {}: {what}", path.display(), i + 1);
        let values: Vec<&str> = line.split(',').map(str::trim).collect();
        if values.len() != 65 {
            return Err(bad(&format!("{} fields, expected 64 pixels and a label", values.len())));
        }
        let pixels = values[..64].iter().map(|v| v.parse::<f32>()).collect::<Result<Vec<_>, _>>();
        let pixels = pixels.map_err(|e| bad(&format!("a pixel is not a number ({e})")))?;
        let label = values[64].parse::<u8>().ok().filter(|l| *l < 10).ok_or_else(|| bad("the label is not a digit"))?;
        images.push(DigitImage { pixels, label });
    }
    Ok(images)
}

/// One split of the images.
type Split = SelectionDataset<InMemDataset<DigitImage>, DigitImage>;

/// The recipe's `data.path` as training and validation images: `data.valid_fraction` of them
/// held out, drawn with the run seed by oomph's split (the same on every platform and
/// version), each split a burn `SelectionDataset` of the images.
fn load<B: AutodiffBackend>(req: &DataRequest) -> Result<Data<B>, String> {
    let path = req.section.path.as_deref().ok_or("data.path is not set")?;
    let path = Path::new(path);
    let images = read_images(path)?;
    let content = oomph::data::file_sha256(path).map_err(|e| e.to_string())?;
    let n = images.len();
    let n_valid = oomph::data::valid_count(n, req.section.valid_fraction);
    if n_valid >= n {
        return Err(format!(
            "{n} images leave none for training with data.valid_fraction = {}",
            req.section.valid_fraction
        ));
    }
    let (train, valid) = oomph::data::split_indices(n, n_valid, req.seed);
    let all = Arc::new(InMemDataset::new(images));
    let train = Split::from_indices_checked(all.clone(), train);
    let valid = Split::from_indices_checked(all, valid);
    let description = format!("{n} digit images from `{}`: train {} / valid {n_valid}", path.display(), train.len());
    let mut data = Data::program(
        "digit-images",
        &description,
        content,
        Batched::new(train, DigitBatcher),
        Batched::new(valid, DigitBatcher),
    );
    data.info.n_classes = Some(10);
    Ok(data)
}

// ---------------------------------------------------------------------------------------
// The model: written for burn-train, trained unchanged through oomph's adapter.
// ---------------------------------------------------------------------------------------

/// `[model]` keys of `kind = "digits-cnn"`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(crate = "burn::serde", deny_unknown_fields, default)]
struct CnnConfig {
    /// Channels of the first convolution (the second has twice as many). Default `16`.
    channels: usize,
}

impl Default for CnnConfig {
    fn default() -> Self {
        Self { channels: 16 }
    }
}

/// Two 3x3 convolutions (the second with stride 2: 8x8 to 4x4) and a linear head.
#[derive(Module, Debug)]
struct Cnn<B: Backend> {
    conv1: Conv2d<B>,
    conv2: Conv2d<B>,
    head: Linear<B>,
}

impl<B: Backend> Cnn<B> {
    fn init(cfg: &CnnConfig, device: &B::Device) -> Self {
        let c = cfg.channels.max(1);
        let pad = PaddingConfig2d::Explicit(1, 1, 1, 1);
        Self {
            conv1: Conv2dConfig::new([1, c], [3, 3]).with_padding(pad.clone()).init(device),
            conv2: Conv2dConfig::new([c, 2 * c], [3, 3]).with_stride([2, 2]).with_padding(pad).init(device),
            head: LinearConfig::new(2 * c * 16, 10).init(device),
        }
    }

    /// The forward pass both steps share; the loss is burn's mean cross-entropy.
    fn forward_classification(&self, batch: DigitBatch<B>) -> ClassificationOutput<B> {
        let x = relu(self.conv1.forward(batch.images));
        let x = relu(self.conv2.forward(x));
        let logits = self.head.forward(x.flatten::<2>(1, 3));
        let loss = CrossEntropyLossConfig::new().init(&logits.device()).forward(logits.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, logits, batch.targets)
    }
}

impl<B: AutodiffBackend> TrainStep for Cnn<B> {
    type Input = DigitBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: DigitBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
        let item = self.forward_classification(batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }
}

impl<B: Backend> InferenceStep for Cnn<B> {
    type Input = DigitBatch<B>;
    type Output = ClassificationOutput<B>;

    fn step(&self, batch: DigitBatch<B>) -> ClassificationOutput<B> {
        self.forward_classification(batch)
    }
}
