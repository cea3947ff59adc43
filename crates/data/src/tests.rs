//! Tests of [`load`]: splits, standardisation, errors and the shipped data files.

use std::path::PathBuf;

use oomph_recipe::{DataSection, Task};

use super::*;

fn shipped(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data").join(name).to_string_lossy().into_owned()
}

fn csv_section(path: &Path) -> DataSection {
    DataSection { kind: DataKind::Csv, path: Some(path.to_string_lossy().into_owned()), ..DataSection::default() }
}

fn tabular(s: &Source) -> &Tabular {
    match s {
        Source::Tabular(t) => t,
        Source::Text { .. } => panic!("expected tabular"),
    }
}

fn text(s: &Source) -> (&Text, usize) {
    match s {
        Source::Text { text, seq_len } => (text, *seq_len),
        Source::Tabular(_) => panic!("expected text"),
    }
}

/// A CSV whose feature `i` is the row number, a constant feature, and a label.
fn write_index_csv(dir: &Path, rows: usize) -> PathBuf {
    let mut s = String::from("idx,const,label\n");
    for i in 0..rows {
        s.push_str(&format!("{i},5,{}\n", if i % 3 == 0 { "a" } else { "b" }));
    }
    let path = dir.join("index.csv");
    std::fs::write(&path, s).unwrap();
    path
}

#[test]
fn standardisation_uses_train_statistics_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_index_csv(dir.path(), 40);
    let section = DataSection { valid_fraction: 0.25, ..csv_section(&path) };
    let splits = load(&section, 7, None).unwrap();
    let st = splits.standardization.clone().unwrap();
    let (train, valid) = (tabular(&splits.train), tabular(&splits.valid));
    assert_eq!((train.len(), valid.len()), (30, 10));

    // Recover the raw row numbers of each split.
    let raw = |t: &Tabular| -> Vec<f64> {
        t.features.chunks(2).map(|r| (f64::from(r[0]) * f64::from(st.std[0]) + f64::from(st.mean[0])).round()).collect()
    };
    let (train_rows, valid_rows) = (raw(train), raw(valid));
    let n = train_rows.len() as f64;
    let mean = train_rows.iter().sum::<f64>() / n;
    let sd = (train_rows.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert!((f64::from(st.mean[0]) - mean).abs() < 1e-4, "{} vs {mean}", st.mean[0]);
    assert!((f64::from(st.std[0]) - sd).abs() < 1e-4);
    assert!((mean - 19.5).abs() > 1e-6, "the train mean differs from the full-data mean");
    // The splits partition the rows.
    let mut all: Vec<f64> = train_rows.iter().chain(&valid_rows).copied().collect();
    all.sort_by(f64::total_cmp);
    assert_eq!(all, (0..40).map(f64::from).collect::<Vec<_>>());
    // Train is standardised exactly; valid only approximately; the constant feature is 0.
    let train_mean: f32 = train.features.chunks(2).map(|r| r[0]).sum::<f32>() / 30.0;
    assert!(train_mean.abs() < 1e-5);
    assert!(train.features.chunks(2).chain(valid.features.chunks(2)).all(|r| r[1] == 0.0));
    assert_eq!(st.std[1], 1.0);
    assert_eq!(splits.info.n_classes, Some(2));
    assert_eq!(splits.info.class_names, Some(vec!["a".to_string(), "b".to_string()]));

    let raw_section = DataSection { standardize: false, ..section };
    let plain = load(&raw_section, 7, None).unwrap();
    assert!(plain.standardization.is_none());
    assert!(tabular(&plain.train).features.chunks(2).all(|r| r[1] == 5.0));
}

#[test]
fn tabular_split_is_deterministic_in_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_index_csv(dir.path(), 50);
    let section = DataSection { standardize: false, ..csv_section(&path) };
    let a = load(&section, 1, None).unwrap();
    assert_eq!(a, load(&section, 1, None).unwrap());
    let b = load(&section, 2, None).unwrap();
    assert_ne!(tabular(&a.valid).features, tabular(&b.valid).features);
    assert_eq!((a.info.train_len, a.info.valid_len), (45, 5));
    // Each split keeps file order.
    let rows: Vec<f32> = tabular(&a.train).features.chunks(2).map(|r| r[0]).collect();
    assert!(rows.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn zero_valid_fraction_gives_an_empty_valid_split() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_index_csv(dir.path(), 5);
    let section = DataSection { valid_fraction: 0.0, ..csv_section(&path) };
    let s = load(&section, 0, None).unwrap();
    assert_eq!((s.train.len(), s.valid.len()), (5, 0));
}

#[test]
fn too_small_splits_name_the_numbers_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_index_csv(dir.path(), 3);
    let section = DataSection { valid_fraction: 0.1, ..csv_section(&path) };
    let e = load(&section, 0, None).unwrap_err().to_string();
    assert!(e.contains("index.csv"), "{e}");
    assert!(e.contains("splitting 3 rows with data.valid_fraction = 0.1"), "{e}");
    assert!(e.contains("leaves 3 for training and 0 for validation"), "{e}");
    assert!(e.contains("Fix:"), "{e}");

    let txt = dir.path().join("t.txt");
    std::fs::write(&txt, "abcdefghijklmnopqrstuvwxyz").unwrap();
    let section = DataSection {
        kind: DataKind::Text,
        path: Some(txt.to_string_lossy().into_owned()),
        valid_fraction: 0.2,
        ..DataSection::default()
    };
    let e = load(&section, 0, Some(8)).unwrap_err().to_string();
    assert!(e.contains("t.txt") && e.contains("21 for training and 5 for validation"), "{e}");
    assert!(e.contains("seq_len + 1 = 9 tokens"), "{e}");
    assert!(load(&section, 0, Some(4)).is_ok());
}

#[test]
fn text_split_is_contiguous_with_a_shared_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.txt");
    // 'z' only occurs in the validation tail.
    let body = "abcabcabcabcabcabcabcabcabcabcabcabczz";
    std::fs::write(&path, body).unwrap();
    let section = DataSection {
        kind: DataKind::Text,
        path: Some(path.to_string_lossy().into_owned()),
        valid_fraction: 0.25,
        ..DataSection::default()
    };
    let s = load(&section, 0, Some(3)).unwrap();
    let ((train, sl), (valid, _)) = (text(&s.train), text(&s.valid));
    assert_eq!(sl, 3);
    assert_eq!(train.vocab, vec!['a', 'b', 'c', 'z']);
    assert_eq!(valid.vocab, train.vocab);
    assert_eq!((train.len(), valid.len()), (28, 10));
    let joined = format!("{}{}", train.decode(&train.tokens), valid.decode(&valid.tokens));
    assert_eq!(joined, body);
    assert_eq!(s.info.vocab_size, Some(4));
    assert_eq!((s.info.train_len, s.info.valid_len), (25, 7));
    assert_eq!(s.train.len(), 25);
    // The last training window (24, of 3 + 1 tokens) ends on the last training token: no
    // leakage into valid.
    assert_eq!(s.train.len() - 1 + sl + 1, train.tokens.len());
}

#[test]
fn text_needs_a_sequence_length() {
    let section = DataSection {
        kind: DataKind::Text,
        path: Some(shipped("shakespeare_tragedies.txt")),
        ..DataSection::default()
    };
    let e = load(&section, 0, None).unwrap_err().to_string();
    assert!(e.contains("shakespeare_tragedies.txt") && e.contains("sequence length"), "{e}");
    let e = load(&section, 0, Some(0)).unwrap_err().to_string();
    assert!(e.contains("is 0"), "{e}");
}

#[test]
fn section_errors_name_the_keys() {
    let e = load(&DataSection { kind: DataKind::Csv, ..DataSection::default() }, 0, None).unwrap_err().to_string();
    assert!(e.contains("data.kind = \"csv\"") && e.contains("`data.path` is not set"), "{e}");
    let e = load(&DataSection { valid_fraction: 1.0, ..DataSection::default() }, 0, None).unwrap_err().to_string();
    assert!(e.contains("data.valid_fraction = 1"), "{e}");
    let section = csv_section(Path::new("/nonexistent/dir/x.csv"));
    let e = load(&section, 0, None).unwrap_err().to_string();
    assert!(e.contains("/nonexistent/dir/x.csv") && e.contains("Fix:"), "{e}");
}

#[test]
fn synthetic_defaults_load_and_are_seeded() {
    let section = DataSection::default();
    let a = load(&section, 42, None).unwrap();
    assert_eq!(a, load(&section, 42, None).unwrap());
    assert_eq!(a.info.kind, "synthetic");
    assert_eq!(a.info.n_features, Some(16));
    assert_eq!(a.info.n_classes, Some(4));
    assert_eq!(a.train.len() + a.valid.len(), 2048);
    let Source::Tabular(t) = &a.train else { panic!("tabular") };
    assert_eq!((t.features.len(), t.n_features), (t.len() * 16, 16));
    assert!(matches!(t.targets, Targets::Classes { .. }));

    let reg = DataSection { task: Task::Regression, ..DataSection::default() };
    let r = load(&reg, 42, None).unwrap();
    assert_eq!(r.info.task, "regression");
    assert_eq!(r.info.n_classes, None);
    assert!(matches!(&r.valid, Source::Tabular(t) if matches!(t.targets, Targets::Values(_))));
}

#[test]
fn shipped_digits_load() {
    let section = DataSection { path: Some(shipped("digits.csv")), ..csv_section(Path::new("")) };
    let s = load(&section, 42, None).unwrap();
    assert_eq!(s.info.n_features, Some(64));
    assert_eq!(s.info.n_classes, Some(10));
    assert_eq!(s.info.train_len + s.info.valid_len, 1797);
    assert_eq!(s.info.valid_len, 180);
    let names: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    assert_eq!(s.info.class_names, Some(names));
    let t = tabular(&s.train);
    assert_eq!(t.feature_names[0], "p0");
    assert_eq!(t.feature_names[63], "p63");

    let raw = read_csv(
        Path::new(&shipped("digits.csv")),
        &CsvOptions { header: true, label_column: Some("label".into()), task: Task::Classification },
    )
    .unwrap();
    assert_eq!(raw.len(), 1797);
    assert_eq!(raw.n_features, 64);
    assert!(raw.features.iter().all(|&v| (0.0..=16.0).contains(&v)));
    let Targets::Classes { labels, .. } = &raw.targets else { panic!("classes") };
    for c in 0..10 {
        let count = labels.iter().filter(|&&l| l == c).count();
        assert!((170..=190).contains(&count), "class {c}: {count}");
    }
}

#[test]
fn shipped_text_loads() {
    let section = DataSection {
        kind: DataKind::Text,
        path: Some(shipped("shakespeare_tragedies.txt")),
        ..DataSection::default()
    };
    let s = load(&section, 0, Some(64)).unwrap();
    let ((train, _), (valid, _)) = (text(&s.train), text(&s.valid));
    let total = train.len() + valid.len();
    assert!((100_000..1_000_000).contains(&total), "{total} characters");
    assert_eq!(s.info.vocab_size, Some(73));
    assert_eq!(valid.len(), (total as f64 * 0.1).round() as usize);
    assert!(train.decode(&train.tokens[..40]).starts_with("HAMLET, PRINCE OF DENMARK"));
    assert!(matches!(s.valid, Source::Text { seq_len: 64, .. }));
}

fn text_section(path: &Path) -> DataSection {
    DataSection { kind: DataKind::Text, path: Some(path.to_string_lossy().into_owned()), ..DataSection::default() }
}

#[test]
fn csv_identity_is_stable_across_loads_and_follows_the_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_index_csv(dir.path(), 40);
    let section = csv_section(&path);
    let first = load(&section, 7, None).unwrap().identity;
    assert_eq!(first, load(&section, 7, None).unwrap().identity);
    assert_eq!(first.content_sha256, file_sha256(&path).unwrap());
    assert_eq!(
        (first.kind.as_str(), first.task.as_str(), first.n_features, first.n_classes),
        ("csv", "classification", Some(2), Some(2))
    );
    assert_eq!(first.class_names, Some(vec!["a".to_string(), "b".to_string()]));
    assert_eq!((first.vocabulary.as_deref(), first.seq_len, first.train_len, first.valid_len), (None, None, 36, 4));

    // One changed feature value: same shape, other bytes.
    let edited = std::fs::read_to_string(&path).unwrap().replacen("\n3,5,", "\n3,6,", 1);
    std::fs::write(&path, edited).unwrap();
    let now = load(&section, 7, None).unwrap().identity;
    assert_ne!(now.content_sha256, first.content_sha256);
    let lines = first.differences(&now);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("content: sha256 ") && lines[0].ends_with("(the file's bytes changed)"), "{lines:?}");
}

#[test]
fn text_files_of_equal_length_with_other_characters_differ_in_vocabulary_and_content() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
    std::fs::write(&a, "abc".repeat(20)).unwrap();
    std::fs::write(&b, "abd".repeat(20)).unwrap();
    let (ia, ib) =
        (load(&text_section(&a), 0, Some(4)).unwrap().identity, load(&text_section(&b), 0, Some(4)).unwrap().identity);
    assert_eq!(ia.vocabulary.as_deref(), Some("abc"));
    assert_eq!(ib.vocabulary.as_deref(), Some("abd"));
    assert_eq!((ia.seq_len, ia.train_len, ia.valid_len), (Some(4), ib.train_len, ib.valid_len));
    assert_ne!(ia.content_sha256, ib.content_sha256);
    assert_eq!(ia.content_sha256, file_sha256(&a).unwrap());
    let lines = ia.differences(&ib);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(
        lines[0],
        "vocabulary: 3 characters -> 3 characters (the character-to-index mapping differs from index 2: 'c' -> 'd')"
    );
    assert!(lines[1].starts_with("content: sha256 "), "{lines:?}");
    assert_eq!(ia, load(&text_section(&a), 0, Some(4)).unwrap().identity);
}

#[test]
fn synthetic_identity_identifies_the_generated_samples() {
    let section = DataSection::default();
    let a = load(&section, 42, None).unwrap();
    assert_eq!(a.identity, load(&section, 42, None).unwrap().identity);
    let (Source::Tabular(train), Source::Tabular(valid)) = (&a.train, &a.valid) else { panic!("tabular") };
    assert_ne!(a.identity.content_sha256, samples_sha256(train, valid), "hashed before standardisation");
    let raw = load(&DataSection { standardize: false, ..section.clone() }, 42, None).unwrap();
    let (Source::Tabular(train), Source::Tabular(valid)) = (&raw.train, &raw.valid) else { panic!("tabular") };
    assert_eq!(a.identity.content_sha256, samples_sha256(train, valid));
    assert_eq!(a.identity.class_names, Some(vec!["0".into(), "1".into(), "2".into(), "3".into()]));

    let other = load(&section, 43, None).unwrap().identity;
    assert_eq!(
        a.identity.differences(&other),
        vec![format!(
            "content: sha256 {}… -> {}… (the generated samples changed)",
            &a.identity.content_sha256[..8],
            &other.content_sha256[..8]
        )]
    );
}

#[test]
fn shipped_text_identity_records_the_vocabulary_in_index_order() {
    let s = load(&text_section(Path::new(&shipped("shakespeare_tragedies.txt"))), 0, Some(64)).unwrap();
    let (train, _) = text(&s.train);
    let vocabulary = s.identity.vocabulary.clone().unwrap();
    assert_eq!(vocabulary.chars().collect::<Vec<_>>(), train.vocab);
    assert_eq!(vocabulary.chars().count(), 73);
    assert_eq!(s.identity.content_sha256, file_sha256(Path::new(&shipped("shakespeare_tragedies.txt"))).unwrap());
}
