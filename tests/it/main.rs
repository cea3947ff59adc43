//! oomph's integration tests: one binary, small helpers in `util`.

mod accumulation;
mod burn_way;
mod chaos;
mod cli;
#[cfg(feature = "distributed")]
mod distributed;
mod dropout;
mod lose_nothing;
mod processes;
mod recovery;
mod resume;
mod supervisor;
#[cfg(feature = "tch")]
mod tch;
mod util;
