//! oomph-rundir: the one definition of an oomph run directory.
//!
//! Every file a run writes has one owner here: a typed record, its writer and its reader.
//! The trainer writes through these types, the supervisor and `oomph report` / `oomph inspect`
//! read through them, so a format changes in one place.
//!
//! - [`layout`]: the names of the files and the [`RunDir`] that joins them to a directory.
//! - [`metrics`]: `metrics.jsonl` ([`StepRecord`], [`EvalRecord`], the appending [`JsonLines`]
//!   writer, truncation on resume, the history reader).
//! - [`events`]: `events.jsonl` (one typed [`Event`] enum, [`EventLine`], the tolerant reader).
//! - [`summary`]: `summary.json` ([`Summary`]), written atomically.
//! - [`checkpoint`]: `checkpoints/step-N/` (atomic, verified, retained by write order).
//! - [`current`]: `current.json`, what a worker is doing right now (memory-mapped).
//! - [`note`]: `worker-death.txt`, the allocation-failure note (written without allocating).
//! - [`env`](mod@env): the environment variables between the supervisor and its worker.
//! - [`launch`]: the launcher (torchrun, Slurm) that started this process as one rank of several.
//!
//! **Invariant:** this crate never depends on burn: the run directory must be readable
//! wherever it can be copied.

pub mod checkpoint;
pub mod current;
pub mod env;
mod error;
pub mod events;
pub mod launch;
pub mod layout;
pub mod metrics;
pub mod note;
pub mod summary;

pub use current::{Current, CurrentFile, WorkerPhase};
pub use env::WorkerEnv;
pub use error::{write_atomically, Error};
pub use events::{EvalShrinkReason, Event, EventLine};
pub use launch::Launch;
pub use layout::RunDir;
pub use metrics::{EvalRecord, JsonLines, MetricLine, Metrics, StepRecord};
pub use summary::Summary;
