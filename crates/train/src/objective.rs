//! The extension point: what a model implements to be trained by oomph.
//!
//! A model maps a micro-batch to the **sum** of its per-sample (or per-token) losses. oomph
//! divides by the total weight of the whole effective batch, so the step's gradient is the
//! gradient of the mean loss over the effective batch however it was split into chunks.

use burn::tensor::{backend::Backend, Tensor};
use oomph_data::Batch;

/// What a model returns for one micro-batch during training.
pub struct Loss<B: Backend> {
    /// Sum of the per-sample (or per-token) losses of this micro-batch, shape `[1]`.
    pub sum: Tensor<B, 1>,
}

/// A metric accumulated over an evaluation: reported as `sum / weight` over all batches.
pub struct MetricSum<B: Backend> {
    /// Metric name, e.g. `"accuracy"`.
    pub name: &'static str,
    /// Sum of the metric over the micro-batch, shape `[1]`.
    pub sum: Tensor<B, 1>,
    /// What the sum is divided by (samples or tokens of this micro-batch).
    pub weight: f64,
}

/// What a model returns for one micro-batch during evaluation.
pub struct Evaluation<B: Backend> {
    /// Sum of the losses, shape `[1]`.
    pub loss_sum: Tensor<B, 1>,
    /// Optional metrics (summed; oomph averages them over the evaluation).
    pub metrics: Vec<MetricSum<B>>,
}

/// Implemented by every trainable model, for any backend (implement it generically over `B`
/// so it covers both the autodiff model used for training and the inner model used for
/// evaluation).
///
/// Randomness: draw it through [`crate::random`] (for example
/// `oomph_train::random::dropout(x, p, site)` instead of burn's `Dropout`), whose draws are
/// keyed by (seed, step, sample index, call site), so the same sample gets the same mask
/// however the effective batch is split into chunks, retried after an out-of-memory, or
/// resumed. burn's own `Dropout` draws from the backend RNG in chunk order, so a split changes
/// its masks and the run.
///
/// ```
/// use burn::module::Module;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::tensor::backend::Backend;
/// use oomph_data::Batch;
/// use oomph_train::tensors::{cross_entropy_per_row, tabular_classes};
/// use oomph_train::{Loss, Objective};
///
/// #[derive(Module, Debug)]
/// struct MyModel<B: Backend> {
///     linear: Linear<B>,
/// }
///
/// impl<B: Backend> Objective<B> for MyModel<B> {
///     fn loss(&self, batch: &Batch, device: &B::Device) -> Loss<B> {
///         let (x, y) = tabular_classes::<B>(batch, device);
///         Loss { sum: cross_entropy_per_row(self.linear.forward(x), y).sum() }
///     }
/// }
///
/// type B = burn::backend::Flex;
/// let device = Default::default();
/// let model = MyModel::<B> { linear: LinearConfig::new(2, 3).init(&device) };
/// let batch = Batch::Tabular {
///     x: vec![0.5, -1.0, 2.0, 0.0],
///     n_features: 2,
///     y: oomph_data::BatchTargets::Classes(vec![0, 2]),
/// };
/// assert_eq!(model.weight(&batch), 2.0);
/// let sum = model.loss(&batch, &device).sum.into_scalar();
/// assert!(sum > 0.0);
/// ```
pub trait Objective<B: Backend> {
    /// The sum of the losses of this micro-batch (not the mean).
    fn loss(&self, batch: &Batch, device: &B::Device) -> Loss<B>;

    /// The weight this micro-batch contributes to the effective batch: the number of
    /// samples by default, the number of target tokens for token batches. The step's loss
    /// is `sum(loss_i) / sum(weight_i)` over all chunks of the step.
    fn weight(&self, batch: &Batch) -> f64 {
        default_weight(batch)
    }

    /// Evaluation: loss sum plus optional metrics. Defaults to the training loss alone.
    fn evaluate(&self, batch: &Batch, device: &B::Device) -> Evaluation<B> {
        Evaluation { loss_sum: self.loss(batch, device).sum, metrics: Vec::new() }
    }
}

/// The default weight of a batch: its number of samples, or its number of target tokens
/// for token batches.
pub fn default_weight(batch: &Batch) -> f64 {
    match batch {
        Batch::Tokens { targets, .. } => targets.len() as f64,
        other => other.len() as f64,
    }
}
