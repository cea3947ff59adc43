//! The deterministic, resumable sampler.
//!
//! Epoch `e` visits every index of `0..len` once, in the order of a permutation that depends
//! only on `(seed, e)` (Fisher–Yates with [`SplitMix64`] seeded from
//! `derive_seed(derive_seed(seed, SAMPLER_STREAM), e)`), or in order when shuffling is off.
//! The whole state is a [`Cursor`] `(epoch, position)`, so a sampler rebuilt from a
//! checkpointed cursor yields exactly the indices the original would have yielded.
//!
//! To re-take the same effective batch after an out-of-memory failure, take the indices once
//! with [`Sampler::next_batch`] and keep them, or [`Sampler::peek`] first and advance only
//! once the step succeeded; the sampler is also `Clone`.

use serde::{Deserialize, Serialize};

use crate::rng::{derive_seed, SplitMix64};

/// Stream tag that separates the sampler's permutations from the data split's.
const SAMPLER_STREAM: u64 = 0x5A3B_1E55;

/// Where a sampler stands: `position` indices of epoch `epoch` have been taken.
///
/// `epoch` counts completed passes: after the last index of an epoch is taken the cursor is
/// `(epoch + 1, 0)`. `epoch * len + position` is the number of samples taken so far.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Cursor {
    /// Completed passes over the split.
    pub epoch: u64,
    /// Indices already taken in the current epoch, `< len`.
    pub position: u64,
}

/// Deterministic sampler over `0..len`, keyed by `(seed, epoch)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sampler {
    len: usize,
    seed: u64,
    shuffle: bool,
    cursor: Cursor,
    /// The current epoch's order.
    order: Vec<usize>,
}

impl Sampler {
    /// A sampler at the start of epoch 0.
    pub fn new(len: usize, seed: u64, shuffle: bool) -> Self {
        Self::with_cursor(len, seed, shuffle, Cursor::default())
    }

    /// A sampler positioned at `cursor`, as if it had been advanced there from the start.
    ///
    /// A position at or past the end of an epoch carries into the following epochs (a cursor
    /// `(e, len)` is `(e + 1, 0)`), so a cursor never points outside an epoch; for `len == 0`
    /// the cursor is kept as given.
    pub fn with_cursor(len: usize, seed: u64, shuffle: bool, cursor: Cursor) -> Self {
        let cursor = if len == 0 {
            cursor
        } else {
            let l = len as u64;
            Cursor { epoch: cursor.epoch + cursor.position / l, position: cursor.position % l }
        };
        let mut s = Sampler { len, seed, shuffle, cursor, order: Vec::new() };
        s.order = s.epoch_order(cursor.epoch);
        s
    }

    /// The order of epoch `epoch`: a permutation of `0..len` keyed by `(seed, epoch)`, or the
    /// identity when shuffling is off.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        if self.shuffle {
            let mut rng = SplitMix64::new(derive_seed(derive_seed(self.seed, SAMPLER_STREAM), epoch));
            rng.permutation(self.len)
        } else {
            (0..self.len).collect()
        }
    }

    /// The current position, to store in a checkpoint.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Number of indices in one epoch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the sampler has nothing to yield (`len == 0`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Samples taken so far: `epoch * len + position`.
    pub fn samples_taken(&self) -> u64 {
        self.cursor.epoch * self.len as u64 + self.cursor.position
    }

    /// Take the next `n` indices, continuing into the next epoch's permutation when the
    /// current epoch runs out (a batch may straddle two or more epochs). Returns an empty
    /// vector when `len == 0`.
    pub fn next_batch(&mut self, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(if self.len == 0 { 0 } else { n });
        if self.len == 0 {
            return out;
        }
        while out.len() < n {
            let pos = self.cursor.position as usize;
            let take = (n - out.len()).min(self.len - pos);
            out.extend_from_slice(&self.order[pos..pos + take]);
            self.cursor.position += take as u64;
            if self.cursor.position as usize == self.len {
                self.cursor = Cursor { epoch: self.cursor.epoch + 1, position: 0 };
                self.order = self.epoch_order(self.cursor.epoch);
            }
        }
        out
    }

    /// The indices the next `next_batch(n)` would return, without advancing.
    pub fn peek(&self, n: usize) -> Vec<usize> {
        self.clone().next_batch(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn same_seed_same_order_different_seed_different_order() {
        let mut a = Sampler::new(50, 1, true);
        let mut b = Sampler::new(50, 1, true);
        let mut c = Sampler::new(50, 2, true);
        let (xa, xb, xc) = (a.next_batch(120), b.next_batch(120), c.next_batch(120));
        assert_eq!(xa, xb);
        assert_ne!(xa, xc);
        assert_ne!(xa[..50], xa[50..100], "epochs use different permutations");
    }

    #[test]
    fn every_epoch_is_a_permutation_and_batches_cross_epochs() {
        let mut s = Sampler::new(10, 7, true);
        let first = s.next_batch(7);
        assert_eq!(s.cursor(), Cursor { epoch: 0, position: 7 });
        let second = s.next_batch(7); // 3 from epoch 0, 4 from epoch 1
        assert_eq!(s.cursor(), Cursor { epoch: 1, position: 4 });
        let mut epoch0: Vec<usize> = first.iter().chain(&second[..3]).copied().collect();
        assert_eq!(epoch0, s.epoch_order(0));
        epoch0.sort_unstable();
        assert_eq!(epoch0, (0..10).collect::<Vec<_>>());
        assert_eq!(second[3..], s.epoch_order(1)[..4]);
        let rest = s.next_batch(6);
        assert_eq!(s.cursor(), Cursor { epoch: 2, position: 0 });
        assert_eq!(rest, s.epoch_order(1)[4..]);
        assert_eq!(s.samples_taken(), 20);
    }

    #[test]
    fn unshuffled_is_in_order() {
        let mut s = Sampler::new(4, 9, false);
        assert_eq!(s.next_batch(6), vec![0, 1, 2, 3, 0, 1]);
    }

    #[test]
    fn peek_does_not_advance_and_empty_is_empty() {
        let mut s = Sampler::new(5, 3, true);
        let p = s.peek(8);
        assert_eq!(s.cursor(), Cursor::default());
        assert_eq!(s.next_batch(8), p);
        let mut e = Sampler::new(0, 3, true);
        assert!(e.next_batch(4).is_empty());
        assert!(e.is_empty());
    }

    #[test]
    fn cursor_serialises_and_overflowing_positions_carry() {
        let c = Cursor { epoch: 3, position: 17 };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"epoch":3,"position":17}"#);
        assert_eq!(serde_json::from_str::<Cursor>(&json).unwrap(), c);
        let s = Sampler::with_cursor(10, 0, true, Cursor { epoch: 1, position: 25 });
        assert_eq!(s.cursor(), Cursor { epoch: 3, position: 5 });
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A sampler restored from any cursor yields exactly what the original yields next.
        #[test]
        fn resume_from_cursor_is_exact(
            len in 1usize..40,
            seed in any::<u64>(),
            shuffle in any::<bool>(),
            before in proptest::collection::vec(0usize..30, 0..6),
            after in proptest::collection::vec(0usize..30, 1..6),
        ) {
            let mut original = Sampler::new(len, seed, shuffle);
            for n in &before {
                original.next_batch(*n);
            }
            let cursor = original.cursor();
            prop_assert!(cursor.position < len as u64);
            let mut restored = Sampler::with_cursor(len, seed, shuffle, cursor);
            prop_assert_eq!(&restored, &original);
            for n in &after {
                prop_assert_eq!(restored.next_batch(*n), original.next_batch(*n));
            }
        }

        /// Concatenated batches are the concatenation of the epoch permutations.
        #[test]
        fn batches_concatenate_to_epochs(
            len in 1usize..30,
            seed in any::<u64>(),
            sizes in proptest::collection::vec(1usize..25, 1..8),
        ) {
            let mut s = Sampler::new(len, seed, true);
            let taken: Vec<usize> = sizes.iter().flat_map(|&n| s.next_batch(n)).collect();
            let reference: Vec<usize> =
                (0..).flat_map(|e| s.epoch_order(e)).take(taken.len()).collect();
            prop_assert_eq!(taken, reference);
        }
    }
}
