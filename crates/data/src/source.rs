//! Sample sources and batches.
//!
//! A [`Source`] is one split (train or valid) seen as indexable samples: rows of a table, or
//! windows of `seq_len + 1` tokens of a text (inputs are the first `seq_len`, targets the
//! last `seq_len`, shifted by one). [`Source::batch`] gathers samples into a plain-`Vec`
//! [`Batch`] that a model turns into tensors.

use crate::text::Text;
use crate::{Tabular, Targets};

/// One split's samples.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Rows of a table.
    Tabular(Tabular),
    /// A token stream cut into windows: sample `i` is `tokens[i..i + seq_len + 1]`, for every
    /// offset `i` in `0..=len - seq_len - 1`.
    Text {
        /// The split's tokens (with the whole dataset's vocabulary).
        text: Text,
        /// Model sequence length (inputs per sample).
        seq_len: usize,
    },
}

/// The targets of a tabular batch.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchTargets {
    /// One class index per sample.
    Classes(Vec<u32>),
    /// One value per sample.
    Values(Vec<f32>),
}

/// Samples gathered for one forward pass, as plain vectors.
#[derive(Debug, Clone, PartialEq)]
pub enum Batch {
    /// Feature rows and their targets.
    Tabular {
        /// Features, row-major `[samples, n_features]`.
        x: Vec<f32>,
        /// Features per row.
        n_features: usize,
        /// Targets, one per row.
        y: BatchTargets,
    },
    /// Token windows for next-token prediction.
    Tokens {
        /// Input tokens, row-major `[samples, seq_len]`.
        inputs: Vec<u32>,
        /// Target tokens (inputs shifted left by one), row-major `[samples, seq_len]`.
        targets: Vec<u32>,
        /// Tokens per sample.
        seq_len: usize,
    },
}

impl Batch {
    /// Number of samples (rows or windows).
    pub fn len(&self) -> usize {
        match self {
            Batch::Tabular { y: BatchTargets::Classes(y), .. } => y.len(),
            Batch::Tabular { y: BatchTargets::Values(y), .. } => y.len(),
            Batch::Tokens { inputs, seq_len, .. } => inputs.len() / (*seq_len).max(1),
        }
    }

    /// Whether the batch holds no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The loss weight of the batch: samples for tabular data, predicted tokens
    /// (`samples * seq_len`) for token windows. The mean loss of an effective batch is the
    /// sum of its chunks' loss sums divided by the sum of their weights.
    pub fn weight(&self) -> usize {
        match self {
            Batch::Tabular { .. } => self.len(),
            Batch::Tokens { targets, .. } => targets.len(),
        }
    }
}

impl Source {
    /// Number of samples: rows, or windows (`tokens - seq_len`, 0 if that is negative).
    pub fn len(&self) -> usize {
        match self {
            Source::Tabular(t) => t.len(),
            Source::Text { text, seq_len } => text.len().saturating_sub(*seq_len),
        }
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loss weight of one sample: 1 for tabular data, `seq_len` for token windows.
    pub fn weight_per_sample(&self) -> usize {
        match self {
            Source::Tabular(_) => 1,
            Source::Text { seq_len, .. } => *seq_len,
        }
    }

    /// Gather the samples at `indices` (in that order; repeats allowed).
    ///
    /// # Panics
    /// If an index is `>= self.len()`.
    pub fn batch(&self, indices: &[usize]) -> Batch {
        let len = self.len();
        if let Some(&bad) = indices.iter().find(|&&i| i >= len) {
            panic!("Source::batch: sample index {bad} is out of range for a split of {len} samples");
        }
        match self {
            Source::Tabular(t) => {
                let d = t.n_features;
                let mut x = Vec::with_capacity(indices.len() * d);
                for &i in indices {
                    x.extend_from_slice(&t.features[i * d..(i + 1) * d]);
                }
                let y = match &t.targets {
                    Targets::Classes { labels, .. } => {
                        BatchTargets::Classes(indices.iter().map(|&i| labels[i]).collect())
                    }
                    Targets::Values(v) => BatchTargets::Values(indices.iter().map(|&i| v[i]).collect()),
                };
                Batch::Tabular { x, n_features: d, y }
            }
            Source::Text { text, seq_len } => {
                let s = *seq_len;
                let mut inputs = Vec::with_capacity(indices.len() * s);
                let mut targets = Vec::with_capacity(indices.len() * s);
                for &i in indices {
                    inputs.extend_from_slice(&text.tokens[i..i + s]);
                    targets.extend_from_slice(&text.tokens[i + 1..i + s + 1]);
                }
                Batch::Tokens { inputs, targets, seq_len: s }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_windows_shift_by_one() {
        let text = Text { tokens: (0..10).collect(), vocab: ('a'..='j').collect() };
        let src = Source::Text { text, seq_len: 4 };
        // Windows of 5 tokens at offsets 0..=5.
        assert_eq!(src.len(), 6);
        let b = src.batch(&[0, 5]);
        assert_eq!(
            b,
            Batch::Tokens { inputs: vec![0, 1, 2, 3, 5, 6, 7, 8], targets: vec![1, 2, 3, 4, 6, 7, 8, 9], seq_len: 4 }
        );
        assert_eq!(b.len(), 2);
        assert_eq!(b.weight(), 8);
        assert_eq!(src.weight_per_sample(), 4);
    }

    #[test]
    fn short_text_has_no_windows() {
        let text = Text { tokens: vec![0, 1, 2], vocab: vec!['a', 'b', 'c'] };
        assert_eq!(Source::Text { text: text.clone(), seq_len: 3 }.len(), 0);
        assert_eq!(Source::Text { text, seq_len: 2 }.len(), 1);
    }

    #[test]
    fn tabular_batch_gathers_rows() {
        let t = Tabular {
            features: vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5],
            n_features: 2,
            targets: Targets::Classes { labels: vec![0, 1, 2], names: vec![] },
            feature_names: vec!["a".into(), "b".into()],
        };
        let src = Source::Tabular(t);
        assert_eq!(src.len(), 3);
        let b = src.batch(&[2, 0, 2]);
        assert_eq!(
            b,
            Batch::Tabular {
                x: vec![2.0, 2.5, 0.0, 0.5, 2.0, 2.5],
                n_features: 2,
                y: BatchTargets::Classes(vec![2, 0, 2])
            }
        );
        assert_eq!(b.len(), 3);
        assert_eq!(b.weight(), 3);
        assert!(src.batch(&[]).is_empty());
    }
}
