//! Tests of the CSV reader: records, labels, columns and the errors' wording.

use super::labels::LabelValue;
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
fn lone_cr_line_endings_count_lines() {
    let r = parse_records(p(), "a,b\r1,2\r\r3,\"x\ry\"\r4,5").unwrap();
    let lines: Vec<usize> = r.iter().map(|r| r.line).collect();
    assert_eq!(lines, vec![1, 2, 4, 6]);
    assert_eq!(r[2].fields, vec!["3", "x\ny"]);
    let e = parse_records(p(), "a,b\r1,2\r\"x\"y,3\r").unwrap_err().to_string();
    assert!(e.contains("line 3") && e.contains("field 1") && e.contains("after its closing quote"), "{e}");
}

#[test]
fn only_one_byte_order_mark_is_dropped_and_quotes_after_a_second_are_data() {
    // A tool that added a second mark: the second is data, as it always was, so the quote
    // after it is inside an unquoted field, and the header's first name keeps the mark.
    let r = parse_records(p(), "\u{feff}\u{feff}\"a,b\n1,2\n").unwrap();
    assert_eq!(r[0].fields, vec!["\u{feff}\"a", "b"]);
    assert_eq!((r[0].line, r[1].line), (1, 2));
    let r = parse_records(p(), "\u{feff}\u{feff}\n\na,b\n1,2").unwrap();
    assert_eq!((r[0].line, &r[0].fields), (1, &vec!["\u{feff}".to_string()]));
    assert_eq!((r[1].line, &r[1].fields), (3, &vec!["a".to_string(), "b".to_string()]));
}

#[test]
fn quote_errors_name_the_line_inside_a_multi_line_record() {
    let e = parse_records(p(), "a,b,c\n1,\"two\nlines\"z,3\n").unwrap_err().to_string();
    assert!(e.contains("line 3") && e.contains("field 2") && e.contains("'z'"), "{e}");
    let e = parse_records(p(), "a,b\n1,2\n\n3,\"open\n4,5\n6,7").unwrap_err().to_string();
    assert!(e.contains("line 4") && e.contains("field 2") && e.contains("never closed"), "{e}");
    // A quote inside an unquoted field is data, as it always was.
    let r = parse_records(p(), "a,b\n5 \"inch\",2\n").unwrap();
    assert_eq!(r[1].fields, vec!["5 \"inch\"", "2"]);
}

proptest::proptest! {
    /// Any table written in RFC 4180 (fields quoted when they must be, or always), with any
    /// line ending and blank lines between records, reads back field for field (a line break
    /// inside a field as `\n`), each record on the line it starts.
    #[test]
    fn written_tables_read_back_with_their_lines(
        rows in proptest::collection::vec(
            proptest::collection::vec("[a-z0-9 ,\"\r\n.-]{0,6}", 1..4), 1..6),
        ending in 0usize..3,
        always in proptest::bool::ANY,
        blanks in proptest::collection::vec(0usize..3, 6),
        bom in proptest::bool::ANY,
    ) {
        let eol = ["\n", "\r\n", "\r"][ending];
        let mut text = String::from(if bom { "\u{feff}" } else { "" });
        // A first row quoted from its first byte must still be read right after the mark.
        let mut line = 1;
        let mut expect = Vec::new();
        for (k, row) in rows.iter().enumerate() {
            // A row of one empty field is a blank line, which readers skip.
            let row: Vec<String> = if row.len() == 1 && row[0].trim().is_empty() {
                vec!["x".into()]
            } else {
                row.clone()
            };
            for _ in 0..blanks[k] {
                text.push_str(eol);
                line += 1;
            }
            // Line breaks inside a field read as `\n`, whatever the file's line ending.
            expect.push((line, row.iter().map(|f| f.replace("\r\n", "\n").replace('\r', "\n")).collect::<Vec<_>>()));
            let cells: Vec<String> = row
                .iter()
                .map(|f| {
                    if always || f.contains(['"', ',', '\r', '\n']) || f.trim() != f {
                        format!("\"{}\"", f.replace('"', "\"\""))
                    } else {
                        f.clone()
                    }
                })
                .collect();
            let cell_text = cells.join(",");
            line += cell_text.replace("\r\n", "\n").replace('\r', "\n").matches('\n').count() + 1;
            text.push_str(&cell_text);
            text.push_str(eol);
        }
        let got = parse_records(p(), &text).unwrap();
        let got: Vec<(usize, Vec<String>)> = got.into_iter().map(|r| (r.line, r.fields)).collect();
        proptest::prop_assert_eq!(got, expect);
    }
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
    let e = parse_csv(p(), "a,b\n1,2\n", &opts(true, Some("target"), Task::Classification)).unwrap_err().to_string();
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
