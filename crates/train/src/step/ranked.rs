//! One attempt at a step when several ranks train ([`crate::gang`]): each rank accumulates
//! the gradients of its shard, the ranks agree on the outcome, sum their gradients and apply
//! the same update. Every rank makes the same collective calls whatever happens: two rounds
//! of agreement (after the accumulation, after the update) and one sum of the gradients
//! between them.

use super::{accumulate, failed, read_check, step_seed, update, GradCheck, Outcome, StepInput, Trainable};
use crate::faults::{phase_name, Faults};
use crate::feed::Feed;
use crate::gang::Link;
use crate::objective::Objective;
use crate::recovery::{attempt, attempt_scoped, Failure};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ElementConversion;
use oomph_recipe::Phase;
use std::cell::Cell;

/// A rank's state after the accumulation, as the first round carries it.
const OK: f64 = 0.0;
const OOM: f64 = 1.0;

/// After the update, as the second round carries it.
const UPDATED: f64 = 0.0;
const NON_FINITE: f64 = 1.0;
const FAILED_UNTOUCHED: f64 = 2.0;
const FAILED_CONSUMED: f64 = 3.0;

fn phase_code(p: Phase) -> f64 {
    match p {
        Phase::Forward => 0.0,
        Phase::Backward => 1.0,
        _ => 2.0,
    }
}

fn code_phase(c: f64) -> Phase {
    match c as u32 {
        0 => Phase::Forward,
        1 => Phase::Backward,
        _ => Phase::Optimizer,
    }
}

impl<B: AutodiffBackend, M: AutodiffModule<B> + Objective<B>> Trainable<B, M> {
    /// One attempt at a step as one rank of several: `input.indices` is this rank's shard,
    /// `input.all` the whole effective batch. `stop` is this rank's wish to stop after the
    /// step (a signal); the link records whether any rank had it.
    #[allow(clippy::too_many_arguments)]
    pub fn attempt_ranked(
        &mut self,
        src: &dyn Feed<B, M::Batch>,
        input: StepInput,
        device: &B::Device,
        faults: &mut Faults,
        enter: &mut dyn FnMut(Phase),
        link: &mut Link<B::InnerBackend>,
        stop: bool,
    ) -> Outcome {
        let step = input.step;
        enter(Phase::Forward);
        B::seed(device, step_seed(input.seed, step));
        let phase = Cell::new(Phase::Forward);
        let model = self.model();
        // The accumulation, the loss read, and the simulated failures of the update (which
        // must be agreed before any rank updates).
        let local = attempt_scoped::<B, _>(device, |scope| {
            let (grads, loss) = accumulate::<B, M>(model, src, input, device, faults, &phase, scope)?;
            let loss = loss.map_or(f64::NAN, |l| l.into_scalar().elem::<f64>());
            phase.set(Phase::Optimizer);
            enter(Phase::Optimizer);
            faults.check(step, Phase::Optimizer, 0);
            Ok((grads, loss))
        });
        let (mine, row, own) = match local {
            Ok(Ok((grads, loss))) => (Some(grads), [OK, 0.0, loss], None),
            Ok(Err(e)) => return Outcome::Failed(e),
            Err(Failure::Oom { message }) => (None, [OOM, phase_code(phase.get()), 0.0], Some(message)),
            Err(f) => return failed(f, step, phase.get(), input.plan[0]),
        };
        let rows = match link.agree(&row) {
            Ok(rows) => rows,
            Err(e) => return Outcome::Failed(e),
        };
        if let Some(r) = rows.iter().position(|row| row[0] == OOM) {
            let at = code_phase(rows[r][1]);
            let message = own.unwrap_or_else(|| {
                format!("rank {r} ran out of memory in {} of step {step}; every rank retries the step", phase_name(at))
            });
            return Outcome::Oom { phase: at, message, consumed: false };
        }
        let grads = mine.expect("no rank ran out of memory");
        // The mean loss of the effective batch: every rank's share, added in rank order.
        let loss: f64 = rows.iter().map(|r| r[2]).sum();
        enter(Phase::Optimizer);
        let grads = match link.sum_grads::<B, M>(self.model(), grads) {
            Ok(g) => g,
            Err(e) => return Outcome::Failed(e),
        };
        let (lr, clip) = (input.lr, input.clip);
        let model = self.model();
        let checked = attempt::<B, _>(device, || read_check::<B, M>(model, &grads, None, clip.is_some()).1);
        let copies = self.updates == 0 && !self.first_in_place;
        // Updates on copies (the first, which allocates the optimizer state) leave the model
        // and the optimizer untouched until every rank has updated.
        let (state, check, new) = match checked {
            Err(Failure::Oom { message }) => (FAILED_UNTOUCHED, None, Err(message)),
            Err(f) => return failed(f, step, Phase::Optimizer, input.plan[0]),
            Ok(check) if !(loss.is_finite() && check.finite) => (NON_FINITE, Some(check), Err(String::new())),
            Ok(check) => {
                let norm = check.norm.unwrap_or(0.0);
                let (model, optim) = if copies {
                    (self.model().clone(), self.optim().clone())
                } else {
                    (self.model.take().expect("model"), self.optim.take().expect("optimizer"))
                };
                match attempt::<B, _>(device, move || update(model, optim, grads, lr, clip.map(|c| (norm, c)))) {
                    Ok(mo) => (UPDATED, Some(check), Ok(mo)),
                    Err(Failure::Oom { message }) if copies => (FAILED_UNTOUCHED, Some(check), Err(message)),
                    Err(Failure::Oom { message }) => (FAILED_CONSUMED, Some(check), Err(message)),
                    Err(f) => return failed(f, step, Phase::Optimizer, input.plan[0]),
                }
            }
        };
        let rows = match link.agree(&[state, f64::from(u8::from(stop))]) {
            Ok(rows) => rows,
            Err(e) => return Outcome::Failed(e),
        };
        link.set_stop(rows.iter().any(|r| r[1] != 0.0));
        let check = check.unwrap_or(GradCheck { finite: true, norm: None });
        if rows.iter().all(|r| r[0] == NON_FINITE) {
            return Outcome::NonFinite { loss, check };
        }
        if let (true, Ok((m, o))) = (rows.iter().all(|r| r[0] == UPDATED), new) {
            return self.updated(m, o, loss, check);
        }
        // Some rank's update failed. After updates on copies every rank still holds the
        // model of the step before, and retries; after updates in place the ranks no longer
        // agree, so every rank ends and the run resumes from the newest checkpoint.
        let r = rows.iter().position(|r| r[0] == FAILED_UNTOUCHED || r[0] == FAILED_CONSUMED).unwrap_or(0);
        let message = format!("rank {r} ran out of memory in the optimizer update of step {step}");
        let consumed = !copies;
        Outcome::Oom { phase: Phase::Optimizer, message, consumed }
    }
}
