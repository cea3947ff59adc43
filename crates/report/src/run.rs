//! Reading a run directory: metric lines, events, the summary, the recipe and the newest
//! checkpoint's state, tolerant of a run that is still going or that crashed mid-line. The
//! formats and their readers are `oomph_rundir`'s; this module only gathers what a report
//! needs.

use crate::error::ReportError;
use oomph_rundir::checkpoint::{self, Newest};
use oomph_rundir::events::{self, Event, EventLine};
use oomph_rundir::metrics::{self, EvalRecord, StepRecord};
use oomph_rundir::summary::{self, Summary};
use oomph_rundir::RunDir;
use oomph_sched::Event as Policy;
use std::path::{Path, PathBuf};

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
    /// Data-parallel ranks from the summary, else the recipe (1 when neither says).
    pub ranks: u64,
    /// Steps in order, one per step number (the last record of a repeated step wins).
    pub steps: Vec<StepRecord>,
    /// Evaluations in order, one per step number.
    pub evals: Vec<EvalRecord>,
    /// Events in file order, without those a resume abandoned ([`events::linear_history`]).
    pub events: Vec<EventLine>,
    pub summary: Option<Summary>,
    /// The newest complete checkpoint and what its state says.
    pub checkpoint: Option<Newest>,
    /// Lines of `metrics.jsonl` and `events.jsonl` that did not parse (e.g. a torn last line).
    pub skipped_lines: usize,
}

/// The report's error for a file of the run directory that cannot be read.
fn read_error(e: oomph_rundir::Error) -> ReportError {
    ReportError::Read { path: e.path, source: e.source }
}

impl Run {
    /// Reads `dir`. Fails only when `metrics.jsonl` is missing or a present file cannot be
    /// read or is malformed as a whole (`summary.json`, `recipe.resolved.toml`); unparsable
    /// lines are skipped and counted.
    pub fn load(dir: &Path) -> Result<Run, ReportError> {
        let rd = RunDir::new(dir);
        let Some(metrics) = metrics::read_metrics(&rd.metrics()).map_err(read_error)? else {
            return Err(ReportError::NotARunDir { dir: dir.to_path_buf() });
        };
        let (events, skipped_events) = events::read_events(&rd.events()).map_err(read_error)?;
        let summary = summary::read_summary(&rd.summary()).map_err(|e| {
            if e.is_malformed() {
                ReportError::Summary { path: e.path, message: e.source.to_string() }
            } else {
                read_error(e)
            }
        })?;
        let recipe_path = rd.recipe();
        let recipe = match std::fs::read_to_string(&recipe_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(ReportError::Read { path: recipe_path, source }),
            Ok(text) => Some(text.parse::<toml::Value>().map_err(|e| ReportError::Recipe {
                path: recipe_path,
                message: e.to_string().trim().replace('\n', " "),
            })?),
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
        let recipe_ranks = recipe
            .as_ref()
            .and_then(|r| r.get("distributed")?.get("ranks")?.as_integer())
            .and_then(|n| u64::try_from(n).ok());
        let ranks = summary.as_ref().and_then(|s| s.ranks).map(|r| r as u64).or(recipe_ranks).unwrap_or(1);
        let derived_batch =
            metrics.steps.first().filter(|s| s.step > 0 && s.samples_seen > 0).map(|s| s.samples_seen / s.step as u64);
        let effective_batch =
            summary.as_ref().map(|s| s.effective_batch as u64).filter(|&b| b > 0).or(recipe_batch).or(derived_batch);
        Ok(Run {
            dir: dir.to_path_buf(),
            name,
            effective_batch,
            ranks,
            steps: metrics.steps,
            evals: metrics.evals,
            events: events::linear_history(events),
            summary,
            // The report shows what it can read: a checkpoint directory that cannot be listed
            // leaves the checkpoint out (`oomph inspect` and a resume name the error).
            checkpoint: checkpoint::newest(&rd.checkpoints()).ok().flatten(),
            skipped_lines: metrics.skipped + skipped_events,
        })
    }

    /// Headline counts: the summary's when the run finished, else derived from the last
    /// records and the events.
    pub fn totals(&self) -> Totals {
        if let Some(s) = &self.summary {
            return Totals {
                steps: s.steps as u64,
                samples: s.samples_seen,
                wall_s: s.wall_s,
                ooms: s.oom_events as u64,
                restarts: s.restarts as u64,
                resumes: s.resumes as u64,
            };
        }
        let last = self.steps.last();
        let wall_s = last.map(|s| s.wall_s).into_iter().chain(self.evals.last().map(|e| e.wall_s)).fold(0.0, f64::max);
        let count = |f: fn(&Event) -> bool| self.events.iter().filter(|e| f(&e.event)).count() as u64;
        Totals {
            steps: last.map_or(0, |s| s.step as u64),
            samples: last.map_or(0, |s| s.samples_seen),
            wall_s,
            ooms: count(|e| matches!(e, Event::Oom { .. })).max(last.map_or(0, |s| s.oom_events as u64)),
            restarts: count(|e| matches!(e, Event::Restart { .. })),
            resumes: count(|e| matches!(e, Event::Resume { .. })),
        }
    }

    /// Successive training micro-batch limits: the summary's history when the run finished,
    /// else rebuilt from the policy's events (`shrink`, `grow`, `grow_failed`; an evaluation
    /// shrink changes the evaluation batch, not the limit), else the distinct successive
    /// largest chunks of the recorded steps.
    pub fn micro_batch_history(&self) -> Vec<usize> {
        if let Some(s) = &self.summary {
            if !s.micro_batch_history.is_empty() {
                return s.micro_batch_history.clone();
            }
        }
        let mut hist = Vec::new();
        let push = |h: &mut Vec<usize>, v: usize| {
            if h.last() != Some(&v) {
                h.push(v);
            }
        };
        for e in &self.events {
            let (first, then) = match e.event.policy() {
                Some(&Policy::Shrink { from, to, .. } | &Policy::Grow { from, to }) => (from, to),
                Some(&Policy::GrowFailed { at, back_to, .. }) => (at, back_to),
                Some(Policy::CeilingCleared { .. }) | None => continue,
            };
            if hist.is_empty() {
                push(&mut hist, first);
            }
            push(&mut hist, then);
        }
        if hist.is_empty() {
            for s in &self.steps {
                push(&mut hist, s.micro_batch);
            }
        }
        hist
    }
}
