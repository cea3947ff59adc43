//! The crate's error type.
//!
//! Every message is one paragraph that names the file (or the recipe keys) involved, the
//! problem with its line, column and value where there is one, and how to fix it.

use std::path::PathBuf;

/// Why a dataset could not be loaded or split.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file could not be read.
    #[error(
        "cannot read data file `{}`: {error}. Fix: check that `data.path` names an existing, \
         readable file (a relative path is taken from the recipe file's directory).",
        path.display()
    )]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: std::io::Error,
    },

    /// The file is not UTF-8 text.
    #[error(
        "data file `{}` is not valid UTF-8: the bytes at offset {offset} (line {line}) do not \
         decode. Fix: re-save the file as UTF-8 text.",
        path.display()
    )]
    NotUtf8 {
        /// The file.
        path: PathBuf,
        /// Byte offset of the first invalid byte.
        offset: usize,
        /// 1-based line of the first invalid byte.
        line: usize,
    },

    /// A file-based `data.kind` without `data.path`.
    #[error(
        "data.kind = \"{kind}\" reads a file, but `data.path` is not set. Fix: set `data.path` \
         to the {kind} file (relative to the recipe file's directory), or use \
         data.kind = \"synthetic\"."
    )]
    MissingPath {
        /// The `data.kind` that needs a file.
        kind: oomph_recipe::DataKind,
    },

    /// `data.kind = "program"`: the program loads that data, not this crate.
    #[error(
        "data.kind = \"program\" (data.name = {name:?}) is data a program registers, and this program \
         has none of that name. Fix: run the program that registers it, or use a built-in data.kind \
         (csv, text, synthetic, image_folder)."
    )]
    ProgramData {
        /// The `data.name` asked for.
        name: String,
    },

    /// A `data.kind` this crate does not read (`oomph_train::feed` does).
    #[error(
        "data.kind = \"{kind}\" is read by oomph's trainer (oomph_train::feed), not by oomph_data::load. \
         Fix: load it through oomph_train's Registry::load_data."
    )]
    NotRead {
        /// The `data.kind`.
        kind: oomph_recipe::DataKind,
    },

    /// `data.valid_fraction` is outside `[0, 1)`.
    #[error(
        "data.valid_fraction = {value} is outside [0, 1). Fix: set data.valid_fraction to a \
         fraction such as 0.1 (0 disables validation)."
    )]
    BadValidFraction {
        /// The value given.
        value: f64,
    },

    /// Text data was requested without a usable sequence length.
    #[error(
        "data.kind = \"text\" (`{}`) needs the model's sequence length to cut training windows, \
         but {problem}. Fix: train text data with a sequence model (such as `gpt`, whose \
         `model.seq_len` sets it) and give it a sequence length of at least 1.",
        path.display()
    )]
    MissingSeqLen {
        /// The text file.
        path: PathBuf,
        /// What was wrong: none given, or zero.
        problem: String,
    },

    /// A synthetic-data key has an unusable value.
    #[error(
        "synthetic data: data.{key} = {value} is invalid: it must be {requirement}. Fix: set \
         data.{key} to {requirement}."
    )]
    BadSynthetic {
        /// The `data.` key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What the value must be.
        requirement: &'static str,
    },

    /// An image folder (or an image in it) that cannot be read as `image_folder` data.
    #[error("image data `{}` {problem}. Fix: {fix}.", path.display())]
    Images {
        /// The folder or file at fault.
        path: std::path::PathBuf,
        /// What is wrong with it.
        problem: String,
        /// How to fix it.
        fix: String,
    },

    /// The file holds no data.
    #[error("data file `{}` {problem}. Fix: {fix}", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// What is missing.
        problem: String,
        /// How to fix it.
        fix: String,
    },

    /// A CSV syntax error (quoting).
    #[error(
        "CSV file `{}`, line {line}: {problem}. Fix: quote fields that contain commas, quotes \
         or line breaks as \"like this\", and write a quote inside a quoted field as \"\".",
        path.display()
    )]
    CsvSyntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The syntax problem.
        problem: String,
    },

    /// A CSV row has a different number of fields than the first row.
    #[error(
        "CSV file `{}`, line {line}: the row has {found} fields but {reference} has {expected}. \
         Fix: give every row the same number of comma-separated fields (check for a missing or \
         extra comma, or an unquoted comma inside a value).",
        path.display()
    )]
    RaggedRow {
        /// The file.
        path: PathBuf,
        /// 1-based line where the row starts.
        line: usize,
        /// Fields found.
        found: usize,
        /// Fields expected.
        expected: usize,
        /// Which row set the expectation ("the header" or "the first row").
        reference: &'static str,
    },

    /// A CSV file with fewer than two columns.
    #[error(
        "CSV file `{}` has {found} column(s), but tabular data needs at least one feature \
         column and one label column. Fix: check the separator (fields must be separated by \
         commas) or add the missing columns.",
        path.display()
    )]
    TooFewColumns {
        /// The file.
        path: PathBuf,
        /// Columns found.
        found: usize,
    },

    /// An empty CSV cell.
    #[error(
        "CSV file `{}`, line {line}, {column}: the {role} cell is empty. Fix: fill in the \
         missing value (for example with the column's mean or a placeholder class) or delete \
         the row; missing values are not imputed.",
        path.display()
    )]
    EmptyCell {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The column, by name and index.
        column: String,
        /// "feature" or "label".
        role: &'static str,
    },

    /// A CSV cell that should be a number is not.
    #[error(
        "CSV file `{}`, line {line}, {column}: the {role} value \"{value}\" {}. Fix: {}",
        path.display(),
        problem.text(),
        problem.fix(role)
    )]
    BadNumber {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The column, by name and index.
        column: String,
        /// "feature" or "regression target".
        role: &'static str,
        /// The cell's text.
        value: String,
        /// What is wrong with it.
        problem: NumberProblem,
    },

    /// `data.label_column` does not name a column.
    #[error(
        "CSV file `{}`: data.label_column = \"{given}\" {problem}. Fix: set data.label_column \
         to one of the header names or a 0-based column index; the columns are: {available}.",
        path.display()
    )]
    LabelColumn {
        /// The file.
        path: PathBuf,
        /// The value given.
        given: String,
        /// Why it does not resolve.
        problem: String,
        /// The available columns.
        available: String,
    },

    /// A split would be empty or too small.
    #[error(
        "{dataset}: splitting {total} {unit} with data.valid_fraction = {valid_fraction} leaves \
         {train} for training and {valid} for validation, but {need}. Fix: {fix}"
    )]
    SplitTooSmall {
        /// The dataset (file or "synthetic data").
        dataset: String,
        /// "rows" or "tokens".
        unit: &'static str,
        /// Size before splitting.
        total: usize,
        /// The fraction held out.
        valid_fraction: f64,
        /// Training size.
        train: usize,
        /// Validation size.
        valid: usize,
        /// What each split needs.
        need: String,
        /// How to fix it.
        fix: String,
    },
}

/// What is wrong with a cell that should hold a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberProblem {
    /// The text does not parse as a number.
    NotANumber,
    /// It parses, but to an infinity or NaN.
    NotFinite,
}

impl NumberProblem {
    /// The problem, as the end of a sentence about the value.
    pub fn text(self) -> &'static str {
        match self {
            NumberProblem::NotANumber => "is not a number",
            NumberProblem::NotFinite => "is not finite",
        }
    }

    /// How to fix it, for a cell in the given role ("feature" or "regression target").
    pub fn fix(self, role: &str) -> &'static str {
        match self {
            NumberProblem::NotFinite => {
                "replace infinities and NaNs with real values (or delete the row); missing \
                 values are not imputed."
            }
            NumberProblem::NotANumber if role == "feature" => {
                "every column except the label column must be numeric: encode categories as \
                 numbers, drop the column, or choose the right column with data.label_column."
            }
            NumberProblem::NotANumber => {
                "regression targets must be numbers; for class labels set \
                 data.task = \"classification\"."
            }
        }
    }
}
