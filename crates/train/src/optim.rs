//! Optimizers (AdamW, SGD) behind one type, the learning-rate schedule, and gradient
//! scaling / global-norm clipping over a whole module.

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig};
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder, RecorderError};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use oomph_recipe::{LrScheduleSection, OptimizerKind, OptimizerSection, ScheduleKind};

/// The optimizer named by `[optimizer] kind`.
pub enum Optim<M: AutodiffModule<B>, B: AutodiffBackend> {
    /// Decoupled weight decay Adam.
    AdamW(OptimizerAdaptor<AdamW, M, B>),
    /// Stochastic gradient descent with optional momentum.
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, M, B>),
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> Clone for Optim<M, B> {
    fn clone(&self) -> Self {
        match self {
            Self::AdamW(o) => Self::AdamW(o.clone()),
            Self::Sgd(o) => Self::Sgd(o.clone()),
        }
    }
}

impl<M: AutodiffModule<B>, B: AutodiffBackend> Optim<M, B> {
    /// Builds the optimizer from its recipe section. Gradient clipping is *not* delegated to
    /// burn (whose clipping is per parameter): oomph clips by the global norm itself.
    pub fn new(cfg: &OptimizerSection) -> Self {
        match cfg.kind {
            OptimizerKind::Sgd => {
                let mut c = SgdConfig::new();
                if cfg.momentum > 0.0 {
                    c = c.with_momentum(Some(MomentumConfig {
                        momentum: cfg.momentum,
                        dampening: 0.0,
                        nesterov: false,
                    }));
                }
                if cfg.weight_decay > 0.0 {
                    c = c.with_weight_decay(Some(WeightDecayConfig { penalty: cfg.weight_decay as f32 }));
                }
                Self::Sgd(c.init())
            }
            OptimizerKind::Adamw => Self::AdamW(
                AdamWConfig::new()
                    .with_beta_1(cfg.betas[0] as f32)
                    .with_beta_2(cfg.betas[1] as f32)
                    .with_epsilon(cfg.eps as f32)
                    .with_weight_decay(cfg.weight_decay as f32)
                    .init(),
            ),
        }
    }

    /// Applies one update.
    pub fn step(&mut self, lr: f64, module: M, grads: GradientsParams) -> M {
        match self {
            Self::AdamW(o) => o.step(lr, module, grads),
            Self::Sgd(o) => o.step(lr, module, grads),
        }
    }

    /// Serialises the optimizer state (Adam moments included) in full precision.
    pub fn to_bytes(&self) -> Result<Vec<u8>, RecorderError> {
        let rec = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
        match self {
            Self::AdamW(o) => Recorder::<B>::record(&rec, o.to_record(), ()),
            Self::Sgd(o) => Recorder::<B>::record(&rec, o.to_record(), ()),
        }
    }

    /// Restores optimizer state serialised by [`Optim::to_bytes`].
    pub fn load_bytes(self, bytes: Vec<u8>, device: &B::Device) -> Result<Self, RecorderError> {
        let rec = NamedMpkBytesRecorder::<FullPrecisionSettings>::default();
        Ok(match self {
            Self::AdamW(o) => Self::AdamW(o.load_record(Recorder::<B>::load(&rec, bytes, device)?)),
            Self::Sgd(o) => Self::Sgd(o.load_record(Recorder::<B>::load(&rec, bytes, device)?)),
        })
    }
}

/// Learning rate at optimizer step `step` (1-based) of `total`: linear warmup from 0, then
/// constant, cosine or linear decay to `final_lr_fraction * lr`.
pub fn lr_at(step: usize, total: usize, base: f64, s: &LrScheduleSection) -> f64 {
    let warmup = s.warmup_steps;
    if warmup > 0 && step <= warmup {
        return base * step as f64 / warmup as f64;
    }
    let fin = base * s.final_lr_fraction;
    let span = total.saturating_sub(warmup).max(1) as f64;
    let p = ((step.saturating_sub(warmup)) as f64 / span).clamp(0.0, 1.0);
    match s.kind {
        ScheduleKind::Cosine => fin + (base - fin) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
        ScheduleKind::Linear => base - (base - fin) * p,
        ScheduleKind::Constant => base,
    }
}

/// Collects the ids and ranks of a module's float parameters.
struct ParamIds(Vec<(ParamId, usize)>);

impl<B: Backend> ModuleVisitor<B> for ParamIds {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push((param.id, D));
    }
}

/// Float parameter ids (with their rank) of a module, in visiting order.
pub fn param_ids<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M) -> Vec<(ParamId, usize)> {
    let mut v = ParamIds(Vec::new());
    module.visit(&mut v);
    v.0
}

fn map_grad<B: Backend, const D: usize>(
    grads: &mut GradientsParams,
    id: ParamId,
    f: &mut impl FnMut(Tensor<B, D>) -> Tensor<B, D>,
) {
    if let Some(g) = grads.remove::<B, D>(id) {
        grads.register(id, f(g));
    }
}

macro_rules! for_rank {
    ($rank:expr, $b:ty, $body:ident, $($args:tt)*) => {
        match $rank {
            1 => $body::<$b, 1>($($args)*),
            2 => $body::<$b, 2>($($args)*),
            3 => $body::<$b, 3>($($args)*),
            4 => $body::<$b, 4>($($args)*),
            5 => $body::<$b, 5>($($args)*),
            6 => $body::<$b, 6>($($args)*),
            r => panic!("oomph: parameters of rank {r} are not supported (ranks 1 to 6 are)"),
        }
    };
}

fn scale_one<B: Backend, const D: usize>(grads: &mut GradientsParams, id: ParamId, factor: f64) {
    map_grad::<B, D>(grads, id, &mut |g| g.mul_scalar(factor));
}

/// How [`reduce_grads`] reduces each gradient to one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduce {
    /// The sum of the squares (the squared L2 norm).
    Squares,
    /// The plain sum: finite exactly when every element is (short of an overflow of the sum
    /// itself), at one read-only pass, where the squares need a squared copy.
    Sum,
}

fn reduce_one<B: Backend, const D: usize>(grads: &GradientsParams, id: ParamId, how: Reduce) -> Option<Tensor<B, 1>> {
    grads.get::<B, D>(id).map(|g| match how {
        Reduce::Squares => g.powi_scalar(2).sum(),
        Reduce::Sum => g.sum(),
    })
}

/// Multiplies every gradient of `module` in `grads` by `factor`.
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: &mut GradientsParams, factor: f64) {
    for (id, rank) in param_ids::<B, M>(module) {
        for_rank!(rank, B::InnerBackend, scale_one, grads, id, factor);
    }
}

/// Every gradient of `module` reduced to one number as `how` says, on the device (no read):
/// one `[1]` tensor per parameter that has a gradient, in visiting order. Read them back
/// together with the loss (`Tensor::cat`) and add them up on the host.
pub fn reduce_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
    how: Reduce,
) -> Vec<Tensor<B::InnerBackend, 1>> {
    param_ids::<B, M>(module)
        .into_iter()
        .filter_map(|(id, rank)| for_rank!(rank, B::InnerBackend, reduce_one, grads, id, how))
        .collect()
}

/// Global L2 norm of all gradients of `module` (one device read).
pub fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: &GradientsParams) -> f64 {
    let parts = reduce_grads::<B, M>(module, grads, Reduce::Squares);
    if parts.is_empty() {
        return 0.0;
    }
    Tensor::cat(parts, 0).into_data().iter::<f64>().sum::<f64>().sqrt()
}

/// Scales `grads` down to global norm `max_norm` when their norm `norm` (already known)
/// exceeds it.
pub fn clip_to<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    norm: f64,
    max_norm: f64,
) {
    if norm.is_finite() && norm > max_norm {
        scale_grads::<B, M>(module, grads, max_norm / (norm + 1e-6));
    }
}

struct AllFinite<B: Backend> {
    bad: Option<Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for AllFinite<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        // x - x is 0 for every finite x and NaN for NaN and infinities; its sum cannot overflow.
        let part = (t.clone() - t).sum();
        self.bad = Some(match self.bad.take() {
            Some(b) => b + part,
            None => part,
        });
    }
}

/// Whether every float parameter of `module` is finite (one device read).
pub fn params_finite<B: Backend, M: burn::module::Module<B>>(module: &M) -> bool {
    let mut v = AllFinite::<B> { bad: None };
    module.visit(&mut v);
    v.bad.is_none_or(|t| t.into_scalar().elem::<f64>().is_finite())
}

/// Clips `grads` to global norm `max_norm`; returns the norm before clipping.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let norm = global_norm::<B, M>(module, grads);
    if norm.is_finite() && norm > max_norm {
        scale_grads::<B, M>(module, grads, max_norm / (norm + 1e-6));
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind, warmup: usize, fin: f64) -> LrScheduleSection {
        LrScheduleSection { kind, warmup_steps: warmup, final_lr_fraction: fin }
    }

    #[test]
    fn warmup_then_cosine_reaches_the_final_fraction() {
        let s = sched(ScheduleKind::Cosine, 10, 0.1);
        assert!((lr_at(1, 110, 1.0, &s) - 0.1).abs() < 1e-12);
        assert!((lr_at(10, 110, 1.0, &s) - 1.0).abs() < 1e-12);
        assert!((lr_at(60, 110, 1.0, &s) - 0.55).abs() < 1e-12);
        assert!((lr_at(110, 110, 1.0, &s) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn linear_and_constant() {
        let s = sched(ScheduleKind::Linear, 0, 0.0);
        assert!((lr_at(50, 100, 2.0, &s) - 1.0).abs() < 1e-12);
        assert_eq!(lr_at(7, 100, 2.0, &sched(ScheduleKind::Constant, 0, 0.0)), 2.0);
    }
}
