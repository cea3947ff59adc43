//! Reading a run directory: metric lines, events, the summary, the recipe and the newest
//! checkpoint's state, tolerant of a run that is still going or that crashed mid-line.

use crate::error::ReportError;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// One optimizer step (`"kind": "step"`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Step {
    pub step: u64,
    #[serde(default)]
    pub samples_seen: u64,
    /// `None` when the loss was not finite (serde_json writes NaN as `null`).
    #[serde(default)]
    pub loss: Option<f64>,
    #[serde(default)]
    pub micro_batch: u64,
    #[serde(default)]
    pub chunks: u64,
    #[serde(default)]
    pub samples_per_sec: Option<f64>,
    #[serde(default)]
    pub wall_s: f64,
    #[serde(default)]
    pub oom_events: u64,
    /// Skipped because its loss or gradient norm was not finite (no update).
    #[serde(default)]
    pub skipped: bool,
    #[serde(default)]
    pub mem_used: Option<u64>,
    #[serde(default)]
    pub mem_total: Option<u64>,
}

/// One evaluation (`"kind": "eval"`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Eval {
    pub step: u64,
    #[serde(default)]
    pub valid_loss: Option<f64>,
    #[serde(default)]
    pub metrics: BTreeMap<String, Option<f64>>,
    #[serde(default)]
    pub wall_s: f64,
}

/// One line of `events.jsonl`.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    pub kind: String,
    pub step: u64,
    pub fields: Map<String, Value>,
}

impl Event {
    /// An unsigned integer field.
    pub fn uint(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(Value::as_u64)
    }

    /// A string field.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }
}

/// `summary.json`, every field optional so an older or newer writer still reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Summary {
    pub name: String,
    pub steps: u64,
    pub samples_seen: u64,
    pub effective_batch: u64,
    pub train_loss: Option<f64>,
    pub valid_loss: Option<f64>,
    pub valid_metrics: BTreeMap<String, Option<f64>>,
    pub wall_s: f64,
    pub oom_events: u64,
    pub micro_batch_final: u64,
    pub micro_batch_history: Vec<u64>,
    pub recovery_s: f64,
    pub restarts: u64,
    pub resumes: u64,
    pub parameters: u64,
    pub model_path: String,
}

/// The newest complete checkpoint: its directory and what its `state.json` says.
#[derive(Debug, Clone)]
pub(crate) struct Checkpoint {
    pub dir: PathBuf,
    pub step: u64,
    pub recovery_s: Option<f64>,
}

/// Headline counts of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Totals {
    pub steps: u64,
    pub samples: u64,
    pub wall_s: f64,
    pub ooms: u64,
    pub restarts: u64,
    pub resumes: u64,
}

/// Everything a report needs from a run directory.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub dir: PathBuf,
    pub name: String,
    /// Effective batch from the summary, else the recipe, else `samples_seen / step`.
    pub effective_batch: Option<u64>,
    /// Steps in order, one per step number (the last record of a repeated step wins).
    pub steps: Vec<Step>,
    /// Evaluations in order, one per step number.
    pub evals: Vec<Eval>,
    /// Events in file order.
    pub events: Vec<Event>,
    pub summary: Option<Summary>,
    pub checkpoint: Option<Checkpoint>,
    /// Lines of `metrics.jsonl` and `events.jsonl` that did not parse (e.g. a torn last line).
    pub skipped_lines: usize,
}

fn read_optional(path: &Path) -> Result<Option<String>, ReportError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ReportError::Read { path: path.to_path_buf(), source }),
    }
}

impl Run {
    /// Reads `dir`. Fails only when `metrics.jsonl` is missing or a present file cannot be
    /// read or is malformed as a whole (`summary.json`, `recipe.resolved.toml`); unparsable
    /// lines are skipped and counted.
    pub fn load(dir: &Path) -> Result<Run, ReportError> {
        let metrics_path = dir.join("metrics.jsonl");
        let Some(metrics) = read_optional(&metrics_path)? else {
            return Err(ReportError::NotARunDir { dir: dir.to_path_buf() });
        };
        let mut skipped = 0;
        let (steps, evals) = parse_metrics(&metrics, &mut skipped);
        let events = match read_optional(&dir.join("events.jsonl"))? {
            Some(text) => parse_events(&text, &mut skipped),
            None => Vec::new(),
        };
        let summary_path = dir.join("summary.json");
        let summary = match read_optional(&summary_path)? {
            Some(text) => Some(
                serde_json::from_str::<Summary>(&text)
                    .map_err(|source| ReportError::Summary { path: summary_path, source })?,
            ),
            None => None,
        };
        let recipe_path = dir.join("recipe.resolved.toml");
        let recipe = match read_optional(&recipe_path)? {
            Some(text) => Some(text.parse::<toml::Value>().map_err(|e| ReportError::Recipe {
                path: recipe_path,
                message: e.to_string().trim().replace('\n', " "),
            })?),
            None => None,
        };
        let recipe_name = recipe.as_ref().and_then(|r| r.get("run")?.get("name")?.as_str().map(str::to_string));
        let recipe_batch = recipe
            .as_ref()
            .and_then(|r| r.get("training")?.get("effective_batch")?.as_integer())
            .and_then(|n| u64::try_from(n).ok());
        let dir_name = || {
            dir.canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| dir.display().to_string())
        };
        let name =
            summary.as_ref().map(|s| s.name.clone()).filter(|n| !n.is_empty()).or(recipe_name).unwrap_or_else(dir_name);
        let derived_batch = steps.first().filter(|s| s.step > 0 && s.samples_seen > 0).map(|s| s.samples_seen / s.step);
        let effective_batch =
            summary.as_ref().map(|s| s.effective_batch).filter(|&b| b > 0).or(recipe_batch).or(derived_batch);
        Ok(Run {
            dir: dir.to_path_buf(),
            name,
            effective_batch,
            steps,
            evals,
            events,
            summary,
            checkpoint: newest_checkpoint(&dir.join("checkpoints")),
            skipped_lines: skipped,
        })
    }

    /// Headline counts: the summary's when the run finished, else derived from the last
    /// records and the events.
    pub fn totals(&self) -> Totals {
        if let Some(s) = &self.summary {
            return Totals {
                steps: s.steps,
                samples: s.samples_seen,
                wall_s: s.wall_s,
                ooms: s.oom_events,
                restarts: s.restarts,
                resumes: s.resumes,
            };
        }
        let last = self.steps.last();
        let wall_s = last.map(|s| s.wall_s).into_iter().chain(self.evals.last().map(|e| e.wall_s)).fold(0.0, f64::max);
        Totals {
            steps: last.map_or(0, |s| s.step),
            samples: last.map_or(0, |s| s.samples_seen),
            wall_s,
            ooms: (self.events_of("oom").count() as u64).max(last.map_or(0, |s| s.oom_events)),
            restarts: self.events_of("restart").count() as u64,
            resumes: self.events_of("resume").count() as u64,
        }
    }

    /// Events of one kind.
    pub fn events_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Event> + 'a {
        self.events.iter().filter(move |e| e.kind == kind)
    }

    /// The step record of step `step`, or the nearest earlier one.
    pub fn step_at_or_before(&self, step: u64) -> Option<&Step> {
        let i = self.steps.partition_point(|s| s.step <= step);
        i.checked_sub(1).map(|i| &self.steps[i]).or(self.steps.first())
    }

    /// Successive micro-batch limits: the summary's history when the run finished, else
    /// rebuilt from the policy's events (`shrink`, `grow`, `grow_failed`), else the distinct
    /// successive largest chunks of the recorded steps.
    pub fn micro_batch_history(&self) -> Vec<u64> {
        if let Some(s) = &self.summary {
            if !s.micro_batch_history.is_empty() {
                return s.micro_batch_history.clone();
            }
        }
        let mut hist = Vec::new();
        let push = |h: &mut Vec<u64>, v: Option<u64>| {
            if let Some(v) = v {
                if h.last() != Some(&v) {
                    h.push(v);
                }
            }
        };
        for e in &self.events {
            // Evaluation shrinks (`scope: eval`) change the evaluation batch, not the limit.
            if e.str("scope") == Some("eval") {
                continue;
            }
            match e.kind.as_str() {
                "shrink" | "grow" => {
                    if hist.is_empty() {
                        push(&mut hist, e.uint("from"));
                    }
                    push(&mut hist, e.uint("to"));
                }
                "grow_failed" => {
                    if hist.is_empty() {
                        push(&mut hist, e.uint("at"));
                    }
                    push(&mut hist, e.uint("back_to"));
                }
                _ => {}
            }
        }
        if hist.is_empty() {
            for s in &self.steps {
                push(&mut hist, Some(s.micro_batch));
            }
        }
        hist
    }
}

/// Parses `metrics.jsonl`. A step number that does not increase means the run went back to
/// a checkpoint: what was recorded from that step on is superseded by what follows.
fn parse_metrics(text: &str, skipped: &mut usize) -> (Vec<Step>, Vec<Eval>) {
    let mut steps: BTreeMap<u64, Step> = BTreeMap::new();
    let mut evals: BTreeMap<u64, Eval> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            *skipped += 1;
            continue;
        };
        match v.get("kind").and_then(Value::as_str) {
            Some("step") => match Step::deserialize(&v) {
                Ok(s) => {
                    if steps.last_key_value().is_some_and(|(&last, _)| s.step <= last) {
                        steps.split_off(&s.step);
                        evals.split_off(&s.step);
                    }
                    steps.insert(s.step, s);
                }
                Err(_) => *skipped += 1,
            },
            Some("eval") => match Eval::deserialize(&v) {
                Ok(e) => {
                    evals.insert(e.step, e);
                }
                Err(_) => *skipped += 1,
            },
            _ => *skipped += 1,
        }
    }
    (steps.into_values().collect(), evals.into_values().collect())
}

/// Parses `events.jsonl` (as plain JSON objects: a policy event's own `kind` may appear
/// twice in a line, which a map tolerates).
///
/// A `resume` from the checkpoint at step `S` abandons what the previous worker did after
/// `S`: its events past `S` are dropped (as the policy state restored from the checkpoint
/// drops them), except the `restart` and `resume` events themselves.
fn parse_events(text: &str, skipped: &mut usize) -> Vec<Event> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(line) else {
            *skipped += 1;
            continue;
        };
        let kind = fields.remove("kind").and_then(|k| k.as_str().map(str::to_string));
        let step = fields.remove("step").and_then(|s| s.as_u64());
        match (kind, step) {
            (Some(kind), Some(step)) => {
                if kind == "resume" {
                    let from = fields.get("from_step").and_then(Value::as_u64).unwrap_or(step);
                    out.retain(|e: &Event| e.step <= from || e.kind == "restart" || e.kind == "resume");
                }
                out.push(Event { kind, step, fields });
            }
            _ => *skipped += 1,
        }
    }
    out
}

/// The newest `checkpoints/step-N/` that has a manifest (only those count).
fn newest_checkpoint(root: &Path) -> Option<Checkpoint> {
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let name = entry.file_name();
        let Some(step) = name.to_str().and_then(|n| n.strip_prefix("step-")?.parse::<u64>().ok()) else {
            continue;
        };
        let dir = entry.path();
        if dir.join("manifest.json").is_file() && best.as_ref().is_none_or(|(b, _)| step > *b) {
            best = Some((step, dir));
        }
    }
    let (step, dir) = best?;
    let recovery_s = std::fs::read_to_string(dir.join("state.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("recovery_s")?.as_f64());
    Some(Checkpoint { dir, step, recovery_s })
}
