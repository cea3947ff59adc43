//! Keyed randomness inside a training step: every random draw a model makes while the
//! trainer runs one of its chunks is a function of `(seed, step, sample index, call site)`,
//! so splitting an effective batch into other chunks, retrying it after an out-of-memory, or
//! resuming it from a checkpoint draws exactly the same numbers for every sample.
//!
//! The trainer wraps each chunk's forward pass in [`with_chunk`]; a model draws through the
//! functions of this module (for example [`dropout`]) instead of burn's backend RNG, whose
//! draws depend on the chunk's shape.
//!
//! # In a custom model
//!
//! Give every dropout call site its own id (a constant from [`site`], combined with the layer
//! number through [`site_at`]) and call [`dropout`] on a batch-first tensor (dim 0 holds the
//! chunk's samples, in order). During oomph's training chunks the mask of each sample depends
//! only on `(seed, step, sample, site)`; during evaluation (no autodiff) it is the identity;
//! outside oomph's trainer (autodiff on, no chunk keys) it falls back to burn's backend RNG.
//!
//! ```
//! use burn::backend::{Autodiff, Flex};
//! use burn::tensor::Tensor;
//! use oomph_train::random::{dropout, site, site_at, with_chunk};
//!
//! type B = Autodiff<Flex>;
//! const DROP: u64 = site("my_model.block.dropout");
//!
//! let device = Default::default();
//! let layer = 0;
//! // Sample 7 alone in a chunk, then as the middle row of a chunk of three.
//! let alone = with_chunk(1, 5, &[7], || {
//!     dropout(Tensor::<B, 2>::ones([1, 64], &device), 0.5, site_at(DROP, layer))
//! });
//! let among = with_chunk(1, 5, &[3, 7, 9], || {
//!     dropout(Tensor::<B, 2>::ones([3, 64], &device), 0.5, site_at(DROP, layer))
//! });
//! let row = among.slice([1..2, 0..64]);
//! assert_eq!(alone.into_data(), row.into_data());
//! ```

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData};
use std::cell::RefCell;

/// The keys of the chunk that is running on this thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkKeys {
    /// The run's master seed.
    pub seed: u64,
    /// The optimizer step (1-based).
    pub step: usize,
    /// The dataset index of each sample of the chunk, in batch order (row `r` of the
    /// chunk's tensors is sample `samples[r]`).
    pub samples: Vec<u64>,
}

thread_local! {
    static CURRENT: RefCell<Option<ChunkKeys>> = const { RefCell::new(None) };
}

/// Runs `f` with the keys of one chunk in force on this thread (restored afterwards, also
/// when `f` panics).
pub fn with_chunk<R>(seed: u64, step: usize, samples: &[usize], f: impl FnOnce() -> R) -> R {
    struct Restore(Option<ChunkKeys>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = prev);
        }
    }
    let keys = ChunkKeys { seed, step, samples: samples.iter().map(|&s| s as u64).collect() };
    let prev = CURRENT.with(|c| c.borrow_mut().replace(keys));
    let _restore = Restore(prev);
    f()
}

/// The keys of the chunk running on this thread, if the trainer set them.
pub fn current() -> Option<ChunkKeys> {
    CURRENT.with(|c| c.borrow().clone())
}

/// The SplitMix64 finaliser: a bijective 64-bit mixer whose every output bit depends on every
/// input bit.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64's increment (the golden ratio in 64 bits).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// A call-site id from a name (64-bit FNV-1a), usable in `const` items:
/// `const DROP: u64 = site("my_model.dropout");`.
pub const fn site(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
        i += 1;
    }
    h
}

/// The id of the `index`-th instance of a call site (for example the dropout of layer
/// `index`), distinct from `base` and from every other index.
pub const fn site_at(base: u64, index: usize) -> u64 {
    mix(base ^ mix((index as u64).wrapping_add(1).wrapping_mul(GOLDEN)))
}

/// The stream key of one sample at one call site: every word of the key goes through the
/// mixer, chained.
fn row_key(seed: u64, step: u64, sample: u64, site: u64) -> u64 {
    let mut h = mix(seed ^ GOLDEN);
    h = mix(h ^ step);
    h = mix(h ^ sample.wrapping_mul(GOLDEN));
    mix(h ^ site)
}

/// The `i`-th uniform number in `[0, 1)` of the stream `key` (SplitMix64 at counter `i`).
fn uniform(key: u64, i: u64) -> f64 {
    let z = mix(key.wrapping_add(i.wrapping_add(1).wrapping_mul(GOLDEN)));
    (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// The keyed dropout mask of a `[samples.len(), row]` tensor: `scale` where kept, `0` where
/// dropped.
fn keyed_mask(keys: &ChunkKeys, row: usize, prob: f64, site: u64) -> Vec<f32> {
    let scale = (1.0 / (1.0 - prob)) as f32;
    let mut mask = Vec::with_capacity(keys.samples.len() * row);
    for &sample in &keys.samples {
        let key = row_key(keys.seed, keys.step as u64, sample, site);
        mask.extend((0..row as u64).map(|i| if uniform(key, i) >= prob { scale } else { 0.0 }));
    }
    mask
}

/// Dropout whose mask is keyed by `(seed, step, sample, site)`: each element is zeroed with
/// probability `prob` and the kept ones are scaled by `1 / (1 - prob)`.
///
/// - The identity when `prob == 0` or when the backend has no autodiff (evaluation and
///   inference), as burn's `nn::Dropout` decides.
/// - Inside a training chunk (see [`with_chunk`]), dim 0 of `x` is the batch: element
///   `(r, rest)` is kept iff the uniform number of `(seed, step, samples[r], site, flat index
///   of rest)` is at least `prob`, so a sample's mask does not depend on the chunk it is in.
///   The mask is built on the host and is a constant of the autodiff graph.
/// - With autodiff but no chunk keys (a forward pass outside oomph's trainer), burn's backend
///   RNG draws the mask, as `nn::Dropout` does.
///
/// # Panics
/// When `prob` is not in `[0, 1)`, or when chunk keys are set and dim 0 of `x` is not the
/// chunk's number of samples.
pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, prob: f64, site: u64) -> Tensor<B, D> {
    assert!((0.0..1.0).contains(&prob), "dropout probability {prob} (site {site:#018x}) must be in [0, 1)");
    if prob == 0.0 {
        return x;
    }
    let device = x.device();
    if !B::ad_enabled(&device) {
        return x;
    }
    CURRENT.with(|c| {
        let current = c.borrow();
        let Some(keys) = current.as_ref() else {
            let keep = x.random_like(Distribution::Bernoulli(1.0 - prob));
            return x * keep * (1.0 / (1.0 - prob));
        };
        let dims = x.dims();
        let rows = dims.first().copied().unwrap_or(1);
        assert_eq!(
            rows,
            keys.samples.len(),
            "keyed dropout at site {site:#018x}: dim 0 of its input (shape {dims:?}) has {rows} rows but the \
             chunk has {} samples; the input must be batch-first",
            keys.samples.len()
        );
        let row: usize = dims[1..].iter().product();
        let mask = keyed_mask(keys, row, prob, site);
        let mask = Tensor::<B, D>::from_data(TensorData::new(mask, dims), (&device, x.dtype()));
        x * mask
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    type A = Autodiff<Flex>;

    /// The rows of the mask keyed dropout applies to a chunk of `samples` (rows of `width`).
    fn masks(seed: u64, step: usize, samples: &[usize], width: usize, prob: f64, site: u64) -> Vec<Vec<f32>> {
        let device = Default::default();
        let ones = Tensor::<A, 2>::ones([samples.len(), width], &device);
        let out = with_chunk(seed, step, samples, || dropout(ones, prob, site));
        let v = out.into_data().to_vec::<f32>().unwrap();
        v.chunks(width).map(<[f32]>::to_vec).collect()
    }

    #[test]
    fn a_sample_gets_the_same_mask_whatever_its_chunk() {
        let s = site("test.dropout");
        let whole = masks(3, 4, &[10, 11, 12, 13, 14], 100, 0.3, s);
        let alone = masks(3, 4, &[12], 100, 0.3, s);
        let reordered = masks(3, 4, &[14, 12, 10], 100, 0.3, s);
        assert_eq!(whole[2], alone[0]);
        assert_eq!(whole[2], reordered[1]);
        assert_eq!(whole[4], reordered[0]);
        assert_eq!(whole[0], reordered[2]);
        // A 3-d tensor: each sample's row is its flattened trailing dims.
        let device = Default::default();
        let x = Tensor::<A, 3>::ones([2, 4, 25], &device);
        let out = with_chunk(3, 4, &[11, 13], || dropout(x, 0.3, s)).into_data().to_vec::<f32>().unwrap();
        assert_eq!(out[..100], whole[1][..]);
        assert_eq!(out[100..], whole[3][..]);
    }

    #[test]
    fn seeds_steps_samples_and_sites_give_different_masks() {
        let s = site("test.dropout");
        let base = masks(3, 4, &[10], 256, 0.5, s)[0].clone();
        assert_ne!(base, masks(4, 4, &[10], 256, 0.5, s)[0], "seed");
        assert_ne!(base, masks(3, 5, &[10], 256, 0.5, s)[0], "step");
        assert_ne!(base, masks(3, 4, &[11], 256, 0.5, s)[0], "sample");
        assert_ne!(base, masks(3, 4, &[10], 256, 0.5, site("test.other"))[0], "site");
        assert_ne!(base, masks(3, 4, &[10], 256, 0.5, site_at(s, 0))[0], "indexed site");
        assert_ne!(masks(3, 4, &[10], 256, 0.5, site_at(s, 0)), masks(3, 4, &[10], 256, 0.5, site_at(s, 1)));
        // Rows of one chunk differ from each other.
        let m = masks(3, 4, &[0, 1], 256, 0.5, s);
        assert_ne!(m[0], m[1]);
    }

    #[test]
    fn the_kept_fraction_is_one_minus_p_and_kept_values_are_scaled() {
        for p in [0.1, 0.5, 0.9] {
            let samples: Vec<usize> = (0..200).collect();
            let m = masks(9, 1, &samples, 500, p, site("test.fraction"));
            let all: Vec<f32> = m.into_iter().flatten().collect();
            let kept = all.iter().filter(|&&v| v != 0.0).count() as f64 / all.len() as f64;
            // 100k Bernoulli draws: the standard deviation of the fraction is at most 0.0016.
            assert!((kept - (1.0 - p)).abs() < 0.01, "p = {p}: kept fraction {kept}");
            let scale = (1.0 / (1.0 - p)) as f32;
            assert!(all.iter().all(|&v| v == 0.0 || (v - scale).abs() < 1e-6));
            let mean = all.iter().map(|&v| v as f64).sum::<f64>() / all.len() as f64;
            assert!((mean - 1.0).abs() < 0.05, "p = {p}: mean {mean}");
        }
    }

    #[test]
    fn identity_without_autodiff_or_with_zero_probability() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::random([4, 8], Distribution::Default, &device);
        let y = with_chunk(1, 1, &[0, 1, 2, 3], || dropout(x.clone(), 0.5, site("test")));
        assert_eq!(x.into_data(), y.into_data());
        let x = Tensor::<A, 2>::random([4, 8], Distribution::Default, &device);
        let y = with_chunk(1, 1, &[0, 1, 2, 3], || dropout(x.clone(), 0.0, site("test")));
        assert_eq!(x.into_data(), y.into_data());
    }

    #[test]
    fn without_chunk_keys_the_backend_rng_draws_the_mask() {
        let device = Default::default();
        let y = dropout(Tensor::<A, 2>::ones([64, 64], &device), 0.5, site("test"));
        let v = y.into_data().to_vec::<f32>().unwrap();
        let kept = v.iter().filter(|&&x| x != 0.0).count();
        assert!(kept > 0 && kept < v.len(), "{kept} of {}", v.len());
        assert!(v.iter().all(|&x| x == 0.0 || x == 2.0));
    }

    #[test]
    fn gradients_flow_through_kept_elements_only() {
        let device = Default::default();
        let x = Tensor::<A, 2>::ones([3, 16], &device).require_grad();
        let y = with_chunk(2, 3, &[5, 6, 7], || dropout(x.clone(), 0.25, site("test.grad")));
        let out = y.clone().into_data().to_vec::<f32>().unwrap();
        let grads = y.sum().backward();
        let g = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        // d(sum(x * mask))/dx = mask, which on ones is the output itself.
        assert_eq!(g, out);
    }

    #[test]
    fn a_batch_that_is_not_dim_0_is_named_in_the_panic() {
        let device = Default::default();
        let x = Tensor::<A, 2>::ones([4, 8], &device);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_chunk(1, 1, &[0, 1], || dropout(x, 0.5, 0x1234))
        }));
        let msg = r.unwrap_err();
        let msg = msg.downcast_ref::<String>().unwrap();
        assert!(msg.contains("0x0000000000001234") && msg.contains("4 rows") && msg.contains("2 samples"), "{msg}");
    }

    #[test]
    fn site_ids_are_fnv1a() {
        // FNV-1a 64 test vectors.
        assert_eq!(site(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(site("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(site_at(site("a"), 0), site_at(site("a"), 1));
    }
}
