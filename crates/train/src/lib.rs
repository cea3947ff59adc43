//! oomph's training loop on burn.
//!
//! A model implements [`Objective`] (a micro-batch of its own batch type in, the sum of its
//! losses out); data reaches it through a burn `Dataset` and `Batcher` ([`feed`]); a program
//! registers model kinds in a [`Registry`]; [`train`] runs a recipe: exact gradient
//! accumulation over an adaptive micro-batch, in-process recovery from out-of-memory
//! failures, evaluation, crash-safe checkpoints and a run directory with metrics, events,
//! summary and final weights.
//!
//! A model written for burn-train (`TrainStep` + `InferenceStep`) is trained through the thin
//! adapter [`adapter::BurnTrain`].

pub mod adapter;
pub mod alloc;
pub mod backend;
pub mod checkpointer;
pub mod error;
pub mod evaluation;
pub mod export;
pub mod faults;
pub mod feed;
pub mod gang;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod objective;
pub mod optim;
pub mod progress;
pub mod random;
pub mod recovery;
pub mod registry;
pub mod resume;
pub mod runlog;
pub mod session;
pub mod signals;
pub mod step;
#[cfg(feature = "tch")]
pub mod tch_cuda;
pub mod tensors;
pub mod trainer;

pub use error::TrainError;
pub use feed::{Batched, Data, Feed};
pub use objective::{Evaluation, InnerBatch, Loss, MetricSum, Objective};
/// The files of a run directory, each with its record, writer and reader (`oomph_rundir`'s).
pub use oomph_rundir::{checkpoint, current, events, metrics};
pub use oomph_rundir::{EvalRecord, Event, EventLine, StepRecord, Summary};
pub use progress::{Console, Observer, Silent};
pub use registry::{Built, DataNeeds, DataRequest, Models, Prepared, Registry};
pub use trainer::{train, Resume, Session};
