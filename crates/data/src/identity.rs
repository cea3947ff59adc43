//! What a run was trained on, for resume checks.
//!
//! A [`DataIdentity`] records the shape of the loaded data (kind, task, features, classes and
//! their names, the text vocabulary in index order, sequence length, split sizes) and a
//! SHA-256 of its content: of the data file's bytes for `csv` and `text`, of the generated
//! samples for `synthetic`. A checkpoint stores the identity of its data; on resume,
//! [`DataIdentity::differences`] says in short lines what changed since.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::DataError;
use crate::{Tabular, Targets};

/// Class names shown in full in a difference line; longer lists are cut.
const SHOWN_NAMES: usize = 8;

/// Characters of one class name shown in a difference line; longer names are cut.
const SHOWN_NAME_CHARS: usize = 16;

/// Hex digits of a digest shown in a difference line (more when the first ones agree).
const SHOWN_DIGEST: usize = 8;

/// What a checkpoint was trained on: the data's shape and a hash of its content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataIdentity {
    /// The recipe's `data.kind`: `"csv"`, `"text"` or `"synthetic"`.
    pub kind: String,
    /// `"classification"`, `"regression"` or `"language-model"` (text).
    pub task: String,
    /// Features per row (tabular data).
    pub n_features: Option<usize>,
    /// Number of classes (classification).
    pub n_classes: Option<usize>,
    /// Label text of each class, in class-index order (classification).
    pub class_names: Option<Vec<String>>,
    /// The vocabulary's characters in token-index order (text): character `i` is token `i`.
    pub vocabulary: Option<String>,
    /// Model sequence length (text).
    pub seq_len: Option<usize>,
    /// Training samples (rows, or windows for text).
    pub train_len: usize,
    /// Validation samples (rows, or windows for text).
    pub valid_len: usize,
    /// Lowercase hex SHA-256 of the data file's bytes (`csv`, `text`), or of the generated
    /// training and validation samples (`synthetic`, see [`samples_sha256`]).
    pub content_sha256: String,
}

impl DataIdentity {
    /// The identity of data summarised by `info`, with the vocabulary's characters in token
    /// order (text) and the content digest.
    pub fn new(info: &crate::DataInfo, vocabulary: Option<String>, content_sha256: String) -> Self {
        Self {
            kind: info.kind.clone(),
            task: info.task.clone(),
            n_features: info.n_features,
            n_classes: info.n_classes,
            class_names: info.class_names.clone(),
            vocabulary,
            seq_len: info.seq_len,
            train_len: info.train_len,
            valid_len: info.valid_len,
            content_sha256,
        }
    }

    /// One short line per field that differs from `self` (the identity recorded earlier) to
    /// `now` (the data loaded now), in field order; empty when the identities are equal.
    ///
    /// Lines read `field: before -> after`, for example `train samples: 900 -> 450`. Long
    /// values are summarised: a vocabulary by its size and the first index whose character
    /// differs, a long list of class names by its first entries, its length and its first
    /// difference, a digest by its first hex digits.
    pub fn differences(&self, now: &DataIdentity) -> Vec<String> {
        let mut out = Vec::new();
        if self.kind != now.kind {
            out.push(format!("kind: {} -> {}", self.kind, now.kind));
        }
        if self.task != now.task {
            out.push(format!("task: {} -> {}", self.task, now.task));
        }
        count_line(&mut out, "features", self.n_features, now.n_features);
        count_line(&mut out, "classes", self.n_classes, now.n_classes);
        if self.class_names != now.class_names {
            out.push(class_names_line(self.class_names.as_deref(), now.class_names.as_deref()));
        }
        if self.vocabulary != now.vocabulary {
            out.push(vocabulary_line(self.vocabulary.as_deref(), now.vocabulary.as_deref()));
        }
        count_line(&mut out, "sequence length", self.seq_len, now.seq_len);
        count_line(&mut out, "train samples", Some(self.train_len), Some(now.train_len));
        count_line(&mut out, "validation samples", Some(self.valid_len), Some(now.valid_len));
        if self.content_sha256 != now.content_sha256 {
            let why = match (self.kind.as_str(), now.kind.as_str()) {
                ("synthetic", "synthetic") => "the generated samples changed",
                ("image_folder", "image_folder") => "the images, their names or their classes changed",
                (a, b) if a == b => "the file's bytes changed",
                _ => "different data",
            };
            let (a, b) = digest_prefixes(&self.content_sha256, &now.content_sha256);
            out.push(format!("content: sha256 {a} -> {b} ({why})"));
        }
        out
    }
}

/// Push `label: before -> after` when two optional counts differ (`none` for no value).
fn count_line(out: &mut Vec<String>, label: &str, before: Option<usize>, now: Option<usize>) {
    if before != now {
        let show = |v: Option<usize>| v.map_or_else(|| "none".to_string(), |n| n.to_string());
        out.push(format!("{label}: {} -> {}", show(before), show(now)));
    }
}

/// `s` cut to `max` characters, with `…` when cut.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

/// The class-names line: both lists (cut when long), and the first difference when cut.
fn class_names_line(before: Option<&[String]>, now: Option<&[String]>) -> String {
    let show = |names: Option<&[String]>| match names {
        None => "none".to_string(),
        Some(names) => {
            let mut shown: Vec<String> = names.iter().take(SHOWN_NAMES).map(|n| shorten(n, SHOWN_NAME_CHARS)).collect();
            if names.len() > SHOWN_NAMES {
                shown.push(format!("… {} names", names.len()));
            }
            format!("[{}]", shown.join(", "))
        }
    };
    let mut line = format!("class names: {} -> {}", show(before), show(now));
    if let (Some(a), Some(b)) = (before, now) {
        if a.len() > SHOWN_NAMES || b.len() > SHOWN_NAMES {
            let i = a.iter().zip(b).take_while(|(x, y)| x == y).count();
            let name = |n: Option<&String>| n.map_or_else(|| "none".to_string(), |n| shorten(n, SHOWN_NAME_CHARS));
            line.push_str(&format!(" (first difference: class {i}, {} -> {})", name(a.get(i)), name(b.get(i))));
        }
    }
    line
}

/// The vocabulary line: sizes, and the first index whose character differs.
fn vocabulary_line(before: Option<&str>, now: Option<&str>) -> String {
    let size = |v: Option<&str>| v.map_or_else(|| "none".to_string(), |v| format!("{} characters", v.chars().count()));
    let mut line = format!("vocabulary: {} -> {}", size(before), size(now));
    if let (Some(a), Some(b)) = (before, now) {
        let i = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
        let at = |v: &str| v.chars().nth(i).map_or_else(|| "none".to_string(), |c| format!("{c:?}"));
        line.push_str(&format!(" (the character-to-index mapping differs from index {i}: {} -> {})", at(a), at(b)));
    }
    line
}

/// The shortest prefixes (at least [`SHOWN_DIGEST`] digits) at which two digests differ,
/// with `…` where a prefix is shorter than its digest.
fn digest_prefixes(a: &str, b: &str) -> (String, String) {
    let common = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    let len = (common + 1).max(SHOWN_DIGEST);
    let cut = |d: &str| {
        if d.chars().count() > len {
            format!("{}…", d.chars().take(len).collect::<String>())
        } else {
            d.to_string()
        }
    };
    (cut(a), cut(b))
}

/// Lowercase hex of a digest.
fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex SHA-256 of the bytes of the file at `path`.
///
/// This is the `content_sha256` that [`crate::load`] records for `csv` and `text` data.
pub fn file_sha256(path: &Path) -> Result<String, DataError> {
    read_file_hashed(path).map(|(_, digest)| digest)
}

/// The bytes of the file at `path` and their SHA-256 (lowercase hex), from one read, so the
/// digest is that of exactly the bytes returned.
pub(crate) fn read_file_hashed(path: &Path) -> Result<(Vec<u8>, String), DataError> {
    let bytes = std::fs::read(path).map_err(|error| DataError::Io { path: path.to_path_buf(), error })?;
    let digest = hex(&Sha256::digest(&bytes));
    Ok((bytes, digest))
}

/// Lowercase hex SHA-256 of tabular training and validation samples, which identifies
/// generated (synthetic) data.
///
/// The hash covers, for the training split and then the validation split: the row count and
/// features per row (`u64` little-endian), the features (`f32` little-endian, row-major), and
/// the targets (class indices as `u32` little-endian, or values as `f32` little-endian),
/// after a fixed domain tag.
pub fn samples_sha256(train: &Tabular, valid: &Tabular) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"oomph-data tabular samples v1\0");
    for (tag, split) in [(b"train", train), (b"valid", valid)] {
        hasher.update(tag);
        hasher.update((split.len() as u64).to_le_bytes());
        hasher.update((split.n_features as u64).to_le_bytes());
        update_le(&mut hasher, &split.features, |v| v.to_le_bytes());
        match &split.targets {
            Targets::Classes { labels, .. } => {
                hasher.update(b"classes");
                update_le(&mut hasher, labels, |v| v.to_le_bytes());
            }
            Targets::Values(values) => {
                hasher.update(b"values");
                update_le(&mut hasher, values, |v| v.to_le_bytes());
            }
        }
    }
    hex(&hasher.finalize())
}

/// Feed `values` to `hasher` as 4-byte little-endian words, a block at a time.
fn update_le<T: Copy>(hasher: &mut Sha256, values: &[T], le: impl Fn(T) -> [u8; 4]) {
    let mut block = Vec::with_capacity(4 * 1024);
    for chunk in values.chunks(1024) {
        block.clear();
        block.extend(chunk.iter().flat_map(|&v| le(v)));
        hasher.update(&block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv_identity() -> DataIdentity {
        DataIdentity {
            kind: "csv".into(),
            task: "classification".into(),
            n_features: Some(4),
            n_classes: Some(3),
            class_names: Some(vec!["a".into(), "b".into(), "c".into()]),
            vocabulary: None,
            seq_len: None,
            train_len: 900,
            valid_len: 100,
            content_sha256: "1a2b3c4d".repeat(8),
        }
    }

    fn text_identity(vocabulary: &str) -> DataIdentity {
        DataIdentity {
            kind: "text".into(),
            task: "language-model".into(),
            n_features: None,
            n_classes: None,
            class_names: None,
            vocabulary: Some(vocabulary.into()),
            seq_len: Some(64),
            train_len: 1000,
            valid_len: 100,
            content_sha256: "00".repeat(32),
        }
    }

    #[test]
    fn equal_identities_have_no_differences() {
        assert_eq!(csv_identity().differences(&csv_identity()), Vec::<String>::new());
        assert_eq!(text_identity("ab").differences(&text_identity("ab")), Vec::<String>::new());
    }

    #[test]
    fn differences_give_one_short_line_per_changed_field() {
        let before = csv_identity();
        let now = DataIdentity {
            n_features: Some(5),
            n_classes: Some(2),
            class_names: Some(vec!["a".into(), "b".into()]),
            train_len: 450,
            content_sha256: "9f8e7d6c".repeat(8),
            ..csv_identity()
        };
        assert_eq!(
            before.differences(&now),
            vec![
                "features: 4 -> 5",
                "classes: 3 -> 2",
                "class names: [a, b, c] -> [a, b]",
                "train samples: 900 -> 450",
                "content: sha256 1a2b3c4d… -> 9f8e7d6c… (the file's bytes changed)",
            ]
        );
        let synthetic = DataIdentity { kind: "synthetic".into(), ..csv_identity() };
        let regenerated = DataIdentity { content_sha256: "ff".repeat(32), valid_len: 7, ..synthetic.clone() };
        assert_eq!(
            synthetic.differences(&regenerated),
            vec![
                "validation samples: 100 -> 7",
                "content: sha256 1a2b3c4d… -> ffffffff… (the generated samples changed)"
            ]
        );
    }

    #[test]
    fn kind_change_lists_every_field_that_differs() {
        let lines = csv_identity().differences(&text_identity("ab"));
        assert_eq!(
            lines,
            vec![
                "kind: csv -> text",
                "task: classification -> language-model",
                "features: 4 -> none",
                "classes: 3 -> none",
                "class names: [a, b, c] -> none",
                "vocabulary: none -> 2 characters",
                "sequence length: none -> 64",
                "train samples: 900 -> 1000",
                "content: sha256 1a2b3c4d… -> 00000000… (different data)",
            ]
        );
    }

    #[test]
    fn vocabulary_lines_are_short_and_point_at_the_mapping() {
        let long: String = (0..73u8).map(|i| char::from(b'0' + i)).collect();
        let lines = text_identity(&long).differences(&text_identity("0123456789"));
        assert_eq!(
            lines,
            vec!["vocabulary: 73 characters -> 10 characters (the character-to-index mapping differs from index 10: ':' \
                  -> none)"]
        );
        // Same size, other characters: the first differing index and its characters.
        let lines = text_identity("\nabc").differences(&text_identity("\nabd"));
        assert_eq!(
            lines,
            vec![
                "vocabulary: 4 characters -> 4 characters (the character-to-index mapping differs from index 3: 'c' \
                  -> 'd')"
            ]
        );
        let huge: String = (0..5000u32).filter_map(|i| char::from_u32(0x4E00 + i)).collect();
        let other: String = huge.chars().rev().collect();
        let lines = text_identity(&huge).differences(&text_identity(&other));
        assert_eq!(lines.len(), 1);
        assert!(lines[0].chars().count() < 120, "{}", lines[0]);
    }

    #[test]
    fn long_class_name_lists_are_cut_and_name_the_first_difference() {
        let names = |k: usize| Some((0..k).map(|i| format!("class-{i}")).collect::<Vec<_>>());
        let before = DataIdentity { n_classes: Some(100), class_names: names(100), ..csv_identity() };
        let mut renamed = names(100).unwrap();
        renamed[57] = "a-rather-long-class-name-that-is-cut".into();
        let now = DataIdentity { class_names: Some(renamed), ..before.clone() };
        let lines = before.differences(&now);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].ends_with("(first difference: class 57, class-57 -> a-rather-long-cl…)"), "{}", lines[0]);
        assert!(lines[0].contains("… 100 names]"), "{}", lines[0]);
        assert!(lines[0].chars().count() < 300, "{}", lines[0]);
    }

    #[test]
    fn digest_prefixes_grow_until_they_differ() {
        let a = format!("{}{}", "ab".repeat(6), "0".repeat(52));
        let b = format!("{}{}", "ab".repeat(6), "1".repeat(52));
        assert_eq!(digest_prefixes(&a, &b), ("abababababab0…".to_string(), "abababababab1…".to_string()));
    }

    #[test]
    fn file_sha256_matches_known_digests() {
        let dir = tempfile::tempdir().unwrap();
        let abc = dir.path().join("abc.txt");
        std::fs::write(&abc, "abc").unwrap();
        assert_eq!(file_sha256(&abc).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        // A larger file, read and hashed whole.
        let big = dir.path().join("big.bin");
        let bytes: Vec<u8> = (0..3 * 65_536 + 17).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&big, &bytes).unwrap();
        let whole = hex(&Sha256::digest(&bytes));
        assert_eq!(file_sha256(&big).unwrap(), whole);
        assert_eq!(read_file_hashed(&big).unwrap(), (bytes, whole));
    }

    #[test]
    fn io_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.csv");
        let e = file_sha256(&missing).unwrap_err().to_string();
        assert!(e.contains(&missing.display().to_string()) && e.contains("Fix:"), "{e}");
        // A directory opens on some platforms but cannot be read as a file.
        let e = read_file_hashed(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
    }

    #[test]
    fn samples_sha256_depends_on_every_part_of_the_samples() {
        let table = |features: Vec<f32>, targets: Targets| Tabular {
            n_features: 2,
            feature_names: vec!["x0".into(), "x1".into()],
            features,
            targets,
        };
        let classes = |labels: Vec<u32>| Targets::Classes { labels, names: vec!["0".into(), "1".into()] };
        let train = table(vec![1.0, 2.0, 3.0, 4.0], classes(vec![0, 1]));
        let valid = table(vec![5.0, 6.0], classes(vec![1]));
        let base = samples_sha256(&train, &valid);
        assert_eq!(base.len(), 64);
        assert_eq!(base, samples_sha256(&train.clone(), &valid.clone()));
        let variants = [
            samples_sha256(&table(vec![1.0, 2.0, 3.0, 4.5], classes(vec![0, 1])), &valid),
            samples_sha256(&table(vec![1.0, 2.0, 3.0, 4.0], classes(vec![1, 1])), &valid),
            samples_sha256(&table(vec![1.0, 2.0, 3.0, 4.0], Targets::Values(vec![0.0, 1.0])), &valid),
            samples_sha256(&valid, &train),
            samples_sha256(&train.select(&[0]), &table(vec![3.0, 4.0, 5.0, 6.0], classes(vec![1, 1]))),
        ];
        for v in &variants {
            assert_ne!(*v, base);
        }
    }

    #[test]
    fn identity_round_trips_through_json() {
        for id in [csv_identity(), text_identity("\n ab\u{e9}")] {
            let json = serde_json::to_string(&id).unwrap();
            assert_eq!(serde_json::from_str::<DataIdentity>(&json).unwrap(), id);
        }
    }
}
