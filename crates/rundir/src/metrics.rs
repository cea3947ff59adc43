//! `metrics.jsonl`: one JSON object per optimizer step ([`StepRecord`], `"kind": "step"`) and
//! per evaluation ([`EvalRecord`], `"kind": "eval"`), appended by [`JsonLines`] as the run goes,
//! so a running or crashed run can be read.
//!
//! A line looks like
//! `{"kind":"step","step":1,"samples_seen":96,"loss":2.31,"lr":0.003,"micro_batch":24,"chunks":4,"samples_per_sec":558.7,"wall_s":0.22,"oom_events":1}`.
//! A float that was not finite is written `null` (JSON has no NaN) and reads back as NaN.
//!
//! After a resume from step `S` the lines after `S` are dropped ([`JsonLines::truncate_to_step`]); a
//! reader that meets a step number that does not increase (a worker died after writing lines
//! its successor re-runs) keeps the later records ([`parse_metrics`]).

use crate::error::{read_optional, write_atomically, Ctx, Error};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One optimizer step (`"kind": "step"` in `metrics.jsonl`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename = "step")]
pub struct StepRecord {
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
#[serde(tag = "kind", rename = "eval")]
pub struct EvalRecord {
    /// Optimizer step after which it ran.
    pub step: usize,
    /// Training samples consumed so far.
    pub samples_seen: u64,
    /// Mean validation loss (`null` in the file when it was not finite; read back as NaN).
    #[serde(deserialize_with = "nan_if_null")]
    pub valid_loss: f64,
    /// Other metrics (e.g. `accuracy`), averaged over the validation split (a `null` value
    /// reads back as NaN).
    #[serde(deserialize_with = "nan_if_null_values")]
    pub metrics: BTreeMap<String, f64>,
    /// Micro-batch used for evaluation.
    pub eval_batch: usize,
    /// Seconds since start.
    pub wall_s: f64,
}

/// One line of `metrics.jsonl`, whichever kind it is.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetricLine {
    /// An optimizer step.
    Step(StepRecord),
    /// An evaluation.
    Eval(EvalRecord),
}

impl MetricLine {
    /// The step the line belongs to.
    pub fn step(&self) -> usize {
        match self {
            MetricLine::Step(s) => s.step,
            MetricLine::Eval(e) => e.step,
        }
    }
}

/// Written as the record itself (which carries its own `kind`).
impl Serialize for MetricLine {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MetricLine::Step(r) => r.serialize(s),
            MetricLine::Eval(r) => r.serialize(s),
        }
    }
}

impl From<StepRecord> for MetricLine {
    fn from(r: StepRecord) -> Self {
        MetricLine::Step(r)
    }
}

impl From<EvalRecord> for MetricLine {
    fn from(r: EvalRecord) -> Self {
        MetricLine::Eval(r)
    }
}

/// A float written as `null` (JSON has no NaN or infinity) reads back as NaN.
pub(crate) fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// [`nan_if_null`] for the values of a map.
pub(crate) fn nan_if_null_values<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
    let m = BTreeMap::<String, Option<f64>>::deserialize(d)?;
    Ok(m.into_iter().map(|(k, v)| (k, v.unwrap_or(f64::NAN))).collect())
}

/// Appends JSON lines to a file (`metrics.jsonl`, `events.jsonl`).
pub struct JsonLines {
    out: BufWriter<File>,
    path: PathBuf,
    /// A line is flushed when the previous flush is at least this old (zero: every line).
    flush_every: Duration,
    last_flush: Option<Instant>,
    /// The line being written (kept to reuse its allocation).
    line: Vec<u8>,
}

impl JsonLines {
    /// Opens `path` for appending (creating it); every line is flushed as it is written.
    pub fn open(path: &Path) -> Result<Self, Error> {
        Self::open_with(path, Duration::ZERO)
    }

    /// Like [`JsonLines::open`], but a line is flushed only when the previous flush is at
    /// least `flush_every` old (the first line always); call [`JsonLines::flush`] at
    /// checkpoints and at the end. Dropping the writer flushes too.
    pub fn open_with(path: &Path, flush_every: Duration) -> Result<Self, Error> {
        let f = OpenOptions::new().create(true).append(true).open(path).at("opening (for appending)", path)?;
        Ok(Self { out: BufWriter::new(f), path: path.to_path_buf(), flush_every, last_flush: None, line: Vec::new() })
    }

    /// Writes one value as a line.
    pub fn write<T: Serialize>(&mut self, value: &T) -> Result<(), Error> {
        // The line is serialised whole into a buffer kept across lines (no allocation per
        // step), then handed over at once: the buffered writer takes a line shorter than its
        // 8 KiB buffer whole or not at all, so a full disk never leaves half a line to be
        // glued to the next one.
        self.line.clear();
        serde_json::to_writer(&mut self.line, value)
            .map_err(std::io::Error::other)
            .at("serialising a line for", &self.path)?;
        self.line.push(b'\n');
        self.out.write_all(&self.line).at("appending to", &self.path)?;
        if self.last_flush.is_none_or(|t| t.elapsed() >= self.flush_every) {
            self.flush()?;
        }
        Ok(())
    }

    /// Flushes the lines written so far to the file.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.last_flush = Some(Instant::now());
        self.out.flush().at("appending to", &self.path)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes, then keeps only the lines of the file up to `step` and reopens it (the
    /// truncated file replaces the one this writer had open). Returns the evaluation recorded
    /// at exactly `step`, if kept.
    ///
    /// A line without a step, such as a torn one, goes too. The file is rewritten atomically
    /// ([`write_atomically`]: through `metrics.jsonl.tmp`, removed if that fails), and only
    /// when something is dropped; a missing file is no error.
    pub fn truncate_to_step(&mut self, step: usize) -> Result<Option<EvalRecord>, Error> {
        self.flush()?;
        let kept = truncate_metrics(&self.path, step)?;
        *self = Self::open_with(&self.path, self.flush_every)?;
        Ok(kept)
    }
}

/// Keeps only the lines of the metrics file `path` whose step is at most `step` (the steps
/// after it are run again after a resume), as [`JsonLines::truncate_to_step`] says; a writer
/// open on `path` must be reopened afterwards (that method does both). Returns the evaluation
/// recorded at exactly `step`, if kept (it is not run again).
fn truncate_metrics(path: &Path, step: usize) -> Result<Option<EvalRecord>, Error> {
    let Some(text) = read_optional(path)? else { return Ok(None) };
    #[derive(Deserialize)]
    struct StepOnly {
        step: usize,
    }
    let kept: Vec<&str> =
        text.lines().filter(|l| serde_json::from_str::<StepOnly>(l).is_ok_and(|s| s.step <= step)).collect();
    let eval = kept.iter().rev().find_map(|l| match serde_json::from_str::<MetricLine>(l) {
        Ok(MetricLine::Eval(e)) if e.step == step => Some(e),
        _ => None,
    });
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    if body.len() != text.len() {
        write_atomically(path, body.as_bytes())?;
    }
    Ok(eval)
}

/// What `metrics.jsonl` holds, as one history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Steps in order, one per step number.
    pub steps: Vec<StepRecord>,
    /// Evaluations in order, one per step number.
    pub evals: Vec<EvalRecord>,
    /// Lines that did not parse (e.g. a torn last line, an unknown kind).
    pub skipped: usize,
}

/// Parses the text of `metrics.jsonl` into one history. A step number that does not
/// increase means the run went back to a checkpoint: what was recorded from that step on is
/// superseded by what follows (the last record of a repeated step wins). Lines that do not
/// parse are counted in [`Metrics::skipped`]; blank lines are ignored.
pub fn parse_metrics(text: &str) -> Metrics {
    let mut steps: BTreeMap<usize, StepRecord> = BTreeMap::new();
    let mut evals: BTreeMap<usize, EvalRecord> = BTreeMap::new();
    let mut skipped = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<MetricLine>(line) {
            Ok(MetricLine::Step(s)) => {
                if steps.last_key_value().is_some_and(|(&last, _)| s.step <= last) {
                    steps.split_off(&s.step);
                    evals.split_off(&s.step);
                }
                steps.insert(s.step, s);
            }
            Ok(MetricLine::Eval(e)) => {
                evals.insert(e.step, e);
            }
            Err(_) => skipped += 1,
        }
    }
    Metrics { steps: steps.into_values().collect(), evals: evals.into_values().collect(), skipped }
}

/// Reads `metrics.jsonl` at `path` with [`parse_metrics`]; `None` when the file does not
/// exist.
pub fn read_metrics(path: &Path) -> Result<Option<Metrics>, Error> {
    Ok(read_optional(path)?.map(|t| parse_metrics(&t)))
}

/// The step number of the last step record of `metrics.jsonl` at `path` ([`read_metrics`];
/// `None` when there is none or the file cannot be read).
pub fn last_step(path: &Path) -> Option<usize> {
    read_metrics(path).ok()??.steps.last().map(|s| s.step)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk that fills up and frees space again never leaves half a line glued to the next
    /// one. The disk is a file-size limit (`RLIMIT_FSIZE`, with `SIGXFSZ` ignored), which only
    /// a process of its own may set: the test runs itself again in a child.
    #[test]
    fn a_full_disk_never_glues_half_a_line_to_the_next() {
        const CHILD: &str = "OOMPH_TEST_FULL_DISK_CHILD";
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("events.jsonl");
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "metrics::tests::a_full_disk_never_glues_half_a_line_to_the_next", "--nocapture"])
                .env(CHILD, &path)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success() && stdout.contains("1 passed"), "{stdout}");
            return;
        }
        let path = std::path::PathBuf::from(std::env::var_os(CHILD).unwrap());
        let limit = |bytes: u64| {
            let l = libc::rlimit { rlim_cur: bytes, rlim_max: libc::RLIM_INFINITY };
            // SAFETY: setting this process's own limit.
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &l) }, 0);
        };
        // SAFETY: ignoring one signal in this child process.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        let mut out = JsonLines::open(&path).unwrap();
        limit(1000);
        let mut failed = 0;
        for i in 0..400 {
            failed += out.write(&step(i)).is_err() as usize;
        }
        assert!(failed > 0, "the limit was never reached");
        limit(libc::RLIM_INFINITY);
        for i in 400..410 {
            out.write(&step(i)).unwrap();
        }
        drop(out);
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            assert!(serde_json::from_str::<StepRecord>(line).is_ok(), "a torn line: {line}");
        }
        assert!(text.lines().count() >= 10);
    }

    /// Lines exactly as the trainer writes them today.
    const STEP: &str = r#"{"kind":"step","step":1,"samples_seen":96,"loss":2.3137898445129395,"lr":0.003,"micro_batch":24,"chunks":4,"samples_per_sec":558.773466630296,"wall_s":0.226817115,"oom_events":1}"#;
    const STEP_FULL: &str = r#"{"kind":"step","step":2,"samples_seen":192,"loss":null,"lr":0.003,"micro_batch":24,"chunks":4,"samples_per_sec":700.5,"wall_s":0.5,"oom_events":1,"grad_norm":1.5,"skipped":true,"mem_used":1024,"mem_reserved":2048,"mem_total":4096}"#;
    const EVAL: &str = r#"{"kind":"eval","step":10,"samples_seen":960,"valid_loss":0.17278812589087525,"metrics":{"accuracy":0.9375},"eval_batch":24,"wall_s":1.4}"#;

    pub(crate) fn step(step: usize) -> StepRecord {
        StepRecord {
            step,
            samples_seen: step as u64 * 96,
            loss: 1.5,
            lr: 0.003,
            micro_batch: 48,
            chunks: 2,
            samples_per_sec: 1000.0,
            wall_s: step as f64,
            oom_events: 0,
            grad_norm: None,
            skipped: false,
            mem_used: None,
            mem_reserved: None,
            mem_total: None,
        }
    }

    fn eval(step: usize) -> EvalRecord {
        EvalRecord {
            step,
            samples_seen: step as u64 * 96,
            valid_loss: 0.5,
            metrics: BTreeMap::from([("accuracy".to_string(), 0.75)]),
            eval_batch: 64,
            wall_s: step as f64,
        }
    }

    #[test]
    fn todays_lines_read_and_write_back_byte_for_byte() {
        for line in [STEP, EVAL] {
            let rec: MetricLine = serde_json::from_str(line).unwrap();
            assert_eq!(serde_json::to_string(&rec).unwrap(), line);
        }
        let MetricLine::Step(s) = serde_json::from_str(STEP_FULL).unwrap() else { panic!("a step") };
        assert!(s.loss.is_nan() && s.skipped);
        assert_eq!(
            (s.grad_norm, s.mem_used, s.mem_reserved, s.mem_total),
            (Some(1.5), Some(1024), Some(2048), Some(4096))
        );
        assert_eq!(serde_json::to_string(&s).unwrap(), STEP_FULL, "NaN is written as null again");
        // A record written directly carries its kind.
        let r = step(3);
        assert!(serde_json::to_string(&r).unwrap().starts_with(r#"{"kind":"step","step":3,"#));
        assert!(serde_json::to_string(&eval(3)).unwrap().starts_with(r#"{"kind":"eval","step":3,"#));
    }

    #[test]
    fn a_non_finite_evaluation_reads_back_as_nan() {
        let line = r#"{"kind":"eval","step":1,"samples_seen":9,"valid_loss":null,"metrics":{"accuracy":null},"eval_batch":4,"wall_s":0.1}"#;
        let MetricLine::Eval(e) = serde_json::from_str(line).unwrap() else { panic!("an eval") };
        assert!(e.valid_loss.is_nan() && e.metrics["accuracy"].is_nan());
    }

    #[test]
    fn the_kind_decides_the_record() {
        assert!(matches!(serde_json::from_str::<MetricLine>(STEP), Ok(MetricLine::Step(_))));
        assert!(matches!(serde_json::from_str::<MetricLine>(EVAL), Ok(MetricLine::Eval(_))));
        let other = STEP.replace(r#""kind":"step""#, r#""kind":"other""#);
        assert!(serde_json::from_str::<MetricLine>(&other).is_err());
    }

    #[test]
    fn written_lines_read_back_and_torn_lines_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metrics.jsonl");
        let mut w = JsonLines::open(&p).unwrap();
        w.write(&step(1)).unwrap();
        w.write(&eval(1)).unwrap();
        drop(w);
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(br#"{"kind":"step","st"#).unwrap();
        let m = read_metrics(&p).unwrap().unwrap();
        assert_eq!(m, Metrics { steps: vec![step(1)], evals: vec![eval(1)], skipped: 1 });
        assert_eq!(last_step(&p), Some(1));
        assert!(read_metrics(&d.path().join("none.jsonl")).unwrap().is_none());
    }

    #[test]
    fn a_step_that_does_not_increase_supersedes_what_followed_it() {
        let mut text = String::new();
        for s in [1, 2, 3, 4] {
            text += &serde_json::to_string(&step(s)).unwrap();
            text.push('\n');
        }
        text += &serde_json::to_string(&eval(4)).unwrap();
        text.push('\n');
        let mut again = step(3);
        again.chunks = 6;
        text += &serde_json::to_string(&again).unwrap();
        text += "\n\n";
        let m = parse_metrics(&text);
        assert_eq!(m.steps.iter().map(|s| s.step).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(m.steps[2].chunks, 6);
        assert!(m.evals.is_empty(), "the evaluation at step 4 was superseded");
        assert_eq!(m.skipped, 0);
    }

    #[test]
    fn truncation_keeps_the_lines_up_to_the_step_and_returns_its_evaluation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metrics.jsonl");
        let mut w = JsonLines::open(&p).unwrap();
        for s in 1..=4 {
            w.write(&step(s)).unwrap();
            if s % 2 == 0 {
                w.write(&eval(s)).unwrap();
            }
        }
        assert_eq!(w.truncate_to_step(2).unwrap(), Some(eval(2)));
        w.write(&step(3)).unwrap();
        drop(w);
        let lines: Vec<usize> = std::fs::read_to_string(&p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<MetricLine>(l).unwrap().step())
            .collect();
        assert_eq!(lines, [1, 2, 2, 3]);
        assert!(!d.path().join("metrics.jsonl.tmp").exists());
        // Nothing to drop: the file is left alone; no evaluation at the step.
        use std::os::unix::fs::MetadataExt;
        let before = std::fs::metadata(&p).unwrap().ino();
        assert_eq!(truncate_metrics(&p, 3).unwrap(), None);
        assert_eq!(std::fs::metadata(&p).unwrap().ino(), before, "not replaced");
        assert_eq!(truncate_metrics(&p, 2).unwrap(), Some(eval(2)));
        assert_ne!(std::fs::metadata(&p).unwrap().ino(), before, "replaced through a rename");
        assert_eq!(truncate_metrics(&p, 0).unwrap(), None);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "");
        assert_eq!(truncate_metrics(&d.path().join("missing.jsonl"), 3).unwrap(), None);
    }

    #[test]
    fn a_failed_truncation_names_its_path_and_removes_its_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("metrics.jsonl");
        std::fs::write(
            &p,
            format!("{}\n{}\n", serde_json::to_string(&step(1)).unwrap(), serde_json::to_string(&step(2)).unwrap()),
        )
        .unwrap();
        // A directory where the temporary file goes makes the write fail.
        std::fs::create_dir(d.path().join("metrics.jsonl.tmp")).unwrap();
        let e = truncate_metrics(&p, 1).unwrap_err();
        assert!(e.to_string().contains("metrics.jsonl.tmp"), "{e}");
        assert_eq!(read_metrics(&p).unwrap().unwrap().steps.len(), 2, "the file is untouched");
    }

    #[test]
    fn an_append_error_names_the_operation_and_the_file() {
        let d = tempfile::tempdir().unwrap();
        let e = JsonLines::open(d.path()).err().expect("a directory cannot be appended to");
        assert!(e.to_string().starts_with(&format!("opening (for appending) {}: ", d.path().display())), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn any_step_record_round_trips(step in 1usize..1_000_000, loss in proptest::num::f64::ANY, micro in 1usize..4096, skipped: bool, mem in proptest::option::of(0u64..u64::MAX / 2)) {
            let mut r = super::tests::step(step);
            r.loss = loss;
            r.micro_batch = micro;
            r.skipped = skipped;
            r.mem_used = mem;
            let text = serde_json::to_string(&r).unwrap();
            let back: MetricLine = serde_json::from_str(&text).unwrap();
            let MetricLine::Step(back) = back else { panic!("a step") };
            if loss.is_finite() {
                // serde_json parses floats to within an ulp or so (no `float_roundtrip`).
                proptest::prop_assert!((back.loss - loss).abs() <= loss.abs() * 1e-15);
            } else {
                proptest::prop_assert!(back.loss.is_nan());
            }
            let mut back = back;
            back.loss = r.loss;
            if loss.is_finite() {
                proptest::prop_assert_eq!(back, r);
            }
        }
    }
}
