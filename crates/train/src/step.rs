//! One attempt at an optimizer step: exact gradient accumulation over the micro-batch plan,
//! the gradient check, and the update (copy-based or in place). It returns a typed
//! [`Outcome`]; what to do after a failure is decided by `oomph_sched` and carried out by
//! the training loop.
//!
//! **Invariant:** a step consumes exactly `effective_batch` samples; its gradient is the
//! gradient of `sum(loss_i) / sum(weight_i)` over all its chunks, whatever the split
//! (enforced by `tests/it/accumulation.rs`, whose negative control uses the wrong
//! normalisation and must fail).

use crate::error::TrainError;
use crate::faults::{phase_name, Faults};
use crate::feed::Feed;
use crate::objective::Objective;
use crate::optim::{clip_to, reduce_grads, Optim, Reduce};
use crate::random;
use crate::recovery::{attempt, attempt_scoped, Failure, Scope};
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use oomph_recipe::Phase;
use std::cell::Cell;

mod ranked;

/// Backend seed for step `step` of a run seeded with `seed` (SplitMix64 of both), so a
/// resumed or retried step draws exactly the same random numbers.
pub fn step_seed(seed: u64, step: usize) -> u64 {
    let mut z = seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a step learned about its gradients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradCheck {
    /// Every gradient element is finite.
    pub finite: bool,
    /// The global L2 norm, when it was computed (gradient clipping needs it).
    pub norm: Option<f64>,
}

/// One step's inputs.
#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    /// The optimizer step, 1-based.
    pub step: usize,
    /// The sample indices this rank trains on: the effective batch, or this rank's shard of
    /// it when several ranks train.
    pub indices: &'a [usize],
    /// The whole effective batch (every rank's samples): the step's loss is divided by its
    /// total weight.
    pub all: &'a [usize],
    /// Chunk sizes, summing to `indices.len()` (see `oomph_sched::plan_chunks`).
    pub plan: &'a [usize],
    /// Learning rate of this step.
    pub lr: f64,
    /// Global-norm clipping threshold.
    pub clip: Option<f64>,
    /// The run's master seed (dropout and the backend's random numbers are keyed by it).
    pub seed: u64,
}

/// How an attempt at a step ended.
#[derive(Debug)]
pub enum Outcome {
    /// The update was applied.
    Updated {
        /// Mean loss of the effective batch.
        loss: f64,
        /// Global gradient norm before clipping, when computed.
        grad_norm: Option<f64>,
    },
    /// The loss or a gradient was not finite: no update was applied.
    NonFinite {
        /// Mean loss (possibly NaN or infinite).
        loss: f64,
        /// What the gradient check found.
        check: GradCheck,
    },
    /// Out of memory in `phase`; the model and optimizer are intact unless `consumed`.
    Oom {
        /// Where it happened (forward, backward or optimizer).
        phase: Phase,
        /// The classified message.
        message: String,
        /// The in-place update had consumed the only model and optimizer handles: the
        /// process cannot retry the step.
        consumed: bool,
    },
    /// A failure that is not an out-of-memory: never retried.
    Failed(TrainError),
}

/// The model and its optimizer, updated once per step.
pub struct Trainable<B: AutodiffBackend, M: AutodiffModule<B>> {
    /// `None` only while an in-place update runs (or after it failed).
    model: Option<M>,
    optim: Option<Optim<M, B>>,
    /// Updates completed by this process.
    updates: usize,
    /// Run the first update in place too (after a worker died inside an update).
    first_in_place: bool,
}

impl<B: AutodiffBackend, M: AutodiffModule<B> + Objective<B>> Trainable<B, M> {
    /// A model and its optimizer. With `first_in_place`, even the first update (which
    /// allocates the optimizer state) runs in place rather than on copies.
    pub fn new(model: M, optim: Optim<M, B>, first_in_place: bool) -> Self {
        Self { model: Some(model), optim: Some(optim), updates: 0, first_in_place }
    }

    /// Runs the first update in place too (a rank told after it opened: a launch's restart
    /// after a death in the update).
    pub fn set_first_in_place(&mut self, first_in_place: bool) {
        self.first_in_place |= first_in_place;
    }

    /// The model.
    pub fn model(&self) -> &M {
        self.model.as_ref().expect("the model is only taken during an in-place update")
    }

    /// The optimizer.
    pub fn optim(&self) -> &Optim<M, B> {
        self.optim.as_ref().expect("the optimizer is only taken during an in-place update")
    }

    /// Replaces the model and optimizer (restored from a checkpoint).
    pub fn restore(&mut self, model: M, optim: Optim<M, B>) {
        self.model = Some(model);
        self.optim = Some(optim);
    }

    /// One attempt at a step: the forward and backward passes of every chunk, the gradient
    /// check and, when everything is finite, the update. `enter` is told each phase as it
    /// starts (for `current.json`).
    pub fn attempt(
        &mut self,
        src: &dyn Feed<B, M::Batch>,
        input: StepInput,
        device: &B::Device,
        faults: &mut Faults,
        enter: &mut dyn FnMut(Phase),
    ) -> Outcome {
        let step = input.step;
        enter(Phase::Forward);
        B::seed(device, step_seed(input.seed, step));
        let phase = Cell::new(Phase::Forward);
        let model = self.model();
        let out = attempt_scoped::<B, _>(device, |scope| {
            let (grads, loss) = accumulate::<B, M>(model, src, input, device, faults, &phase, scope)?;
            let (loss, check) = read_check::<B, M>(model, &grads, loss, input.clip.is_some());
            Ok((grads, loss, check))
        });
        let (grads, loss, check) = match out {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Outcome::Failed(e),
            Err(f) => return failed(f, step, phase.get(), input.plan[0]),
        };
        if !(loss.is_finite() && check.finite) {
            // Never let a non-finite loss or gradient reach the weights: the step is skipped.
            return Outcome::NonFinite { loss, check };
        }
        let norm = check.norm.unwrap_or(0.0);
        let (lr, clip) = (input.lr, input.clip);
        enter(Phase::Optimizer);
        if self.updates == 0 && !self.first_in_place {
            // The first update of a process allocates the optimizer state (Adam's moments): it
            // runs on copies of the handles, so a failed update leaves the model and the
            // optimizer untouched and can be retried in-process.
            let (model, optim) = (self.model().clone(), self.optim().clone());
            let out = attempt::<B, _>(device, || {
                faults.check(step, Phase::Optimizer, 0);
                update(model, optim, grads, lr, clip.map(|c| (norm, c)))
            });
            return match out {
                Ok((m, o)) => self.updated(m, o, loss, check),
                Err(f) => failed(f, step, Phase::Optimizer, input.plan[0]),
            };
        }
        // Later updates (and, after a worker died inside an update, the first one too) consume
        // the only handles, so the backend updates parameters and moments in place (no second
        // copy: a lower memory peak, and faster). Simulated faults still fire before anything
        // is touched; a real failure inside the update leaves a half-updated model.
        // (Without faults there is nothing to fire, and no boundary, which waits for the device.)
        if !faults.is_empty() {
            if let Err(f) = attempt::<B, _>(device, || faults.check(step, Phase::Optimizer, 0)) {
                return failed(f, step, Phase::Optimizer, input.plan[0]);
            }
        }
        let model = self.model.take().expect("model");
        let optim = self.optim.take().expect("optimizer");
        let out = attempt::<B, _>(device, move || update(model, optim, grads, lr, clip.map(|c| (norm, c))));
        match out {
            Ok((m, o)) => self.updated(m, o, loss, check),
            Err(Failure::Oom { message }) => Outcome::Oom { phase: Phase::Optimizer, message, consumed: true },
            Err(Failure::Other { message } | Failure::Data { message }) => Outcome::Failed(TrainError::Failed(
                format!("the optimizer update of step {step} failed (not an out-of-memory): {message}"),
            )),
        }
    }

    fn updated(&mut self, model: M, optim: Optim<M, B>, loss: f64, check: GradCheck) -> Outcome {
        self.model = Some(model);
        self.optim = Some(optim);
        self.updates += 1;
        Outcome::Updated { loss, grad_norm: check.norm }
    }
}

/// One optimizer update, after clipping the gradients to `clip = (norm, max_norm)` if set.
fn update<B, M>(
    model: M,
    mut optim: Optim<M, B>,
    mut grads: GradientsParams,
    lr: f64,
    clip: Option<(f64, f64)>,
) -> (M, Optim<M, B>)
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    if let Some((norm, max_norm)) = clip {
        clip_to::<B, M>(&model, &mut grads, norm, max_norm);
    }
    let m = optim.step(lr, model, grads);
    (m, optim)
}

/// A failed attempt before anything was consumed.
fn failed(f: Failure, step: usize, phase: Phase, micro: usize) -> Outcome {
    match f {
        Failure::Oom { message } => Outcome::Oom { phase, message, consumed: false },
        Failure::Data { message } => {
            Outcome::Failed(TrainError::BadInput(format!("the data of step {step} cannot be served: {message}")))
        }
        Failure::Other { message } => Outcome::Failed(TrainError::Failed(format!(
            "training failed in {} of step {step} (micro-batch {micro}) with an error that is not an \
             out-of-memory, so it is not retried: {message}",
            phase_name(phase)
        ))),
    }
}

/// A rank's share of the step's mean loss, on the device (`None` before any chunk ran).
pub(crate) type LossShare<B> = Option<Tensor<<B as AutodiffBackend>::InnerBackend, 1>>;

/// The forward and backward passes of one attempt at a step: every chunk's loss sum is
/// divided by the effective batch's total weight before its backward pass, so the summed
/// gradients are those of the mean loss. Returns the gradients and the (still on the
/// device) share of the mean loss of this rank's samples.
pub(crate) fn accumulate<B, M>(
    model: &M,
    src: &dyn Feed<B, M::Batch>,
    input: StepInput,
    device: &B::Device,
    faults: &mut Faults,
    phase: &Cell<Phase>,
    scope: &Scope,
) -> Result<(GradientsParams, LossShare<B>), TrainError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Objective<B>,
{
    let (step, plan) = (input.step, input.plan);
    // Each chunk's batch is built when it runs: host and device memory follow the
    // micro-batch, not the effective batch. The total weight comes from the host, before the
    // first backward pass, and does not depend on the split.
    let mut chunks = Vec::with_capacity(plan.len());
    let mut offset = 0;
    for &size in plan {
        chunks.push(&input.indices[offset..offset + size]);
        offset += size;
    }
    let total = src.weight(input.all);
    if !(total.is_finite() && total > 0.0) {
        return Err(TrainError::BadInput(format!(
            "the {} training samples of step {step} weigh {total} in all: the step's loss is divided by that \
             total, which must be finite and above zero. Fix: give every item of the data a finite, positive weight \
             (`Batched::weighed` or `Batched::each_weighs`).",
            input.all.len()
        )));
    }
    let scale = 1.0 / total;
    let mut acc = GradientsAccumulator::<M>::new();
    let mut single = None;
    let mut loss_sum: Option<Tensor<B::InnerBackend, 1>> = None;
    for chunk in &chunks {
        phase.set(Phase::Forward);
        faults.check(step, Phase::Forward, chunk.len());
        let batch = src.batch(chunk, device);
        let (loss, units) = random::with_chunk(input.seed, step, chunk, || model.weighed_loss(batch));
        if let Some(units) = units {
            let weight = src.weight(chunk);
            if (units - weight).abs() > 1e-9 * weight.abs().max(1.0) {
                return Err(TrainError::BadInput(format!(
                    "the model's loss of a chunk of {} samples is a sum over {units} units (its output's samples or \
                     target tokens), but the data weighs the chunk {weight}: the step's mean would be off by their \
                     ratio, and with it the gradient. Fix: weigh the data's items in the model's units (e.g. \
                     `Batched::each_weighs(seq_len)` or `Batched::weighed(|item| tokens)` for sequence data).",
                    chunk.len()
                )));
            }
        }
        let mut loss = loss.sum.mul_scalar(scale);
        if faults.nan_loss(step) {
            loss = loss.mul_scalar(f64::NAN);
        }
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
        scope.check_other_threads();
        if plan.len() == 1 {
            single = Some(grads);
        } else {
            acc.accumulate(model, grads);
        }
    }
    Ok((single.unwrap_or_else(|| acc.grads()), loss_sum))
}

/// Reads the mean loss and the gradient check back from the device, in one read: the squared
/// norm when clipping needs the norm (`with_norm`), otherwise the plain sum (finite exactly
/// when every element is).
pub(crate) fn read_check<B, M>(
    model: &M,
    grads: &GradientsParams,
    loss_sum: LossShare<B>,
    with_norm: bool,
) -> (f64, GradCheck)
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
{
    let how = if with_norm { Reduce::Squares } else { Reduce::Sum };
    let parts = reduce_grads::<B, M>(model, grads, how);
    let (loss, check) = match loss_sum {
        Some(l) if parts.is_empty() => (l.into_scalar().elem::<f64>(), 0.0),
        Some(l) => {
            let mut all = Vec::with_capacity(parts.len() + 1);
            all.push(l);
            all.extend(parts);
            let v: Vec<f64> = Tensor::cat(all, 0).into_data().iter::<f64>().collect();
            (v[0], v[1..].iter().sum::<f64>())
        }
        // Only the check (several ranks: the loss came with the first round).
        None if parts.is_empty() => (f64::NAN, 0.0),
        None => (f64::NAN, Tensor::cat(parts, 0).into_data().iter::<f64>().sum::<f64>()),
    };
    (loss, GradCheck { finite: check.is_finite(), norm: with_norm.then(|| check.sqrt()) })
}
