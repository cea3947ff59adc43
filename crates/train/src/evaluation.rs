//! Evaluation on the validation split: one attempt at a given evaluation micro-batch. After
//! an out-of-memory, the evaluation batch to try next is `oomph_sched`'s decision.

use crate::faults::Faults;
use crate::feed::Feed;
use crate::objective::{InnerBatch, Objective};
use crate::recovery::{attempt, Failure};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use oomph_recipe::Phase;
use std::collections::BTreeMap;

/// The validation loss and the other metrics (e.g. `accuracy`), averaged over the split.
pub type Scores = (f64, BTreeMap<String, f64>);

/// Evaluates `model` (through its inference copy) on the samples `src` evaluates (every
/// sample, or non-overlapping windows for text), `eval_batch` samples per micro-batch, inside
/// the recovery boundary.
pub fn attempt_eval<B, M>(
    model: &M,
    src: &dyn Feed<B::InnerBackend, InnerBatch<B, M>>,
    eval_batch: usize,
    device: &B::Device,
    step: usize,
    faults: &mut Faults,
) -> Result<Scores, Failure>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    M::InnerModule: Objective<B::InnerBackend>,
{
    let indices = src.eval_indices();
    let inner = model.valid();
    let out = attempt::<B, _>(device, || {
        evaluate_on::<B::InnerBackend, M::InnerModule>(&inner, src, &indices, eval_batch, device, step, faults)
    });
    drop(inner);
    out
}

fn evaluate_on<B: Backend, M: Objective<B>>(
    model: &M,
    src: &dyn Feed<B, M::Batch>,
    indices: &[usize],
    eval_batch: usize,
    device: &B::Device,
    step: usize,
    faults: &mut Faults,
) -> Scores {
    let mut loss: Option<Tensor<B, 1>> = None;
    let mut weight = 0.0;
    let mut metrics: BTreeMap<&'static str, (Tensor<B, 1>, f64)> = BTreeMap::new();
    for chunk in indices.chunks(eval_batch) {
        faults.check(step.max(1), Phase::Eval, chunk.len());
        weight += src.weight(chunk);
        let e = model.evaluate(src.batch(chunk, device));
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
    if !(indices.is_empty() || (weight.is_finite() && weight > 0.0)) {
        crate::recovery::data_fault(format!(
            "the validation samples weigh {weight} in all: the loss is divided by that total, which must be finite \
             and above zero. Fix: give every item of the data a finite, positive weight (`Batched::weighed` or \
             `Batched::each_weighs`)."
        ));
    }
    let loss = loss.map(|t| t.into_scalar().elem::<f64>() / weight).unwrap_or(f64::NAN);
    let metrics = metrics
        .into_iter()
        .map(|(k, (t, w))| (k.to_string(), t.into_scalar().elem::<f64>() / w.max(f64::MIN_POSITIVE)))
        .collect();
    (loss, metrics)
}
