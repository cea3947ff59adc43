//! `summary.json`: written once, atomically, when a run finishes.

use crate::error::{read_optional, write_atomically, Error};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The final `summary.json`. Every field reads with its default when an older file lacks it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
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
    /// All final validation metrics (a `null` value reads back as NaN).
    #[serde(deserialize_with = "crate::metrics::nan_if_null_values")]
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
    pub checkpoint_stall_s: f64,
    /// Steps skipped because their loss or gradient norm was not finite (no update).
    pub nonfinite_steps: usize,
    /// Data-parallel ranks of the worker that finished the run (`distributed.ranks`; `None` in
    /// summaries written before it was recorded: the run's recipe says).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranks: Option<usize>,
}

/// Writes `summary` (pretty-printed) to `path` atomically ([`write_atomically`]), so the file
/// always holds a whole summary or none.
pub fn write_summary(path: &Path, summary: &Summary) -> Result<(), Error> {
    let text =
        serde_json::to_string_pretty(summary).map_err(|e| Error::new("serialising", path, std::io::Error::other(e)))?;
    write_atomically(path, text.as_bytes())
}

/// Reads `summary.json` at `path`: `None` when it does not exist, an error naming the path
/// when it cannot be read or is not a summary ([`Error::is_malformed`]).
pub fn read_summary(path: &Path) -> Result<Option<Summary>, Error> {
    let Some(text) = read_optional(path)? else { return Ok(None) };
    serde_json::from_str(&text).map(Some).map_err(|e| Error::malformed(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A summary exactly as the trainer writes it today.
    const TODAY: &str = r#"{
  "name": "digits-oom-demo",
  "steps": 40,
  "samples_seen": 3840,
  "effective_batch": 96,
  "train_loss": 0.017241593450307846,
  "valid_loss": 0.17278812589087525,
  "valid_accuracy": 0.9375,
  "valid_metrics": {
    "accuracy": 0.9375
  },
  "wall_s": 6.461351941,
  "oom_events": 4,
  "micro_batch_final": 24,
  "micro_batch_history": [
    48,
    24
  ],
  "recovery_s": 0.013874152,
  "restarts": 1,
  "resumes": 1,
  "parameters": 4349962,
  "model_path": "/tmp/realfix/run/model.safetensors",
  "checkpoint_stall_s": 0.5,
  "nonfinite_steps": 0,
  "ranks": 2
}"#;

    #[test]
    fn todays_summary_reads_and_writes_back_byte_for_byte() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("summary.json");
        std::fs::write(&p, TODAY).unwrap();
        let s = read_summary(&p).unwrap().unwrap();
        assert_eq!((s.steps, s.micro_batch_history.as_slice(), s.restarts, s.ranks), (40, &[48, 24][..], 1, Some(2)));
        write_summary(&p, &s).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), TODAY);
        assert!(!d.path().join("summary.json.tmp").exists());
        assert_eq!(read_summary(&p).unwrap(), Some(s));
    }

    #[test]
    fn an_older_summary_reads_with_defaults_and_a_broken_one_names_its_path() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("summary.json");
        assert_eq!(read_summary(&p).unwrap(), None);
        std::fs::write(&p, r#"{"name":"old","steps":3,"valid_metrics":{"accuracy":null}}"#).unwrap();
        let s = read_summary(&p).unwrap().unwrap();
        assert_eq!(
            (s.name.as_str(), s.steps, s.checkpoint_stall_s, s.nonfinite_steps, s.ranks),
            ("old", 3, 0.0, 0, None)
        );
        assert!(s.valid_metrics["accuracy"].is_nan());
        std::fs::write(&p, "{not json").unwrap();
        let e = read_summary(&p).unwrap_err();
        assert!(e.is_malformed() && e.to_string().contains("summary.json"), "{e}");
    }
}
