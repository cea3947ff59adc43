//! `csv` and `synthetic` data: the rows of a table as a burn [`Dataset`] of [`TabularItem`]s,
//! batched by [`TabularBatcher`] into a [`TabularBatch`].

use super::Batched;
use crate::recovery::data_fault;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use oomph_data::{Tabular, Targets};
use std::sync::Arc;

/// One row of a table: its features and its target.
#[derive(Debug, Clone, PartialEq)]
pub struct TabularItem {
    /// The row's features.
    pub features: Vec<f32>,
    /// The row's target.
    pub target: TabularTarget,
}

/// The target of one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TabularTarget {
    /// A class index.
    Class(u32),
    /// A regression value.
    Value(f32),
}

/// The rows of a table as a burn [`Dataset`] of [`TabularItem`]s.
#[derive(Debug, Clone)]
pub struct TabularRows(Arc<Tabular>);

impl TabularRows {
    /// The rows of `table`.
    pub fn new(table: Tabular) -> Self {
        Self(Arc::new(table))
    }

    /// The rows of `table`, batched by [`TabularBatcher`].
    pub fn feed(table: Tabular) -> Batched<TabularItem, TabularRows, TabularBatcher> {
        Batched::new(Self::new(table), TabularBatcher)
    }
}

impl Dataset<TabularItem> for TabularRows {
    fn get(&self, index: usize) -> Option<TabularItem> {
        let t = &*self.0;
        if index >= t.len() {
            return None;
        }
        let d = t.n_features;
        let target = match &t.targets {
            Targets::Classes { labels, .. } => TabularTarget::Class(labels[index]),
            Targets::Values(v) => TabularTarget::Value(v[index]),
        };
        Some(TabularItem { features: t.features[index * d..(index + 1) * d].to_vec(), target })
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// A batch of table rows: features `[n, features]` and one target per row.
#[derive(Debug, Clone)]
pub struct TabularBatch<B: Backend> {
    /// Features, `[n, features]`.
    pub features: Tensor<B, 2>,
    /// The rows' targets.
    pub targets: TabularTargets<B>,
}

/// The targets of a [`TabularBatch`]: class indices or regression values, as the data's
/// `data.task` says.
#[derive(Debug, Clone)]
pub enum TabularTargets<B: Backend> {
    /// Class indices, `[n]`.
    Classes(Tensor<B, 1, Int>),
    /// Regression targets, `[n, 1]`.
    Values(Tensor<B, 2>),
}

impl<B: Backend> TabularBatch<B> {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.features.dims()[0]
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Batches [`TabularItem`]s into a [`TabularBatch`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TabularBatcher;

impl<B: Backend> Batcher<B, TabularItem, TabularBatch<B>> for TabularBatcher {
    fn batch(&self, items: Vec<TabularItem>, device: &B::Device) -> TabularBatch<B> {
        let n = items.len();
        let d = items.first().map_or(0, |i| i.features.len());
        let mut x = Vec::with_capacity(n * d);
        let (mut classes, mut values) = (Vec::new(), Vec::new());
        for item in items {
            if item.features.len() != d {
                data_fault(format!(
                    "the rows of one tabular batch have one number of features; one has {} where the first has {d}. \
                     Fix: give every row of the dataset the same features.",
                    item.features.len()
                ));
            }
            x.extend_from_slice(&item.features);
            match item.target {
                TabularTarget::Class(c) => classes.push(i64::from(c)),
                TabularTarget::Value(v) => values.push(v),
            }
        }
        if !(classes.is_empty() || values.is_empty()) {
            data_fault(
                "a tabular batch mixes class targets and regression values. Fix: give every row of the dataset one \
                 kind of target."
                    .into(),
            );
        }
        let features = Tensor::from_data(TensorData::new(x, [n, d]), device);
        let targets = if values.is_empty() {
            TabularTargets::Classes(Tensor::from_data(TensorData::new(classes, [n]), device))
        } else {
            TabularTargets::Values(Tensor::from_data(TensorData::new(values, [n, 1]), device))
        };
        TabularBatch { features, targets }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Feed;
    use burn::backend::Flex;

    type B = Flex;

    #[test]
    fn tabular_rows_gather_in_order_with_repeats() {
        let t = Tabular {
            features: vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5],
            n_features: 2,
            targets: Targets::Classes { labels: vec![0, 1, 2], names: vec![] },
            feature_names: vec!["a".into(), "b".into()],
        };
        let feed = TabularRows::feed(t);
        let b: TabularBatch<B> = feed.batch(&[2, 0, 2], &Default::default());
        assert_eq!(b.features.into_data().to_vec::<f32>().unwrap(), [2.0, 2.5, 0.0, 0.5, 2.0, 2.5]);
        match b.targets {
            TabularTargets::Classes(c) => assert_eq!(c.into_data().iter::<i64>().collect::<Vec<_>>(), [2, 0, 2]),
            TabularTargets::Values(_) => panic!("classes expected"),
        }
        assert_eq!(Feed::<B, TabularBatch<B>>::weight(&feed, &[2, 0, 2]), 3.0);
        assert_eq!(feed.dataset().get(3), None);
    }

    #[test]
    fn rows_of_other_lengths_are_named_not_reshaped() {
        let rows = vec![
            TabularItem { features: vec![1.0, 2.0], target: TabularTarget::Class(0) },
            TabularItem { features: vec![3.0], target: TabularTarget::Class(1) },
        ];
        let out = crate::recovery::attempt::<B, _>(&Default::default(), || {
            let _: TabularBatch<B> = TabularBatcher.batch(rows, &Default::default());
        });
        let Err(crate::recovery::Failure::Data { message }) = out else { panic!("a data fault expected: {out:?}") };
        assert!(message.contains("one has 1 where the first has 2") && message.contains("Fix:"), "{message}");
    }
}
