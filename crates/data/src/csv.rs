//! Reading tabular data from CSV files.
//!
//! The reader handles a UTF-8 byte-order mark, LF, CRLF and lone-CR line endings, a missing
//! or present trailing newline, blank lines (skipped) and RFC 4180 quoting (fields in double
//! quotes may hold commas, line breaks and `""` for a quote). Every non-label column must be
//! numeric; the label column holds class labels (integers or strings) or regression targets
//! (numbers). Errors name the file, the line, the column and the value.

use std::collections::BTreeSet;
use std::path::Path;

use crate::error::{DataError, NumberProblem};
use crate::{Tabular, Targets};

/// Whether the label column holds class labels or numeric targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Class labels: integers or strings.
    Classification,
    /// Numeric targets.
    Regression,
}

impl Task {
    /// Parse `data.task` (`"classification"` or `"regression"`).
    pub fn parse(task: &str) -> Result<Self, DataError> {
        match task {
            "classification" => Ok(Task::Classification),
            "regression" => Ok(Task::Regression),
            other => Err(DataError::UnknownTask { task: other.to_string() }),
        }
    }
}

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

/// One record of a CSV file: the line it starts on and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) line: usize,
    pub(crate) fields: Vec<String>,
}

/// Split CSV text into records (RFC 4180 quoting). Blank lines are skipped.
pub(crate) fn parse_records(path: &Path, text: &str) -> Result<Vec<Record>, DataError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut any_quoted = false;
    let mut line = 1;
    let mut record_line = 1;
    let mut chars = text.chars().peekable();

    let syntax = |line: usize, problem: String| DataError::CsvSyntax { path: path.to_path_buf(), line, problem };

    loop {
        // At the start of a field.
        if chars.peek() == Some(&'"') {
            chars.next();
            any_quoted = true;
            let quote_line = line;
            loop {
                match chars.next() {
                    None => {
                        return Err(syntax(
                            quote_line,
                            format!("field {} opens a quote (\") that is never closed", fields.len() + 1),
                        ))
                    }
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some('\n') => {
                        line += 1;
                        field.push('\n');
                    }
                    Some('\r') => {
                        if chars.peek() == Some(&'\n') {
                            chars.next();
                        }
                        line += 1;
                        field.push('\n');
                    }
                    Some(c) => field.push(c),
                }
            }
            match chars.peek() {
                None | Some(',') | Some('\n') | Some('\r') => {}
                Some(&c) => {
                    return Err(syntax(
                        line,
                        format!("field {} has the character '{c}' after its closing quote", fields.len() + 1),
                    ))
                }
            }
        }
        // The rest of an unquoted field (or the separator after a quoted one).
        let end_of_record;
        loop {
            match chars.next() {
                None => {
                    end_of_record = None;
                    break;
                }
                Some(',') => {
                    end_of_record = Some(false);
                    break;
                }
                Some('\n') => {
                    end_of_record = Some(true);
                    break;
                }
                Some('\r') => {
                    if chars.peek() == Some(&'\n') {
                        chars.next();
                    }
                    end_of_record = Some(true);
                    break;
                }
                Some(c) => field.push(c),
            }
        }
        fields.push(std::mem::take(&mut field));
        match end_of_record {
            Some(false) => {}
            Some(true) | None => {
                let blank = !any_quoted && fields.len() == 1 && fields[0].trim().is_empty();
                if !blank {
                    records.push(Record { line: record_line, fields: std::mem::take(&mut fields) });
                }
                fields.clear();
                any_quoted = false;
                if end_of_record.is_none() {
                    break;
                }
                line += 1;
                record_line = line;
            }
        }
    }
    Ok(records)
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

/// Turn label strings into class indices.
///
/// Labels are trimmed. When every label parses as a finite number, classes are keyed by
/// numeric value, so `1`, `1.0`, `+1` and `1e0` are one class; classes are numbered in
/// ascending numeric order (so labels that are exactly `0..K-1` keep their values), and a
/// class's name is its canonical text: an integer value prints as `1`, any other value as
/// Rust's shortest `f64` text. Integer labels are compared exactly, also beyond the integers
/// an `f64` holds exactly. Otherwise classes are the distinct trimmed strings in sorted
/// (byte-wise) order. `names[i]` is the label text of class `i`.
pub fn classes_from_strings(labels: impl IntoIterator<Item = String>) -> Targets {
    let labels: Vec<String> = labels.into_iter().map(|s| s.trim().to_string()).collect();
    let numbers: Option<Vec<LabelValue>> = labels.iter().map(|s| LabelValue::parse(s)).collect();
    if let Some(numbers) = numbers {
        let uniq: Vec<LabelValue> = numbers.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
        let names = uniq.iter().map(LabelValue::canonical).collect();
        // For dense 0..K-1 labels the rank of a value is the value itself.
        let labels = numbers.iter().map(|v| uniq.binary_search(v).expect("value is in its own set") as u32).collect();
        return Targets::Classes { labels, names };
    }
    let uniq: Vec<String> = labels.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
    let idx = labels.iter().map(|s| uniq.binary_search(s).expect("value is in its own set") as u32).collect();
    Targets::Classes { labels: idx, names: uniq }
}

/// The numeric value of a class label, compared exactly.
///
/// **Invariant:** a value that is an integer in `i64`'s range is always `Int`, so equal values
/// have equal representations and derived equality is numeric equality; a `Float` is either
/// not an integer or outside `i64`'s range (kept by
/// `csv::tests::label_values_order_like_numbers_and_names_round_trip`).
#[derive(Debug, Clone, Copy)]
enum LabelValue {
    /// An integer value.
    Int(i64),
    /// A finite value that is not an integer in `i64`'s range.
    Float(f64),
}

/// 2^63 as an `f64`: the smallest value above `i64::MAX`.
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

impl LabelValue {
    /// The value of a trimmed label, or `None` if it is not a finite number.
    fn parse(s: &str) -> Option<Self> {
        if let Ok(i) = s.parse::<i64>() {
            return Some(LabelValue::Int(i));
        }
        let v = s.parse::<f64>().ok().filter(|v| v.is_finite())?;
        if v.fract() == 0.0 && (-TWO_POW_63..TWO_POW_63).contains(&v) {
            // Exact: an integral f64 in this range is an i64 (and -0 becomes 0).
            Some(LabelValue::Int(v as i64))
        } else {
            Some(LabelValue::Float(v))
        }
    }

    /// The class name: integers without a fraction, others as Rust's shortest `f64` text.
    fn canonical(&self) -> String {
        match *self {
            LabelValue::Int(i) => i.to_string(),
            LabelValue::Float(v) => v.to_string(),
        }
    }
}

/// Exact order of an integer and a `Float` (which is never equal to an `i64`).
fn cmp_int_float(i: i64, f: f64) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    if f >= TWO_POW_63 {
        Ordering::Less
    } else if f < -TWO_POW_63 {
        Ordering::Greater
    } else if i <= f.floor() as i64 {
        // In range, `f` is not an integer, so `f > floor(f) >= i`.
        Ordering::Less
    } else {
        Ordering::Greater
    }
}

impl Ord for LabelValue {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (*self, *other) {
            (LabelValue::Int(a), LabelValue::Int(b)) => a.cmp(&b),
            (LabelValue::Float(a), LabelValue::Float(b)) => a.total_cmp(&b),
            (LabelValue::Int(a), LabelValue::Float(b)) => cmp_int_float(a, b),
            (LabelValue::Float(a), LabelValue::Int(b)) => cmp_int_float(b, a).reverse(),
        }
    }
}

impl PartialOrd for LabelValue {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for LabelValue {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for LabelValue {}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("t.csv")
    }

    fn opts(header: bool, label: Option<&str>, task: Task) -> CsvOptions {
        CsvOptions { header, label_column: label.map(str::to_string), task }
    }

    fn classes(t: &Targets) -> (Vec<u32>, Vec<String>) {
        match t {
            Targets::Classes { labels, names } => (labels.clone(), names.clone()),
            Targets::Values(_) => panic!("expected classes"),
        }
    }

    #[test]
    fn records_handle_quotes_crlf_bom_and_blank_lines() {
        let text = "\u{feff}a,\"b,c\",\"say \"\"hi\"\"\"\r\n\r\n1,\"two\nlines\",3\r\n4,5,6";
        let r = parse_records(p(), text).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].fields, vec!["a", "b,c", "say \"hi\""]);
        assert_eq!(r[0].line, 1);
        assert_eq!(r[1].fields, vec!["1", "two\nlines", "3"]);
        assert_eq!(r[1].line, 3);
        assert_eq!(r[2].fields, vec!["4", "5", "6"]);
        assert_eq!(r[2].line, 5);
    }

    #[test]
    fn trailing_newline_and_empty_fields() {
        let r = parse_records(p(), "a,b\n1,\n").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].fields, vec!["1", ""]);
        let r = parse_records(p(), "a,b\n\"\",2").unwrap();
        assert_eq!(r[1].fields, vec!["", "2"]);
    }

    #[test]
    fn unterminated_quote_is_an_error_naming_the_line() {
        let e = parse_records(p(), "a,b\n1,\"oops\n2,3\n").unwrap_err().to_string();
        assert!(e.contains("`t.csv`, line 2"), "{e}");
        assert!(e.contains("never closed"), "{e}");
        let e = parse_records(p(), "a,b\n\"x\"y,2\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("after its closing quote"), "{e}");
    }

    #[test]
    fn string_labels_are_sorted_unique_names() {
        let t = parse_csv(
            p(),
            "x,y,species\n1,2,virginica\n3,4,setosa\n5,6,versicolor\n7,8,setosa\n",
            &opts(true, None, Task::Classification),
        )
        .unwrap();
        assert_eq!(t.n_features, 2);
        assert_eq!(t.feature_names, vec!["x", "y"]);
        assert_eq!(t.features, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let (labels, names) = classes(&t.targets);
        assert_eq!(names, vec!["setosa", "versicolor", "virginica"]);
        assert_eq!(labels, vec![2, 0, 1, 0]);
    }

    #[test]
    fn integer_labels_kept_when_dense_else_mapped() {
        let (l, n) = classes(&classes_from_strings(["2", "0", "1", "0"].map(String::from)));
        assert_eq!(l, vec![2, 0, 1, 0]);
        assert_eq!(n, vec!["0", "1", "2"]);
        let (l, n) = classes(&classes_from_strings(["10", "-1", "7"].map(String::from)));
        assert_eq!(l, vec![2, 0, 1]);
        assert_eq!(n, vec!["-1", "7", "10"]);
    }

    #[test]
    fn numeric_labels_are_keyed_by_value_not_by_spelling() {
        // Regression: `1` and `1.0` (and other spellings of one) were different classes.
        let spellings = ["1", "1.0", "1.00", " 1", "+1", "1e0", "0", "2.5", "-0"];
        let (l, n) = classes(&classes_from_strings(spellings.map(String::from)));
        assert_eq!(n, vec!["0", "1", "2.5"]);
        assert_eq!(l, vec![1, 1, 1, 1, 1, 1, 0, 2, 0]);

        let t = parse_csv(p(), "x,y\n1,1\n2,1.0\n3,+1\n4,0.0\n", &opts(true, None, Task::Classification)).unwrap();
        assert_eq!(classes(&t.targets), (vec![1, 1, 1, 0], vec!["0".to_string(), "1".to_string()]));
    }

    #[test]
    fn numeric_labels_are_ordered_by_value_with_canonical_names() {
        let (l, n) = classes(&classes_from_strings(["10", "-0.5", "2", "0.25", "2.0", "1e1"].map(String::from)));
        assert_eq!(n, vec!["-0.5", "0.25", "2", "10"]);
        assert_eq!(l, vec![3, 0, 2, 1, 2, 3]);
        // Integers beyond f64's exact range stay distinct and ordered.
        let (l, n) = classes(&classes_from_strings(["9007199254740993", "9007199254740992"].map(String::from)));
        assert_eq!(n, vec!["9007199254740992", "9007199254740993"]);
        assert_eq!(l, vec![1, 0]);
    }

    proptest::proptest! {
        #[test]
        fn label_values_order_like_numbers_and_names_round_trip(
            a in -(1i64 << 53)..(1i64 << 53),
            b in -1e15f64..1e15,
            scale in 0u32..6,
        ) {
            // Both values are exact in f64 here, so f64 comparison is the true order.
            let b = b / f64::from(10u32.pow(scale));
            let (x, y) = (LabelValue::parse(&a.to_string()).unwrap(), LabelValue::parse(&b.to_string()).unwrap());
            proptest::prop_assert_eq!(x.cmp(&y), (a as f64).total_cmp(&(b + 0.0)));
            proptest::prop_assert_eq!(y.cmp(&x), (b + 0.0).total_cmp(&(a as f64)));
            for v in [x, y] {
                let back = LabelValue::parse(&v.canonical()).unwrap();
                proptest::prop_assert!(back == v && back.canonical() == v.canonical());
            }
            let dotted = LabelValue::parse(&format!("{a}.0")).unwrap();
            proptest::prop_assert!(dotted == x && dotted.canonical() == a.to_string());
        }
    }

    #[test]
    fn labels_that_are_not_all_finite_numbers_stay_trimmed_strings() {
        let (l, n) = classes(&classes_from_strings(["1", "1.0", " a "].map(String::from)));
        assert_eq!(n, vec!["1", "1.0", "a"]);
        assert_eq!(l, vec![0, 1, 2]);
        let (_, n) = classes(&classes_from_strings(["1", "inf", "NaN"].map(String::from)));
        assert_eq!(n, vec!["1", "NaN", "inf"]);
    }

    #[test]
    fn label_column_by_name_and_index() {
        let text = "label,a,b\ncat,1,2\ndog,3,4\n";
        let by_name = parse_csv(p(), text, &opts(true, Some("label"), Task::Classification));
        let by_index = parse_csv(p(), text, &opts(true, Some("0"), Task::Classification));
        let a = by_name.unwrap();
        assert_eq!(a, by_index.unwrap());
        assert_eq!(a.feature_names, vec!["a", "b"]);
        assert_eq!(a.features, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(classes(&a.targets).1, vec!["cat", "dog"]);

        let no_header = parse_csv(p(), "1,5,0\n2,6,1\n", &opts(false, Some("1"), Task::Regression)).unwrap();
        assert_eq!(no_header.feature_names, vec!["x0", "x2"]);
        assert_eq!(no_header.features, vec![1.0, 0.0, 2.0, 1.0]);
        assert_eq!(no_header.targets, Targets::Values(vec![5.0, 6.0]));
    }

    #[test]
    fn missing_label_column_lists_the_columns() {
        let e =
            parse_csv(p(), "a,b\n1,2\n", &opts(true, Some("target"), Task::Classification)).unwrap_err().to_string();
        assert!(e.contains("data.label_column = \"target\""), "{e}");
        assert!(e.contains("0=`a`, 1=`b`"), "{e}");
        assert!(e.contains("`t.csv`"), "{e}");
        let e = parse_csv(p(), "a,b\n1,2\n", &opts(true, Some("5"), Task::Classification)).unwrap_err().to_string();
        assert!(e.contains("index 5") && e.contains("only 2 columns"), "{e}");
        let e = parse_csv(p(), "1,2\n", &opts(false, Some("b"), Task::Classification)).unwrap_err().to_string();
        assert!(e.contains("no header"), "{e}");
    }

    #[test]
    fn bad_value_names_file_line_column_and_value() {
        let e = parse_csv(p(), "a,b,y\n1,2,0\n3,abc,1\n", &opts(true, None, Task::Classification)).unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, DataError::BadNumber { line: 3, .. }), "{s}");
        assert!(s.contains("`t.csv`, line 3, column `b` (0-based index 1)"), "{s}");
        assert!(s.contains("\"abc\" is not a number"), "{s}");
        assert!(s.contains("Fix:"), "{s}");
        assert!(!s.contains('\n'), "one paragraph: {s}");

        let e = parse_csv(p(), "a,y\n1,x\n", &opts(true, None, Task::Regression)).unwrap_err().to_string();
        assert!(e.contains("regression target value \"x\""), "{e}");
        assert!(e.contains("data.task = \"classification\""), "{e}");

        let e = parse_csv(p(), "a,y\nNaN,1\n", &opts(true, None, Task::Classification)).unwrap_err().to_string();
        assert!(e.contains("is not finite"), "{e}");
    }

    #[test]
    fn empty_cells_are_errors_with_a_fix() {
        let e = parse_csv(p(), "a,b,y\n1,,0\n", &opts(true, None, Task::Classification)).unwrap_err().to_string();
        assert!(e.contains("line 2, column `b`") && e.contains("feature cell is empty"), "{e}");
        assert!(e.contains("Fix: fill in the missing value"), "{e}");
        let e = parse_csv(p(), "a,y\n1, \n", &opts(true, None, Task::Classification)).unwrap_err().to_string();
        assert!(e.contains("label cell is empty"), "{e}");
    }

    #[test]
    fn ragged_rows_and_too_few_columns() {
        let e = parse_csv(p(), "a,b,y\n1,2,0\n1,2\n", &opts(true, None, Task::Classification)).unwrap_err().to_string();
        assert!(e.contains("line 3: the row has 2 fields but the header has 3"), "{e}");
        let e = parse_csv(p(), "y\n1\n", &opts(true, None, Task::Classification)).unwrap_err().to_string();
        assert!(e.contains("has 1 column(s)"), "{e}");
    }

    #[test]
    fn empty_files() {
        let e = parse_csv(p(), "", &opts(true, None, Task::Classification)).unwrap_err();
        assert!(e.to_string().contains("no header row"), "{e}");
        let e = parse_csv(p(), "a,b\r\n", &opts(true, None, Task::Classification)).unwrap_err();
        assert!(e.to_string().contains("no data rows"), "{e}");
    }

    #[test]
    fn quoted_numbers_and_whitespace_are_accepted() {
        let t = parse_csv(p(), "a,y\r\n\" 1.5 \", 2 \r\n", &opts(true, None, Task::Regression)).unwrap();
        assert_eq!(t.features, vec![1.5]);
        assert_eq!(t.targets, Targets::Values(vec![2.0]));
    }
}
