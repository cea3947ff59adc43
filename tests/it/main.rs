//! oomph's integration tests: one binary, small helpers in `util`.

mod accumulation;
mod cli;
mod recovery;
mod resume;
mod supervisor;
mod util;
