//! The run log: everything a run records as it goes. `metrics.jsonl` (one line per step and
//! per evaluation), `events.jsonl`, `current.json` for the supervisor, `summary.json` at the
//! end, the observer (console) fan-out, and the trimming of lines a resume runs again.

use crate::error::TrainError;
use crate::progress::Observer;
use oomph_recipe::Phase;
use oomph_rundir::current::{Current, CurrentFile};
use oomph_rundir::events::{self, Event, EventLine};
use oomph_rundir::metrics::JsonLines;
use oomph_rundir::summary::write_summary;
use oomph_rundir::{EvalRecord, RunDir, StepRecord, Summary, WorkerPhase};
use oomph_sched::Policy;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// `metrics.jsonl` is flushed at most this often (and at every checkpoint, evaluation and
/// the end): lines after the newest checkpoint are re-run on resume anyway, and a flush per
/// step costs measurably on small models (BENCHMARKS.md, section 1).
const METRICS_FLUSH: std::time::Duration = std::time::Duration::from_millis(100);

/// The files a run writes as it goes, and the observer that shows them.
pub struct RunLog {
    dir: RunDir,
    /// `None` for a rank other than 0 of several, which writes nothing.
    metrics: Option<JsonLines>,
    events: Option<JsonLines>,
    /// `current.json`, shared by the ranks of a process ([`RunLog::join`]).
    position: Arc<Mutex<Positions>>,
    /// This log's rank among those sharing `position`.
    rank: usize,
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
        let dir = RunDir::new(dir);
        Ok(Self {
            metrics: Some(JsonLines::open_with(&dir.metrics(), METRICS_FLUSH)?),
            events: Some(JsonLines::open(&dir.events())?),
            dir,
            position: Positions::new(false),
            rank: 0,
            observer,
            started: Instant::now(),
            wall_before: 0.0,
            notes,
        })
    }

    /// The log of a rank other than 0 of several, in the run `dir`: it writes and shows
    /// nothing (rank 0 records the run) and reads what rank 0 wrote.
    pub fn follower(dir: &Path) -> Self {
        Self {
            metrics: None,
            events: None,
            dir: RunDir::new(dir),
            position: Positions::new(true),
            rank: 0,
            observer: Box::new(crate::progress::Silent),
            started: Instant::now(),
            wall_before: 0.0,
            notes: Vec::new(),
        }
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
    pub fn event(&mut self, step: usize, event: impl Into<Event>) {
        let line = EventLine::new(step, self.wall(), event);
        let Some(events) = &mut self.events else { return };
        if let Err(e) = events.write(&line) {
            tracing::warn!("could not write events.jsonl: {e}");
        }
        tracing::info!(kind = line.event.kind(), step, "event");
        self.observer.event(&line);
    }

    /// Records the policy's events for `step`.
    pub fn policy_events(&mut self, step: usize, evs: Vec<oomph_sched::Event>) {
        for e in evs {
            self.event(step, e);
        }
    }

    /// Records a completed step.
    pub fn step(&mut self, rec: &StepRecord, total: usize) -> Result<(), TrainError> {
        let Some(metrics) = &mut self.metrics else { return Ok(()) };
        metrics.write(rec)?;
        self.observer.step(rec, total);
        Ok(())
    }

    /// Records an evaluation (flushed at once).
    pub fn eval(&mut self, rec: &EvalRecord) -> Result<(), TrainError> {
        let Some(metrics) = &mut self.metrics else { return Ok(()) };
        metrics.write(rec)?;
        metrics.flush()?;
        self.observer.eval(rec);
        Ok(())
    }

    /// Flushes the metric lines written so far.
    pub fn flush(&mut self) -> Result<(), TrainError> {
        match &mut self.metrics {
            Some(m) => Ok(m.flush()?),
            None => Ok(()),
        }
    }

    /// Records where this rank is now in `current.json` (read by the supervisor after a death
    /// without a word; see [`oomph_rundir::current`]) and for the note of an allocation that
    /// fails on the calling thread ([`crate::alloc::set_thread_position`]). With several
    /// ranks the file says the gang's earliest position ([`Positions::earliest`]).
    pub fn position(&mut self, c: &Current) {
        // A host allocation that fails on this thread is noted with this position (the rank
        // that failed, where `current.json` holds the gang's earliest).
        crate::alloc::set_thread_position(Some((c.phase, c.step)));
        let mut p = lock(&self.position);
        if p.ended {
            return;
        }
        if p.ranks.len() <= self.rank {
            p.ranks.resize(self.rank + 1, None);
        }
        p.ranks[self.rank] = Some(c.clone());
        let Some(earliest) = p.earliest() else { return };
        if p.file.is_none() {
            p.file = CurrentFile::open(&self.dir.current());
        }
        if let Some(f) = &mut p.file {
            f.write(&earliest);
        }
    }

    /// No worker runs any more: `current.json` goes, and later positions (of any rank) are
    /// not written. Only the log that records the run (rank 0's) clears it.
    pub fn clear_position(&mut self) {
        if self.metrics.is_none() {
            return;
        }
        let mut p = lock(&self.position);
        p.ended = true;
        drop(p.file.take());
        let _ = std::fs::remove_file(self.dir.current());
    }

    /// This log's `current.json`, for the other ranks of the process to [`join`](Self::join).
    pub fn share_position(&self) -> SharedPosition {
        SharedPosition(self.position.clone())
    }

    /// Makes this (a follower's) log record rank `rank`'s position in `shared`.
    pub fn join(&mut self, rank: usize, shared: SharedPosition) {
        self.position = shared.0;
        self.rank = rank;
    }

    /// Keeps only the metric lines up to `step` (the steps after it run again); returns the
    /// evaluation recorded at `step`, which is not run again.
    pub fn truncate(&mut self, step: usize) -> Result<Option<EvalRecord>, TrainError> {
        match &mut self.metrics {
            Some(m) => Ok(m.truncate_to_step(step)?),
            // A follower reads the evaluation rank 0 kept.
            None => Ok(oomph_rundir::metrics::read_metrics(&self.dir.metrics())?
                .and_then(|m| m.evals.into_iter().find(|e| e.step == step))),
        }
    }

    /// Worker restarts over the whole run (every supervisor invocation): the restart events
    /// the supervisors recorded, except their final "stop" decisions.
    pub fn restarts_in_run(&self) -> usize {
        events::read_events(&self.dir.events()).map(|(lines, _)| events::restarts(&lines)).unwrap_or(0)
    }

    /// Writes `summary.json` (atomically), removes `current.json` and tells the observer.
    pub fn finish(&mut self, summary: &Summary) -> Result<(), TrainError> {
        if self.metrics.is_none() {
            return Ok(());
        }
        self.flush()?;
        write_summary(&self.dir.summary(), summary)?;
        self.clear_position();
        self.observer.finish(summary);
        Ok(())
    }
}

/// `current.json` of a process, as one or several ranks record it.
struct Positions {
    file: Option<CurrentFile>,
    /// No worker runs any more (`current.json` removed): positions are no longer written.
    ended: bool,
    /// Each rank's last position.
    ranks: Vec<Option<Current>>,
}

/// A process's `current.json`, shared by its ranks ([`RunLog::share_position`]).
#[derive(Clone)]
pub struct SharedPosition(Arc<Mutex<Positions>>);

impl Positions {
    fn new(ended: bool) -> Arc<Mutex<Self>> {
        Arc::new(Mutex::new(Self { file: None, ended, ranks: Vec::new() }))
    }

    /// The position of the rank furthest behind (the earliest step, then the earliest phase in
    /// a step's order; rank 0's on a tie), with the checkpoint rank 0 writes in the background.
    /// A process dies whole: when no note says which rank's allocation failed (the kernel's
    /// OOM killer), the supervisor blames the earliest phase, whose remedy (a smaller
    /// micro-batch in training) is the one that adapts. A rank waiting in an agreement round
    /// for one still in its backward pass is not what needed the memory.
    fn earliest(&self) -> Option<Current> {
        let order = |c: &Current| (c.step, WorkerPhase::ALL.iter().position(|p| *p == c.phase));
        let mut earliest = self.ranks.iter().flatten().min_by_key(|c| order(c))?.clone();
        earliest.checkpoint_step = self.ranks.iter().flatten().find_map(|c| c.checkpoint_step);
        Some(earliest)
    }
}

fn lock(p: &Mutex<Positions>) -> std::sync::MutexGuard<'_, Positions> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// The worker's phase for the loop's `phase` after `completed` steps, and the step it belongs
/// to: evaluation and checkpoints belong to the step just done, training and the update to the
/// next one.
pub fn worker_phase(phase: Phase, completed: usize) -> (usize, WorkerPhase) {
    match phase {
        Phase::Forward | Phase::Backward => (completed + 1, WorkerPhase::Train),
        Phase::Optimizer => (completed + 1, WorkerPhase::Optimizer),
        Phase::Eval => (completed, WorkerPhase::Eval),
        Phase::Checkpoint => (completed, WorkerPhase::Checkpoint),
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
    let (step, phase) = worker_phase(phase, step);
    Current {
        pid: pid(),
        step,
        phase,
        micro_batch: policy.limit(),
        eval_batch,
        min_micro_batch: policy.bounds().0,
        parameters,
        checkpoint_step: writing,
    }
}

/// This process's id, asked of the kernel once (`getpid` is a system call, and `current.json`
/// is written twice per step).
fn pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

/// Seconds rounded to the microsecond for event lines.
pub(crate) fn round_us(s: f64) -> f64 {
    (s * 1e6).round() / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use oomph_rundir::current;

    fn at(step: usize, phase: WorkerPhase, checkpoint_step: Option<usize>) -> Current {
        Current { pid: 1, step, phase, micro_batch: 8, eval_batch: 8, checkpoint_step, ..Default::default() }
    }

    /// A follower still in the backward pass while rank 0 waits for it with its update's phase
    /// entered: a death without a note is the backward pass's (regression: rank 0's position
    /// alone made the supervisor keep the micro-batch and give up on the second death).
    #[test]
    fn current_json_says_the_earliest_position_of_the_ranks() {
        let d = tempfile::tempdir().unwrap();
        let mut zero = RunLog::open(d.path(), Box::new(crate::progress::Silent), Vec::new()).unwrap();
        let mut one = RunLog::follower(d.path());
        one.join(1, zero.share_position());
        let file = || current::read(&RunDir::new(d.path()).current()).unwrap();
        zero.position(&at(5, WorkerPhase::Train, None));
        one.position(&at(5, WorkerPhase::Train, None));
        zero.position(&at(5, WorkerPhase::Optimizer, Some(4)));
        assert_eq!(file(), at(5, WorkerPhase::Train, Some(4)), "rank 1 is behind; rank 0's checkpoint in flight");
        one.position(&at(5, WorkerPhase::Optimizer, None));
        assert_eq!(file(), at(5, WorkerPhase::Optimizer, Some(4)));
        // The evaluation after step 5 comes before step 6's training.
        one.position(&at(6, WorkerPhase::Train, None));
        zero.position(&at(5, WorkerPhase::Eval, None));
        assert_eq!(file(), at(5, WorkerPhase::Eval, None));
        // Once rank 0 ended the run, no rank writes it again.
        zero.clear_position();
        one.position(&at(7, WorkerPhase::Train, None));
        assert!(!RunDir::new(d.path()).current().exists());
    }
}
