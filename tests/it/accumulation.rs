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
use oomph::data::{Source, Splits};
use oomph::models::mlp::{self, Mlp, MlpConfig};
use oomph::train::feed::{TabularBatch, TabularItem, TabularRows, TabularTarget, TabularTargets};
use oomph::train::{train, Data, Evaluation, Loss, Objective};

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

/// The recipe's table, each row weighing `weigh(row)`.
fn weighed_data(r: &oomph::recipe::Recipe, weigh: fn(&TabularItem) -> f64) -> Data<B> {
    let Splits { train, valid, info, identity, .. } = splits_for(r);
    let (Source::Tabular(train), Source::Tabular(valid)) = (train, valid) else { unreachable!("a table") };
    Data::new(info, identity, TabularRows::feed(train).weighed(weigh), TabularRows::feed(valid))
}

/// Each of the 64 samples of a step weighs 1/64: the trainer divides by a total of 1.
fn sixty_fourth(_: &TabularItem) -> f64 {
    1.0 / 64.0
}

/// An MLP whose objective is computed per chunk as a plain mean and summed over chunks (its
/// data weighs each sample 1/64, so the trainer's division by the total leaves the sum of the
/// per-chunk means): the normalisation oomph exists to avoid.
#[derive(Module, Debug)]
struct ChunkMeanSummed<B: Backend> {
    inner: Mlp<B>,
}

impl<B: Backend> Objective<B> for ChunkMeanSummed<B> {
    type Batch = TabularBatch<B>;
    fn loss(&self, batch: TabularBatch<B>) -> Loss<B> {
        let n = batch.len() as f64;
        Loss { sum: self.inner.loss(batch).sum.div_scalar(n) }
    }
    fn evaluate(&self, batch: TabularBatch<B>) -> Evaluation<B> {
        self.inner.evaluate(batch)
    }
}

#[test]
fn a_wrong_normalisation_fails_the_equality() {
    let reference = tempfile::tempdir().unwrap();
    run_micro(64, reference.path(), &[]);
    let wrong = tempfile::tempdir().unwrap();
    let r = base().recipe(&["micro_batch.initial=5"]);
    let data = weighed_data(&r, sixty_fourth);
    let cfg = MlpConfig { hidden: vec![16], ..Default::default() };
    let info = data.info.clone();
    let _turn = serial();
    train(session(r, wrong.path()), &data, |d| ChunkMeanSummed { inner: mlp::init::<B>(&cfg, &info, d).unwrap() })
        .unwrap();
    let diff = max_param_diff(reference.path(), wrong.path());
    assert!(diff > 1e-2, "the wrong normalisation went unnoticed: max |diff| {diff:e}");
}

/// Items that weigh nothing: the step's total weight is 0, which is refused as bad input
/// (not divided by and then reported as a divergence).
#[test]
fn data_of_zero_weight_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let r = base().recipe(&[]);
    let data = weighed_data(&r, |_| 0.0);
    let cfg = MlpConfig { hidden: vec![16], ..Default::default() };
    let info = data.info.clone();
    let _turn = serial();
    let e = train(session(r, d.path()), &data, |dev| mlp::init::<B>(&cfg, &info, dev).unwrap()).expect_err("refused");
    assert!(matches!(e, oomph::train::TrainError::BadInput(_)), "{e}");
    assert!(e.to_string().contains("weighs 0") && e.to_string().contains("finite and above zero"), "{e}");
}

/// Sample `i` stands for a sequence of `1 + label % 3` tokens, each with the sample's loss.
fn tokens_of(item: &TabularItem) -> f64 {
    match item.target {
        TabularTarget::Class(c) => 1.0 + f64::from(c % 3),
        TabularTarget::Value(_) => unreachable!("classification data"),
    }
}

/// Token weighting with uneven lengths: the data weighs each sample in its tokens
/// ([`tokens_of`]) and the model sums its loss over them. The step's loss must be the mean
/// over *tokens*.
#[derive(Module, Debug)]
struct UnevenTokens<B: Backend> {
    inner: Mlp<B>,
    /// Per-chunk token means summed (with data weighing each sample 1/64): wrong.
    wrong: bool,
}

impl<B: Backend> Objective<B> for UnevenTokens<B> {
    type Batch = TabularBatch<B>;
    fn loss(&self, batch: TabularBatch<B>) -> Loss<B> {
        let TabularTargets::Classes(y) = batch.targets else { unreachable!("classification data") };
        let per_row = oomph::train::tensors::cross_entropy_per_row(self.inner.forward(batch.features), y.clone());
        let len = y.remainder_scalar(3).add_scalar(1).float();
        let sum = (per_row * len.clone()).sum();
        Loss { sum: if self.wrong { sum / len.sum() } else { sum } }
    }
}

#[test]
fn token_weighting_with_uneven_lengths_is_split_invariant() {
    let run = |micro: usize, wrong: bool| {
        let d = tempfile::tempdir().unwrap();
        let r = base().recipe(&[&format!("micro_batch.initial={micro}")]);
        let data = weighed_data(&r, if wrong { sixty_fourth } else { tokens_of });
        let cfg = MlpConfig { hidden: vec![16], ..Default::default() };
        let info = data.info.clone();
        let _turn = serial();
        train(session(r, d.path()), &data, |dev| UnevenTokens {
            inner: mlp::init::<B>(&cfg, &info, dev).unwrap(),
            wrong,
        })
        .unwrap();
        d
    };
    let full = run(64, false);
    let m8 = run(8, false);
    let m5 = run(5, false);
    let (d8, d5) = (max_param_diff(full.path(), m8.path()), max_param_diff(full.path(), m5.path()));
    assert!(d8 < TOL && d5 < TOL, "token-weighted: micro 8 {d8:e}, micro 5 {d5:e}");
    // Per-chunk token means summed: wrong, and visibly so.
    let wrong = run(8, true);
    let dw = max_param_diff(full.path(), wrong.path());
    assert!(dw > 1e-2, "per-chunk token means went unnoticed: {dw:e}");
}
