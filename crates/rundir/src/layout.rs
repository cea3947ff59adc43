//! The names of everything oomph writes in a run directory, in one place, and [`RunDir`],
//! which joins them to a directory.
//!
//! ```text
//! RUN/
//!   recipe.resolved.toml   the recipe with every default filled in
//!   metrics.jsonl          one line per optimizer step and per evaluation (metrics)
//!   events.jsonl           one line per event (events)
//!   summary.json           written once, when the run finishes (summary)
//!   current.json           what the worker is doing right now (current)
//!   worker-death.txt       the allocation-failure note (note)
//!   faults-fired.txt       simulated faults that already fired ([faults] only)
//!   oomph.lock             one writer per run directory
//!   model.safetensors      the final weights
//!   report.png, report.svg `oomph report`
//!   checkpoints/step-N/    model.mpk, optim.mpk, recipe.toml, state.json, manifest.json
//!   checkpoints/abandoned/ checkpoints later than a resumed one
//!   checkpoints/damaged/   checkpoints a resume found damaged
//! ```

use std::path::{Path, PathBuf};

/// The recipe with every default filled in.
pub const RECIPE: &str = "recipe.resolved.toml";
/// One JSON line per optimizer step and per evaluation.
pub const METRICS: &str = "metrics.jsonl";
/// One JSON line per event.
pub const EVENTS: &str = "events.jsonl";
/// The run's summary, written when it finishes.
pub const SUMMARY: &str = "summary.json";
/// What the worker is doing right now.
pub const CURRENT: &str = "current.json";
/// The allocation-failure note of a worker.
pub const WORKER_DEATH: &str = "worker-death.txt";
/// The simulated faults (`[faults]`) that already fired, so a restarted worker does not fire
/// them again.
pub const FAULTS_FIRED: &str = "faults-fired.txt";
/// The lock held by the one command that writes the run directory.
pub const LOCK: &str = "oomph.lock";
/// The final weights.
pub const MODEL: &str = "model.safetensors";
/// The bitmap report of `oomph report`.
pub const REPORT_PNG: &str = "report.png";
/// The vector report of `oomph report`.
pub const REPORT_SVG: &str = "report.svg";
/// The directory of checkpoints.
pub const CHECKPOINTS: &str = "checkpoints";
/// Inside `checkpoints/`: where checkpoints later than a resumed one are moved.
pub const ABANDONED: &str = "abandoned";
/// Inside `checkpoints/`: where damaged checkpoints are moved when a resume skips them.
pub const DAMAGED: &str = "damaged";

/// In a checkpoint: the model record.
pub const CKPT_MODEL: &str = "model.mpk";
/// In a checkpoint: the optimizer record.
pub const CKPT_OPTIM: &str = "optim.mpk";
/// In a checkpoint: the recipe it was trained with.
pub const CKPT_RECIPE: &str = "recipe.toml";
/// In a checkpoint: the training state ([`crate::checkpoint::TrainState`]).
pub const CKPT_STATE: &str = "state.json";
/// In a checkpoint: the manifest, written last ([`crate::checkpoint::Manifest`]).
pub const CKPT_MANIFEST: &str = "manifest.json";

/// Every name oomph writes at the top of a run directory (besides their [`temporary`] files).
pub const RUN_FILES: &[&str] = &[
    RECIPE,
    METRICS,
    EVENTS,
    CHECKPOINTS,
    MODEL,
    SUMMARY,
    REPORT_PNG,
    REPORT_SVG,
    WORKER_DEATH,
    CURRENT,
    FAULTS_FIRED,
    LOCK,
];

/// What a writer appends to a file's name for the temporary file it renames into place
/// ([`temporary`]).
pub const TMP_SUFFIX: &str = ".tmp";

/// The temporary file through which `path` is written: its name with [`TMP_SUFFIX`] appended
/// (`summary.json.tmp`, `model.safetensors.tmp`). The one rule of every writer of a run
/// directory; [`RunDir::foreign_entries`] accepts these names beside the files.
pub fn temporary(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(TMP_SUFFIX);
    PathBuf::from(name)
}

/// Every name oomph writes inside a checkpoint directory.
pub const CHECKPOINT_FILES: &[&str] = &[CKPT_MODEL, CKPT_OPTIM, CKPT_RECIPE, CKPT_STATE, CKPT_MANIFEST];

/// A run directory: one method per file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run directory at `root` (nothing is created or checked).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `recipe.resolved.toml`.
    pub fn recipe(&self) -> PathBuf {
        self.root.join(RECIPE)
    }

    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.root.join(METRICS)
    }

    /// `events.jsonl`.
    pub fn events(&self) -> PathBuf {
        self.root.join(EVENTS)
    }

    /// `summary.json`.
    pub fn summary(&self) -> PathBuf {
        self.root.join(SUMMARY)
    }

    /// `current.json`.
    pub fn current(&self) -> PathBuf {
        self.root.join(CURRENT)
    }

    /// `checkpoints/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.root.join(CHECKPOINTS)
    }

    /// `model.safetensors`.
    pub fn model(&self) -> PathBuf {
        self.root.join(MODEL)
    }

    /// `oomph.lock`.
    pub fn lock(&self) -> PathBuf {
        self.root.join(LOCK)
    }

    /// `faults-fired.txt`.
    pub fn faults_fired(&self) -> PathBuf {
        self.root.join(FAULTS_FIRED)
    }

    /// `worker-death.txt`.
    pub fn worker_death(&self) -> PathBuf {
        self.root.join(WORKER_DEATH)
    }

    /// The allocation-failure note of rank `rank` of a launch's processes in its attempt
    /// `attempt` (the launcher's restart count): rank 0's is `worker-death.txt`, another
    /// rank's `worker-death.rank-R.attempt-A.txt` (each process writes its own; the restarted
    /// rank 0 reads the dead attempt's).
    pub fn worker_death_of(&self, rank: usize, attempt: usize) -> PathBuf {
        if rank == 0 {
            return self.worker_death();
        }
        self.root.join(format!("worker-death.rank-{rank}.attempt-{attempt}.txt"))
    }

    /// `report.png`.
    pub fn report_png(&self) -> PathBuf {
        self.root.join(REPORT_PNG)
    }

    /// `report.svg`.
    pub fn report_svg(&self) -> PathBuf {
        self.root.join(REPORT_SVG)
    }

    /// What in the run directory oomph did not write: top-level entries not in
    /// [`RUN_FILES`] (nor the [`temporary`] file of one), entries of `checkpoints/` (and of
    /// its `abandoned/` and `damaged/`) that are not checkpoint directories, and files inside
    /// checkpoint directories not in [`CHECKPOINT_FILES`]. Sorted.
    pub fn foreign_entries(&self) -> Vec<PathBuf> {
        let names = |dir: &Path| -> Vec<(String, PathBuf)> {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        };
        let ours = |n: &str| {
            let n = n.strip_suffix(TMP_SUFFIX).unwrap_or(n);
            RUN_FILES.contains(&n) || (n.starts_with("worker-death.rank-") && n.ends_with(".txt"))
        };
        let mut foreign: Vec<PathBuf> =
            names(&self.root).into_iter().filter(|(n, _)| !ours(n)).map(|(_, p)| p).collect();
        let mut step_dirs = Vec::new();
        for (name, path) in names(&self.checkpoints()) {
            if name == ABANDONED || name == DAMAGED {
                for (inner, p) in names(&path) {
                    if inner.starts_with("step-") && p.is_dir() {
                        step_dirs.push(p);
                    } else {
                        foreign.push(p);
                    }
                }
            } else if name.starts_with("step-") && path.is_dir() {
                step_dirs.push(path);
            } else {
                foreign.push(path);
            }
        }
        for dir in step_dirs {
            foreign.extend(
                names(&dir).into_iter().filter(|(n, _)| !CHECKPOINT_FILES.contains(&n.as_str())).map(|(_, p)| p),
            );
        }
        foreign.sort();
        foreign
    }
}

impl AsRef<Path> for RunDir {
    fn as_ref(&self) -> &Path {
        &self.root
    }
}

impl From<&Path> for RunDir {
    fn from(p: &Path) -> Self {
        Self::new(p)
    }
}

impl From<PathBuf> for RunDir {
    fn from(p: PathBuf) -> Self {
        Self::new(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_named_once_and_owned() {
        let d = RunDir::new("/runs/a");
        for (path, name) in [
            (d.metrics(), METRICS),
            (d.events(), EVENTS),
            (d.summary(), SUMMARY),
            (d.current(), CURRENT),
            (d.checkpoints(), CHECKPOINTS),
            (d.recipe(), RECIPE),
            (d.model(), MODEL),
            (d.lock(), LOCK),
            (d.faults_fired(), FAULTS_FIRED),
            (d.worker_death(), WORKER_DEATH),
            (d.report_png(), REPORT_PNG),
            (d.report_svg(), REPORT_SVG),
        ] {
            assert_eq!(path, Path::new("/runs/a").join(name));
            assert!(RUN_FILES.contains(&name), "{name} is not in RUN_FILES");
        }
        assert_eq!(temporary(&d.metrics()), Path::new("/runs/a/metrics.jsonl.tmp"));
        assert_eq!(temporary(&d.model()), Path::new("/runs/a/model.safetensors.tmp"));
        let mut names = RUN_FILES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RUN_FILES.len(), "a name is listed twice");
    }

    #[test]
    fn foreign_entries_are_what_oomph_did_not_write() {
        let t = tempfile::tempdir().unwrap();
        let d = RunDir::new(t.path());
        std::fs::create_dir_all(d.checkpoints().join("step-3")).unwrap();
        std::fs::create_dir_all(d.checkpoints().join(ABANDONED).join("step-9")).unwrap();
        // A writer's temporary file, left by a crash, is oomph's too.
        let left = [temporary(&d.summary()), temporary(&d.model()), temporary(&d.report_png())];
        // So are the notes of a launch's ranks.
        let notes = [d.worker_death_of(0, 2), d.worker_death_of(3, 2)];
        assert_eq!(notes[0], d.worker_death());
        for f in [d.metrics(), d.events(), d.checkpoints().join("step-3").join(CKPT_MANIFEST)]
            .iter()
            .chain(&left)
            .chain(&notes)
        {
            std::fs::write(f, "").unwrap();
        }
        assert!(d.foreign_entries().is_empty());
        let mine = [
            t.path().join("notes.txt"),
            t.path().join("notes.txt.tmp"),
            d.checkpoints().join("README"),
            d.checkpoints().join("step-3").join("extra.bin"),
            d.checkpoints().join(ABANDONED).join("x"),
        ];
        for f in &mine {
            std::fs::write(f, "").unwrap();
        }
        let mut want = mine.to_vec();
        want.sort();
        assert_eq!(d.foreign_entries(), want);
    }
}
