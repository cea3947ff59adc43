//! The shortest complete oomph program (README, "Your own model and data"): a linear
//! classifier on the built-in `csv` or `synthetic` data, trained through oomph's whole
//! command line:
//!
//! ```text
//! cargo run --example linear -- train configs/linear-debug.toml
//! ```

use oomph::burn::{
    module::Module,
    nn::{Linear, LinearConfig},
    tensor::backend::{AutodiffBackend, Backend},
};
use oomph::data::DataInfo;
use oomph::train::feed::{TabularBatch, TabularTargets};
use oomph::train::{tensors::cross_entropy_per_row, Loss, Models, Objective, Registry};

#[derive(Module, Debug)]
struct Linear1<B: Backend> {
    linear: Linear<B>,
}

impl<B: Backend> Objective<B> for Linear1<B> {
    type Batch = TabularBatch<B>;
    fn loss(&self, batch: TabularBatch<B>) -> Loss<B> {
        let TabularTargets::Classes(y) = batch.targets else { unreachable!("classification data") };
        Loss { sum: cross_entropy_per_row(self.linear.forward(batch.features), y).sum() }
    }
}

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoKeys {}

struct MyModels;
impl Models for MyModels {
    fn register<B: AutodiffBackend>(r: &mut Registry<B>) {
        r.add("linear", "a linear classifier", |_: &NoKeys, info: &DataInfo, d: &B::Device| {
            let (Some(features), Some(classes)) = (info.n_features, info.n_classes) else {
                return Err(
                    "it needs tabular classification data (csv or synthetic, data.task = \"classification\")".into()
                );
            };
            Ok(Linear1 { linear: LinearConfig::new(features, classes).init(d) })
        });
    }
}

oomph::main!(MyModels); // `main`, and the allocation tracker the supervisor relies on
