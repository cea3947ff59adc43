//! [`RecipeError`]: one paragraph naming the file, the `section.key`, the bad value, why
//! it is wrong and how to fix it; plus the conversions from TOML and serde errors.

use crate::keys;
use std::collections::BTreeSet;
use std::fmt;

/// A recipe that cannot be used, explained in one paragraph.
///
/// Displayed as `ORIGIN[:LINE]: MESSAGE Fix: FIX`, for example
/// "configs/x.toml: \`training.effective_batch\` = 0 is invalid: an optimizer step must
/// consume at least one sample. Fix: set training.effective_batch to a positive integer
/// such as 32."
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}{}: {message} Fix: {fix}", line_suffix(.line))]
pub struct RecipeError {
    /// Where the bad input came from: the recipe file's path, or `--set` for an override.
    pub origin: String,
    /// The 1-based line in `origin`, where known (TOML syntax errors).
    pub line: Option<usize>,
    /// The offending `section.key` (for example `training.effective_batch` or
    /// `faults.oom_at[0].phase`), where one key is to blame.
    pub key: Option<String>,
    /// What is wrong and why, naming the key and the bad value.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

fn line_suffix(line: &Option<usize>) -> String {
    match line {
        Some(n) => format!(":{n}"),
        None => String::new(),
    }
}

/// Ends `s` with exactly one full stop (or keeps its `?`/`!`).
fn sentence(s: impl Into<String>) -> String {
    let s = s.into();
    let t = s.trim_end().trim_end_matches('.');
    if t.ends_with('?') || t.ends_with('!') {
        t.to_owned()
    } else {
        format!("{t}.")
    }
}

impl RecipeError {
    /// An error with the given parts; `message` and `fix` get a final full stop.
    pub fn new(
        origin: impl Into<String>,
        key: Option<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self { origin: origin.into(), line: None, key, message: sentence(message), fix: sentence(fix) }
    }
}

/// Where a value came from: the file, or `--set` for keys an override set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ctx {
    /// The recipe file's path (or whatever the caller named it).
    pub(crate) file: String,
    /// The `section.key`s that `--set` overrides assigned.
    pub(crate) overridden: BTreeSet<String>,
}

/// The origin named in errors about overridden keys.
pub(crate) const SET_ORIGIN: &str = "--set";

impl Ctx {
    /// The origin of the value at `key` (`section.key`, possibly with a `[i]`/`.x` tail).
    pub(crate) fn origin(&self, key: &str) -> &str {
        let overridden = self.overridden.iter().any(|o| {
            key == o || key.strip_prefix(o.as_str()).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        });
        if overridden {
            SET_ORIGIN
        } else {
            &self.file
        }
    }

    /// "`key` = value is invalid: why. Fix: fix." from the right origin.
    pub(crate) fn invalid(
        &self,
        key: &str,
        value: impl fmt::Display,
        why: &str,
        fix: impl Into<String>,
    ) -> RecipeError {
        RecipeError::new(self.origin(key), Some(key.to_owned()), format!("`{key}` = {value} is invalid: {why}"), fix)
    }
}

/// A TOML value written the way it would appear in the file, shortened when long.
pub(crate) fn show(v: &toml::Value) -> String {
    let mut s = String::new();
    let text = match serde::Serialize::serialize(v, toml::ser::ValueSerializer::new(&mut s)) {
        Ok(_) => s,
        Err(_) => format!("{v:?}"),
    };
    shorten(&text)
}

/// `text` cut to a readable length, on a char boundary.
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 80;
    let one_line = text.replace('\n', " ");
    if one_line.chars().count() <= MAX {
        one_line
    } else {
        let cut: String = one_line.chars().take(MAX).collect();
        format!("{cut}...")
    }
}

/// A TOML syntax error in `text` as a [`RecipeError`] with the line.
pub(crate) fn syntax(err: &toml::de::Error, text: &str, origin: &str) -> RecipeError {
    let (line, col) = match err.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let before = &text.as_bytes()[..start];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = before.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            // Column in chars, counting only whole UTF-8 characters.
            let col = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
            (Some(line), Some(col))
        }
        None => (None, None),
    };
    let what = err
        .message()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let at = match (line, col) {
        (Some(l), Some(c)) => format!(" at line {l}, column {c}"),
        _ => String::new(),
    };
    let mut e = RecipeError::new(
        origin,
        None,
        format!("the file is not valid TOML{at}: {what}"),
        "correct the TOML syntax there: strings need double quotes (backend = \"cpu\"), \
         sections are written [name], and each key appears once per section",
    );
    e.line = line;
    e
}

/// Renders a path of serde segments as `a.b[0].c`.
fn render_path(prefix: Option<&str>, segments: &[serde_path_to_error::Segment]) -> String {
    use serde_path_to_error::Segment;
    let mut out = prefix.unwrap_or("").to_owned();
    for seg in segments {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// The value at `segments` inside `root`, if there is one.
fn lookup<'a>(root: &'a toml::Value, segments: &[serde_path_to_error::Segment]) -> Option<&'a toml::Value> {
    use serde_path_to_error::Segment;
    let mut cur = root;
    for seg in segments {
        cur = match seg {
            Segment::Seq { index } => cur.as_array()?.get(*index)?,
            Segment::Map { key } | Segment::Enum { variant: key } => cur.as_table()?.get(key)?,
            Segment::Unknown => return None,
        };
    }
    Some(cur)
}

/// The backticked words in a serde message, in order.
fn backticked(msg: &str) -> Vec<&str> {
    msg.split('`').skip(1).step_by(2).collect()
}

/// serde's "expected ..." clause, made readable.
fn expected_from_serde(msg: &str) -> String {
    let raw = msg.rsplit_once("expected ").map_or(msg, |(_, e)| e).trim();
    match raw {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a non-negative integer".into(),
        "isize" | "i64" | "i32" | "i16" | "i8" => "an integer".into(),
        "f64" | "f32" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a string" => "a string in double quotes".into(),
        other => other.to_owned(),
    }
}

/// A deserialization error as a [`RecipeError`] naming the key.
///
/// `root` is the value that was deserialized; `prefix` is prepended to the path (the
/// section name when deserializing one section's table).
pub(crate) fn from_serde(
    err: &serde_path_to_error::Error<toml::de::Error>,
    root: &toml::Value,
    prefix: Option<&str>,
    cx: &Ctx,
) -> RecipeError {
    let mut segments: Vec<serde_path_to_error::Segment> = err.path().iter().cloned().collect();
    let msg = err.inner().message().split_whitespace().collect::<Vec<_>>().join(" ");
    // For an unknown or missing field the path may already end at that field: keep the
    // path of the table that holds it, and name the field separately.
    if msg.starts_with("unknown field `") || msg.starts_with("missing field `") {
        let name = backticked(&msg).first().copied().unwrap_or("");
        if matches!(segments.last(), Some(serde_path_to_error::Segment::Map { key }) if key == name) {
            segments.pop();
        }
    }
    let path = render_path(prefix, &segments);
    let join = |name: &str| {
        if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };

    if msg.starts_with("unknown field `") {
        let words = backticked(&msg);
        let name = words.first().copied().unwrap_or("?");
        let valid = &words[words.len().min(1)..];
        let key = join(name);
        let where_ = if path.is_empty() { String::new() } else { format!(" in `{path}`") };
        let valid_list = if valid.is_empty() { "none".to_owned() } else { valid.join(", ") };
        let fix = match keys::did_you_mean(name, valid.iter().copied()) {
            Some(s) => format!("did you mean `{}`? Rename or remove `{key}`", join(s)),
            None => format!("remove `{key}` or use one of the valid keys"),
        };
        return RecipeError::new(
            cx.origin(&key),
            Some(key.clone()),
            format!("`{key}` is not a valid key{where_}. Valid keys: {valid_list}"),
            fix,
        );
    }
    if msg.starts_with("missing field `") {
        let name = backticked(&msg).first().copied().unwrap_or("?").to_owned();
        let key = join(&name);
        return RecipeError::new(
            cx.origin(&path),
            Some(key.clone()),
            format!("`{key}` is missing: it is required here"),
            format!("add `{name}` to `{}`", if path.is_empty() { "the table" } else { &path }),
        );
    }
    if msg.starts_with("unknown variant `") {
        let words = backticked(&msg);
        let bad = words.first().copied().unwrap_or("?");
        let valid = &words[words.len().min(1)..];
        let fix = match keys::did_you_mean(bad, valid.iter().copied()) {
            Some(s) => format!("did you mean \"{s}\"? Set {path} to one of: {}", valid.join(", ")),
            None => format!("set {path} to one of: {}", valid.join(", ")),
        };
        return RecipeError::new(
            cx.origin(&path),
            Some(path.clone()),
            format!("`{path}` = \"{bad}\" is not one of the allowed values ({})", valid.join(", ")),
            fix,
        );
    }

    // A wrong type or an out-of-range value.
    let value = lookup(root, &segments).map(show);
    let spec = if prefix.is_none() { keys::key_spec(&path) } else { None };
    let expected = match spec {
        Some(s) => s.kind.expected().to_owned(),
        None => expected_from_serde(&msg),
    };
    let example = spec.map(|s| default_example(&path, s.kind));
    let message = match &value {
        // With the key's kind known, serde's own wording adds nothing; otherwise keep it.
        Some(v) if spec.is_some() => {
            format!("`{path}` = {v} has the wrong type or value: expected {expected}")
        }
        Some(v) => {
            format!("`{path}` = {v} has the wrong type or value: expected {expected} ({msg})")
        }
        None => format!("`{path}` could not be read: {msg}"),
    };
    let fix = match example {
        Some(ex) => format!("set {path} to {expected}, such as {ex}"),
        None => format!("set {path} to {expected}"),
    };
    RecipeError::new(cx.origin(&path), Some(path.clone()), message, fix)
}

/// `path` = `value` is not a value of `kind` (a catalogue key's wrong type).
pub(crate) fn wrong_type(cx: &Ctx, path: &str, value: &toml::Value, kind: keys::Kind) -> RecipeError {
    let expected = kind.expected();
    RecipeError::new(
        cx.origin(path),
        Some(path.to_owned()),
        format!("`{path}` = {} has the wrong type or value: expected {expected}", show(value)),
        format!("set {path} to {expected}, such as {}", default_example(path, kind)),
    )
}

/// The default value of `section.key` as TOML text, or an example of `kind`.
pub(crate) fn default_example(dotted: &str, kind: keys::Kind) -> String {
    let defaults = crate::resume::leaves(&crate::schema::Recipe::default());
    defaults
        .into_iter()
        .find(|(k, _)| k == dotted)
        .map(|(_, v)| v)
        .filter(|v| v != "[]")
        .unwrap_or_else(|| kind.example().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_one_paragraph() {
        let e = RecipeError::new(
            "configs/x.toml",
            Some("training.effective_batch".into()),
            "`training.effective_batch` = 0 is invalid: an optimizer step must consume at least one sample",
            "set training.effective_batch to a positive integer such as 32",
        );
        assert_eq!(
            e.to_string(),
            "configs/x.toml: `training.effective_batch` = 0 is invalid: an optimizer step must consume \
             at least one sample. Fix: set training.effective_batch to a positive integer such as 32."
        );
        let mut e2 = e.clone();
        e2.line = Some(3);
        assert!(e2.to_string().starts_with("configs/x.toml:3: "));
        assert!(!e2.to_string().contains('\n'));
    }

    #[test]
    fn origin_follows_overrides() {
        let mut cx = Ctx { file: "f.toml".into(), ..Ctx::default() };
        cx.overridden.insert("faults.oom_at".into());
        assert_eq!(cx.origin("faults.oom_at[0].step"), SET_ORIGIN);
        assert_eq!(cx.origin("faults.oom_at"), SET_ORIGIN);
        assert_eq!(cx.origin("faults.oom_atx"), "f.toml");
        assert_eq!(cx.origin("run.seed"), "f.toml");
    }

    #[test]
    fn shorten_long_values() {
        let long = "x".repeat(500);
        assert!(shorten(&long).chars().count() < 100);
        assert_eq!(shorten("a\nb"), "a b");
        assert_eq!(shorten(&"é".repeat(90)).chars().count(), 83);
    }
}
