//! Training a burn-train model with oomph: a thin adapter, [`BurnTrain`].
//!
//! A model written for burn-train's `Learner` implements `TrainStep` (forward, then backward
//! on the micro-batch's **mean** loss) and `InferenceStep` (forward only), both usually
//! calling one method such as `forward_classification` that returns a
//! [`ClassificationOutput`]; its batches come from the user's own burn `Batcher`. Wrap the
//! model in [`BurnTrain`] and it is an oomph [`Objective`] whose batch type is the model's
//! `InferenceStep::Input`: the same batcher feeds it (see [`crate::feed::Batched`]).
//!
//! ```text
//! use oomph_train::adapter::BurnTrain;
//!
//! // In `Models::register`: the kind's init returns the wrapped model.
//! r.add("burn-net", "a burn-train model",
//!       |cfg: &NetConfig, info: &DataInfo, device: &B::Device| Ok(BurnTrain::new(cfg.init::<B>(info, device))));
//! ```
//!
//! The loss comes out of the model's `InferenceStep::Output` through [`HasLoss`], ready-made
//! for burn's [`ClassificationOutput`], [`MultiLabelClassificationOutput`],
//! [`RegressionOutput`] and [`SequenceOutput`] (with accuracy / mse as evaluation metrics
//! where they apply).
//!
//! [`Objective::loss`] returns `mean_loss * n`, where `n` is [`HasLoss::weight`], the number
//! of units the output's mean is taken over (samples; target tokens for a
//! [`SequenceOutput`]): the *sum* oomph expects, so its normalisation by the effective
//! batch's total weight is exact whatever the micro-batch split. The data must weigh its
//! items in the same units: samples by default, tokens through
//! [`Batched::each_weighs`](crate::feed::Batched::each_weighs) or
//! [`Batched::weighed`](crate::feed::Batched::weighed) for sequence data; the adapter reports
//! its count ([`Objective::weighed_loss`]) and a chunk the data weighs otherwise is refused.
//!
//! Two losses are not a mean times that count, and need an [`Objective`] that returns the sum
//! instead: a [`SequenceOutput`] of padded sequences (burn's output carries no padding mask, so
//! its count is every target position, padding included; its accuracy counts them too), and
//! burn's class-weighted cross-entropy (divided by the sum of the weights, not the count).
//!
//! # Why `InferenceStep` and not `TrainStep::step`
//!
//! `TrainStep::step` runs the backward pass itself, on the micro-batch's mean, and returns
//! finished gradients. oomph owns the backward pass: each chunk's loss is scaled by
//! `1 / W` (the effective batch's total weight) *before* its backward, that backward runs
//! inside oomph's out-of-memory recovery boundary, and the loss value is read for the
//! metrics. Calling `step` would run a second, unscaled backward and hand oomph a loss whose
//! graph is already consumed. So the adapter calls the forward that `step` wraps:
//! `InferenceStep::step` **on the autodiff model**. burn's examples (and the usual
//! convention) implement `InferenceStep` for every `B: Backend`, autodiff backends included,
//! and both steps call the same forward method, so this is the model's own code and its
//! loss tensor, still tracked. The gradient oomph computes for a chunk is exactly
//! `TrainStep::step`'s gradient times `n / W` (tested below). If a model implements
//! `InferenceStep` only for a concrete inner backend, make that impl generic over
//! `B: Backend`. A `TrainStep` that does more than forward + backward (extra losses added
//! only during training) is not reproduced: put that logic in the shared forward method.
//!
//! Evaluation uses `InferenceStep` on the inner (non-autodiff) model, which oomph obtains
//! with `valid()`: the same impl of [`Objective`] serves both, and the same batcher builds
//! both backends' batches.
//!
//! The wrapped model is the field `model`: its parameters are named `model.<path>` in
//! checkpoints and in `model.safetensors`.

use crate::objective::{Evaluation, Loss, MetricSum, Objective};
use crate::tensors::correct;
use burn::module::Module;
use burn::tensor::{backend::Backend, Tensor};
use burn::train::{
    ClassificationOutput, InferenceStep, MultiLabelClassificationOutput, RegressionOutput, SequenceOutput,
};
use std::marker::PhantomData;

/// A step output that carries the micro-batch's mean loss.
pub trait HasLoss<B: Backend> {
    /// The loss averaged over the micro-batch, shape `[1]`: over its samples, or over its
    /// target tokens for token batches (the units the data weighs its items in).
    fn mean_loss(&self) -> Tensor<B, 1>;

    /// The number of units the mean is taken over (samples, or target tokens): the loss sum
    /// is `mean_loss * weight`. Read from the output's shapes, on the host.
    fn weight(&self) -> f64;

    /// Evaluation metrics summed over the micro-batch (oomph averages them over the whole
    /// evaluation). None by default.
    fn metrics(&self) -> Vec<MetricSum<B>> {
        Vec::new()
    }
}

/// Loss, plus `accuracy` (arg-max of `output` equals `targets`).
impl<B: Backend> HasLoss<B> for ClassificationOutput<B> {
    fn mean_loss(&self) -> Tensor<B, 1> {
        self.loss.clone()
    }

    fn weight(&self) -> f64 {
        self.targets.dims()[0] as f64
    }

    fn metrics(&self) -> Vec<MetricSum<B>> {
        let n = self.targets.dims()[0] as f64;
        let sum = correct(self.output.clone(), self.targets.clone());
        vec![MetricSum { name: "accuracy", sum, weight: n }]
    }
}

/// Loss only.
impl<B: Backend> HasLoss<B> for MultiLabelClassificationOutput<B> {
    fn mean_loss(&self) -> Tensor<B, 1> {
        self.loss.clone()
    }

    fn weight(&self) -> f64 {
        self.targets.dims()[0] as f64
    }
}

/// Loss, plus `mse` (squared error averaged over the targets of a sample, then over samples).
impl<B: Backend> HasLoss<B> for RegressionOutput<B> {
    fn mean_loss(&self) -> Tensor<B, 1> {
        self.loss.clone()
    }

    fn weight(&self) -> f64 {
        self.targets.dims()[0] as f64
    }

    fn metrics(&self) -> Vec<MetricSum<B>> {
        let [n, t] = self.targets.dims();
        let sum = (self.output.clone() - self.targets.clone()).powi_scalar(2).sum().div_scalar(t.max(1) as f64);
        vec![MetricSum { name: "mse", sum, weight: n as f64 }]
    }
}

/// Loss, plus `accuracy` per target token (the predictions, or the arg-max of the logits).
impl<B: Backend> HasLoss<B> for SequenceOutput<B> {
    fn mean_loss(&self) -> Tensor<B, 1> {
        self.loss.clone()
    }

    fn weight(&self) -> f64 {
        let [n, s] = self.targets.dims();
        (n * s) as f64
    }

    fn metrics(&self) -> Vec<MetricSum<B>> {
        let [n, s] = self.targets.dims();
        let predicted = match &self.predictions {
            Some(p) => p.clone(),
            None => self.logits.clone().argmax(2).reshape([n, s]),
        };
        let sum = predicted.equal(self.targets.clone()).float().sum();
        vec![MetricSum { name: "accuracy", sum, weight: (n * s) as f64 }]
    }
}

/// A burn-train model (one that implements `InferenceStep` for every backend, as well as
/// `TrainStep` for burn's `Learner`) as an oomph [`Objective`]. See the [module
/// docs](self) for what it calls and why.
///
/// It is a burn `Module` itself: oomph checkpoints, restores and exports it like any model.
#[derive(Module, Debug)]
pub struct BurnTrain<B: Backend, M> {
    /// The wrapped burn-train model.
    pub model: M,
    _backend: PhantomData<B>,
}

impl<B: Backend, M: Module<B>> BurnTrain<B, M> {
    /// Wraps `model`.
    pub fn new(model: M) -> Self {
        Self { model, _backend: PhantomData }
    }

    /// The wrapped model (e.g. to keep using it with burn-train after training).
    pub fn into_inner(self) -> M {
        self.model
    }
}

impl<B, M> Objective<B> for BurnTrain<B, M>
where
    B: Backend,
    M: Module<B> + InferenceStep,
    M::Input: 'static,
    M::Output: HasLoss<B>,
{
    type Batch = M::Input;

    /// `mean_loss * weight`: the sum oomph normalises by the effective batch's weight.
    fn loss(&self, batch: M::Input) -> Loss<B> {
        self.weighed_loss(batch).0
    }

    /// The loss with the output's count of samples (or target tokens), which the trainer
    /// checks against the data's weight.
    fn weighed_loss(&self, batch: M::Input) -> (Loss<B>, Option<f64>) {
        let out = self.model.step(batch);
        let weight = out.weight();
        (Loss { sum: out.mean_loss().mul_scalar(weight) }, Some(weight))
    }

    fn evaluate(&self, batch: M::Input) -> Evaluation<B> {
        let out = self.model.step(batch);
        Evaluation { loss_sum: out.mean_loss().mul_scalar(out.weight()), metrics: out.metrics() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{Batched, Data, Feed, TabularItem, TabularRows, TabularTarget};
    use crate::{train, Resume, Session};
    use burn::backend::{Autodiff, Flex};
    use burn::data::dataloader::batcher::Batcher;
    use burn::module::AutodiffModule;
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::GradientsParams;
    use burn::tensor::activation::relu;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{ElementConversion, Int};
    use burn::train::{TrainOutput, TrainStep};
    use oomph_data::{Source, Splits};
    use std::collections::BTreeMap;
    use std::path::Path;

    type Ad = Autodiff<Flex>;

    /// A model written for burn-train, the way burn's examples write one.
    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        hidden: Linear<B>,
        out: Linear<B>,
    }

    /// Its batch type.
    struct NetBatch<B: Backend> {
        x: Tensor<B, 2>,
        y: Tensor<B, 1, Int>,
    }

    impl<B: Backend> Net<B> {
        fn new(features: usize, classes: usize, device: &B::Device) -> Self {
            Self {
                hidden: LinearConfig::new(features, 16).init(device),
                out: LinearConfig::new(16, classes).init(device),
            }
        }

        fn forward_classification(&self, x: Tensor<B, 2>, y: Tensor<B, 1, Int>) -> ClassificationOutput<B> {
            let logits = self.out.forward(relu(self.hidden.forward(x)));
            let loss = CrossEntropyLossConfig::new().init(&logits.device()).forward(logits.clone(), y.clone());
            ClassificationOutput::new(loss, logits, y)
        }
    }

    impl<B: AutodiffBackend> TrainStep for Net<B> {
        type Input = NetBatch<B>;
        type Output = ClassificationOutput<B>;

        fn step(&self, batch: NetBatch<B>) -> TrainOutput<ClassificationOutput<B>> {
            let item = self.forward_classification(batch.x, batch.y);
            TrainOutput::new(self, item.loss.backward(), item)
        }
    }

    impl<B: Backend> InferenceStep for Net<B> {
        type Input = NetBatch<B>;
        type Output = ClassificationOutput<B>;

        fn step(&self, batch: NetBatch<B>) -> ClassificationOutput<B> {
            self.forward_classification(batch.x, batch.y)
        }
    }

    /// The user's own burn batcher, from table rows to the model's input type.
    struct NetBatcher;

    impl<B: Backend> Batcher<B, TabularItem, NetBatch<B>> for NetBatcher {
        fn batch(&self, items: Vec<TabularItem>, device: &B::Device) -> NetBatch<B> {
            let n = items.len();
            let x: Vec<f32> = items.iter().flat_map(|i| i.features.iter().copied()).collect();
            let y: Vec<i64> = items
                .iter()
                .map(|i| match i.target {
                    TabularTarget::Class(c) => i64::from(c),
                    TabularTarget::Value(_) => panic!("classification rows expected"),
                })
                .collect();
            let d = x.len() / n.max(1);
            NetBatch {
                x: Tensor::from_data(burn::tensor::TensorData::new(x, [n, d]), device),
                y: Tensor::from_data(burn::tensor::TensorData::new(y, [n]), device),
            }
        }
    }

    fn feed(source: Source) -> Batched<TabularItem, TabularRows, NetBatcher> {
        match source {
            Source::Tabular(t) => Batched::new(TabularRows::new(t), NetBatcher),
            Source::Text { .. } => unreachable!("synthetic data is a table"),
        }
    }

    const RECIPE: &str = r#"
[run]
name = "adapter"
seed = 11
[model]
kind = "burn-train-net"
[data]
kind = "synthetic"
samples = 600
features = 8
classes = 3
[optimizer]
kind = "sgd"
lr = 0.2
[training]
steps = 30
effective_batch = 64
eval_every = 30
[micro_batch]
grow_after = 100000
[checkpoint]
every = 0
"#;

    fn recipe(micro: usize) -> oomph_recipe::Recipe {
        let set = [format!("micro_batch.initial={micro}")];
        oomph_recipe::parse(RECIPE, "test", Path::new("."), &set).unwrap_or_else(|e| panic!("{e}"))
    }

    fn splits(r: &oomph_recipe::Recipe) -> Splits {
        oomph_data::load(&r.data, r.run.seed, None).unwrap()
    }

    /// The recipe's synthetic table through the user's batcher.
    fn data(r: &oomph_recipe::Recipe) -> Data<Ad> {
        let s = splits(r);
        Data::new(s.info, s.identity, feed(s.train), feed(s.valid))
    }

    /// burn's CPU backends share one RNG, and the recovery boundary reads the process-wide
    /// panic recorder (another test's panicking thread would look like this run's failure):
    /// tests that train take turns with the recovery tests.
    use crate::recovery::tests::serial;

    fn run(micro: usize, dir: &Path) -> crate::Summary {
        let r = recipe(micro);
        let data = data(&r);
        let (features, classes) = (data.info.n_features.unwrap(), data.info.n_classes.unwrap());
        let mut session = Session::<Ad>::new(r, "test", Default::default(), dir);
        session.resume = Resume::Never;
        let _turn = serial();
        train(session, &data, |device| BurnTrain::new(Net::<Ad>::new(features, classes, device))).unwrap()
    }

    fn weights(path: &Path) -> BTreeMap<String, Vec<f32>> {
        use burn::store::{ModuleStore, SafetensorsStore};
        let mut store = SafetensorsStore::from_file(path);
        let all = store.get_all_snapshots().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        all.iter().map(|(k, s)| (k.clone(), s.to_data().unwrap().to_vec::<f32>().unwrap())).collect()
    }

    fn step_losses(dir: &Path) -> Vec<f64> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["kind"] == "step")
            .map(|v| v["loss"].as_f64().unwrap())
            .collect()
    }

    /// The adapter's loss is the mean times the number of samples, and its gradient is the
    /// one `TrainStep::step` computes, times that number.
    #[test]
    fn adapter_loss_and_gradient_are_train_steps_times_n() {
        // The CPU backends' RNG is process-wide: no other test may draw from it meanwhile.
        let _turn = serial();
        let r = recipe(64);
        let train_feed = feed(splits(&r).train);
        let device = Default::default();
        let net = Net::<Ad>::new(8, 3, &device);
        let indices: Vec<usize> = (0..10).collect();
        let batch = || -> NetBatch<Ad> { train_feed.batch(&indices, &device) };

        let out = TrainStep::step(&net, batch());
        let mean = out.item.loss.clone().inner().into_scalar().elem::<f64>();
        let wrapped = BurnTrain::new(net.clone());
        let sum = wrapped.loss(batch()).sum;
        let sum_value = sum.clone().inner().into_scalar().elem::<f64>();
        assert!((sum_value - 10.0 * mean).abs() < 1e-4 * sum_value.abs(), "{sum_value} vs 10 x {mean}");
        let ours = GradientsParams::from_grads(sum.backward(), &wrapped);

        let weight_ids = [(net.hidden.weight.id, "hidden.weight"), (net.out.weight.id, "out.weight")];
        for (id, name) in weight_ids {
            let theirs = out.grads.get::<Flex, 2>(id).unwrap().mul_scalar(10.0).into_data().to_vec::<f32>().unwrap();
            let ours = ours.get::<Flex, 2>(id).unwrap().into_data().to_vec::<f32>().unwrap();
            let diff = theirs.iter().zip(&ours).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-5, "{name}: max |diff| {diff:e}");
        }

        // Evaluation runs the inner model's InferenceStep and reports accuracy.
        let inner_batch: NetBatch<Flex> = train_feed.batch(&indices, &device);
        let e = wrapped.valid().evaluate(inner_batch);
        assert!((e.loss_sum.into_scalar().elem::<f64>() - sum_value).abs() < 1e-4 * sum_value.abs());
        assert_eq!(e.metrics.len(), 1);
        assert_eq!((e.metrics[0].name, e.metrics[0].weight), ("accuracy", 10.0));
    }

    /// Data weighed in other units than the model's output counts (2 per sample here, as if
    /// tokens, against a classification output's samples) is refused, not trained with a
    /// gradient scaled by the ratio.
    #[test]
    fn data_weighed_in_other_units_than_the_outputs_is_refused() {
        let r = recipe(64);
        let s = splits(&r);
        let (features, classes) = (s.info.n_features.unwrap(), s.info.n_classes.unwrap());
        let data = Data::<Ad>::new(s.info, s.identity, feed(s.train).each_weighs(2.0), feed(s.valid));
        let dir = tempfile::tempdir().unwrap();
        let mut session = Session::<Ad>::new(r, "test", Default::default(), dir.path());
        session.resume = Resume::Never;
        let _turn = serial();
        let e = train(session, &data, |device| BurnTrain::new(Net::<Ad>::new(features, classes, device)))
            .expect_err("refused");
        let text = e.to_string();
        assert!(matches!(e, crate::TrainError::BadInput(_)), "{text}");
        assert!(text.contains("sum over 64 units") && text.contains("weighs the chunk 128"), "{text}");
    }

    /// Trained through `oomph_train::train`: the loss falls, evaluation reports accuracy, and
    /// micro-batches of 64 and 8 end with equal parameters (mean x n is the sum oomph needs).
    #[test]
    fn trains_through_oomph_with_exact_accumulation() {
        let (d64, d8) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let s64 = run(64, d64.path());
        let s8 = run(8, d8.path());
        assert_eq!((s64.steps, s64.samples_seen), (30, 30 * 64));
        assert_eq!((s8.steps, s8.micro_batch_final), (30, 8));

        let losses = step_losses(d64.path());
        let (first, last) = (losses[0], *losses.last().unwrap());
        assert!(last < first * 0.8, "loss {first} -> {last}");
        let acc = s64.valid_accuracy.expect("valid accuracy from ClassificationOutput");
        assert!(acc > 0.5, "valid accuracy {acc}");

        let (w64, w8) = (weights(&d64.path().join("model.safetensors")), weights(&d8.path().join("model.safetensors")));
        assert_eq!(w64.keys().collect::<Vec<_>>(), w8.keys().collect::<Vec<_>>());
        assert!(w64.contains_key("model.hidden.weight"), "{:?}", w64.keys());
        let mut diff = 0f32;
        for (k, a) in &w64 {
            diff = a.iter().zip(&w8[k]).map(|(x, y)| (x - y).abs()).fold(diff, f32::max);
        }
        eprintln!("loss {first} -> {last}, valid accuracy {acc}, micro 64 vs 8: max |diff| {diff:e}");
        assert!(diff < 1e-5, "micro 64 vs micro 8: max |diff| {diff:e}");
    }
}
