//! The `oomph` binary.

oomph::main!();
