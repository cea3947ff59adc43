//! What a run writes: `metrics.jsonl` (one object per optimizer step and per evaluation),
//! `events.jsonl` (oom, shrink, grow, checkpoint, restart, resume, ...) and `summary.json`.
//! Every line is flushed as it is written so a running or crashed run can be read.

use crate::error::TrainError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One optimizer step (`"kind": "step"` in `metrics.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepRecord {
    /// Always `"step"`.
    pub kind: String,
    /// Optimizer step, 1-based.
    pub step: usize,
    /// Training samples consumed so far (`step * effective_batch`).
    pub samples_seen: u64,
    /// Mean training loss over the step's effective batch (`null` in the file when it was
    /// not finite; read back as NaN).
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Micro-batch limit (largest chunk) this step ran with.
    pub micro_batch: usize,
    /// Number of chunks the effective batch was split into.
    pub chunks: usize,
    /// Throughput of this step (samples / its wall time, retries included).
    pub samples_per_sec: f64,
    /// Seconds since the run (or this worker) started.
    pub wall_s: f64,
    /// OOM events so far in the run.
    pub oom_events: usize,
    /// Global gradient norm before clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// The step was skipped (no update) because its loss or gradient norm was not finite.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// Device memory in use (bytes), where the backend reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_used: Option<u64>,
    /// Device memory held by the backend's pool (bytes), where the backend reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_reserved: Option<u64>,
    /// Device memory capacity (bytes), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_total: Option<u64>,
}

/// One evaluation (`"kind": "eval"` in `metrics.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalRecord {
    /// Always `"eval"`.
    pub kind: String,
    /// Optimizer step after which it ran.
    pub step: usize,
    /// Training samples consumed so far.
    pub samples_seen: u64,
    /// Mean validation loss.
    pub valid_loss: f64,
    /// Other metrics (e.g. `accuracy`), averaged over the validation split.
    pub metrics: BTreeMap<String, f64>,
    /// Micro-batch used for evaluation.
    pub eval_batch: usize,
    /// Seconds since start.
    pub wall_s: f64,
}

/// One event in `events.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventRecord {
    /// `oom`, `shrink`, `grow`, `grow_failed`, `give_up`, `checkpoint`, `resume`, `restart`, ...
    pub kind: String,
    /// Optimizer step the event belongs to.
    pub step: usize,
    /// Seconds since start.
    pub wall_s: f64,
    /// Event-specific fields.
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

/// The final `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Summary {
    /// Run name.
    pub name: String,
    /// Optimizer steps completed.
    pub steps: usize,
    /// Training samples consumed.
    pub samples_seen: u64,
    /// Effective batch (fixed for the whole run).
    pub effective_batch: usize,
    /// Mean training loss of the last step.
    pub train_loss: Option<f64>,
    /// Validation loss of the final evaluation.
    pub valid_loss: Option<f64>,
    /// Validation accuracy of the final evaluation (classification and language models).
    pub valid_accuracy: Option<f64>,
    /// All final validation metrics.
    pub valid_metrics: BTreeMap<String, f64>,
    /// Wall time of the run in seconds (all workers).
    pub wall_s: f64,
    /// Out-of-memory events recovered from (all workers).
    pub oom_events: usize,
    /// Micro-batch limit at the end.
    pub micro_batch_final: usize,
    /// Successive micro-batch limits, e.g. `[64, 32, 16, 21, 32]`.
    pub micro_batch_history: Vec<usize>,
    /// Seconds lost to recovery (failed attempts and cleanup).
    pub recovery_s: f64,
    /// Worker restarts by the supervisor.
    pub restarts: usize,
    /// Resumes from a checkpoint.
    pub resumes: usize,
    /// Number of model parameters.
    pub parameters: usize,
    /// Path of the final weights.
    pub model_path: String,
    /// Seconds the training loop waited for checkpoints (snapshots plus waits for a
    /// previous write); the writes themselves run on a background thread.
    #[serde(default)]
    pub checkpoint_stall_s: f64,
    /// Steps skipped because their loss or gradient norm was not finite (no update).
    #[serde(default)]
    pub nonfinite_steps: usize,
}

/// A float written as `null` (JSON has no NaN or infinity) reads back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Appends JSON lines to a file.
pub struct JsonLines {
    out: BufWriter<File>,
    path: PathBuf,
    /// A line is flushed when the previous flush is at least this old (zero: every line).
    flush_every: Duration,
    last_flush: Option<Instant>,
}

impl JsonLines {
    /// Opens `path` for appending (creating it); every line is flushed as it is written.
    pub fn open(path: &Path) -> Result<Self, TrainError> {
        Self::open_with(path, Duration::ZERO)
    }

    /// Like [`JsonLines::open`], but a line is flushed only when the previous flush is at
    /// least `flush_every` old (the first line always); call [`JsonLines::flush`] at
    /// checkpoints and at the end. Dropping the writer flushes too.
    pub fn open_with(path: &Path, flush_every: Duration) -> Result<Self, TrainError> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| TrainError::io("opening (for appending)", path, &e))?;
        Ok(Self { out: BufWriter::new(f), path: path.to_path_buf(), flush_every, last_flush: None })
    }

    /// Writes one value as a line.
    pub fn write<T: Serialize>(&mut self, value: &T) -> Result<(), TrainError> {
        let mut line = serde_json::to_vec(value).map_err(|e| TrainError::Failed(format!("serialising a line: {e}")))?;
        line.push(b'\n');
        self.out.write_all(&line).map_err(|e| TrainError::io("appending to", &self.path, &e))?;
        if self.last_flush.is_none_or(|t| t.elapsed() >= self.flush_every) {
            self.flush()?;
        }
        Ok(())
    }

    /// Flushes the lines written so far to the file.
    pub fn flush(&mut self) -> Result<(), TrainError> {
        self.last_flush = Some(Instant::now());
        self.out.flush().map_err(|e| TrainError::io("appending to", &self.path, &e))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads every JSON line of `path` that parses as `T` (others, e.g. a torn last line of a
/// crashed run, are skipped).
pub fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        .unwrap_or_default()
}
