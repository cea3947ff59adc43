//! The key catalogue: every section and key a recipe may contain, with the kind of value
//! each expects.
//!
//! It drives the structural checks (unknown sections and keys, listing the valid ones),
//! `--set` coercion (string keys take the raw text), error wording (the expected type and
//! an example) and the order of keys in [`crate::to_toml_string`]. A unit test keeps it in
//! step with the serde schema in [`crate::schema`].

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
    /// An array of `{ step, phase }` tables.
    FaultList,
    /// An array of `{ step, samples }` tables.
    CapacityList,
    /// An array of step numbers.
    StepList,
    /// One name of a closed vocabulary (a serde enum), as a string.
    Choice(Vocabulary),
}

/// The closed vocabularies a key may name; their names come from the enums' serde derive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vocabulary {
    Backend,
    DataKind,
    Task,
    Optimizer,
    Schedule,
}

impl Vocabulary {
    /// The names a recipe may write, and what they choose, in words.
    pub(crate) fn names(self) -> (&'static [&'static str], &'static str) {
        use crate::choice::*;
        fn of<C: Choice>() -> (&'static [&'static str], &'static str) {
            (C::names(), C::WHAT)
        }
        match self {
            Vocabulary::Backend => of::<Backend>(),
            Vocabulary::DataKind => of::<DataKind>(),
            Vocabulary::Task => of::<Task>(),
            Vocabulary::Optimizer => of::<OptimizerKind>(),
            Vocabulary::Schedule => of::<ScheduleKind>(),
        }
    }
}

impl Kind {
    /// What a value of this kind looks like, in words.
    pub(crate) fn expected(self) -> &'static str {
        match self {
            Kind::Str | Kind::Choice(_) => "a string in double quotes",
            Kind::UInt => "a non-negative integer",
            Kind::Float => "a number",
            Kind::Bool => "true or false",
            Kind::FloatPair => "an array of two numbers",
            Kind::Initial => "\"auto\" or a positive integer",
            Kind::Column => "a column name in double quotes or a 0-based column index",
            Kind::FaultList => {
                "an array of inline tables with `step` (integer >= 1) and `phase` \
                 (\"forward\", \"backward\", \"optimizer\", \"eval\" or \"checkpoint\")"
            }
            Kind::CapacityList => "an array of inline tables with `step` (integer >= 1) and `samples` (integer >= 1)",
            Kind::StepList => "an array of step numbers (integers >= 1)",
        }
    }

    /// An example value, used in fixes when the key has no default to show.
    pub(crate) fn example(self) -> &'static str {
        match self {
            Kind::Str | Kind::Choice(_) => "\"text\"",
            Kind::UInt => "10",
            Kind::Float => "0.5",
            Kind::Bool => "true",
            Kind::FloatPair => "[0.9, 0.999]",
            Kind::Initial => "\"auto\"",
            Kind::Column => "\"label\"",
            Kind::FaultList => "[{ step = 3, phase = \"forward\" }]",
            Kind::CapacityList => "[{ step = 10, samples = 16 }]",
            Kind::StepList => "[10, 20]",
        }
    }

    /// Whether a `--set` value for this key is taken as raw text when it is not a quoted
    /// TOML string.
    pub(crate) fn is_textual(self) -> bool {
        matches!(self, Kind::Str | Kind::Column | Kind::Choice(_))
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
    /// Its fixed keys.
    pub(crate) keys: &'static [KeySpec],
    /// Whether other keys are allowed too (`[model]`: the model's own keys).
    pub(crate) free_form: bool,
}

impl SectionSpec {
    /// The spec of `key`, if the section has it.
    pub(crate) fn key(&self, key: &str) -> Option<&'static KeySpec> {
        self.keys.iter().find(|k| k.name == key)
    }

    /// The valid keys, comma-separated.
    pub(crate) fn key_list(&self) -> String {
        let names: Vec<&str> = self.keys.iter().map(|k| k.name).collect();
        names.join(", ")
    }
}

const fn k(name: &'static str, kind: Kind) -> KeySpec {
    KeySpec { name, kind, unset: "" }
}

const fn opt(name: &'static str, kind: Kind, unset: &'static str) -> KeySpec {
    KeySpec { name, kind, unset }
}

/// Every section, in the order [`crate::to_toml_string`] writes them.
pub(crate) const SECTIONS: &[SectionSpec] = &[
    SectionSpec {
        name: "run",
        free_form: false,
        keys: &[
            k("name", Kind::Str),
            k("seed", Kind::UInt),
            k("output_dir", Kind::Str),
            k("backend", Kind::Choice(Vocabulary::Backend)),
            k("device", Kind::UInt),
            opt("gpu_memory_limit", Kind::Str, "the whole device"),
            k("log_every", Kind::UInt),
        ],
    },
    SectionSpec { name: "model", free_form: true, keys: &[k("kind", Kind::Str)] },
    SectionSpec {
        name: "data",
        free_form: false,
        keys: &[
            k("kind", Kind::Choice(Vocabulary::DataKind)),
            opt("path", Kind::Str, "no data file"),
            k("valid_fraction", Kind::Float),
            k("header", Kind::Bool),
            opt("label_column", Kind::Column, "the last column"),
            k("task", Kind::Choice(Vocabulary::Task)),
            k("standardize", Kind::Bool),
            k("samples", Kind::UInt),
            k("features", Kind::UInt),
            k("classes", Kind::UInt),
            k("noise", Kind::Float),
        ],
    },
    SectionSpec {
        name: "optimizer",
        free_form: false,
        keys: &[
            k("kind", Kind::Choice(Vocabulary::Optimizer)),
            k("lr", Kind::Float),
            k("weight_decay", Kind::Float),
            k("betas", Kind::FloatPair),
            k("eps", Kind::Float),
            k("momentum", Kind::Float),
            opt("grad_clip_norm", Kind::Float, "no gradient clipping"),
        ],
    },
    SectionSpec {
        name: "lr_schedule",
        free_form: false,
        keys: &[
            k("kind", Kind::Choice(Vocabulary::Schedule)),
            k("warmup_steps", Kind::UInt),
            k("final_lr_fraction", Kind::Float),
        ],
    },
    SectionSpec {
        name: "training",
        free_form: false,
        keys: &[
            opt("steps", Kind::UInt, "train for `epochs` instead"),
            opt("epochs", Kind::UInt, "train for `steps` instead"),
            k("effective_batch", Kind::UInt),
            k("eval_every", Kind::UInt),
            opt("eval_batch", Kind::UInt, "the training micro-batch limit"),
            k("max_nonfinite_steps", Kind::UInt),
        ],
    },
    SectionSpec {
        name: "micro_batch",
        free_form: false,
        keys: &[
            k("initial", Kind::Initial),
            k("min", Kind::UInt),
            opt("max", Kind::UInt, "the effective batch"),
            k("grow_after", Kind::UInt),
            k("max_retries_per_step", Kind::UInt),
        ],
    },
    SectionSpec {
        name: "checkpoint",
        free_form: false,
        keys: &[k("every", Kind::UInt), k("keep", Kind::UInt), k("on_oom", Kind::Bool)],
    },
    SectionSpec {
        name: "supervisor",
        free_form: false,
        keys: &[k("enabled", Kind::Bool), k("max_restarts", Kind::UInt)],
    },
    SectionSpec {
        name: "faults",
        free_form: false,
        keys: &[
            opt("simulate_memory_samples", Kind::UInt, "no simulated capacity"),
            k("simulate_memory_changes", Kind::CapacityList),
            k("oom_at", Kind::FaultList),
            k("panic_at", Kind::FaultList),
            k("die_at", Kind::FaultList),
            k("abort_at", Kind::FaultList),
            k("nan_at", Kind::StepList),
            k("disk_full_at", Kind::StepList),
            opt("address_space_headroom", Kind::Str, "no limit"),
        ],
    },
];

/// The spec of section `name`.
pub(crate) fn section(name: &str) -> Option<&'static SectionSpec> {
    SECTIONS.iter().find(|s| s.name == name)
}

/// The spec of `section.key` (a fixed key only).
pub(crate) fn key_spec(dotted: &str) -> Option<&'static KeySpec> {
    let (sec, key) = dotted.split_once('.')?;
    section(sec)?.key(key)
}

/// The section names, as `[run], [model], ...`.
pub(crate) fn section_list() -> String {
    let names: Vec<String> = SECTIONS.iter().map(|s| format!("[{}]", s.name)).collect();
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
        r.data.label_column = Some("y".into());
        r.optimizer.grad_clip_norm = Some(1.0);
        r.training.steps = Some(1);
        r.training.epochs = Some(1);
        r.training.eval_batch = Some(1);
        r.micro_batch.max = Some(1);
        r.faults.simulate_memory_samples = Some(1);
        r.faults.address_space_headroom = Some("1MiB".into());
        let v = toml::Value::try_from(&r).unwrap();
        let top = v.as_table().unwrap();
        let names: Vec<&str> = top.keys().map(String::as_str).collect();
        let mut expected: Vec<&str> = SECTIONS.iter().map(|s| s.name).collect();
        expected.sort_unstable();
        let mut names_sorted = names.clone();
        names_sorted.sort_unstable();
        assert_eq!(names_sorted, expected);
        for spec in SECTIONS {
            let t = top[spec.name].as_table().unwrap();
            let mut got: Vec<&str> = t.keys().map(String::as_str).collect();
            got.sort_unstable();
            let mut want: Vec<&str> = spec.keys.iter().map(|k| k.name).collect();
            want.sort_unstable();
            assert_eq!(got, want, "section {}", spec.name);
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("trainng", SECTIONS.iter().map(|s| s.name)), Some("training"));
        assert_eq!(did_you_mean("step", ["steps", "epochs"]), Some("steps"));
        assert_eq!(did_you_mean("zzzzzz", ["steps", "epochs"]), None);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("cdua", "cuda"), 1);
        assert_eq!(did_you_mean("cdua", ["cpu", "ndarray", "flex", "cuda"]), Some("cuda"));
    }
}
