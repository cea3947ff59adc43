//! The extension point: what a model implements to be trained by oomph.
//!
//! A model maps a micro-batch to the **sum** of its per-sample (or per-token) losses. oomph
//! divides by the total weight of the whole effective batch, so the step's gradient is the
//! gradient of the mean loss over the effective batch however it was split into chunks.

use burn::tensor::{backend::Backend, Tensor};

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
/// A model declares the batch type it trains on, [`Objective::Batch`]: what the data's burn
/// `Batcher` produces (see [`crate::feed`]). oomph's built-in data gives
/// [`TabularBatch`](crate::feed::TabularBatch) (`csv`, `synthetic`) and
/// [`TokenBatch`](crate::feed::TokenBatch) (`text`); a program's own data gives its own type.
/// A model and data of different batch types are refused before the model is built.
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
/// use oomph_train::feed::{Feed, TabularBatch, TabularRows, TabularTargets};
/// use oomph_train::tensors::cross_entropy_per_row;
/// use oomph_train::{Loss, Objective};
///
/// #[derive(Module, Debug)]
/// struct MyModel<B: Backend> {
///     linear: Linear<B>,
/// }
///
/// impl<B: Backend> Objective<B> for MyModel<B> {
///     type Batch = TabularBatch<B>;
///     fn loss(&self, batch: TabularBatch<B>) -> Loss<B> {
///         let TabularTargets::Classes(y) = batch.targets else { unreachable!("built for classes") };
///         Loss { sum: cross_entropy_per_row(self.linear.forward(batch.features), y).sum() }
///     }
/// }
///
/// type B = burn::backend::Flex;
/// let device = Default::default();
/// let model = MyModel::<B> { linear: LinearConfig::new(2, 3).init(&device) };
/// let table = oomph_data::Tabular {
///     features: vec![0.5, -1.0, 2.0, 0.0],
///     n_features: 2,
///     targets: oomph_data::Targets::Classes { labels: vec![0, 2], names: vec!["a".into(), "b".into(), "c".into()] },
///     feature_names: vec!["x".into(), "y".into()],
/// };
/// let batch: TabularBatch<B> = TabularRows::feed(table).batch(&[0, 1], &device);
/// let sum = model.loss(batch).sum.into_scalar();
/// assert!(sum > 0.0);
/// ```
pub trait Objective<B: Backend> {
    /// The batch type the model trains on (the output of the data's `Batcher`).
    type Batch: 'static;

    /// The sum of the losses of this micro-batch (not the mean), over the units the data
    /// weighs its samples in (samples by default, target tokens for text).
    fn loss(&self, batch: Self::Batch) -> Loss<B>;

    /// The loss of this micro-batch and, when the model knows it, the number of units its sum
    /// is taken over (samples, or target tokens), which the trainer checks against the data's
    /// weight of the chunk: a mismatch is refused rather than trained with a scaled gradient.
    /// Defaults to [`Objective::loss`] with no count; the burn-train adapter reports its
    /// output's count.
    fn weighed_loss(&self, batch: Self::Batch) -> (Loss<B>, Option<f64>) {
        (self.loss(batch), None)
    }

    /// Evaluation: loss sum plus optional metrics. Defaults to the training loss alone.
    fn evaluate(&self, batch: Self::Batch) -> Evaluation<B> {
        Evaluation { loss_sum: self.loss(batch).sum, metrics: Vec::new() }
    }
}

/// The batch type of `M`'s inference copy (the model evaluation runs on).
pub type InnerBatch<B, M> = <<M as burn::module::AutodiffModule<B>>::InnerModule as Objective<
    <B as burn::tensor::backend::AutodiffBackend>::InnerBackend,
>>::Batch;
