//! The key catalogue: every section and key a recipe may contain, with the kind of value
//! each expects.
//!
//! It is read from the schema's serde derive ([`trace`]): the sections, their keys in
//! declaration order, and each key's kind of value (an enum's names included). What the
//! types cannot tell is noted here by key: the kind of the hand-written values, which lists
//! of integers hold device indices rather than steps, and what leaving an optional key unset
//! means. The catalogue drives the structural checks (unknown sections and keys, listing the
//! valid ones), `--set` coercion (string keys take the raw text), error wording (the
//! expected type and an example) and the order of keys in [`crate::to_toml_string`].

mod trace;

use std::sync::OnceLock;
use trace::Shape;

/// The kind of value a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A string.
    Str,
    /// A non-negative integer.
    UInt,
    /// A number (integer or float).
    Float,
    /// `true` or `false`.
    Bool,
    /// Two numbers.
    FloatPair,
    /// `"auto"` or a positive integer.
    Initial,
    /// A csv column: a name or an index.
    Column,
    /// An array of `{ step, phase }` tables (optionally with `rank`).
    FaultList,
    /// An array of `{ step, samples }` tables (optionally with `rank`).
    CapacityList,
    /// An array of step numbers.
    StepList,
    /// An array of device indices.
    IndexList,
    /// A non-negative integer for every rank, or an array of them, one per rank.
    PerRank,
    /// One name of a closed vocabulary (a serde enum), as a string.
    Choice {
        /// The names a recipe may write.
        names: &'static [&'static str],
        /// What the key chooses, in words (e.g. "the backend").
        what: &'static str,
    },
}

impl Kind {
    /// What a value of this kind looks like, in words.
    pub(crate) fn expected(self) -> &'static str {
        match self {
            Kind::Str | Kind::Choice { .. } => "a string in double quotes",
            Kind::UInt => "a non-negative integer",
            Kind::Float => "a number",
            Kind::Bool => "true or false",
            Kind::FloatPair => "an array of two numbers",
            Kind::Initial => "\"auto\" or a positive integer",
            Kind::Column => "a column name in double quotes or a 0-based column index",
            Kind::FaultList => {
                "an array of inline tables with `step` (integer >= 1), `phase` \
                 (\"forward\", \"backward\", \"optimizer\", \"eval\" or \"checkpoint\") and optionally \
                 `rank` (integer)"
            }
            Kind::CapacityList => {
                "an array of inline tables with `step` (integer >= 1), `samples` (integer >= 1) and optionally \
                 `rank` (integer)"
            }
            Kind::StepList => "an array of step numbers (integers >= 1)",
            Kind::IndexList => "an array of device indices (non-negative integers)",
            Kind::PerRank => "a non-negative integer, or an array of them with one per rank",
        }
    }

    /// An example value, used in fixes when the key has no default to show.
    pub(crate) fn example(self) -> &'static str {
        match self {
            Kind::Str | Kind::Choice { .. } => "\"text\"",
            Kind::UInt => "10",
            Kind::Float => "0.5",
            Kind::Bool => "true",
            Kind::FloatPair => "[0.9, 0.999]",
            Kind::Initial => "\"auto\"",
            Kind::Column => "\"label\"",
            Kind::FaultList => "[{ step = 3, phase = \"forward\" }]",
            Kind::CapacityList => "[{ step = 10, samples = 16 }]",
            Kind::StepList => "[10, 20]",
            Kind::IndexList => "[0, 1]",
            Kind::PerRank => "12",
        }
    }

    /// Whether a `--set` value for this key is taken as raw text when it is not a quoted
    /// TOML string.
    pub(crate) fn is_textual(self) -> bool {
        matches!(self, Kind::Str | Kind::Column | Kind::Choice { .. })
    }
}

/// One key of a section.
#[derive(Debug)]
pub(crate) struct KeySpec {
    /// The key's name.
    pub(crate) name: &'static str,
    /// What it holds.
    pub(crate) kind: Kind,
    /// For optional keys: what leaving it unset means. Empty for keys with a default value.
    pub(crate) unset: &'static str,
}

/// One section.
#[derive(Debug)]
pub(crate) struct SectionSpec {
    /// The section's name.
    pub(crate) name: &'static str,
    /// Its fixed keys, in declaration order.
    pub(crate) keys: Vec<KeySpec>,
    /// Whether other keys are allowed too (`[model]`: the model's own keys).
    pub(crate) free_form: bool,
}

impl SectionSpec {
    /// The spec of `key`, if the section has it.
    pub(crate) fn key(&self, key: &str) -> Option<&KeySpec> {
        self.keys.iter().find(|k| k.name == key)
    }

    /// The valid keys, comma-separated.
    pub(crate) fn key_list(&self) -> String {
        let names: Vec<&str> = self.keys.iter().map(|k| k.name).collect();
        names.join(", ")
    }
}

/// The kinds of the values whose `Deserialize` is written by hand (the trace sees "any").
const HAND_WRITTEN: &[(&str, Kind)] = &[
    ("data.label_column", Kind::Column),
    ("micro_batch.initial", Kind::Initial),
    ("faults.simulate_memory_samples", Kind::PerRank),
];

/// The lists of integers that hold device indices (every other one holds step numbers).
const INDEX_LISTS: &[&str] = &["distributed.devices"];

/// What leaving each optional key unset means (written as a comment in the resolved recipe).
const UNSET: &[(&str, &str)] = &[
    ("run.gpu_memory_limit", "the whole device"),
    ("data.name", "no program data"),
    ("data.path", "no data file"),
    ("data.label_column", "the last column"),
    ("optimizer.grad_clip_norm", "no gradient clipping"),
    ("training.steps", "train for `epochs` instead"),
    ("training.epochs", "train for `steps` instead"),
    ("training.eval_batch", "the training micro-batch limit"),
    ("micro_batch.max", "the effective batch"),
    ("faults.simulate_memory_samples", "no simulated capacity"),
    ("faults.address_space_headroom", "no limit"),
];

/// The fixed keys of a free-form section (a flattened table, whose own keys belong to a
/// component): `[model]` has `kind`, the rest is the model's.
const FREE_FORM_KEYS: &[(&str, &str)] = &[("model", "kind")];

/// Every section, in the order [`crate::to_toml_string`] writes them.
pub(crate) fn sections() -> &'static [SectionSpec] {
    static SECTIONS: OnceLock<Vec<SectionSpec>> = OnceLock::new();
    SECTIONS.get_or_init(|| catalogue(trace::shape::<crate::schema::Recipe>()))
}

fn catalogue(recipe: Shape) -> Vec<SectionSpec> {
    let Shape::Struct(sections) = recipe else { panic!("the recipe is not a struct: {recipe:?}") };
    sections
        .into_iter()
        .map(|(name, shape)| match shape {
            Shape::Struct(fields) => SectionSpec {
                name,
                free_form: false,
                keys: fields.into_iter().map(|(key, shape)| key_spec_of(name, key, shape)).collect(),
            },
            Shape::Map => {
                let (_, key) = FREE_FORM_KEYS
                    .iter()
                    .find(|(s, _)| *s == name)
                    .unwrap_or_else(|| panic!("free-form section [{name}] has no entry in keys::FREE_FORM_KEYS"));
                SectionSpec { name, free_form: true, keys: vec![KeySpec { name: key, kind: Kind::Str, unset: "" }] }
            }
            other => panic!("section [{name}] is not a table: {other:?}"),
        })
        .collect()
}

fn key_spec_of(section: &str, name: &'static str, shape: Shape) -> KeySpec {
    let dotted = format!("{section}.{name}");
    // A hand-written optional value (`data.label_column`) is traced as "any", not an option.
    let note = UNSET.iter().find(|(k, _)| *k == dotted).map(|(_, n)| *n);
    let (shape, unset) = match shape {
        Shape::Option(inner) => {
            (*inner, note.unwrap_or_else(|| panic!("optional key {dotted} has no entry in keys::UNSET")))
        }
        other => (other, note.unwrap_or("")),
    };
    let kind = match shape {
        Shape::Str => Kind::Str,
        Shape::UInt => Kind::UInt,
        Shape::Float => Kind::Float,
        Shape::Bool => Kind::Bool,
        Shape::Choice(enum_name, names) => Kind::Choice {
            names,
            what: crate::choice::what(enum_name).unwrap_or_else(|| panic!("{enum_name} ({dotted}) is not a Choice")),
        },
        Shape::Tuple(items) if items == [Shape::Float, Shape::Float] => Kind::FloatPair,
        Shape::List(item) => match *item {
            Shape::UInt if INDEX_LISTS.contains(&dotted.as_str()) => Kind::IndexList,
            Shape::UInt => Kind::StepList,
            Shape::Struct(fields) if fields.iter().any(|(_, s)| matches!(s, Shape::Choice(..))) => Kind::FaultList,
            Shape::Struct(fields) if fields.iter().all(|(_, s)| is_uint(s)) => Kind::CapacityList,
            other => panic!("{dotted}: a list of {other:?} has no kind"),
        },
        Shape::Any => HAND_WRITTEN
            .iter()
            .find(|(k, _)| *k == dotted)
            .map(|(_, kind)| *kind)
            .unwrap_or_else(|| panic!("{dotted} is deserialized by hand and has no entry in keys::HAND_WRITTEN")),
        other => panic!("{dotted}: {other:?} has no kind"),
    };
    KeySpec { name, kind, unset }
}

/// An integer, or an optional one (an entry's `rank`).
fn is_uint(shape: &Shape) -> bool {
    match shape {
        Shape::UInt => true,
        Shape::Option(inner) => **inner == Shape::UInt,
        _ => false,
    }
}

/// The spec of section `name`.
pub(crate) fn section(name: &str) -> Option<&'static SectionSpec> {
    sections().iter().find(|s| s.name == name)
}

/// The spec of `section.key` (a fixed key only).
pub(crate) fn key_spec(dotted: &str) -> Option<&'static KeySpec> {
    let (sec, key) = dotted.split_once('.')?;
    section(sec)?.key(key)
}

/// The section names, as `[run], [model], ...`.
pub(crate) fn section_list() -> String {
    let names: Vec<String> = sections().iter().map(|s| format!("[{}]", s.name)).collect();
    names.join(", ")
}

/// The candidate closest to `word` when it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_lowercase();
    let limit = (word.chars().count() / 3).max(1) + 1;
    candidates
        .into_iter()
        .map(|c| (edit_distance(&word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edit distance over chars (optimal string alignment: insertions, deletions,
/// substitutions and swaps of two adjacent chars each cost 1).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for (i, row) in d.chunks_mut(w).enumerate() {
        row[0] = i;
    }
    for (j, cell) in d.iter_mut().take(w).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * w + j] + 1).min(d[i * w + j - 1] + 1).min(d[(i - 1) * w + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * w + j - 2] + 1);
            }
            d[i * w + j] = best;
        }
    }
    d[a.len() * w + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::*;

    /// The catalogue names exactly the keys the schema serializes, section by section.
    #[test]
    fn catalogue_matches_schema() {
        let mut r = Recipe::default();
        r.run.gpu_memory_limit = Some("1GiB".into());
        r.data.path = Some("x".into());
        r.data.name = Some("x".into());
        r.data.label_column = Some("y".into());
        r.optimizer.grad_clip_norm = Some(1.0);
        r.training.steps = Some(1);
        r.training.epochs = Some(1);
        r.training.eval_batch = Some(1);
        r.micro_batch.max = Some(1);
        r.faults.simulate_memory_samples = Some(PerRank::All(1));
        r.faults.address_space_headroom = Some("1MiB".into());
        let v = toml::Value::try_from(&r).unwrap();
        let top = v.as_table().unwrap();
        let names: Vec<&str> = top.keys().map(String::as_str).collect();
        let mut expected: Vec<&str> = sections().iter().map(|s| s.name).collect();
        expected.sort_unstable();
        let mut names_sorted = names.clone();
        names_sorted.sort_unstable();
        assert_eq!(names_sorted, expected);
        for spec in sections() {
            let t = top[spec.name].as_table().unwrap();
            let mut got: Vec<&str> = t.keys().map(String::as_str).collect();
            got.sort_unstable();
            let mut want: Vec<&str> = spec.keys.iter().map(|k| k.name).collect();
            want.sort_unstable();
            assert_eq!(got, want, "section {}", spec.name);
        }
    }

    /// The kinds read from the serde derive, and the notes by key all name real keys.
    #[test]
    fn kinds_come_from_the_schema_types() {
        let kind = |k: &str| key_spec(k).unwrap_or_else(|| panic!("{k}")).kind;
        assert_eq!(
            kind("run.backend"),
            Kind::Choice {
                names: <crate::Backend as crate::Choice>::names(),
                what: <crate::Backend as crate::Choice>::WHAT
            }
        );
        assert_eq!(kind("run.seed"), Kind::UInt);
        assert_eq!(kind("run.name"), Kind::Str);
        assert_eq!(kind("optimizer.betas"), Kind::FloatPair);
        assert_eq!(kind("optimizer.grad_clip_norm"), Kind::Float);
        assert_eq!(kind("checkpoint.on_oom"), Kind::Bool);
        assert_eq!(kind("faults.oom_at"), Kind::FaultList);
        assert_eq!(kind("faults.simulate_memory_changes"), Kind::CapacityList);
        assert_eq!(kind("faults.nan_at"), Kind::StepList);
        assert_eq!(kind("data.label_column"), Kind::Column);
        assert_eq!(kind("micro_batch.initial"), Kind::Initial);
        assert_eq!(kind("faults.simulate_memory_samples"), Kind::PerRank);
        assert_eq!(kind("distributed.ranks"), Kind::UInt);
        assert_eq!(kind("distributed.devices"), Kind::IndexList);
        assert_eq!(kind("distributed.timeout_s"), Kind::Float);
        assert_eq!(kind("distributed.check_every"), Kind::UInt);
        let sections: Vec<&str> = sections().iter().map(|s| s.name).collect();
        assert_eq!(sections[sections.len() - 3..], ["supervisor", "distributed", "faults"]);
        assert_eq!(key_spec("training.eval_batch").unwrap().unset, "the training micro-batch limit");
        assert_eq!(key_spec("training.effective_batch").unwrap().unset, "");
        let run: Vec<&str> = section("run").unwrap().keys.iter().map(|k| k.name).collect();
        assert_eq!(run, ["name", "seed", "output_dir", "backend", "device", "gpu_memory_limit", "log_every"]);
        assert!(section("model").unwrap().free_form);
        for (k, note) in UNSET {
            assert_eq!(key_spec(k).map(|s| s.unset), Some(*note), "{k}'s unset note");
        }
        for (k, kind) in HAND_WRITTEN {
            assert_eq!(key_spec(k).map(|s| s.kind), Some(*kind), "{k}'s kind");
        }
        for k in INDEX_LISTS {
            assert_eq!(key_spec(k).map(|s| s.kind), Some(Kind::IndexList), "{k}'s kind");
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("trainng", sections().iter().map(|s| s.name)), Some("training"));
        assert_eq!(did_you_mean("step", ["steps", "epochs"]), Some("steps"));
        assert_eq!(did_you_mean("zzzzzz", ["steps", "epochs"]), None);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("cdua", "cuda"), 1);
        assert_eq!(did_you_mean("cdua", ["cpu", "ndarray", "flex", "cuda"]), Some("cuda"));
    }
}
