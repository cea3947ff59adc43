//! The allocation-failure note for the supervisor; it lives in `oomph_train::alloc` (the
//! trainer clears it after a failure it survived) and is re-exported here.

pub use oomph_train::alloc::*;
