//! **oomph**: training loops on [burn](https://burn.dev) that survive running out of memory.
//!
//! The effective batch of a recipe is fixed; the micro-batch adapts (gradient accumulation
//! makes `micro x chunks = effective`), shrinking when memory runs out and growing back when
//! it can, and the full training state is checkpointed so a run resumes after any memory
//! failure — in-process when the backend survives, through a restart of the worker process
//! when it does not.
//!
//! This facade re-exports the workspace's crates:
//! - [`recipe`]: TOML recipes (schema, defaults, validation, `--set` overrides);
//! - [`sched`]: the micro-batch planner, the OOM policy and the OOM classifier (no burn);
//! - [`data`]: datasets and the resumable sampler;
//! - [`train`]: the loop, the model traits ([`train::Objective`]), checkpoints;
//! - [`models`]: the built-in `mlp`, `cnn` and `gpt`;
//! - [`cli`]: the `oomph` command line and supervisor, reusable by your own binary.

pub use burn;
pub use oomph_cli as cli;
pub use oomph_data as data;
pub use oomph_models as models;
pub use oomph_recipe as recipe;
pub use oomph_sched as sched;
pub use oomph_train as train;

pub use oomph_train::{Models, Objective, Registry};

/// Writes a program's `main`: oomph's command line (`train`, `check`, `report`, `inspect`)
/// with the built-in model kinds plus those of `$models` (a type implementing [`Models`]),
/// and the allocation tracker the supervisor relies on as the global allocator.
///
/// ```no_run
/// struct MyModels;
/// impl oomph::Models for MyModels {
///     fn register<B: oomph::burn::tensor::backend::AutodiffBackend>(_: &mut oomph::Registry<B>) {}
/// }
/// oomph::main!(MyModels);
/// ```
///
/// `oomph::main!()` is the `oomph` binary itself (the built-in kinds only).
#[macro_export]
macro_rules! main {
    () => {
        $crate::main!($crate::models::Builtin);
    };
    ($models:ty) => {
        #[global_allocator]
        static OOMPH_ALLOCATION_TRACKER: $crate::cli::TrackingAllocator = $crate::cli::TrackingAllocator;

        fn main() -> ::std::process::ExitCode {
            $crate::cli::main_with::<$models>()
        }
    };
}
