//! Reading tabular data from CSV files.
//!
//! Records are split by the `csv` crate (`records.rs`): a UTF-8 byte-order mark, LF, CRLF
//! and lone-CR line endings, a missing or present trailing newline, blank lines (skipped) and
//! RFC 4180 quoting (fields in double quotes may hold commas, line breaks and `""` for a
//! quote). Every non-label column must be
//! numeric; the label column holds class labels (integers or strings) or regression targets
//! (numbers). Errors name the file, the line, the column and the value.

use std::path::Path;

use crate::error::{DataError, NumberProblem};
use crate::{Tabular, Targets};

mod labels;
mod records;

pub use labels::classes_from_strings;
use records::{parse_records, Record};

/// Whether the label column holds class labels or numeric targets (`data.task`).
pub use oomph_recipe::Task;

/// How to read a CSV file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    /// The first row is a header of column names.
    pub header: bool,
    /// The label column, by header name or 0-based index; `None` is the last column.
    pub label_column: Option<String>,
    /// What the label column holds.
    pub task: Task,
}
/// Describe a column for error messages: name (when there is a header) and 0-based index.
fn column_desc(names: Option<&[String]>, index: usize) -> String {
    match names {
        Some(names) => format!("column `{}` (0-based index {index})", names[index]),
        None => format!("column {index} (0-based)"),
    }
}

/// Read a whole file as UTF-8 text, with the SHA-256 (lowercase hex) of its bytes, naming the
/// file and the first bad byte on failure.
pub(crate) fn read_utf8_hashed(path: &Path) -> Result<(String, String), DataError> {
    let (bytes, sha256) = crate::identity::read_file_hashed(path)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..offset].iter().filter(|&&b| b == b'\n').count();
        DataError::NotUtf8 { path: path.to_path_buf(), offset, line }
    })?;
    Ok((text, sha256))
}

/// Read a CSV file into a [`Tabular`] dataset (unsplit, not standardised).
pub fn read_csv(path: &Path, options: &CsvOptions) -> Result<Tabular, DataError> {
    read_csv_hashed(path, options).map(|(data, _)| data)
}

/// [`read_csv`], with the SHA-256 (lowercase hex) of the bytes it parsed.
pub(crate) fn read_csv_hashed(path: &Path, options: &CsvOptions) -> Result<(Tabular, String), DataError> {
    let (text, sha256) = read_utf8_hashed(path)?;
    Ok((parse_csv(path, &text, options)?, sha256))
}

/// Parse CSV text (as read from `path`, which is only used in messages) into a [`Tabular`].
pub fn parse_csv(path: &Path, text: &str, options: &CsvOptions) -> Result<Tabular, DataError> {
    let mut records = parse_records(path, text)?.into_iter();
    let header = if options.header {
        let Some(h) = records.next() else {
            return Err(DataError::Empty {
                path: path.to_path_buf(),
                problem: "is empty: it has no header row and no data rows".into(),
                fix: "point `data.path` at a CSV file with a header row and at least one data row.".into(),
            });
        };
        Some(h)
    } else {
        None
    };
    let rows: Vec<Record> = records.collect();
    if rows.is_empty() {
        let (problem, fix) = if options.header {
            (
                "has a header row but no data rows",
                "add data rows below the header, or point `data.path` at the right file.",
            )
        } else {
            ("is empty: it has no data rows", "point `data.path` at a CSV file with data rows.")
        };
        return Err(DataError::Empty { path: path.to_path_buf(), problem: problem.into(), fix: fix.into() });
    }

    let (n_cols, reference) = match &header {
        Some(h) => (h.fields.len(), "the header"),
        None => (rows[0].fields.len(), "the first row"),
    };
    if n_cols < 2 {
        return Err(DataError::TooFewColumns { path: path.to_path_buf(), found: n_cols });
    }
    let names: Option<Vec<String>> = header.as_ref().map(|h| h.fields.iter().map(|f| f.trim().to_string()).collect());

    let label = resolve_label_column(path, names.as_deref(), n_cols, options)?;
    let feature_cols: Vec<usize> = (0..n_cols).filter(|&c| c != label).collect();
    let feature_names: Vec<String> = feature_cols
        .iter()
        .map(|&c| match &names {
            Some(n) => n[c].clone(),
            None => format!("x{c}"),
        })
        .collect();

    let mut features = Vec::with_capacity(rows.len() * feature_cols.len());
    let mut raw_labels: Vec<(usize, String)> = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.fields.len() != n_cols {
            return Err(DataError::RaggedRow {
                path: path.to_path_buf(),
                line: row.line,
                found: row.fields.len(),
                expected: n_cols,
                reference,
            });
        }
        for &c in &feature_cols {
            let cell = row.fields[c].trim();
            features.push(parse_number(path, names.as_deref(), row.line, c, cell, "feature")?);
        }
        let cell = row.fields[label].trim();
        if cell.is_empty() {
            return Err(DataError::EmptyCell {
                path: path.to_path_buf(),
                line: row.line,
                column: column_desc(names.as_deref(), label),
                role: "label",
            });
        }
        raw_labels.push((row.line, cell.to_string()));
    }

    let targets = match options.task {
        Task::Classification => classes_from_strings(raw_labels.into_iter().map(|(_, s)| s)),
        Task::Regression => Targets::Values(
            raw_labels
                .iter()
                .map(|(line, s)| parse_number(path, names.as_deref(), *line, label, s, "regression target"))
                .collect::<Result<_, _>>()?,
        ),
    };

    Ok(Tabular { features, n_features: feature_cols.len(), targets, feature_names })
}

fn parse_number(
    path: &Path,
    names: Option<&[String]>,
    line: usize,
    col: usize,
    cell: &str,
    role: &'static str,
) -> Result<f32, DataError> {
    if cell.is_empty() {
        return Err(DataError::EmptyCell {
            path: path.to_path_buf(),
            line,
            column: column_desc(names, col),
            role: if role == "feature" { "feature" } else { "label" },
        });
    }
    let bad = |problem| DataError::BadNumber {
        path: path.to_path_buf(),
        line,
        column: column_desc(names, col),
        role,
        value: cell.to_string(),
        problem,
    };
    match cell.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(bad(NumberProblem::NotFinite)),
        Err(_) => Err(bad(NumberProblem::NotANumber)),
    }
}

fn resolve_label_column(
    path: &Path,
    names: Option<&[String]>,
    n_cols: usize,
    options: &CsvOptions,
) -> Result<usize, DataError> {
    let Some(given) = &options.label_column else {
        return Ok(n_cols - 1);
    };
    let given_t = given.trim();
    let available = match names {
        Some(names) => names.iter().enumerate().map(|(i, n)| format!("{i}=`{n}`")).collect::<Vec<_>>().join(", "),
        None => format!("0..={} (the file has no header: data.header = false)", n_cols - 1),
    };
    if let Some(names) = names {
        if let Some(i) = names.iter().position(|n| n == given_t) {
            return Ok(i);
        }
    }
    match given_t.parse::<usize>() {
        Ok(i) if i < n_cols => Ok(i),
        Ok(i) => Err(DataError::LabelColumn {
            path: path.to_path_buf(),
            given: given.clone(),
            problem: format!("is column index {i}, but the file has only {n_cols} columns"),
            available,
        }),
        Err(_) => Err(DataError::LabelColumn {
            path: path.to_path_buf(),
            given: given.clone(),
            problem: if names.is_some() {
                "is neither a header name nor a column index".to_string()
            } else {
                "is not a 0-based column index, and names cannot be used without a header row".to_string()
            },
            available,
        }),
    }
}

#[cfg(test)]
mod tests;
