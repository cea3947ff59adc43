//! The `oomph` binary.

#[global_allocator]
static ALLOC: oomph::cli::TrackingAllocator = oomph::cli::TrackingAllocator;

fn main() -> std::process::ExitCode {
    oomph::cli::main()
}
