//! Reports on an oomph run directory: a plot (`report.png` and `report.svg`) and a terminal
//! summary.
//!
//! Everything here reads the files a run writes (`metrics.jsonl`, `events.jsonl`,
//! `summary.json`, `recipe.resolved.toml`, and the newest checkpoint's `state.json`) and
//! nothing else, so it works on a finished, a running and a crashed run alike, on any
//! machine, without burn.
//!
//! ```no_run
//! let dir = std::path::Path::new("runs/digits-mlp");
//! let drawn = oomph_report::render(dir)?;
//! println!("{}", oomph_report::summary_text(dir)?);
//! println!("report: {}", drawn.png.display());
//! # Ok::<(), oomph_report::ReportError>(())
//! ```
//!
//! **Invariant:** this crate never depends on burn: a report must be possible wherever the
//! run directory can be copied.

mod error;
mod plot;
mod run;
mod text;

#[cfg(test)]
mod tests;

pub use error::ReportError;
pub use plot::{render, Rendered, PANEL_HEIGHT, TITLE_HEIGHT, WIDTH};
pub use text::summary_text;
