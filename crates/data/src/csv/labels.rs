//! Class labels: label strings become class indices, numeric labels keyed by exact value.

use std::collections::BTreeSet;

use crate::Targets;

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
pub(super) enum LabelValue {
    /// An integer value.
    Int(i64),
    /// A finite value that is not an integer in `i64`'s range.
    Float(f64),
}

/// 2^63 as an `f64`: the smallest value above `i64::MAX`.
const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;

impl LabelValue {
    /// The value of a trimmed label, or `None` if it is not a finite number.
    pub(super) fn parse(s: &str) -> Option<Self> {
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
    pub(super) fn canonical(&self) -> String {
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
