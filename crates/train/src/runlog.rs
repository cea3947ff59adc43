//! The run log: everything a run records as it goes. `metrics.jsonl` (one line per step and
//! per evaluation), `events.jsonl`, `current.json` for the supervisor, `summary.json` at the
//! end, the observer (console) fan-out, and the trimming of lines a resume runs again.

use crate::current::{Current, CurrentFile};
use crate::error::TrainError;
use crate::progress::Observer;
use crate::records::{EvalRecord, EventRecord, JsonLines, StepRecord, Summary};
use oomph_recipe::Phase;
use oomph_sched::Policy;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `metrics.jsonl` is flushed at most this often (and at every checkpoint, evaluation and
/// the end): lines after the newest checkpoint are re-run on resume anyway, and a flush per
/// step costs measurably on small models (BENCHMARKS.md, section 1).
const METRICS_FLUSH: std::time::Duration = std::time::Duration::from_millis(100);

/// The files a run writes as it goes, and the observer that shows them.
pub struct RunLog {
    dir: PathBuf,
    metrics: JsonLines,
    events: JsonLines,
    current: Option<CurrentFile>,
    observer: Box<dyn Observer>,
    started: Instant,
    /// Wall time of the workers before this one (restored from the checkpoint).
    wall_before: f64,
    /// Lines for the start-up banner gathered before it is shown.
    notes: Vec<String>,
}

impl RunLog {
    /// Opens the log of the run in `dir` (appending); `notes` start the banner's extra lines.
    pub fn open(dir: &Path, observer: Box<dyn Observer>, notes: Vec<String>) -> Result<Self, TrainError> {
        Ok(Self {
            dir: dir.to_path_buf(),
            metrics: JsonLines::open_with(&dir.join("metrics.jsonl"), METRICS_FLUSH)?,
            events: JsonLines::open(&dir.join("events.jsonl"))?,
            current: None,
            observer,
            started: Instant::now(),
            wall_before: 0.0,
            notes,
        })
    }

    /// Seconds of wall time of the whole run (all workers).
    pub fn wall(&self) -> f64 {
        self.wall_before + self.started.elapsed().as_secs_f64()
    }

    /// Continues the wall clock of a resumed run.
    pub fn resume_wall(&mut self, wall_before: f64) {
        self.wall_before = wall_before;
    }

    /// A line for the start-up banner (also logged now).
    pub fn note(&mut self, line: String) {
        tracing::info!("{line}");
        self.notes.push(line);
    }

    /// Shows the banner: `lines`, then the notes gathered so far.
    pub fn start(&mut self, step: usize, total: usize, mut lines: Vec<String>) {
        lines.append(&mut self.notes);
        for l in &lines {
            tracing::info!("{l}");
        }
        self.observer.start(step, total, &lines);
    }

    /// Records an event belonging to `step`.
    pub fn event(&mut self, kind: &str, step: usize, fields: Value) {
        let fields = match fields {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let rec = EventRecord { kind: kind.into(), step, wall_s: self.wall(), fields };
        if let Err(e) = self.events.write(&rec) {
            tracing::warn!("could not write events.jsonl: {e}");
        }
        tracing::info!(kind, step = rec.step, "event");
        self.observer.event(&rec);
    }

    /// Records the policy's events for `step`.
    pub fn policy_events(&mut self, step: usize, evs: Vec<oomph_sched::Event>) {
        for e in evs {
            let mut v = serde_json::to_value(&e).unwrap_or(Value::Null);
            // The record carries the kind itself.
            if let Value::Object(m) = &mut v {
                m.remove("kind");
            }
            self.event(e.kind(), step, v);
        }
    }

    /// Records a completed step.
    pub fn step(&mut self, rec: &StepRecord, total: usize) -> Result<(), TrainError> {
        self.metrics.write(rec)?;
        self.observer.step(rec, total);
        Ok(())
    }

    /// Records an evaluation (flushed at once).
    pub fn eval(&mut self, rec: &EvalRecord) -> Result<(), TrainError> {
        self.metrics.write(rec)?;
        self.metrics.flush()?;
        self.observer.eval(rec);
        Ok(())
    }

    /// Flushes the metric lines written so far.
    pub fn flush(&mut self) -> Result<(), TrainError> {
        self.metrics.flush()
    }

    /// Writes `current.json`: what the worker is doing now (read by the supervisor after a
    /// death without a word; see [`crate::current`]).
    pub fn position(&mut self, c: &Current) {
        if self.current.is_none() {
            self.current = CurrentFile::open(&self.dir.join("current.json"));
        }
        if let Some(f) = &mut self.current {
            f.write(c);
        }
    }

    /// No worker runs any more: `current.json` goes.
    pub fn clear_position(&mut self) {
        drop(self.current.take());
        let _ = std::fs::remove_file(self.dir.join("current.json"));
    }

    /// Keeps only the metric lines up to `step` (the steps after it run again); returns the
    /// evaluation recorded at `step`, which is not run again.
    pub fn truncate(&mut self, step: usize) -> Result<Option<EvalRecord>, TrainError> {
        let path = self.metrics.path().to_path_buf();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(TrainError::io("reading", &path, &e)),
        };
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                    .is_some_and(|s| s as usize <= step)
            })
            .collect();
        let last_eval = kept
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_str::<EvalRecord>(l).ok())
            .find(|e| e.kind == "eval" && e.step == step);
        let mut body = kept.join("\n");
        if !body.is_empty() {
            body.push('\n');
        }
        if body.len() == text.len() {
            return Ok(last_eval);
        }
        let tmp = path.with_extension("jsonl.tmp");
        let written = std::fs::write(&tmp, body)
            .map_err(|e| TrainError::io("writing", &tmp, &e))
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| TrainError::io("renaming into place", &tmp, &e)));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.metrics = JsonLines::open_with(&path, METRICS_FLUSH)?;
        Ok(last_eval)
    }

    /// Worker restarts over the whole run (every supervisor invocation): the restart events
    /// the supervisors recorded, except their final "stop" decisions.
    pub fn restarts_in_run(&self) -> usize {
        crate::records::read_lines::<EventRecord>(&self.dir.join("events.jsonl"))
            .iter()
            .filter(|e| e.kind == "restart" && e.fields.get("action").and_then(|a| a.as_str()) != Some("stop"))
            .count()
    }

    /// Writes `summary.json` (atomically), removes `current.json` and tells the observer.
    pub fn finish(&mut self, summary: &Summary) -> Result<(), TrainError> {
        self.flush()?;
        let text = serde_json::to_string_pretty(summary).map_err(|e| TrainError::Failed(e.to_string()))?;
        write_atomically(&self.dir.join("summary.json"), text.as_bytes())?;
        self.clear_position();
        self.observer.finish(summary);
        Ok(())
    }
}

/// What `current.json` says for the main thread in `phase` after `step` completed steps, with
/// the policy's sizes and the checkpoint being written in the background (`writing`).
pub fn position(
    phase: Phase,
    step: usize,
    policy: &Policy,
    eval_batch: usize,
    parameters: usize,
    writing: Option<usize>,
) -> Current {
    // Evaluation and checkpoints belong to the step just done; training to the next one.
    let (step, phase) = match phase {
        Phase::Forward | Phase::Backward => (step + 1, "train"),
        Phase::Optimizer => (step + 1, "optimizer"),
        Phase::Eval => (step, "eval"),
        Phase::Checkpoint => (step, "checkpoint"),
    };
    Current {
        pid: std::process::id(),
        step,
        phase: phase.to_string(),
        micro_batch: policy.limit(),
        eval_batch,
        min_micro_batch: policy.bounds().0,
        parameters,
        checkpoint_step: writing,
    }
}

/// Writes `bytes` to `path` through a temporary file renamed into place, so `path` always
/// holds either its old or its new contents.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    let written = std::fs::write(&tmp, bytes)
        .map_err(|e| TrainError::io("writing", &tmp, &e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| TrainError::io("renaming into place", &tmp, &e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
