//! Writing the resolved recipe back as TOML (`recipe.resolved.toml` in a run directory).

use crate::error::shorten;
use crate::resume::section_tables;
use crate::schema::Recipe;

/// A TOML key, bare when it can be, quoted otherwise.
fn key_text(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_owned()
    } else {
        value_text(&toml::Value::String(k.to_owned()))
    }
}

/// A value as inline TOML.
fn value_text(v: &toml::Value) -> String {
    let mut s = String::new();
    match serde::Serialize::serialize(v, toml::ser::ValueSerializer::new(&mut s)) {
        Ok(_) => s,
        // Only reachable for values TOML cannot hold; keep the file parseable.
        Err(e) => format!("\"<unserializable: {}>\"", shorten(&e.to_string()).replace(['"', '\\'], "'")),
    }
}

/// The resolved recipe as TOML: every section and key with its value (defaults filled
/// in), in schema order, with unset optional keys as comments saying what unset means.
///
/// [`crate::parse`] reads it back to an equal [`Recipe`] (paths are already resolved, so
/// the directory it is read from does not matter).
pub fn to_toml_string(r: &Recipe) -> String {
    let mut out = String::from(
        "# Resolved oomph recipe: every default is filled in; optional keys that are unset\n\
         # are shown as comments.\n",
    );
    for (spec, table) in section_tables(r) {
        out.push_str(&format!("\n[{}]\n", spec.name));
        let table = match table {
            Ok(t) => t,
            Err(e) => {
                out.push_str(&format!("# this section could not be written: {}\n", shorten(&e).replace('\n', " ")));
                continue;
            }
        };
        for key in &spec.keys {
            match table.get(key.name) {
                Some(v) => out.push_str(&format!("{} = {}\n", key.name, value_text(v))),
                None => out.push_str(&format!("# {} is unset: {}\n", key.name, key.unset)),
            }
        }
        if spec.free_form {
            let mut names: Vec<&String> = table.keys().filter(|k| spec.key(k).is_none()).collect();
            names.sort();
            for name in names {
                out.push_str(&format!("{} = {}\n", key_text(name), value_text(&table[name.as_str()])));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_quoted_when_needed() {
        assert_eq!(key_text("n_layer"), "n_layer");
        assert_eq!(key_text("a.b"), "\"a.b\"");
        assert_eq!(key_text(""), "\"\"");
        assert_eq!(key_text("é"), "\"é\"");
    }
}
