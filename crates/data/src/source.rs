//! Sample sources.
//!
//! A [`Source`] is one split (train or valid) seen as indexable samples: rows of a table, or
//! windows of `seq_len + 1` tokens of a text (inputs are the first `seq_len`, targets the
//! last `seq_len`, shifted by one). `oomph_train::feed` turns each into a burn dataset whose
//! batcher builds the model's tensors.

use crate::text::Text;
use crate::Tabular;

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_a_window_per_offset() {
        let text = Text { tokens: (0..10).collect(), vocab: ('a'..='j').collect() };
        // Windows of 5 tokens at offsets 0..=5.
        assert_eq!(Source::Text { text, seq_len: 4 }.len(), 6);
    }

    #[test]
    fn short_text_has_no_windows() {
        let text = Text { tokens: vec![0, 1, 2], vocab: vec!['a', 'b', 'c'] };
        assert_eq!(Source::Text { text: text.clone(), seq_len: 3 }.len(), 0);
        assert_eq!(Source::Text { text, seq_len: 2 }.len(), 1);
    }
}
