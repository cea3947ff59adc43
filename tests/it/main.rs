//! oomph's integration tests: one binary, small helpers in `util`.

mod accumulation;
mod cli;
mod lose_nothing;
mod recovery;
mod resume;
mod supervisor;
mod util;
