//! Exact gradient accumulation: the same recipe with micro-batches 64, 8 and 5 gives the same
//! parameters; a deliberately wrong normalisation does not; token weighting with uneven
//! lengths holds whatever the split.
//!
//! Tolerance: the runs differ only in float32 summation order (chunk sums added in another
//! order), a relative error of ~1e-7 per addition; over 30 SGD steps on parameters of order
//! 0.1-1 the observed differences are about 1e-7 (6e-8 with SGD, 1.2e-7 with AdamW and
//! clipping). We allow 1e-5, a hundred times that, while the wrong normalisation moves
//! parameters by more than 1e-2.

use crate::util::*;
use oomph::burn::module::Module;
use oomph::burn::tensor::backend::Backend;
use oomph::data::{Batch, BatchTargets};
use oomph::models::mlp::{self, Mlp, MlpConfig};
use oomph::train::{train, Evaluation, Loss, Objective};

pub const TOL: f32 = 1e-5;

/// SGD, 30 steps of 64 samples; the micro-batch never grows back.
fn base() -> TestRecipe {
    TestRecipe::mlp().set("run.seed", 3).sgd(0.2).set("micro_batch.grow_after", 100000)
}
fn run_micro(micro: usize, dir: &std::path::Path, extra: &[&str]) {
    let m = format!("micro_batch.initial={micro}");
    let mut o = vec![m.as_str()];
    o.extend_from_slice(extra);
    let s = train_builtin(base().recipe(&o), dir).unwrap();
    assert_eq!(s.steps, 30);
    assert_eq!(s.samples_seen, 30 * 64);
}

#[test]
fn micro_batches_64_8_5_give_equal_parameters() {
    for extra in [&[][..], &["optimizer.kind=adamw", "optimizer.lr=0.01", "optimizer.grad_clip_norm=0.5"][..]] {
        let d: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        run_micro(64, d[0].path(), extra);
        run_micro(8, d[1].path(), extra);
        run_micro(5, d[2].path(), extra);
        // 64 with micro 5 is 13 chunks of sizes 5 and 4: the metrics say so.
        let steps = step_records(d[2].path());
        assert_eq!(steps[0]["chunks"], 13);
        assert_eq!(steps[0]["micro_batch"], 5);
        let d8 = max_param_diff(d[0].path(), d[1].path());
        let d5 = max_param_diff(d[0].path(), d[2].path());
        eprintln!("{extra:?}: max |diff| micro 8 {d8:e}, micro 5 {d5:e}");
        assert!(d8 < TOL && d5 < TOL, "{extra:?}: max |diff| micro 8: {d8:e}, micro 5: {d5:e}");
        // The runs really trained (parameters moved from their initial values).
        let l: Vec<_> = lines(&d[0].path().join("metrics.jsonl"));
        let first = l[0]["loss"].as_f64().unwrap();
        let last = l.iter().rfind(|v| v["kind"] == "step").unwrap()["loss"].as_f64().unwrap();
        assert!(last < first * 0.9, "{first} -> {last}");
    }
}

/// An MLP whose objective is computed per chunk as a plain mean and summed over chunks:
/// the normalisation oomph exists to avoid.
#[derive(Module, Debug)]
struct ChunkMeanSummed<B: Backend> {
    inner: Mlp<B>,
    chunks: usize,
}

impl<B: Backend> Objective<B> for ChunkMeanSummed<B> {
    fn loss(&self, batch: &Batch, device: &B::Device) -> Loss<B> {
        let n = batch.len() as f64;
        Loss { sum: self.inner.loss(batch, device).sum.div_scalar(n) }
    }
    // Each chunk weighs 1/k, so the trainer's division by the total (1) leaves the sum of the
    // per-chunk means.
    fn weight(&self, _batch: &Batch) -> f64 {
        1.0 / self.chunks as f64
    }
    fn evaluate(&self, batch: &Batch, device: &B::Device) -> Evaluation<B> {
        self.inner.evaluate(batch, device)
    }
}

#[test]
fn a_wrong_normalisation_fails_the_equality() {
    let reference = tempfile::tempdir().unwrap();
    run_micro(64, reference.path(), &[]);
    let wrong = tempfile::tempdir().unwrap();
    let r = base().recipe(&["micro_batch.initial=5"]);
    let data = data_for(&r);
    let cfg = MlpConfig { hidden: vec![16], ..Default::default() };
    let info = data.info.clone();
    let _turn = serial();
    train(session(r, wrong.path()), &data, |d| ChunkMeanSummed {
        inner: mlp::init::<B>(&cfg, &info, d).unwrap(),
        chunks: 13,
    })
    .unwrap();
    let diff = max_param_diff(reference.path(), wrong.path());
    assert!(diff > 1e-2, "the wrong normalisation went unnoticed: max |diff| {diff:e}");
}

/// Token weighting with uneven lengths: sample `i` stands for a sequence of `1 + label % 3`
/// tokens, each with the sample's loss. The step's loss must be the mean over *tokens*.
#[derive(Module, Debug)]
struct UnevenTokens<B: Backend> {
    inner: Mlp<B>,
    /// 0: correct (sum over tokens / total tokens); k > 0: per-chunk token mean summed over k chunks.
    wrong_chunks: usize,
}

fn lengths(batch: &Batch) -> Vec<f32> {
    match batch {
        Batch::Tabular { y: BatchTargets::Classes(y), .. } => y.iter().map(|&c| 1.0 + (c % 3) as f32).collect(),
        _ => unreachable!(),
    }
}

impl<B: Backend> Objective<B> for UnevenTokens<B> {
    fn loss(&self, batch: &Batch, device: &B::Device) -> Loss<B> {
        let (x, y) = oomph::train::tensors::tabular_classes::<B>(batch, device);
        let per_row = oomph::train::tensors::cross_entropy_per_row(self.inner.forward(x), y);
        let len = lengths(batch);
        let tokens: f32 = len.iter().sum();
        let w = oomph::burn::tensor::Tensor::<B, 1>::from_floats(len.as_slice(), device);
        let sum = (per_row * w).sum();
        Loss { sum: if self.wrong_chunks > 0 { sum.div_scalar(tokens) } else { sum } }
    }
    fn weight(&self, batch: &Batch) -> f64 {
        if self.wrong_chunks > 0 {
            1.0 / self.wrong_chunks as f64
        } else {
            lengths(batch).iter().map(|&l| l as f64).sum()
        }
    }
}

#[test]
fn token_weighting_with_uneven_lengths_is_split_invariant() {
    let run = |micro: usize, wrong_chunks: usize| {
        let d = tempfile::tempdir().unwrap();
        let r = base().recipe(&[&format!("micro_batch.initial={micro}")]);
        let data = data_for(&r);
        let cfg = MlpConfig { hidden: vec![16], ..Default::default() };
        let info = data.info.clone();
        let _turn = serial();
        train(session(r, d.path()), &data, |dev| UnevenTokens {
            inner: mlp::init::<B>(&cfg, &info, dev).unwrap(),
            wrong_chunks,
        })
        .unwrap();
        d
    };
    let full = run(64, 0);
    let m8 = run(8, 0);
    let m5 = run(5, 0);
    let (d8, d5) = (max_param_diff(full.path(), m8.path()), max_param_diff(full.path(), m5.path()));
    assert!(d8 < TOL && d5 < TOL, "token-weighted: micro 8 {d8:e}, micro 5 {d5:e}");
    // Per-chunk token means summed: wrong, and visibly so.
    let wrong = run(8, 8);
    let dw = max_param_diff(full.path(), wrong.path());
    assert!(dw > 1e-2, "per-chunk token means went unnoticed: {dw:e}");
}
