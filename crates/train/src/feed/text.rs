//! `text` data: the windows of `seq_len + 1` tokens of a token stream as a burn [`Dataset`],
//! batched by [`TokenBatcher`] into a [`TokenBatch`], each window weighing its `seq_len`
//! target tokens.

use super::Batched;
use crate::recovery::data_fault;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use std::sync::Arc;

/// The windows of `seq_len + 1` tokens of a token stream, at every offset: a burn [`Dataset`]
/// of token windows (`Vec<u32>`, inputs are the first `seq_len`, targets the last `seq_len`).
#[derive(Debug, Clone)]
pub struct TokenWindows {
    tokens: Arc<Vec<u32>>,
    seq_len: usize,
}

impl TokenWindows {
    /// The windows of `tokens` of `seq_len + 1` tokens.
    pub fn new(tokens: Vec<u32>, seq_len: usize) -> Self {
        Self { tokens: Arc::new(tokens), seq_len }
    }

    /// The windows of `tokens`, batched by [`TokenBatcher`], each weighing its `seq_len`
    /// target tokens; evaluation covers non-overlapping windows.
    pub fn feed(tokens: Vec<u32>, seq_len: usize) -> Batched<Vec<u32>, TokenWindows, TokenBatcher> {
        let s = seq_len;
        Batched::new(Self::new(tokens, seq_len), TokenBatcher).each_weighs(s as f64).eval_stride(s)
    }
}

impl Dataset<Vec<u32>> for TokenWindows {
    fn get(&self, index: usize) -> Option<Vec<u32>> {
        (index < self.len()).then(|| self.tokens[index..index + self.seq_len + 1].to_vec())
    }

    fn len(&self) -> usize {
        self.tokens.len().saturating_sub(self.seq_len)
    }
}

/// A batch of token windows for next-token prediction.
#[derive(Debug, Clone)]
pub struct TokenBatch<B: Backend> {
    /// Input tokens, `[n, seq_len]`.
    pub inputs: Tensor<B, 2, Int>,
    /// Target tokens (the inputs shifted left by one), `[n, seq_len]`.
    pub targets: Tensor<B, 2, Int>,
}

/// Batches windows of `seq_len + 1` tokens into a [`TokenBatch`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenBatcher;

impl<B: Backend> Batcher<B, Vec<u32>, TokenBatch<B>> for TokenBatcher {
    fn batch(&self, windows: Vec<Vec<u32>>, device: &B::Device) -> TokenBatch<B> {
        let n = windows.len();
        let s = windows.first().map_or(0, |w| w.len().saturating_sub(1));
        let mut inputs = Vec::with_capacity(n * s);
        let mut targets = Vec::with_capacity(n * s);
        for w in &windows {
            if w.len() != s + 1 {
                data_fault(format!(
                    "the token windows of one batch have one length; one has {} tokens where the first has {}. Fix: \
                     give every window of the dataset seq_len + 1 tokens.",
                    w.len(),
                    s + 1
                ));
            }
            inputs.extend(w[..s].iter().map(|&t| i64::from(t)));
            targets.extend(w[1..].iter().map(|&t| i64::from(t)));
        }
        TokenBatch {
            inputs: Tensor::from_data(TensorData::new(inputs, [n, s]), device),
            targets: Tensor::from_data(TensorData::new(targets, [n, s]), device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::Feed;
    use burn::backend::Flex;

    type B = Flex;

    #[test]
    fn text_windows_shift_by_one_and_weigh_their_tokens() {
        let feed = TokenWindows::feed((0..10).collect(), 4);
        // Windows of 5 tokens at offsets 0..=5.
        assert_eq!(Feed::<B, TokenBatch<B>>::len(&feed), 6);
        let b: TokenBatch<B> = feed.batch(&[0, 5], &Default::default());
        assert_eq!(b.inputs.into_data().iter::<i64>().collect::<Vec<_>>(), [0, 1, 2, 3, 5, 6, 7, 8]);
        assert_eq!(b.targets.into_data().iter::<i64>().collect::<Vec<_>>(), [1, 2, 3, 4, 6, 7, 8, 9]);
        assert_eq!(Feed::<B, TokenBatch<B>>::weight(&feed, &[0, 5]), 8.0);
        assert_eq!(Feed::<B, TokenBatch<B>>::eval_indices(&feed), [0, 4]);
        // Too short for a window.
        assert_eq!(Feed::<B, TokenBatch<B>>::len(&TokenWindows::feed(vec![0, 1, 2], 3)), 0);
    }
}
