//! How data reaches the trainer: burn's own `Dataset` and `Batcher`, plus the two things
//! oomph needs beyond them.
//!
//! A burn user already has a [`Dataset<I>`] (items by index) and a [`Batcher<B, I, O>`]
//! (items to the model's batch type `O` on a device). [`Batched`] pairs them into a [`Feed`],
//! which is all the trainer draws from. What oomph adds is explicit and small:
//!
//! - **each item's weight**: the units the step's mean loss is taken over. 1 per item by
//!   default (a mean over samples); tokens for sequence data ([`Batched::weighed`]). The
//!   step's loss is `sum(loss sums) / sum(weights)` over the whole effective batch, and that
//!   total is known on the host before the first backward pass, which is what makes the
//!   accumulation exact however the batch is split;
//! - **the sample indices of a chunk**: the trainer asks for `batch(indices)`, never for "the
//!   next batch", so the sampler's order resumes exactly from a checkpoint and the keyed
//!   randomness of [`crate::random`] sees which samples it draws for.
//!
//! A model declares the batch type it trains on ([`crate::Objective::Batch`]); a recipe's
//! data gives a [`Data`] whose feeds produce one batch type. They meet by type: a model
//! paired with data of another batch type is refused before anything is built, with a
//! message naming both kinds.
//!
//! oomph's own `csv`, `synthetic`, `text` and `image_folder` data are datasets of this kind
//! too: [`TabularRows`] with [`TabularBatcher`] (giving [`TabularBatch`]), [`TokenWindows`]
//! with [`TokenBatcher`] (giving [`TokenBatch`], weighed in tokens), and burn-dataset's
//! `ImageFolderDataset` with [`ImageBatcher`] (giving [`ImageBatch`]).

use crate::error::TrainError;
use crate::objective::{InnerBatch, Objective};
use crate::recovery::data_fault;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use oomph_data::{DataIdentity, DataInfo, Source, Splits};
use oomph_recipe::{DataKind, Recipe};
pub mod images;
pub mod tabular;
pub mod text;

pub use images::{ImageBatch, ImageBatcher};
use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;
pub use tabular::{TabularBatch, TabularBatcher, TabularItem, TabularRows, TabularTarget, TabularTargets};
pub use text::{TokenBatch, TokenBatcher, TokenWindows};

/// One split of the data, seen by the trainer: sample indices in, batches of type `O` on a
/// device of backend `B` out.
///
/// Implemented by [`Batched`] for any burn `Dataset` and `Batcher`; implement it directly only
/// for data that is not item-by-item.
pub trait Feed<B: Backend, O>: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The loss weight of the samples at `indices`: the sum of their weights, so that
    /// `weight(a ++ b) == weight(a) + weight(b)`. The number of samples by default.
    fn weight(&self, indices: &[usize]) -> f64 {
        indices.len() as f64
    }

    /// The samples one evaluation covers, in order. Every sample by default.
    fn eval_indices(&self) -> Vec<usize> {
        (0..self.len()).collect()
    }

    /// The batch of the samples at `indices` (in that order; repeats allowed) on `device`.
    fn batch(&self, indices: &[usize], device: &B::Device) -> O;
}

/// How a [`Batched`] feed weighs its items.
enum Weigh<I> {
    /// Every item weighs the same (no item is fetched to weigh it).
    Each(f64),
    /// Each item's weight from the item.
    Item(Arc<dyn Fn(&I) -> f64 + Send + Sync>),
}

/// A burn [`Dataset`] with the [`Batcher`] that turns its items into a model's batches: a
/// [`Feed`] for every backend the batcher covers.
///
/// ```
/// use burn::data::dataloader::batcher::Batcher;
/// use burn::data::dataset::InMemDataset;
/// use burn::tensor::{backend::Backend, Tensor};
/// use oomph_train::feed::{Batched, Feed};
///
/// #[derive(Clone)]
/// struct Item { x: [f32; 2], tokens: usize }
/// struct MyBatch<B: Backend> { x: Tensor<B, 2> }
/// struct MyBatcher;
/// impl<B: Backend> Batcher<B, Item, MyBatch<B>> for MyBatcher {
///     fn batch(&self, items: Vec<Item>, device: &B::Device) -> MyBatch<B> {
///         let rows: Vec<Tensor<B, 2>> =
///             items.iter().map(|i| Tensor::<B, 1>::from_floats(i.x, device).unsqueeze()).collect();
///         MyBatch { x: Tensor::cat(rows, 0) }
///     }
/// }
///
/// let items = vec![Item { x: [1.0, 2.0], tokens: 3 }, Item { x: [3.0, 4.0], tokens: 5 }];
/// let feed = Batched::new(InMemDataset::new(items), MyBatcher).weighed(|i: &Item| i.tokens as f64);
/// type B = burn::backend::Flex;
/// let batch: MyBatch<B> = Feed::<B, MyBatch<B>>::batch(&feed, &[1, 0], &Default::default());
/// assert_eq!(batch.x.dims(), [2, 2]);
/// assert_eq!(Feed::<B, MyBatch<B>>::weight(&feed, &[0, 1]), 8.0);
/// ```
pub struct Batched<I, D, T> {
    dataset: D,
    batcher: T,
    weigh: Weigh<I>,
    eval_stride: usize,
    _items: PhantomData<fn() -> I>,
}

impl<I, D: Dataset<I>, T> Batched<I, D, T> {
    /// `dataset`'s items, batched by `batcher`; every item weighs 1.
    pub fn new(dataset: D, batcher: T) -> Self {
        Self { dataset, batcher, weigh: Weigh::Each(1.0), eval_stride: 1, _items: PhantomData }
    }

    /// Each item weighs `weigh(item)` (e.g. its number of target tokens): the step's loss is
    /// the mean over these units, and the model's loss must be the sum over the same units.
    /// Weights must be finite and positive. To weigh the effective batch, each of its items is
    /// fetched once more (`Dataset::get`), and once again per chunk for a model that reports
    /// the units of its loss (the burn-train adapter); when every item weighs the same, use
    /// [`Batched::each_weighs`], which fetches nothing.
    pub fn weighed(mut self, weigh: impl Fn(&I) -> f64 + Send + Sync + 'static) -> Self {
        self.weigh = Weigh::Item(Arc::new(weigh));
        self
    }

    /// Every item weighs `weight` (e.g. the `seq_len` target tokens of a fixed-length token
    /// window): the step's loss is the mean over these units. Must be finite and positive.
    pub fn each_weighs(mut self, weight: f64) -> Self {
        self.weigh = Weigh::Each(weight);
        self
    }

    /// Evaluation covers every `stride`-th item (e.g. non-overlapping windows of a text whose
    /// items are windows at every offset). 1 by default.
    pub fn eval_stride(mut self, stride: usize) -> Self {
        self.eval_stride = stride.max(1);
        self
    }

    /// The dataset.
    pub fn dataset(&self) -> &D {
        &self.dataset
    }

    fn item(&self, index: usize) -> I {
        self.dataset.get(index).unwrap_or_else(|| {
            data_fault(format!(
                "the dataset's get({index}) returned no item, though its len() is {}: a burn Dataset must return an \
                 item for every index below its len(). Fix: make the dataset's get and len agree.",
                self.dataset.len()
            ))
        })
    }
}

impl<B, O, I, D, T> Feed<B, O> for Batched<I, D, T>
where
    B: Backend,
    D: Dataset<I>,
    T: Batcher<B, I, O>,
{
    fn len(&self) -> usize {
        self.dataset.len()
    }

    fn weight(&self, indices: &[usize]) -> f64 {
        match &self.weigh {
            Weigh::Each(w) => indices.len() as f64 * w,
            Weigh::Item(w) => indices
                .iter()
                .map(|&i| match w(&self.item(i)) {
                    w if w.is_finite() && w > 0.0 => w,
                    w => data_fault(format!(
                        "item {i} of the data weighs {w}; weights must be finite and above zero. Fix: correct the \
                         weight function given to `Batched::weighed`."
                    )),
                })
                .sum(),
        }
    }

    fn eval_indices(&self) -> Vec<usize> {
        (0..self.dataset.len()).step_by(self.eval_stride).collect()
    }

    fn batch(&self, indices: &[usize], device: &B::Device) -> O {
        let items = indices.iter().map(|&i| self.item(i)).collect();
        self.batcher.batch(items, device)
    }
}

/// The training and validation feeds of a run, for a model that trains on batches `T` (on
/// the autodiff backend `B`) and is evaluated on batches `V` (on its inner backend).
pub struct Feeds<B: AutodiffBackend, T, V> {
    /// The training split.
    pub train: Box<dyn Feed<B, T>>,
    /// The validation split (empty when there is none).
    pub valid: Box<dyn Feed<B::InnerBackend, V>>,
}

/// The feeds model `M` draws from: its training batches, and its inference copy's.
pub type ModelFeeds<B, M> = Feeds<B, <M as Objective<B>>::Batch, InnerBatch<B, M>>;

/// A recipe's data, loaded: its summary and identity, and its feeds with their batch type
/// (known to the model only through a typed look-up, [`Data::feeds`]).
pub struct Data<B: AutodiffBackend> {
    /// Sizes and description, for the model's construction and the reports (and, with the
    /// content digest, the data's identity: see [`Data::identity`]).
    pub info: DataInfo,
    /// The vocabulary (text) of the identity; the rest is derived from `info`.
    vocabulary: Option<String>,
    /// The content digest of the identity.
    content_sha256: String,
    feeds: Box<dyn Any + Send + Sync>,
    /// The full name of the training batch type.
    batch: &'static str,
    train_len: usize,
    valid_len: usize,
    _backend: PhantomData<fn() -> B>,
}

impl<B: AutodiffBackend> Data<B> {
    /// Data that gives batches `T` for training and `V` for evaluation.
    pub fn new<T: 'static, V: 'static>(
        info: DataInfo,
        identity: DataIdentity,
        train: impl Feed<B, T> + 'static,
        valid: impl Feed<B::InnerBackend, V> + 'static,
    ) -> Self {
        let (train_len, valid_len) = (train.len(), valid.len());
        let feeds = Feeds::<B, T, V> { train: Box::new(train), valid: Box::new(valid) };
        let DataIdentity { vocabulary, content_sha256, .. } = identity;
        Self {
            info,
            vocabulary,
            content_sha256,
            feeds: Box::new(feeds),
            batch: std::any::type_name::<T>(),
            train_len,
            valid_len,
            _backend: PhantomData,
        }
    }

    /// A program's own data ([`crate::Registry::add_data`]): its training and validation
    /// feeds (usually [`Batched`] burn datasets), described in one line for the logs.
    /// `content_sha256` identifies the content (e.g. the SHA-256 of the files read, see
    /// `oomph_data::file_sha256`): a run resumes only on data of the same identity (name,
    /// sizes, the summary's class count and names, and content). Set fields of [`Data::info`]
    /// (e.g. `n_classes`) for the model to read when it is built; they are part of the
    /// identity.
    pub fn program<T: 'static, V: 'static>(
        name: &str,
        description: &str,
        content_sha256: String,
        train: impl Feed<B, T> + 'static,
        valid: impl Feed<B::InnerBackend, V> + 'static,
    ) -> Self {
        let info = DataInfo {
            kind: name.to_string(),
            task: "program".into(),
            n_features: None,
            n_classes: None,
            class_names: None,
            vocab_size: None,
            image: None,
            seq_len: None,
            train_len: train.len(),
            valid_len: valid.len(),
            description: description.to_string(),
        };
        let identity = DataIdentity::new(&info, None, content_sha256);
        Data::new(info, identity, train, valid)
    }

    /// oomph's built-in data (`csv`, `synthetic`, `text`) as feeds: tables give
    /// [`TabularBatch`]es, texts [`TokenBatch`]es weighed in target tokens.
    pub fn from_splits(splits: Splits) -> Self {
        let Splits { train, valid, info, identity, .. } = splits;
        match (train, valid) {
            (Source::Tabular(train), Source::Tabular(valid)) => {
                Data::new(info, identity, TabularRows::feed(train), TabularRows::feed(valid))
            }
            (Source::Text { text: train, seq_len }, Source::Text { text: valid, .. }) => Data::new(
                info,
                identity,
                TokenWindows::feed(train.tokens, seq_len),
                TokenWindows::feed(valid.tokens, seq_len),
            ),
            _ => unreachable!("oomph_data splits a dataset into two sources of its own kind"),
        }
    }

    /// The feeds, when the data gives batches `T` (training) and `V` (evaluation).
    pub fn feeds<T: 'static, V: 'static>(&self) -> Option<&Feeds<B, T, V>> {
        self.feeds.downcast_ref()
    }

    /// What the data is, for checking that a resumed run trains on the same data: the summary
    /// as it is now ([`Data::info`]) with the vocabulary and content digest it was made with.
    pub fn identity(&self) -> DataIdentity {
        DataIdentity::new(&self.info, self.vocabulary.clone(), self.content_sha256.clone())
    }

    /// The name of the training batch type, e.g. `TabularBatch` (see [`type_name`]).
    pub fn batch_type(&self) -> &'static str {
        short_name(self.batch)
    }

    /// Training samples.
    pub fn train_len(&self) -> usize {
        self.train_len
    }

    /// Validation samples (0 without validation).
    pub fn valid_len(&self) -> usize {
        self.valid_len
    }
}

/// The feeds of `data` for model `M`, or the bad-input error that names the model's and the
/// data's kinds and batch types when the model cannot take this data.
pub fn feeds_for<'d, B, M>(data: &'d Data<B>, recipe: &Recipe, origin: &str) -> Result<&'d ModelFeeds<B, M>, TrainError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Objective<B>,
    M::InnerModule: Objective<B::InnerBackend>,
{
    data.feeds::<M::Batch, InnerBatch<B, M>>().ok_or_else(|| {
        let (mut wants, mut gives) = (type_name::<M::Batch>(), data.batch_type());
        if wants == gives && std::any::type_name::<M::Batch>() != data.batch {
            // Two types of one name: their paths tell them apart.
            (wants, gives) = (std::any::type_name::<M::Batch>(), data.batch);
        }
        let source = match (recipe.data.kind, &recipe.data.name) {
            (DataKind::Program, Some(name)) => format!("data.kind = \"program\" (data.name = \"{name}\")"),
            (kind, _) => format!("data.kind = \"{kind}\""),
        };
        let what = if wants == gives {
            format!("evaluates on `{}` batches, which {source} does not give", type_name::<InnerBatch<B, M>>())
        } else {
            format!("trains on `{wants}` batches, but {source} gives `{gives}` batches")
        };
        TrainError::BadInput(format!(
            "{origin}: model.kind = \"{}\" {what}: the model cannot take this data. Fix: pick a model.kind that \
             trains on `{gives}` batches (of the built-in kinds, mlp takes csv and synthetic data, cnn takes \
             image_folder and gpt takes text), or data whose batches the model takes.",
            recipe.model.kind
        ))
    })
}

/// A type's name without its module path and generic parameters: `TabularBatch` for
/// `oomph_train::feed::TabularBatch<Autodiff<Flex>>`; a tuple, array or reference keeps its
/// full name.
pub fn type_name<T: ?Sized>() -> &'static str {
    short_name(std::any::type_name::<T>())
}

fn short_name(full: &'static str) -> &'static str {
    if full.starts_with(['(', '[', '&', '*']) {
        return full;
    }
    let head = full.split('<').next().unwrap_or(full);
    head.rsplit("::").next().unwrap_or(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use oomph_data::{Tabular, Targets};

    type B = Flex;

    /// The summary's fields a program sets after `Data::program` are part of the identity a
    /// checkpoint records.
    #[test]
    fn a_programs_summary_is_part_of_its_identity() {
        type Ad = burn::backend::Autodiff<B>;
        let t = Tabular {
            features: vec![0.0, 1.0],
            n_features: 1,
            targets: Targets::Classes { labels: vec![0, 1], names: vec![] },
            feature_names: vec!["x".into()],
        };
        let mut data =
            Data::<Ad>::program("p", "two rows", "abc".into(), TabularRows::feed(t.clone()), TabularRows::feed(t));
        data.info.n_classes = Some(10);
        let id = data.identity();
        assert_eq!(
            (id.n_classes, id.kind.as_str(), id.content_sha256.as_str(), id.train_len),
            (Some(10), "p", "abc", 2)
        );
    }

    #[test]
    fn type_names_lose_their_path_and_parameters() {
        assert_eq!(type_name::<TabularBatch<B>>(), "TabularBatch");
        assert_eq!(type_name::<Vec<u32>>(), "Vec");
        assert_eq!(type_name::<(u8, Vec<u32>)>(), "(u8, alloc::vec::Vec<u32>)");
    }
}
