//! The LibTorch backend (`run.backend = "tch"`, the `tch` cargo feature; build and run with
//! `scripts/setup-tch.sh test --test it tch`): the same guarantees as the other backends, and
//! in-process recovery from real allocation failures of libtorch's CPU allocator.

use crate::accumulation::TOL;
use crate::util::*;

/// The digits-sized MLP of the other tests on tch: 30 steps of 64 samples, a checkpoint every
/// 4 steps.
fn base() -> TestRecipe {
    TestRecipe::mlp()
        .set("run.backend", "tch")
        .set("run.seed", 11)
        .set("model.hidden", [32])
        .set("micro_batch.grow_after", 1000)
        .set("checkpoint.every", 4)
        .set("training.eval_every", 10)
}

#[test]
fn tch_accumulates_exactly_and_resumes_bit_identically() {
    let f = Fixture::new(&base());
    let o = f.train("whole", &["--no-supervise", "--set", "micro_batch.initial=64"]);
    assert!(o.status.success() && text(&o).contains("backend tch (cpu, libtorch)"), "{}", text(&o));
    let whole = f.run("whole");
    let split = f.reference("split", &["--set", "micro_batch.initial=8"]);
    let d = max_param_diff(&whole, &split);
    assert!(d < TOL, "micro 64 vs 8 on tch: max |diff| {d:e}");
    // A worker death in the update of step 7 (as after a failed host allocation): the
    // supervisor restarts it from step 4 at the same micro-batch (its first update in place),
    // and the run ends where the undisturbed one does, bit for bit.
    let died = f.run("died");
    let die = "faults.die_at=[{step=7, phase=\"optimizer\"}]";
    let o = f.train("died", &["--set", "micro_batch.initial=64", "--set", die]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(summary(&died).restarts, 1, "{}", text(&o));
    assert_same_bits(&whole, &died, "undisturbed vs restarted from step 4 on tch");
    assert_eq!(summary(&died).samples_seen, summary(&whole).samples_seen);
}

/// A wide layer whose activations grow with the micro-batch: at 4096 samples a step needs
/// about 150 MiB more than at the start of training, at 1024 about 60 MiB. SGD, as in the
/// other real-limit tests: Adam turns the rounding of near-zero gradients into steps of the
/// learning rate, which no accumulation tolerance survives.
fn wide() -> TestRecipe {
    TestRecipe::mlp()
        .set("run.backend", "tch")
        .set("run.seed", 3)
        .sgd(0.05)
        .set("model.hidden", [2048])
        .synthetic(6000, 256, 4)
        .set("training.steps", 4)
        .set("training.effective_batch", 4096)
        .set("training.eval_every", 0)
        .set("micro_batch.initial", 4096)
        .set("micro_batch.grow_after", 1000)
}

#[test]
fn tch_recovers_in_process_from_real_allocation_failures_with_the_same_parameters() {
    let f = Fixture::new(&wide());
    let reference = f.reference("reference", &[]);
    // The address space is limited to what the worker maps when training starts (libtorch's
    // libraries included) plus 100 MiB: the step at 4096 samples really fails inside
    // libtorch's CPU allocator. One thread and one malloc arena keep the address space of the
    // rest of the process from moving (a thread's stack or arena is address space too).
    let run = f.run("limited");
    let o = f
        .cmd("limited", &["--set", "faults.address_space_headroom=\"100MiB\""])
        .env("OMP_NUM_THREADS", "1")
        .env("MALLOC_ARENA_MAX", "1")
        // Large tensors always come from mmap (and go back when freed), whatever glibc's
        // adaptive threshold learned from earlier frees.
        .env("MALLOC_MMAP_THRESHOLD_", "1048576")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let s = summary(&run);
    assert!(s.oom_events >= 1 && s.micro_batch_final < 4096, "no real failure: {}", text(&o));
    assert_eq!(s.restarts, 0, "recovered in-process, without a worker restart: {}", text(&o));
    assert!(events(&run, "restart").is_empty());
    let ooms = events(&run, "oom");
    assert!(!ooms.is_empty(), "{}", text(&o));
    assert!(
        ooms.iter().all(|e| e["message"].as_str().unwrap_or("").contains("DefaultCPUAllocator: can't allocate memory")),
        "the failures are libtorch's own: {ooms:?}"
    );
    let d = max_param_diff(&reference, &run);
    assert!(d < TOL, "limited vs unconstrained: max |diff| {d:e}");
}

/// The shim over LibTorch's CUDA caching allocator (`oomph::train::tch_cuda`) links and answers
/// on any machine without crashing: with a card, its size from the driver; without one (the
/// CUDA-enabled wheel and no driver), the reason in words. Before anything is allocated on a
/// card the allocator holds nothing, and releasing its cache releases nothing and never fails.
#[test]
fn tch_cuda_memory_statistics_answer_with_a_card_or_say_why_not() {
    use oomph::train::tch_cuda::{allocator, device_count, empty_cache, total};
    let cards = device_count();
    match total(0) {
        Ok(bytes) => assert!(cards > 0 && bytes > 0, "{bytes} bytes with {cards} CUDA device(s)"),
        Err(why) => {
            assert_eq!(cards, 0, "LibTorch sees {cards} CUDA device(s) but the driver gave no size: {why}");
            assert!(why.contains("CUDA"), "the reason names CUDA: {why}");
        }
    }
    match allocator(0) {
        Ok(held) => assert_eq!(held, (0, 0)),
        Err(why) => assert!(cards == 0 && !why.is_empty(), "a CPU-only libtorch says why: {why}"),
    }
    assert_eq!(empty_cache(), Ok(false));
    assert!(total(usize::MAX).is_err() && allocator(usize::MAX).is_err());
}

/// The masked softmax's LibTorch path (no masked fill, the masked positions never reach `exp`)
/// gives the plain `softmax(mask_fill(..))`: the same values bit for bit, the same gradients.
/// Without autodiff (evaluation), and with an infinite fill, it is the plain form itself.
#[test]
fn tch_masked_softmax_is_the_plain_one_bit_for_bit() {
    use oomph::burn::backend::{Autodiff, LibTorch};
    use oomph::burn::tensor::{activation::softmax, Bool, Distribution, Tensor};
    use oomph::train::tensors::masked_softmax;
    type B = Autodiff<LibTorch<f32>>;
    let device = Default::default();
    let scores = Tensor::<B, 4>::random([3, 2, 9, 9], Distribution::Normal(0.0, 3.0), &device).require_grad();
    let causal = Tensor::<B, 2, Bool>::tril_mask([9, 9], 0, &device).reshape([1, 1, 9, 9]);
    let weights = Tensor::<B, 4>::random([3, 2, 9, 9], Distribution::Default, &device);
    let ours = masked_softmax(scores.clone(), causal.clone(), -1.0e4, 3);
    let plain = softmax(scores.clone().mask_fill(causal.clone(), -1.0e4), 3);
    assert_eq!(ours.clone().into_data(), plain.clone().into_data());
    let g_ours = (ours * weights.clone()).sum().backward();
    let g_plain = (plain * weights).sum().backward();
    // Equal as numbers: a masked position's gradient may be -0 on one side and +0 on the other.
    let values = |t: Tensor<LibTorch<f32>, 4>| t.into_data().iter::<f32>().collect::<Vec<_>>();
    let (a, b) = (values(scores.grad(&g_ours).unwrap()), values(scores.grad(&g_plain).unwrap()));
    assert!(a.iter().zip(&b).all(|(x, y)| x == y), "{a:?}\n{b:?}");
    let inner = scores.clone().inner();
    let inner_mask = causal.clone().inner();
    let plain = softmax(inner.clone().mask_fill(inner_mask.clone(), -1.0e4), 3);
    assert_eq!(masked_softmax(inner, inner_mask, -1.0e4, 3).into_data(), plain.into_data());
    let plain = softmax(scores.clone().mask_fill(causal.clone(), f32::NEG_INFINITY), 3);
    assert_eq!(masked_softmax(scores, causal, f32::NEG_INFINITY, 3).into_data(), plain.into_data());
}
