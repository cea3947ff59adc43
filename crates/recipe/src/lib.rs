//! oomph-recipe: the TOML recipe that describes a training run: its schema and defaults,
//! `--set section.key=value` overrides, validation with errors that name the file, the
//! key, the bad value and the fix, the resolved form written into run directories, and
//! the fingerprint/diff used when resuming.
//!
//! This crate never depends on burn: every rule here is plain data and unit-tested.
//!
//! ```
//! let recipe = oomph_recipe::parse(
//!     "[training]\neffective_batch = 64\n",
//!     "inline.toml",
//!     std::path::Path::new("."),
//!     &["optimizer.lr=0.01".to_string()],
//! )
//! .unwrap();
//! assert_eq!(recipe.training.effective_batch, 64);
//! assert_eq!(recipe.training.steps, Some(100)); // the default run length
//! assert_eq!(recipe.optimizer.lr, 0.01);
//!
//! let err = oomph_recipe::parse("[checkpoint]\nkeep = 1\n", "x.toml", std::path::Path::new("."), &[])
//!     .unwrap_err();
//! assert_eq!(err.key.as_deref(), Some("checkpoint.keep"));
//! ```

mod bytes;
pub mod choice;
mod emit;
mod error;
mod keys;
mod overrides;
mod resume;
pub mod schema;
mod validate;

pub use bytes::parse_bytes;
pub use choice::{Backend, Choice, DataKind, OptimizerKind, ScheduleKind, Task};
pub use emit::to_toml_string;
pub use error::RecipeError;
pub use resume::{diff, fingerprint, is_resumable, FieldChange, UNSET};
pub use schema::*;
pub use validate::DEFAULT_STEPS;

use error::Ctx;
use std::path::Path;

/// Reads the recipe at `path`, applies `overrides` (`section.key=value`, later ones win)
/// and validates it. `data.path` is resolved against the recipe file's directory.
///
/// Errors name the file (or `--set` for an overridden value), the `section.key`, the bad
/// value, why it is refused and how to fix it.
pub fn load(path: &Path, overrides: &[String]) -> Result<Recipe, RecipeError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        RecipeError::new(
            &origin,
            None,
            format!("cannot read the recipe file: {e}"),
            "check the path (a relative path starts from the current directory) and the file's \
             permissions; a recipe is a UTF-8 TOML file",
        )
    })?;
    let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    parse(&text, &origin, base, overrides)
}

/// Parses recipe `text` that came from `origin` (a file path, used in errors), applies
/// `overrides` and validates the result.
///
/// Steps: TOML syntax; overrides (`model.<anything>` is free-form, other keys must exist);
/// structure (unknown sections and keys are refused with the valid ones listed); types;
/// `data.path` resolution (a path from the file is relative to `base_dir`, one from
/// `--set` to the current directory; it is stored absolute and the file must exist);
/// semantic rules. Fills `training.steps` with [`DEFAULT_STEPS`] when neither
/// `training.steps` nor `training.epochs` is given.
pub fn parse(text: &str, origin: &str, base_dir: &Path, overrides: &[String]) -> Result<Recipe, RecipeError> {
    let mut table: toml::Table = text.parse().map_err(|e| error::syntax(&e, text, origin))?;
    let overridden = overrides::apply(&mut table, overrides, origin)?;
    let cx = Ctx { file: origin.to_owned(), overridden };
    check_structure(&table, &cx)?;
    let root = toml::Value::Table(table);
    let mut recipe: Recipe =
        serde_path_to_error::deserialize(root.clone()).map_err(|e| error::from_serde(&e, &root, None, &cx))?;
    if let Some(p) = &recipe.data.path {
        let rel = Path::new(p);
        let joined = if rel.is_absolute() || cx.overridden.contains("data.path") {
            rel.to_path_buf()
        } else {
            base_dir.join(rel)
        };
        let abs = std::path::absolute(&joined).unwrap_or(joined);
        recipe.data.path = Some(abs.to_string_lossy().into_owned());
    }
    validate::check(&mut recipe, &cx)?;
    Ok(recipe)
}

/// Validates a recipe built in code (what [`parse`] does after deserializing), filling
/// `training.steps` when no run length is given. `data.path` is checked as written;
/// `origin` names the recipe in errors.
pub fn validate(recipe: &mut Recipe, origin: &str) -> Result<(), RecipeError> {
    validate::check(recipe, &Ctx { file: origin.to_owned(), ..Ctx::default() })
}

/// Deserializes one component's own keys, such as a model's `recipe.model.params` (which
/// holds every `[model]` key except `kind`), into `T`.
///
/// Use a `T` with `#[serde(deny_unknown_fields, default)]` so that typos are refused and
/// missing keys take defaults. Errors name `section.key` (for example `model.n_layer`),
/// list the valid keys for an unknown one, and come from `origin`.
pub fn params<T: serde::de::DeserializeOwned>(
    table: &toml::Table,
    section: &str,
    origin: &str,
) -> Result<T, RecipeError> {
    let root = toml::Value::Table(table.clone());
    let cx = Ctx { file: origin.to_owned(), ..Ctx::default() };
    serde_path_to_error::deserialize(root.clone()).map_err(|e| error::from_serde(&e, &root, Some(section), &cx))
}

/// Refuses unknown sections, sections that are not tables, unknown keys in fixed sections
/// and a non-string `model.kind`, naming the valid alternatives.
fn check_structure(table: &toml::Table, cx: &Ctx) -> Result<(), RecipeError> {
    for (name, value) in table {
        let Some(spec) = keys::section(name) else {
            let owners: Vec<String> = keys::sections()
                .iter()
                .filter(|s| s.key(name).is_some())
                .map(|s| format!("{}.{name}", s.name))
                .collect();
            let fix = if let Some(s) = keys::did_you_mean(name, keys::sections().iter().map(|s| s.name)) {
                format!("did you mean [{s}]? Rename or remove `{name}`")
            } else if !owners.is_empty() {
                format!("keys belong inside a section: move `{name}` under its section, as {}", owners.join(" or "))
            } else {
                format!("remove `{name}` or use one of the valid sections")
            };
            return Err(RecipeError::new(
                cx.origin(name),
                Some(name.clone()),
                format!("`{name}` is not a recipe section. Valid sections: {}", keys::section_list()),
                fix,
            ));
        };
        let Some(t) = value.as_table() else {
            return Err(RecipeError::new(
                cx.origin(name),
                Some(name.clone()),
                format!("`{name}` = {} must be a section (a table), not a plain value", error::show(value)),
                format!("write it as a line [{name}] followed by key = value lines"),
            ));
        };
        if spec.free_form {
            if let Some(kind) = t.get("kind").filter(|k| !k.is_str()) {
                let key = format!("{name}.kind");
                return Err(RecipeError::new(
                    cx.origin(&key),
                    Some(key.clone()),
                    format!("`{key}` = {} has the wrong type: expected a string in double quotes", error::show(kind)),
                    format!("set {key} to a registered kind such as \"mlp\""),
                ));
            }
            continue;
        }
        for (key, value) in t {
            if let Some(found) = spec.key(key) {
                // A closed vocabulary is checked here, before serde, for an error that lists
                // the names and suggests the closest one.
                if let keys::Kind::Choice { names, what } = found.kind {
                    let dotted = format!("{name}.{key}");
                    // Only a string names a choice (TOML would also read `{ sgd = [] }` as one).
                    let text = value.as_str().ok_or_else(|| error::wrong_type(cx, &dotted, value, found.kind))?;
                    validate::one_of(cx, &dotted, text, names, what)?;
                }
                continue;
            }
            let dotted = format!("{name}.{key}");
            let elsewhere: Vec<String> = keys::sections()
                .iter()
                .filter(|s| s.name != name && s.key(key).is_some() && !s.free_form)
                .map(|s| format!("[{}]", s.name))
                .collect();
            let fix = if let Some(k) = keys::did_you_mean(key, spec.keys.iter().map(|k| k.name)) {
                format!("did you mean `{name}.{k}`? Rename or remove `{dotted}`")
            } else if !elsewhere.is_empty() {
                format!("`{key}` belongs in {}: move it there", elsewhere.join(" or "))
            } else {
                format!("remove `{dotted}` or use one of the valid keys of [{name}]")
            };
            return Err(RecipeError::new(
                cx.origin(&dotted),
                Some(dotted.clone()),
                format!("`{dotted}` is not a key of [{name}]. Valid keys: {}", spec.key_list()),
                fix,
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
