//! Character-level text data.
//!
//! A [`Text`] is a token stream over a vocabulary of characters: token `t` is the character
//! `vocab[t]`, and the vocabulary is the sorted set of distinct characters. Files are read as
//! UTF-8; a byte-order mark is dropped and CRLF line endings become LF, so the same text gives
//! the same tokens whatever platform saved it.

use std::collections::BTreeSet;
use std::path::Path;

use crate::error::DataError;
use crate::rng::{derive_seed, SplitMix64};

/// A character-level token stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    /// Token ids, indices into `vocab`.
    pub tokens: Vec<u32>,
    /// The vocabulary: distinct characters in ascending order.
    pub vocab: Vec<char>,
}

impl Text {
    /// Tokenise `s` with the vocabulary of its own distinct characters.
    pub fn from_text(s: &str) -> Self {
        let vocab: Vec<char> = s.chars().collect::<BTreeSet<_>>().into_iter().collect();
        let tokens =
            s.chars().map(|c| vocab.binary_search(&c).expect("character is in its own vocabulary") as u32).collect();
        Text { tokens, vocab }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Size of the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// Token ids of `s`, or `None` if `s` holds a character outside the vocabulary.
    pub fn encode(&self, s: &str) -> Option<Vec<u32>> {
        s.chars().map(|c| self.vocab.binary_search(&c).ok().map(|i| i as u32)).collect()
    }

    /// The characters of `tokens`; ids outside the vocabulary become U+FFFD.
    pub fn decode(&self, tokens: &[u32]) -> String {
        tokens.iter().map(|&t| self.vocab.get(t as usize).copied().unwrap_or(char::REPLACEMENT_CHARACTER)).collect()
    }
}

/// Read a UTF-8 text file as a character-level [`Text`].
pub fn read_text(path: &Path) -> Result<Text, DataError> {
    read_text_hashed(path).map(|(text, _)| text)
}

/// [`read_text`], with the SHA-256 (lowercase hex) of the bytes it read.
pub(crate) fn read_text_hashed(path: &Path) -> Result<(Text, String), DataError> {
    let (raw, sha256) = crate::csv::read_utf8_hashed(path)?;
    let s = raw.strip_prefix('\u{feff}').unwrap_or(&raw);
    let s = if s.contains('\r') { s.replace("\r\n", "\n") } else { s.to_string() };
    if s.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
            problem: "is empty: it has no characters to train on".into(),
            fix: "point `data.path` at a non-empty UTF-8 text file.".into(),
        });
    }
    Ok((Text::from_text(&s), sha256))
}

/// The `i`-th character of the synthetic alphabet: printable ASCII `!`..`~` first, then
/// characters from U+00A1 upward (skipping surrogates), so any vocabulary size is possible
/// and the alphabet is already sorted.
fn synthetic_char(i: usize) -> char {
    const ASCII: usize = (b'~' - b'!' + 1) as usize; // 94
    let cp = if i < ASCII { 0x21 + i as u32 } else { 0xA1 + (i - ASCII) as u32 };
    let cp = if cp >= 0xD800 { cp + 0x800 } else { cp };
    char::from_u32(cp).expect("synthetic code point is a valid char")
}

/// A seeded, learnable synthetic token stream for tests and benchmarks.
///
/// The text is a random first-order Markov chain over `vocab` characters: each character has
/// one preferred successor, taken with probability 3/4; otherwise the next character is
/// uniform. A model that learns the bigram statistics gets well below the uniform loss
/// `ln(vocab)`. The vocabulary has exactly `vocab` characters (all of `vocab` even if some do
/// not occur), and the result depends only on `(len, vocab, seed)`.
///
/// # Panics
/// If `vocab` is 0 or larger than 1,000,000.
pub fn synthetic_text(len: usize, vocab: usize, seed: u64) -> Text {
    assert!((1..=1_000_000).contains(&vocab), "synthetic_text: vocab must be in 1..=1000000, got {vocab}");
    let mut rng = SplitMix64::new(derive_seed(seed, 0x7E47));
    let successor = rng.permutation(vocab);
    let mut tokens = Vec::with_capacity(len);
    let mut cur = rng.index(vocab);
    for _ in 0..len {
        tokens.push(cur as u32);
        cur = if rng.below(4) < 3 { successor[cur] } else { rng.index(vocab) };
    }
    Text { tokens, vocab: (0..vocab).map(synthetic_char).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_is_sorted_unique_and_round_trips() {
        let t = Text::from_text("hello world");
        assert_eq!(t.vocab, vec![' ', 'd', 'e', 'h', 'l', 'o', 'r', 'w']);
        assert_eq!(t.len(), 11);
        assert_eq!(t.decode(&t.tokens), "hello world");
        assert_eq!(t.encode("lol"), Some(vec![4, 5, 4]));
        assert_eq!(t.encode("xyz"), None);
    }

    #[test]
    fn read_text_normalises_crlf_and_bom() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "\u{feff}ab\r\nba\r\n").unwrap();
        let t = read_text(&path).unwrap();
        assert_eq!(t.decode(&t.tokens), "ab\nba\n");
        assert_eq!(t.vocab, vec!['\n', 'a', 'b']);
    }

    #[test]
    fn read_text_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "").unwrap();
        let e = read_text(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.txt") && e.contains("is empty"), "{e}");
        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, b"ok\n\xff\xfe").unwrap();
        let e = read_text(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.txt") && e.contains("offset 3 (line 2)"), "{e}");
        let e = read_text(&dir.path().join("missing.txt")).unwrap_err().to_string();
        assert!(e.contains("missing.txt") && e.contains("Fix:"), "{e}");
    }

    #[test]
    fn synthetic_text_is_seeded_and_sized() {
        let a = synthetic_text(1000, 50, 1);
        assert_eq!(a, synthetic_text(1000, 50, 1));
        assert_ne!(a, synthetic_text(1000, 50, 2));
        assert_eq!(a.len(), 1000);
        assert_eq!(a.vocab_size(), 50);
        assert!(a.tokens.iter().all(|&t| t < 50));
        let mut sorted = a.vocab.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, a.vocab);
        let big = synthetic_text(10, 200, 0);
        assert_eq!(big.vocab_size(), 200);
    }
}
