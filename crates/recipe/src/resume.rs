//! Resume support: the recipe [`fingerprint`] stored in checkpoints, and the [`diff`]
//! between the recipe a checkpoint was written with and the one a resume brings.
//!
//! Both work on *leaves*: every key of the resolved recipe as `section.key` (model keys
//! nested with dots, arrays kept whole) with its value written as TOML.

use crate::error::show;
use crate::keys::{self, sections};
use crate::schema::Recipe;
use sha2::{Digest, Sha256};

/// One key whose value differs between two recipes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    /// The `section.key` (model keys nested with dots, for example `model.n_layer`).
    pub key: String,
    /// The old value as TOML, or `(unset)`.
    pub old: String,
    /// The new value as TOML, or `(unset)`.
    pub new: String,
    /// Whether a run may resume across this change. Changes to what is trained and how
    /// (model, data, optimizer, learning-rate schedule, effective batch, seed) are not
    /// resumable; run length, evaluation, checkpointing, micro-batch bounds, supervision,
    /// the number of data-parallel ranks, fault injection and where/on what the run executes
    /// are.
    pub resumable: bool,
}

/// Text shown for a key that one side leaves unset.
pub const UNSET: &str = "(unset)";

/// Whether a run may resume when `key` (`section.key`) changes. See [`FieldChange::resumable`].
pub fn is_resumable(key: &str) -> bool {
    const RESUMABLE_KEYS: &[&str] = &[
        "training.steps",
        "training.epochs",
        "training.eval_every",
        "training.eval_batch",
        "training.max_nonfinite_steps",
        "run.backend",
        "run.device",
        "run.gpu_memory_limit",
        "run.log_every",
        "run.output_dir",
        "run.name",
    ];
    const RESUMABLE_SECTIONS: &[&str] = &["checkpoint", "micro_batch", "supervisor", "distributed", "faults"];
    let section = key.split(['.', '[']).next().unwrap_or("");
    RESUMABLE_KEYS.contains(&key) || RESUMABLE_SECTIONS.contains(&section)
}

/// Each section of `r` as a TOML table, in catalogue order.
pub(crate) fn section_tables(r: &Recipe) -> Vec<(&'static keys::SectionSpec, Result<toml::Table, String>)> {
    fn table<T: serde::Serialize>(t: &T) -> Result<toml::Table, String> {
        match toml::Value::try_from(t) {
            Ok(toml::Value::Table(t)) => Ok(t),
            Ok(_) => Err("not a table".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    }
    sections()
        .iter()
        .map(|spec| {
            let t = match spec.name {
                "run" => table(&r.run),
                "model" => {
                    let mut t = r.model.params.clone();
                    t.insert("kind".to_owned(), toml::Value::String(r.model.kind.clone()));
                    Ok(t)
                }
                "data" => table(&r.data),
                "optimizer" => table(&r.optimizer),
                "lr_schedule" => table(&r.lr_schedule),
                "training" => table(&r.training),
                "micro_batch" => table(&r.micro_batch),
                "checkpoint" => table(&r.checkpoint),
                "supervisor" => table(&r.supervisor),
                "distributed" => table(&r.distributed),
                "faults" => table(&r.faults),
                other => Err(format!("[{other}] has no table in resume::section_tables")),
            };
            (spec, t)
        })
        .collect()
}

fn push_nested(prefix: &str, t: &toml::Table, out: &mut Vec<(String, String)>) {
    let mut names: Vec<&String> = t.keys().collect();
    names.sort();
    for name in names {
        let key = format!("{prefix}.{name}");
        match &t[name] {
            toml::Value::Table(inner) if !inner.is_empty() => push_nested(&key, inner, out),
            v => out.push((key, show_full(v))),
        }
    }
}

/// A value as TOML text, not shortened.
fn show_full(v: &toml::Value) -> String {
    let mut s = String::new();
    match serde::Serialize::serialize(v, toml::ser::ValueSerializer::new(&mut s)) {
        Ok(_) => s,
        Err(_) => show(v),
    }
}

/// Every set key of `r` with its value as TOML text: fixed keys in catalogue order, then
/// model keys sorted. Unset optional keys are absent.
pub(crate) fn leaves(r: &Recipe) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (spec, table) in section_tables(r) {
        let table = match table {
            Ok(t) => t,
            Err(e) => {
                out.push((spec.name.to_owned(), format!("<unserializable: {e}>")));
                continue;
            }
        };
        for key in &spec.keys {
            if let Some(v) = table.get(key.name) {
                out.push((format!("{}.{}", spec.name, key.name), show_full(v)));
            }
        }
        if spec.free_form {
            let mut rest = table.clone();
            for key in &spec.keys {
                rest.remove(key.name);
            }
            push_nested(spec.name, &rest, &mut out);
        }
    }
    out
}

/// Hex SHA-256 of what the run trains: the model (kind and keys), the data settings except
/// the file's path spelling (the file's content is not read), the optimizer, the
/// learning-rate schedule, `training.effective_batch` and `run.seed`. Keys a run may
/// change on resume ([`is_resumable`]) do not enter it; neither does key order in the file.
pub fn fingerprint(r: &Recipe) -> String {
    let mut relevant: Vec<(String, String)> =
        leaves(r).into_iter().filter(|(k, _)| !is_resumable(k) && k != "data.path").collect();
    relevant.sort();
    let mut h = Sha256::new();
    h.update(b"oomph-recipe fingerprint v1\n");
    for (k, v) in &relevant {
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Sort key putting `section.key` in recipe order: sections and fixed keys in catalogue
/// order, free-form (model) keys after the fixed ones, by name.
fn recipe_order(key: &str) -> (usize, usize, String) {
    let (section, rest) = key.split_once('.').unwrap_or((key, ""));
    let s = sections().iter().position(|s| s.name == section).unwrap_or(usize::MAX);
    let k = sections().get(s).and_then(|spec| spec.keys.iter().position(|k| k.name == rest)).unwrap_or(usize::MAX);
    (s, k, key.to_owned())
}

/// One [`FieldChange`] per key whose value differs between `old` and `new` (a key set on
/// one side only counts, with [`UNSET`] on the other), in recipe order.
pub fn diff(old: &Recipe, new: &Recipe) -> Vec<FieldChange> {
    let a = leaves(old);
    let b = leaves(new);
    let mut keys: Vec<&String> = a.iter().chain(b.iter()).map(|(k, _)| k).collect();
    keys.sort_by_key(|k| recipe_order(k));
    keys.dedup();
    let get = |side: &[(String, String)], key: &str| {
        side.iter().find(|(k, _)| k == key).map_or_else(|| UNSET.to_owned(), |(_, v)| v.clone())
    };
    keys.into_iter()
        .filter_map(|key| {
            let (o, n) = (get(&a, key), get(&b, key));
            (o != n).then(|| FieldChange { key: key.clone(), old: o, new: n, resumable: is_resumable(key) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{FaultAt, MicroInitial, Phase};

    #[test]
    fn fingerprint_tracks_training_fields_only() {
        let base = Recipe::default();
        let f0 = fingerprint(&base);
        assert_eq!(f0.len(), 64);
        assert!(f0.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(f0, fingerprint(&base.clone()));

        let mut same = base.clone();
        same.training.steps = Some(5000);
        same.checkpoint.keep = 9;
        same.micro_batch.initial = MicroInitial::Fixed(4);
        same.run.backend = crate::Backend::Cuda;
        same.run.name = "other".into();
        same.faults.oom_at.push(FaultAt { step: 2, phase: Phase::Backward, rank: Some(1) });
        same.distributed.ranks = 4;
        same.distributed.devices = vec![0, 1, 2, 3];
        same.distributed.timeout_s = 1.0;
        same.distributed.check_every = 0;
        same.data.path = Some("/elsewhere/data.csv".into());
        assert_eq!(fingerprint(&same), f0);

        let changes: [fn(&mut Recipe); 9] = [
            |r| r.run.seed = 7,
            |r| r.model.kind = "gpt".into(),
            |r| {
                r.model.params.insert("hidden".into(), toml::Value::Integer(8));
            },
            |r| r.data.task = crate::Task::Regression,
            |r| r.data.valid_fraction = 0.2,
            |r| r.optimizer.lr = 0.5,
            |r| r.optimizer.grad_clip_norm = Some(1.0),
            |r| r.lr_schedule.kind = crate::ScheduleKind::Cosine,
            |r| r.training.effective_batch = 64,
        ];
        for change in changes {
            let mut r = base.clone();
            change(&mut r);
            assert_ne!(fingerprint(&r), f0, "{r:?}");
        }
    }

    #[test]
    fn fingerprint_ignores_model_key_order() {
        let mut a = Recipe::default();
        a.model.params.insert("b".into(), toml::Value::Integer(1));
        a.model.params.insert("a".into(), toml::Value::Integer(2));
        let mut b = Recipe::default();
        b.model.params.insert("a".into(), toml::Value::Integer(2));
        b.model.params.insert("b".into(), toml::Value::Integer(1));
        assert_eq!(fingerprint(&a), fingerprint(&b));
    }

    #[test]
    fn diff_lists_each_changed_leaf() {
        let old = Recipe::default();
        assert!(diff(&old, &old).is_empty());
        let mut new = old.clone();
        new.training.steps = Some(10);
        new.optimizer.lr = 0.01;
        new.checkpoint.keep = 4;
        let mut inner = toml::Table::new();
        inner.insert("width".into(), toml::Value::Integer(3));
        new.model.params.insert("enc".into(), toml::Value::Table(inner));
        let d = diff(&old, &new);
        let keys: Vec<&str> = d.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["model.enc.width", "optimizer.lr", "training.steps", "checkpoint.keep"]);
        let steps = &d[2];
        assert_eq!((steps.old.as_str(), steps.new.as_str(), steps.resumable), (UNSET, "10", true));
        assert!(!d[0].resumable && !d[1].resumable && d[3].resumable);
        assert_eq!(d[1].old, "0.001");
        // Removed keys show up too.
        let back = diff(&new, &old);
        assert_eq!(back.len(), 4);
        assert_eq!(back[0].new, UNSET);
    }

    #[test]
    fn resumable_classification() {
        for k in [
            "training.steps",
            "training.epochs",
            "training.eval_every",
            "training.eval_batch",
            "checkpoint.every",
            "micro_batch.max",
            "supervisor.max_restarts",
            "faults.oom_at",
            "distributed.ranks",
            "distributed.devices",
            "distributed.timeout_s",
            "distributed.check_every",
            "run.backend",
            "run.device",
            "run.gpu_memory_limit",
            "run.log_every",
            "run.output_dir",
            "run.name",
        ] {
            assert!(is_resumable(k), "{k}");
        }
        for k in [
            "model.kind",
            "model.n_layer",
            "data.path",
            "data.kind",
            "optimizer.lr",
            "lr_schedule.kind",
            "training.effective_batch",
            "run.seed",
        ] {
            assert!(!is_resumable(k), "{k}");
        }
    }
}
