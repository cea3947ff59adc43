//! `mlp`: a multi-layer perceptron for tabular classification and regression.
//!
//! Its dropout is keyed by `(seed, step, sample, layer)` ([`oomph_train::random::dropout`]), so
//! a sample's masks do not depend on how the effective batch is split into micro-batches.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{gelu, relu};
use burn::tensor::{backend::Backend, Tensor};
use oomph_data::DataInfo;
use oomph_train::feed::{TabularBatch, TabularTargets};
use oomph_train::random::{dropout, site, site_at};
use oomph_train::tensors::{correct, cross_entropy_per_row};
use oomph_train::{Evaluation, Loss, MetricSum, Objective};
use serde::{Deserialize, Serialize};

/// `[model]` keys of `kind = "mlp"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Hidden layer widths. Default `[64]`.
    pub hidden: Vec<usize>,
    /// `"relu"` or `"gelu"`. Default `"relu"`.
    pub activation: String,
    /// Dropout after each hidden layer, in `[0, 1)`. Default `0.0`.
    pub dropout: f64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self { hidden: vec![64], activation: "relu".into(), dropout: 0.0 }
    }
}

/// The MLP.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    layers: Vec<Linear<B>>,
    /// Dropout probability after each hidden layer.
    dropout: f64,
    gelu: bool,
}

/// The call site of the dropout after hidden layer `i` is `site_at(DROPOUT, i)`.
const DROPOUT: u64 = site("mlp.dropout");

/// Builds an MLP sized for the data.
pub fn init<B: Backend>(cfg: &MlpConfig, info: &DataInfo, device: &B::Device) -> Result<Mlp<B>, String> {
    let inputs = info.n_features.ok_or_else(|| {
        format!("the mlp needs tabular data (data.kind = \"csv\" or \"synthetic\"), got {}", info.kind)
    })?;
    if !(0.0..1.0).contains(&cfg.dropout) {
        return Err(format!("`model.dropout` = {} must be in [0, 1)", cfg.dropout));
    }
    if cfg.hidden.contains(&0) {
        return Err("`model.hidden` widths must be positive".into());
    }
    let gelu = match cfg.activation.as_str() {
        "relu" => false,
        "gelu" => true,
        other => return Err(format!("`model.activation` = \"{other}\" is unknown; use \"relu\" or \"gelu\"")),
    };
    let regression = info.task == "regression";
    let outputs = if regression { 1 } else { info.n_classes.unwrap_or(2) };
    let mut dims = vec![inputs];
    dims.extend(&cfg.hidden);
    dims.push(outputs);
    let layers = dims.windows(2).map(|w| LinearConfig::new(w[0], w[1]).init(device)).collect();
    Ok(Mlp { layers, dropout: cfg.dropout, gelu })
}

impl<B: Backend> Mlp<B> {
    /// Logits (classification) or predictions (regression), `[n, outputs]`.
    pub fn forward(&self, mut x: Tensor<B, 2>) -> Tensor<B, 2> {
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = if self.gelu { gelu(x) } else { relu(x) };
                x = dropout(x, self.dropout, site_at(DROPOUT, i));
            }
        }
        x
    }
}

impl<B: Backend> Objective<B> for Mlp<B> {
    type Batch = TabularBatch<B>;

    fn loss(&self, batch: TabularBatch<B>) -> Loss<B> {
        let out = self.forward(batch.features);
        match batch.targets {
            TabularTargets::Values(y) => Loss { sum: (out - y).powi_scalar(2).sum() },
            TabularTargets::Classes(y) => Loss { sum: cross_entropy_per_row(out, y).sum() },
        }
    }

    fn evaluate(&self, batch: TabularBatch<B>) -> Evaluation<B> {
        let n = batch.len() as f64;
        let out = self.forward(batch.features);
        match batch.targets {
            TabularTargets::Values(y) => {
                let sq = (out - y).powi_scalar(2).sum();
                Evaluation { loss_sum: sq.clone(), metrics: vec![MetricSum { name: "mse", sum: sq, weight: n }] }
            }
            TabularTargets::Classes(y) => {
                let acc = correct(out.clone(), y.clone());
                Evaluation {
                    loss_sum: cross_entropy_per_row(out, y).sum(),
                    metrics: vec![MetricSum { name: "accuracy", sum: acc, weight: n }],
                }
            }
        }
    }
}
