//! Micro-benchmarks (divan) of one training step and of each piece of per-step work oomph adds
//! around it, on the shipped debug models (flex CPU backend).
//!
//! `cargo bench --bench step`. Compare the rows with `plain_step` of the same model (same
//! process): the ratio is what each piece costs relative to a step. The end-to-end
//! comparison (whole oomph loop vs the plain loop) is in `benches/resilience.rs`.
#![allow(missing_docs)]

mod common;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use common::*;
use divan::Bencher;
use oomph::data::Sampler;
use oomph::models::gpt::Gpt;
use oomph::models::mlp::Mlp;
use oomph::recipe::Recipe;
use oomph::sched::Policy;
use oomph::train::feed::Feed;
use oomph::train::metrics::JsonLines;
use oomph::train::optim::Optim;
use oomph::train::Data;
use oomph::train::StepRecord;
use std::hint::black_box;

fn main() {
    divan::main();
}

const MODELS: &[&str] = &["digits-mlp-debug", "tiny-gpt-debug"];

fn recipe(name: &str) -> Recipe {
    shipped(&format!("{name}.toml"), &sets(&["training.eval_every=0", "checkpoint.every=0"]))
}

/// The plain hand-written step: gather, forward, mean loss, backward, `from_grads`, AdamW,
/// read the loss.
#[divan::bench(args = MODELS, max_time = 3)]
fn plain_step(bencher: Bencher, name: &str) {
    let r = recipe(name);
    let data = data_for(&r);
    let device = Default::default();
    let feeds = Data::<Fx>::from_splits(data.clone());
    match build::<Fx>(&r, &data, &device) {
        Builtins::Mlp(m) => {
            let mut p = Plain::new(m, &r, train_feed::<Fx, Mlp<Fx>>(&feeds));
            p.run(10);
            bencher.bench_local(|| p.step());
        }
        Builtins::Gpt(m) => {
            let mut p = Plain::new(m, &r, train_feed::<Fx, Gpt<Fx>>(&feeds));
            p.run(10);
            bencher.bench_local(|| p.step());
        }
    }
}

/// The same step with oomph's transactional update: the optimizer steps on *copies* of the
/// model and optimizer handles, the originals are kept until the update succeeded.
#[divan::bench(args = MODELS, max_time = 3)]
fn step_on_copies(bencher: Bencher, name: &str) {
    let r = recipe(name);
    let data = data_for(&r);
    let device = Default::default();
    let feeds = Data::<Fx>::from_splits(data.clone());
    match build::<Fx>(&r, &data, &device) {
        Builtins::Mlp(m) => copies_loop(bencher, m, &r, train_feed::<Fx, Mlp<Fx>>(&feeds)),
        Builtins::Gpt(m) => copies_loop(bencher, m, &r, train_feed::<Fx, Gpt<Fx>>(&feeds)),
    }
}

fn copies_loop<M: AutodiffModule<Fx> + PlainLoss<Fx>>(
    bencher: Bencher,
    model: M,
    r: &Recipe,
    data: &dyn Feed<Fx, M::Batch>,
) {
    let device = Default::default();
    let mut optim = Optim::<M, Fx>::new(&r.optimizer);
    let mut model = model;
    let mut sampler = Sampler::new(data.len(), r.run.seed, true);
    let n = r.training.effective_batch;
    let lr = r.optimizer.lr;
    let mut step = || {
        let loss = model.mean_loss(data.batch(&sampler.next_batch(n), &device));
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let mut o = optim.clone();
        let m = o.step(lr, model.clone(), grads);
        model = m;
        optim = o;
        black_box(loss.into_scalar());
    };
    for _ in 0..10 {
        step();
    }
    bencher.bench_local(step);
}

/// Copying the model's and the optimizer's handles (what the update and a checkpoint
/// snapshot take), after a few steps so the Adam moments exist.
#[divan::bench(args = MODELS, max_time = 2)]
fn copy_handles(bencher: Bencher, name: &str) {
    let r = recipe(name);
    let data = data_for(&r);
    let device = Default::default();
    let feeds = Data::<Fx>::from_splits(data.clone());
    match build::<Fx>(&r, &data, &device) {
        Builtins::Mlp(m) => copy_loop(bencher, m, &r, train_feed::<Fx, Mlp<Fx>>(&feeds)),
        Builtins::Gpt(m) => copy_loop(bencher, m, &r, train_feed::<Fx, Gpt<Fx>>(&feeds)),
    }
}

fn copy_loop<M: AutodiffModule<Fx> + PlainLoss<Fx>>(
    bencher: Bencher,
    model: M,
    r: &Recipe,
    data: &dyn Feed<Fx, M::Batch>,
) {
    let device = Default::default();
    let mut optim = Optim::<M, Fx>::new(&r.optimizer);
    let mut model = model;
    let mut sampler = Sampler::new(data.len(), r.run.seed, true);
    for _ in 0..3 {
        let loss = model.mean_loss(data.batch(&sampler.next_batch(r.training.effective_batch), &device));
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(r.optimizer.lr, model, grads);
    }
    bencher.bench_local(|| black_box((model.clone(), optim.clone())));
    black_box(model.num_params());
}

/// The recovery boundary around an attempt that does nothing: `catch_unwind`, the panic
/// recorder's generation check and `B::sync`. oomph crosses it twice per step.
#[divan::bench(max_time = 1)]
fn recovery_boundary(bencher: Bencher) {
    let device = Default::default();
    bencher.bench_local(|| oomph::train::recovery::attempt::<Fx, _>(&device, || black_box(1)).is_ok());
}

/// Re-seeding the backend RNG from `(seed, step)`, once per attempt.
#[divan::bench(max_time = 1)]
fn reseed(bencher: Bencher) {
    let device = Default::default();
    let mut step = 0;
    bencher.bench_local(|| {
        step += 1;
        <Fx as Backend>::seed(&device, oomph::train::trainer::step_seed(42, step));
    });
}

/// The policy's per-step work: the plan, then `on_step_ok`.
#[divan::bench(max_time = 1)]
fn policy_step(bencher: Bencher) {
    let r = recipe("digits-mlp-debug");
    let mut p = Policy::new(oomph::train::trainer::policy_config(&r));
    bencher.bench_local(|| {
        black_box(p.plan());
        black_box(p.on_step_ok());
    });
}

/// One `metrics.jsonl` line as the run log writes it: serialised into the buffered writer,
/// flushed at most every 100 ms.
#[divan::bench(max_time = 1)]
fn metrics_line(bencher: Bencher) {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("metrics.jsonl");
    let mut out = JsonLines::open_with(&path, std::time::Duration::from_millis(100)).unwrap();
    let mut step = 0;
    bencher.bench_local(|| {
        step += 1;
        let rec = StepRecord {
            step,
            samples_seen: step as u64 * 64,
            loss: 1.234_567_8,
            lr: 3e-3,
            micro_batch: 64,
            chunks: 1,
            samples_per_sec: 12_345.678,
            wall_s: 1.5 + step as f64 * 5e-5,
            ..Default::default()
        };
        out.write(&rec).unwrap();
    });
}

/// The gradient check of one step: every gradient reduced on the device and read back with
/// the loss in one read (`step.rs`), against reading the loss alone (the plain loop's read).
#[divan::bench(args = MODELS, consts = [false, true], max_time = 2)]
fn grad_check<const CHECK: bool>(bencher: Bencher, name: &str) {
    use burn::tensor::{ElementConversion, Tensor};
    use oomph::train::optim::{reduce_grads, Reduce};
    let r = recipe(name);
    let data = data_for(&r);
    let device = Default::default();
    let indices: Vec<usize> = (0..r.training.effective_batch).collect();
    let feeds = Data::<Fx>::from_splits(data.clone());
    fn run<M: AutodiffModule<Fx> + PlainLoss<Fx>, const CHECK: bool>(
        bencher: Bencher,
        m: M,
        feed: &dyn Feed<Fx, M::Batch>,
        indices: &[usize],
        device: &burn::tensor::Device<Fx>,
    ) {
        let loss = m.mean_loss(feed.batch(indices, device));
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        let loss = m.mean_loss(feed.batch(indices, device)).inner();
        bencher.bench_local(|| {
            if CHECK {
                let mut all = vec![loss.clone()];
                all.extend(reduce_grads::<Fx, M>(&m, &grads, Reduce::Sum));
                black_box(Tensor::cat(all, 0).into_data().iter::<f64>().sum::<f64>())
            } else {
                black_box(loss.clone().into_scalar().elem::<f64>())
            }
        });
    }
    match build::<Fx>(&r, &data, &device) {
        Builtins::Mlp(m) => run::<_, CHECK>(bencher, m, train_feed::<Fx, Mlp<Fx>>(&feeds), &indices, &device),
        Builtins::Gpt(m) => run::<_, CHECK>(bencher, m, train_feed::<Fx, Gpt<Fx>>(&feeds), &indices, &device),
    }
}

/// Gathering one effective batch onto the device (sampler + the built-in dataset and
/// batcher), which both loops do.
#[divan::bench(args = MODELS, max_time = 1)]
fn gather_batch(bencher: Bencher, name: &str) {
    let r = recipe(name);
    let data = data_for(&r);
    let feeds = Data::<Fx>::from_splits(data.clone());
    let device = Default::default();
    let n = r.training.effective_batch;
    let mut s = Sampler::new(feeds.train_len(), 1, true);
    match r.model.kind.as_str() {
        "mlp" => {
            let feed = train_feed::<Fx, Mlp<Fx>>(&feeds);
            bencher.bench_local(|| black_box(feed.batch(&s.next_batch(n), &device)))
        }
        _ => {
            let feed = train_feed::<Fx, Gpt<Fx>>(&feeds);
            bencher.bench_local(|| black_box(feed.batch(&s.next_batch(n), &device)))
        }
    }
}

/// A simulated out-of-memory panic caught by the recovery boundary and classified (the
/// panic hook records it; unwinding; classification), then the device cleanup. The fixed
/// part of every in-process OOM, before the events are written.
#[divan::bench(max_time = 1)]
fn oom_roundtrip(bencher: Bencher) {
    let device = Default::default();
    bencher.bench_local(|| {
        let r = oomph::train::recovery::attempt::<Fx, _>(&device, || {
            std::panic::panic_any(format!(
                "{}: a micro-batch of 64 samples does not fit",
                oomph::sched::SIMULATED_OOM_PREFIX
            ))
        });
        oomph::train::recovery::cleanup::<Fx>(&device);
        black_box(r.is_err())
    });
}

/// Writes a step's two positions (the forward phase of the next step, then the optimizer
/// phase) through `write`, one step per iteration.
fn two_positions(bencher: Bencher, mut write: impl FnMut(&oomph::train::current::Current)) {
    use oomph::train::current::{Current, WorkerPhase};
    let mut c = Current {
        pid: 4242,
        micro_batch: 64,
        eval_batch: 64,
        min_micro_batch: 1,
        parameters: 2410,
        ..Default::default()
    };
    bencher.bench_local(|| {
        c.step += 1;
        c.phase = WorkerPhase::Train;
        write(&c);
        c.phase = WorkerPhase::Optimizer;
        write(&c);
    });
}

/// `current.json` as the run log keeps it: two writes per step into the memory-mapped file.
#[divan::bench(max_time = 1)]
fn current_json(bencher: Bencher) {
    let d = tempfile::tempdir().unwrap();
    let mut f = oomph::train::current::CurrentFile::open(&d.path().join("current.json")).unwrap();
    two_positions(bencher, |c| f.write(c));
}

/// The same two positions through the run log, as the loop writes them: the failing thread's
/// position kept for its allocation-failure note, and `current.json` shared by the ranks of a
/// process (a lock and the earliest rank's position), here with one rank.
#[divan::bench(max_time = 1)]
fn run_log_position(bencher: Bencher) {
    let d = tempfile::tempdir().unwrap();
    let mut log =
        oomph::train::runlog::RunLog::open(d.path(), Box::new(oomph::train::progress::Silent), Vec::new()).unwrap();
    two_positions(bencher, |c| log.position(c));
}
