//! Losses and metrics for model authors: per-row cross-entropy, correct predictions, and the
//! attention's masked softmax.

use burn::tensor::{backend::Backend, Bool, Int, Tensor};

/// Per-row cross-entropy `-log softmax(logits)[target]`, shape `[n]`.
pub fn cross_entropy_per_row<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let n = targets.dims()[0];
    let logp = burn::tensor::activation::log_softmax(logits, 1);
    logp.gather(1, targets.reshape([n, 1])).reshape([n]).neg()
}

/// Number of rows whose arg-max equals the target, shape `[1]` (float).
pub fn correct<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let n = targets.dims()[0];
    logits.argmax(1).reshape([n]).equal(targets).float().sum()
}

/// `softmax(scores.mask_fill(masked, fill), dim)`: the attention weights of masked scores.
/// `masked` broadcasts against `scores`.
///
/// When autodiff runs on LibTorch's CPU backend, the masked positions never reach `exp` and no
/// masked fill runs: products with a 0/1 mask set them (to `fill` for the row maximum, to 0
/// before and after the exponential). There burn writes the softmax out, an underflowing `exp`
/// takes MKL's slow special-value path and a masked fill whose mask broadcasts is a scalar
/// loop: together a sixth of libtorch's time in a tiny-gpt step, which the products replace.
/// The result is the plain one bit for bit (the gradient equal as numbers) when `fill` is
/// finite, the scores are finite, and every row keeps a position whose score exceeds `fill`
/// by more than 104 (so that `exp(fill - row maximum)` is exactly 0 in `f32`), as in causal
/// attention with `fill = -1e4`. Elsewhere (other backends, LibTorch without autodiff, whose
/// softmax is one fused kernel, or an infinite `fill`) this is the plain form.
pub fn masked_softmax<B: Backend, const D: usize>(
    scores: Tensor<B, D>,
    masked: Tensor<B, D, Bool>,
    fill: f32,
    dim: usize,
) -> Tensor<B, D> {
    let device = scores.device();
    if !(fill.is_finite() && B::ad_enabled(&device) && B::name(&device).contains("libtorch<cpu>")) {
        return burn::tensor::activation::softmax(scores.mask_fill(masked, fill), dim);
    }
    // `keep` is 0 where masked and 1 elsewhere: `scores * keep + fill * masked` is the masked
    // fill (x * 1 + 0 = x, x * 0 + fill = fill), with the same gradient (`keep`). Then burn's
    // softmax, the masked positions of the shifted scores and of their exponential set to 0.
    let masked = masked.float().cast(scores.dtype());
    let keep = masked.clone().neg().add_scalar(1.0);
    let filled = scores * keep.clone() + masked.mul_scalar(fill);
    let max = filled.clone().detach().max_dim(dim);
    let exp = ((filled - max) * keep.clone()).exp() * keep;
    exp.clone() / exp.sum_dim(dim)
}
