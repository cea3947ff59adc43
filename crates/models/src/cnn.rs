//! `cnn`: a small convolutional network for image classification (`data.kind =
//! "image_folder"`).
//!
//! Blocks of a 3x3 convolution (padding 1), ReLU and a 2x2 max-pool (while the image is at
//! least 2 pixels high and wide), then the flattened features through dropout into a linear
//! head sized at build time from the images' shape. Dropout is keyed by `(seed, step, sample,
//! site)` ([`oomph_train::random::dropout`]), so a sample's mask does not depend on the split.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::module::max_pool2d;
use burn::tensor::Tensor;
use oomph_data::DataInfo;
use oomph_train::feed::ImageBatch;
use oomph_train::random::{dropout, site};
use oomph_train::tensors::{correct, cross_entropy_per_row};
use oomph_train::{Evaluation, Loss, MetricSum, Objective};
use serde::{Deserialize, Serialize};

/// `[model]` keys of `kind = "cnn"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CnnConfig {
    /// Output channels of each convolution block. Default `[16, 32]`.
    pub channels: Vec<usize>,
    /// Dropout before the head, in `[0, 1)`. Default `0.0`.
    pub dropout: f64,
}

impl Default for CnnConfig {
    fn default() -> Self {
        Self { channels: vec![16, 32], dropout: 0.0 }
    }
}

/// The CNN.
#[derive(Module, Debug)]
pub struct Cnn<B: Backend> {
    convs: Vec<Conv2d<B>>,
    /// Whether block `i` pools (its input is at least 2x2).
    pools: Vec<bool>,
    head: Linear<B>,
    dropout: f64,
}

/// The call site of the dropout before the head.
const DROPOUT: u64 = site("cnn.dropout");

/// Builds a CNN sized for the data's images and classes.
pub fn init<B: Backend>(cfg: &CnnConfig, info: &DataInfo, device: &B::Device) -> Result<Cnn<B>, String> {
    let (Some([c, mut h, mut w]), Some(classes)) = (info.image, info.n_classes) else {
        return Err(format!("the cnn needs image data (data.kind = \"image_folder\"), got {}", info.kind));
    };
    if !(0.0..1.0).contains(&cfg.dropout) {
        return Err(format!("`model.dropout` = {} must be in [0, 1)", cfg.dropout));
    }
    if cfg.channels.is_empty() || cfg.channels.contains(&0) {
        return Err("`model.channels` must list at least one positive number of channels".into());
    }
    let mut convs = Vec::new();
    let mut pools = Vec::new();
    let mut input = c;
    for &out in &cfg.channels {
        let pad = PaddingConfig2d::Explicit(1, 1, 1, 1);
        convs.push(Conv2dConfig::new([input, out], [3, 3]).with_padding(pad).init(device));
        let pool = h >= 2 && w >= 2;
        if pool {
            (h, w) = (h / 2, w / 2);
        }
        pools.push(pool);
        input = out;
    }
    let head = LinearConfig::new(input * h * w, classes).init(device);
    Ok(Cnn { convs, pools, head, dropout: cfg.dropout })
}

impl<B: Backend> Cnn<B> {
    /// Class logits `[n, classes]` of images `[n, channels, height, width]`.
    pub fn forward(&self, mut x: Tensor<B, 4>) -> Tensor<B, 2> {
        for (conv, &pool) in self.convs.iter().zip(&self.pools) {
            x = relu(conv.forward(x));
            if pool {
                x = max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false);
            }
        }
        self.head.forward(dropout(x.flatten::<2>(1, 3), self.dropout, DROPOUT))
    }
}

impl<B: Backend> Objective<B> for Cnn<B> {
    type Batch = ImageBatch<B>;

    fn loss(&self, batch: ImageBatch<B>) -> Loss<B> {
        Loss { sum: cross_entropy_per_row(self.forward(batch.images), batch.targets).sum() }
    }

    fn evaluate(&self, batch: ImageBatch<B>) -> Evaluation<B> {
        let n = batch.targets.dims()[0] as f64;
        let logits = self.forward(batch.images);
        let acc = correct(logits.clone(), batch.targets.clone());
        Evaluation {
            loss_sum: cross_entropy_per_row(logits, batch.targets).sum(),
            metrics: vec![MetricSum { name: "accuracy", sum: acc, weight: n }],
        }
    }
}
