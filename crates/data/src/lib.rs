//! oomph-data: datasets and the resumable sampler.
//!
//! [`load`] turns a recipe's `[data]` section into train and validation [`Source`]s plus a
//! [`DataInfo`] summary. Three kinds of data exist:
//!
//! - `csv`: a numeric table with a label column ([`csv`]); features are standardised with
//!   the training split's mean and standard deviation.
//! - `text`: a UTF-8 text read as characters ([`text`]); the last `valid_fraction` of the
//!   token stream is the validation split; samples are windows of `seq_len + 1` tokens.
//! - `synthetic`: seeded Gaussian blobs or a linear teacher ([`synthetic`]).
//! - `image_folder`: one sub-folder of images per class ([`images`]), listed, checked and
//!   split here; `oomph_train::feed` decodes the pixels.
//!
//! This crate does not depend on burn: `oomph_train::feed` serves the splits as burn datasets
//! and batchers. The [`Sampler`] yields sample indices in an order fixed by
//! `(seed, epoch)` and resumes exactly from a checkpointed [`Cursor`]. Randomness comes from
//! the crate's own [`rng::SplitMix64`], so data is identical across platforms and versions.
//! Each load also records a [`DataIdentity`] (shape plus content hash) for resume checks.

pub mod csv;
pub mod error;
pub mod identity;
pub mod images;
pub mod rng;
pub mod sampler;
pub mod source;
pub mod synthetic;
pub mod text;

use std::path::Path;

use oomph_recipe::DataKind;

use serde::{Deserialize, Serialize};

pub use crate::csv::{read_csv, CsvOptions, Task};
pub use crate::error::{DataError, NumberProblem};
pub use crate::identity::{file_sha256, samples_sha256, DataIdentity};
pub use crate::images::{load_images, ImageFolder, ImageSplits};
pub use crate::sampler::{Cursor, Sampler};
pub use crate::source::Source;
pub use crate::synthetic::{synthetic_tabular, SyntheticSpec};
pub use crate::text::{read_text, synthetic_text, Text};

/// Stream tag of the train/valid split permutation.
const SPLIT_STREAM: u64 = 0x5B11_7000;

/// The targets of a tabular dataset.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// Class indices `0..names.len()`, one per row; `names[c]` is class `c`'s label text.
    Classes {
        /// Class index of each row.
        labels: Vec<u32>,
        /// Label text of each class.
        names: Vec<String>,
    },
    /// One regression target per row.
    Values(Vec<f32>),
}

impl Targets {
    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes { labels, .. } => labels.len(),
            Targets::Values(v) => v.len(),
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The targets of the rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Targets {
        match self {
            Targets::Classes { labels, names } => {
                Targets::Classes { labels: indices.iter().map(|&i| labels[i]).collect(), names: names.clone() }
            }
            Targets::Values(v) => Targets::Values(indices.iter().map(|&i| v[i]).collect()),
        }
    }
}

/// A table of numeric features with one target per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Tabular {
    /// Features, row-major `[rows, n_features]`.
    pub features: Vec<f32>,
    /// Features per row.
    pub n_features: usize,
    /// One target per row.
    pub targets: Targets,
    /// Name of each feature column (`n_features` entries).
    pub feature_names: Vec<String>,
}

impl Tabular {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of classes for classification data, `None` for regression.
    pub fn n_classes(&self) -> Option<usize> {
        match &self.targets {
            Targets::Classes { names, .. } => Some(names.len()),
            Targets::Values(_) => None,
        }
    }

    /// The rows at `indices`, in that order.
    ///
    /// # Panics
    /// If an index is `>= self.len()`.
    pub fn select(&self, indices: &[usize]) -> Tabular {
        let d = self.n_features;
        let mut features = Vec::with_capacity(indices.len() * d);
        for &i in indices {
            features.extend_from_slice(&self.features[i * d..(i + 1) * d]);
        }
        Tabular {
            features,
            n_features: d,
            targets: self.targets.select(indices),
            feature_names: self.feature_names.clone(),
        }
    }
}

/// A loaded, unsplit dataset.
#[derive(Debug, Clone, PartialEq)]
pub enum Dataset {
    /// A numeric table.
    Tabular(Tabular),
    /// A character-level text.
    Text(Text),
}

/// Per-feature standardisation `(x - mean) / std`, computed on the training split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardization {
    /// Mean of each feature over the training rows.
    pub mean: Vec<f32>,
    /// Population standard deviation of each feature over the training rows (1 where it is 0).
    pub std: Vec<f32>,
}

impl Standardization {
    /// Mean and standard deviation of each feature of `data` (computed in `f64`); a constant
    /// feature gets standard deviation 1, so it maps to 0.
    pub fn fit(data: &Tabular) -> Self {
        let (n, d) = (data.len(), data.n_features);
        let mut mean = vec![0f64; d];
        let mut m2 = vec![0f64; d];
        for row in data.features.chunks_exact(d.max(1)).take(n) {
            for (j, &x) in row.iter().enumerate() {
                mean[j] += f64::from(x);
            }
        }
        let nf = n.max(1) as f64;
        mean.iter_mut().for_each(|m| *m /= nf);
        for row in data.features.chunks_exact(d.max(1)).take(n) {
            for (j, &x) in row.iter().enumerate() {
                m2[j] += (f64::from(x) - mean[j]).powi(2);
            }
        }
        let std = m2
            .iter()
            .map(|&s| {
                let sd = (s / nf).sqrt();
                if sd > 1e-12 && sd.is_finite() {
                    sd as f32
                } else {
                    1.0
                }
            })
            .collect();
        Standardization { mean: mean.into_iter().map(|m| m as f32).collect(), std }
    }

    /// Standardise `data`'s features in place.
    ///
    /// # Panics
    /// If `data` has a different number of features.
    pub fn apply(&self, data: &mut Tabular) {
        assert_eq!(data.n_features, self.mean.len(), "standardisation fitted on other features");
        let d = data.n_features.max(1);
        for row in data.features.chunks_exact_mut(d) {
            for (j, x) in row.iter_mut().enumerate() {
                *x = (*x - self.mean[j]) / self.std[j];
            }
        }
    }
}

/// A summary of the loaded data for models (input/output sizes) and reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    /// The recipe's `data.kind`: `"csv"`, `"text"` or `"synthetic"`.
    pub kind: String,
    /// `"classification"`, `"regression"` or `"language-model"` (text).
    pub task: String,
    /// Features per row (tabular data).
    pub n_features: Option<usize>,
    /// Number of classes (classification).
    pub n_classes: Option<usize>,
    /// Label text of each class (classification).
    pub class_names: Option<Vec<String>>,
    /// Vocabulary size (text).
    pub vocab_size: Option<usize>,
    /// Image shape `[channels, height, width]` (image folders).
    #[serde(default)]
    pub image: Option<[usize; 3]>,
    /// Model sequence length (text).
    pub seq_len: Option<usize>,
    /// Training samples (rows, or windows for text).
    pub train_len: usize,
    /// Validation samples (rows, or windows for text); 0 when `valid_fraction` is 0.
    pub valid_len: usize,
    /// One line describing the data and the split, for logs and reports.
    pub description: String,
}

/// The loaded data: training and validation sources and their summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Splits {
    /// The training split.
    pub train: Source,
    /// The validation split (empty when `data.valid_fraction` is 0).
    pub valid: Source,
    /// Sizes and description.
    pub info: DataInfo,
    /// The standardisation applied to both tabular splits (fitted on train), if any.
    pub standardization: Option<Standardization>,
    /// What the data is, for checking that a resumed run trains on the same data.
    pub identity: DataIdentity,
}

/// The file a file-based `data.kind` reads.
fn data_path(section: &oomph_recipe::DataSection) -> Result<&Path, DataError> {
    section.path.as_deref().map(Path::new).ok_or(DataError::MissingPath { kind: section.kind })
}

/// Read the data described by a recipe's `[data]` section, unsplit and unstandardised.
///
/// `seed` fixes synthetic data. Use [`load`] to get training and validation splits.
pub fn read_dataset(section: &oomph_recipe::DataSection, seed: u64) -> Result<Dataset, DataError> {
    read_dataset_hashed(section, seed).map(|(data, _)| data)
}

/// [`read_dataset`], with the SHA-256 (lowercase hex) of the file's bytes for file-based kinds.
fn read_dataset_hashed(section: &oomph_recipe::DataSection, seed: u64) -> Result<(Dataset, Option<String>), DataError> {
    match section.kind {
        DataKind::Csv => {
            let options =
                CsvOptions { header: section.header, label_column: section.label_column.clone(), task: section.task };
            let (data, sha256) = csv::read_csv_hashed(data_path(section)?, &options)?;
            Ok((Dataset::Tabular(data), Some(sha256)))
        }
        DataKind::Synthetic => {
            let spec = SyntheticSpec {
                task: section.task,
                samples: section.samples,
                features: section.features,
                classes: section.classes,
                noise: section.noise,
            };
            Ok((Dataset::Tabular(synthetic_tabular(&spec, seed)?), None))
        }
        DataKind::Text => {
            let (text, sha256) = text::read_text_hashed(data_path(section)?)?;
            Ok((Dataset::Text(text), Some(sha256)))
        }
        DataKind::Program => Err(DataError::ProgramData { name: section.name.clone().unwrap_or_default() }),
        DataKind::ImageFolder => Err(DataError::NotRead { kind: section.kind }),
    }
}

/// Load the data described by a recipe's `[data]` section and split it.
///
/// `seed` (the run seed) fixes the tabular split and the synthetic data. `seq_len` is the
/// model's sequence length and is required for `text` data (it is ignored otherwise).
/// `section.path` must already be resolved to a usable path. Tabular splits are shuffled
/// index splits (each split keeps file order); the text split is contiguous (the last
/// `valid_fraction` of the tokens), with one vocabulary built from the whole text. With
/// `standardize`, tabular features (csv and synthetic) are standardised with the training
/// split's statistics; regression targets are left as they are. The result's
/// [`Splits::identity`] hashes the file's bytes (csv, text) or the generated samples of both
/// splits before standardisation (synthetic).
pub fn load(section: &oomph_recipe::DataSection, seed: u64, seq_len: Option<usize>) -> Result<Splits, DataError> {
    let frac = section.valid_fraction;
    if !(0.0..1.0).contains(&frac) {
        return Err(DataError::BadValidFraction { value: frac });
    }
    // Check the text-only requirement before reading a possibly large file.
    let text_seq_len = if section.kind == DataKind::Text {
        let path = data_path(section)?;
        match seq_len {
            Some(s) if s > 0 => Some(s),
            given => {
                let problem = match given {
                    Some(_) => "the sequence length given is 0",
                    None => "the model gave none (it is not a sequence model)",
                };
                return Err(DataError::MissingSeqLen { path: path.to_path_buf(), problem: problem.to_string() });
            }
        }
    } else {
        None
    };
    let splits = match read_dataset_hashed(section, seed)? {
        (Dataset::Tabular(data), file_sha256) => {
            let name = match section.kind {
                DataKind::Csv => format!("CSV file `{}`", data_path(section)?.display()),
                DataKind::Synthetic => "synthetic data".to_string(),
                DataKind::Text | DataKind::Program | DataKind::ImageFolder => {
                    unreachable!("only csv and synthetic data are tables")
                }
            };
            tabular_splits(section.kind, &name, data, frac, seed, section.standardize, file_sha256)?
        }
        (Dataset::Text(text), file_sha256) => {
            let seq_len = text_seq_len.expect("checked above for text data");
            let sha256 = file_sha256.expect("text data is read from a file");
            text_splits(data_path(section)?, text, frac, seq_len, sha256)?
        }
    };
    tracing::info!(train = splits.info.train_len, valid = splits.info.valid_len, "data: {}", splits.info.description);
    Ok(splits)
}

/// The shuffled split of `total` items (tables, image folders) by the run seed: `n_valid`
/// validation indices and the rest for training, each list in ascending (file) order.
pub fn split_indices(total: usize, n_valid: usize, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order = rng::SplitMix64::new(rng::derive_seed(seed, SPLIT_STREAM)).permutation(total);
    let mut train = order.split_off(n_valid.min(total));
    order.sort_unstable();
    train.sort_unstable();
    (train, order)
}

/// Number of validation items for `total` items: `round(total * fraction)`.
pub fn valid_count(total: usize, fraction: f64) -> usize {
    ((total as f64) * fraction).round() as usize
}

/// Split a table into shuffled train/valid row sets (each kept in file order) and
/// standardise them with the training statistics when asked. `file_sha256` is the digest
/// of the file the table was read from; without one (generated data) the identity hashes
/// the samples of both splits before standardisation.
fn tabular_splits(
    kind: DataKind,
    name: &str,
    data: Tabular,
    frac: f64,
    seed: u64,
    standardize: bool,
    file_sha256: Option<String>,
) -> Result<Splits, DataError> {
    let total = data.len();
    let n_valid = valid_count(total, frac);
    let n_train = total - n_valid;
    if n_train == 0 || (frac > 0.0 && n_valid == 0) {
        return Err(DataError::SplitTooSmall {
            dataset: name.to_string(),
            unit: "rows",
            total,
            valid_fraction: frac,
            train: n_train,
            valid: n_valid,
            need: "each split needs at least 1 row (validation may be empty only when \
                   data.valid_fraction = 0)"
                .into(),
            fix: "use more rows, or pick a data.valid_fraction that leaves rows on both sides \
                  (or set it to 0 to train without validation)."
                .into(),
        });
    }
    let (train_idx, valid_idx) = split_indices(total, n_valid, seed);
    let mut train = data.select(&train_idx);
    let mut valid = data.select(&valid_idx);
    let content_sha256 = file_sha256.unwrap_or_else(|| samples_sha256(&train, &valid));
    let standardization = standardize.then(|| {
        let s = Standardization::fit(&train);
        s.apply(&mut train);
        s.apply(&mut valid);
        s
    });
    let n_classes = train.n_classes();
    let class_names = match &data.targets {
        Targets::Classes { names, .. } => Some(names.clone()),
        Targets::Values(_) => None,
    };
    let task = if n_classes.is_some() { "classification" } else { "regression" };
    let what = match n_classes {
        Some(k) => format!("{k} classes"),
        None => "regression target".to_string(),
    };
    let description = format!(
        "{name}: {total} rows, {} features, {what}; train {n_train} / valid {n_valid} rows \
         (valid_fraction {frac}, split seed {seed}){}",
        data.n_features,
        if standardize { ", features standardised with train mean/std" } else { "" }
    );
    if let Some(1) = n_classes {
        tracing::warn!("{name}: the label column holds a single class");
    }
    let info = DataInfo {
        kind: kind.to_string(),
        task: task.to_string(),
        n_features: Some(data.n_features),
        n_classes,
        class_names,
        vocab_size: None,
        image: None,
        seq_len: None,
        train_len: n_train,
        valid_len: n_valid,
        description,
    };
    Ok(Splits {
        identity: DataIdentity::new(&info, None, content_sha256),
        info,
        train: Source::Tabular(train),
        valid: Source::Tabular(valid),
        standardization,
    })
}

/// Split a text contiguously: the last `round(tokens * frac)` tokens are validation.
/// `sha256` is the digest of the file's bytes.
fn text_splits(path: &Path, text: Text, frac: f64, seq_len: usize, sha256: String) -> Result<Splits, DataError> {
    let total = text.len();
    let n_valid = valid_count(total, frac);
    let n_train = total - n_valid;
    let need = seq_len + 1;
    if n_train < need || (frac > 0.0 && n_valid < need) {
        return Err(DataError::SplitTooSmall {
            dataset: format!("text file `{}`", path.display()),
            unit: "tokens (characters)",
            total,
            valid_fraction: frac,
            train: n_train,
            valid: n_valid,
            need: format!(
                "each split needs at least seq_len + 1 = {need} tokens for one training window \
                 (validation may be empty only when data.valid_fraction = 0)"
            ),
            fix: "use a longer text, a shorter model.seq_len, or a data.valid_fraction that \
                  leaves enough tokens on both sides (0 trains without validation)."
                .into(),
        });
    }
    let vocab_size = text.vocab_size();
    let vocabulary: String = text.vocab.iter().collect();
    let Text { mut tokens, vocab } = text;
    let valid_tokens = tokens.split_off(n_train);
    let train = Source::Text { text: Text { tokens, vocab: vocab.clone() }, seq_len };
    let valid = Source::Text { text: Text { tokens: valid_tokens, vocab }, seq_len };
    let description = format!(
        "text file `{}`: {total} characters, vocabulary {vocab_size}; train {n_train} / valid \
         {n_valid} tokens (the last {frac} of the text), windows of {seq_len}+1 tokens",
        path.display()
    );
    let info = DataInfo {
        kind: "text".into(),
        task: "language-model".into(),
        n_features: None,
        n_classes: None,
        class_names: None,
        vocab_size: Some(vocab_size),
        image: None,
        seq_len: Some(seq_len),
        train_len: train.len(),
        valid_len: valid.len(),
        description,
    };
    Ok(Splits {
        identity: DataIdentity::new(&info, Some(vocabulary), sha256),
        info,
        train,
        valid,
        standardization: None,
    })
}

#[cfg(test)]
mod tests;
