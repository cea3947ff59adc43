//! oomph's built-in models: `mlp` (tabular classification and regression), `cnn` (image
//! classification) and `gpt` (character-level decoder-only transformer). All implement
//! [`oomph_train::Objective`] and
//! are registered by [`Builtin`].

pub mod cnn;
pub mod gpt;
pub mod mlp;

use burn::tensor::backend::AutodiffBackend;
use oomph_train::{Models, Registry};

/// The built-in model kinds.
pub struct Builtin;

impl Models for Builtin {
    fn register<B: AutodiffBackend>(r: &mut Registry<B>) {
        r.add("mlp", "multi-layer perceptron for tabular classification/regression", mlp::init::<B>);
        r.add("cnn", "small convolutional network for image classification", cnn::init::<B>);
        r.add_with_needs("gpt", "decoder-only transformer, character-level language model", gpt::needs, gpt::init::<B>);
    }
}
