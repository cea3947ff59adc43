//! The errors of `oomph-report`: each names the file and the fix.

use std::path::PathBuf;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The directory has no `metrics.jsonl`.
    #[error(
        "not a run directory: no metrics.jsonl in {}. Fix: pass the directory that `oomph train` \
         wrote (it holds recipe.resolved.toml, metrics.jsonl and events.jsonl; by default \
         runs/NAME), or wait until the run has started writing it.",
        dir.display()
    )]
    NotARunDir {
        /// The directory given.
        dir: PathBuf,
    },
    /// `metrics.jsonl` holds no optimizer step (yet).
    #[error(
        "{} holds no completed training step yet, so there is nothing to plot. Fix: wait until \
         the run has finished its first optimizer step (or look at events.jsonl beside it for \
         why it stopped), then run the report again.",
        path.display()
    )]
    NoSteps {
        /// The metrics file.
        path: PathBuf,
    },
    /// A file exists but cannot be read.
    #[error(
        "cannot read {}: {source}. Fix: check that the file is readable by this user (and not a \
         directory), or copy the run directory somewhere readable and report on the copy.",
        path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `summary.json` exists but is not a run summary.
    #[error(
        "{} is not a valid run summary: {message}. Fix: delete or rename it; the report then \
         derives what it can from metrics.jsonl and events.jsonl.",
        path.display()
    )]
    Summary {
        /// The summary file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// `recipe.resolved.toml` exists but is not TOML.
    #[error(
        "{} is not valid TOML: {message}. Fix: restore the file the run wrote (a copy is in every \
         checkpoint as recipe.toml), or delete it; the report then names the run after its \
         directory.",
        path.display()
    )]
    Recipe {
        /// The recipe file.
        path: PathBuf,
        /// The parse error.
        message: String,
    },
    /// Plotting failed.
    #[error(
        "cannot draw {}: {message}. Fix: this is a bug in oomph-report; please report it with \
         the run directory's metrics.jsonl and events.jsonl attached.",
        path.display()
    )]
    Draw {
        /// The image being drawn.
        path: PathBuf,
        /// What the plotting library said.
        message: String,
    },
    /// An image could not be written.
    #[error(
        "cannot write {}: {source}. Fix: make the run directory writable (or free some disk \
         space), or copy the run directory somewhere writable and report on the copy.",
        path.display()
    )]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}
