//! `--set section.key=value` overrides, applied to the raw TOML table before it is
//! deserialized (so overridden values get the same checks as values from the file).
//!
//! The value is read as a TOML value (`3`, `0.5`, `true`, `"auto"`, `[0.9, 0.99]`,
//! `[{ step = 3, phase = "forward" }]`); text that is not a TOML value is taken as a plain
//! string, and keys that hold strings always take the text as written (`run.name=123` is
//! the name "123"). `model.<anything>` is allowed (nested with more dots), since a model's
//! keys are its own. Setting one of `training.steps`/`training.epochs` drops the other
//! from the file, so `--set training.steps=5` shortens an epoch-based recipe.

use crate::error::{RecipeError, SET_ORIGIN};
use crate::keys;
use std::collections::BTreeSet;

const SYNTAX_FIX: &str = "write overrides as section.key=value, for example \
                          --set training.steps=500 or --set optimizer.betas=[0.9,0.99]";

/// Applies `overrides` to `table` in order; returns the `section.key`s they set.
///
/// `file` names the recipe file, for errors about the file's own content (a section that
/// is not a table).
pub(crate) fn apply(
    table: &mut toml::Table,
    overrides: &[String],
    file: &str,
) -> Result<BTreeSet<String>, RecipeError> {
    let mut set = BTreeSet::new();
    for raw in overrides {
        let (lhs, rhs) = raw.split_once('=').ok_or_else(|| {
            RecipeError::new(
                SET_ORIGIN,
                None,
                format!(
                    "`{}` is not an override: it has no `=` between the key and the value",
                    crate::error::shorten(raw)
                ),
                SYNTAX_FIX,
            )
        })?;
        let lhs = lhs.trim();
        let (section, key) = match lhs.split_once('.') {
            Some((s, k)) if !s.trim().is_empty() && !k.trim().is_empty() => (s.trim(), k.trim()),
            _ => {
                return Err(RecipeError::new(
                    SET_ORIGIN,
                    None,
                    format!(
                        "`{}` is not an override: the key `{}` must name a section and a key, as section.key",
                        crate::error::shorten(raw),
                        crate::error::shorten(lhs)
                    ),
                    SYNTAX_FIX,
                ))
            }
        };
        let Some(spec) = keys::section(section) else {
            let hint = keys::did_you_mean(section, keys::sections().iter().map(|s| s.name))
                .map(|s| format!("did you mean `{s}.{key}`? "))
                .unwrap_or_default();
            return Err(RecipeError::new(
                SET_ORIGIN,
                Some(lhs.to_owned()),
                format!("`{lhs}` names an unknown section `{section}`. Valid sections: {}", keys::section_list()),
                format!(
                    "{hint}{} one of the valid sections, as section.key=value",
                    if hint.is_empty() { "use" } else { "Use" }
                ),
            ));
        };
        let path: Vec<&str> = key.split('.').map(str::trim).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(RecipeError::new(
                SET_ORIGIN,
                Some(lhs.to_owned()),
                format!("`{lhs}` has an empty key part"),
                SYNTAX_FIX,
            ));
        }
        let key_spec = spec.key(key);
        if !spec.free_form && key_spec.is_none() {
            let hint = keys::did_you_mean(key, spec.keys.iter().map(|k| k.name))
                .map(|k| format!("did you mean `{section}.{k}`? "))
                .unwrap_or_default();
            return Err(RecipeError::new(
                SET_ORIGIN,
                Some(lhs.to_owned()),
                format!("`{lhs}` is not a key of [{section}]. Valid keys: {}", spec.key_list()),
                format!("{hint}{} one of the valid keys of [{section}]", if hint.is_empty() { "use" } else { "Use" }),
            ));
        }
        let textual = key_spec.is_some_and(|k| k.kind.is_textual());
        let value = parse_value(rhs.trim(), textual);

        let entry = table.entry(section.to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let mut cur = entry.as_table_mut().ok_or_else(|| {
            RecipeError::new(
                file,
                Some(section.to_owned()),
                format!("`{section}` must be a table, but the file gives it a plain value"),
                format!("write it as a section: a line [{section}] followed by key = value lines"),
            )
        })?;
        let (last, parents) = path.split_last().unwrap_or((&"", &[]));
        let mut walked = section.to_owned();
        for part in parents {
            walked.push('.');
            walked.push_str(part);
            let next = cur.entry((*part).to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = next.as_table_mut().ok_or_else(|| {
                RecipeError::new(
                    SET_ORIGIN,
                    Some(lhs.to_owned()),
                    format!("`{lhs}` goes inside `{walked}`, which is not a table"),
                    format!("set `{walked}` itself, or remove it from the recipe first"),
                )
            })?;
        }
        cur.insert((*last).to_owned(), value);
        set.insert(format!("{section}.{key}"));
    }

    // An override of the run length replaces the file's choice of unit.
    let steps = set.contains("training.steps");
    let epochs = set.contains("training.epochs");
    if steps != epochs {
        if let Some(t) = table.get_mut("training").and_then(toml::Value::as_table_mut) {
            t.remove(if steps { "epochs" } else { "steps" });
        }
    }
    Ok(set)
}

/// `text` as a TOML value, or as a plain string when it is not one (or when the key holds
/// text and `text` is not a quoted string).
pub(crate) fn parse_value(text: &str, textual: bool) -> toml::Value {
    let parsed =
        format!("v = {text}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| if t.len() == 1 { t.remove("v") } else { None });
    match parsed {
        Some(v @ toml::Value::String(_)) => v,
        Some(v) if !textual => v,
        _ => toml::Value::String(text.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml::Value;

    fn apply_to(text: &str, o: &[&str]) -> Result<(toml::Table, BTreeSet<String>), RecipeError> {
        let mut t: toml::Table = text.parse().unwrap();
        let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
        let set = apply(&mut t, &o, "f.toml")?;
        Ok((t, set))
    }

    #[test]
    fn values_are_toml_or_text() {
        assert_eq!(parse_value("3", false), Value::Integer(3));
        assert_eq!(parse_value("0.5", false), Value::Float(0.5));
        assert_eq!(parse_value("true", false), Value::Boolean(true));
        assert_eq!(parse_value("\"auto\"", false), Value::String("auto".into()));
        assert_eq!(parse_value("auto", false), Value::String("auto".into()));
        assert_eq!(parse_value("8GiB", false), Value::String("8GiB".into()));
        assert_eq!(parse_value("[0.9, 0.99]", false), Value::Array(vec![Value::Float(0.9), Value::Float(0.99)]));
        assert_eq!(parse_value("123", true), Value::String("123".into()));
        assert_eq!(parse_value("\"123\"", true), Value::String("123".into()));
        assert_eq!(parse_value("", false), Value::String(String::new()));
        // An attempt to smuggle in a second key stays one string.
        assert_eq!(parse_value("1\nx = 2", false), Value::String("1\nx = 2".into()));
        let v = parse_value("[{ step = 3, phase = \"forward\" }]", false);
        assert_eq!(v.as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn sets_keys_and_creates_sections() {
        let (t, set) =
            apply_to("[training]\nsteps = 3\n", &["training.steps=7", "run.name = abc", "model.layers.width=8"])
                .unwrap();
        assert_eq!(t["training"]["steps"], Value::Integer(7));
        assert_eq!(t["run"]["name"], Value::String("abc".into()));
        assert_eq!(t["model"]["layers"]["width"], Value::Integer(8));
        assert!(set.contains("model.layers.width"));
        assert!(set.contains("run.name"));
    }

    #[test]
    fn run_length_override_replaces_the_other_unit() {
        let (t, _) = apply_to("[training]\nepochs = 3\n", &["training.steps=7"]).unwrap();
        assert!(t["training"].get("epochs").is_none());
        let (t, _) = apply_to("[training]\nsteps = 3\n", &["training.epochs=2"]).unwrap();
        assert!(t["training"].get("steps").is_none());
        let (t, _) = apply_to("", &["training.epochs=2", "training.steps=2"]).unwrap();
        assert!(t["training"].get("steps").is_some() && t["training"].get("epochs").is_some());
    }

    #[test]
    fn malformed_overrides_explain_the_syntax() {
        for bad in ["training.steps", "steps=3", ".steps=3", "training.=3", "=3", "model.a..b=1"] {
            let e = apply_to("", &[bad]).unwrap_err();
            assert_eq!(e.origin, SET_ORIGIN, "{bad}");
            assert!(e.fix.contains("section.key=value"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_section_or_key_lists_valid_ones() {
        let e = apply_to("", &["trainng.steps=3"]).unwrap_err();
        assert!(e.message.contains("[training]") && e.message.contains("[micro_batch]"), "{e}");
        assert!(e.fix.contains("training.steps"), "{e}");
        let e = apply_to("", &["training.step=3"]).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("training.step"));
        assert!(e.message.contains("effective_batch") && e.message.contains("eval_every"), "{e}");
        assert!(e.fix.contains("training.steps"), "{e}");
        let e = apply_to("", &["training.steps.x=3"]).unwrap_err();
        assert!(e.message.contains("not a key"), "{e}");
    }

    #[test]
    fn non_table_targets_are_errors() {
        let e = apply_to("training = 3\n", &["training.steps=3"]).unwrap_err();
        assert_eq!(e.origin, "f.toml");
        let e = apply_to("[model]\nx = 1\n", &["model.x.y=3"]).unwrap_err();
        assert_eq!(e.origin, SET_ORIGIN);
        assert!(e.message.contains("model.x"), "{e}");
    }
}
