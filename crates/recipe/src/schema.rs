//! The recipe schema: one struct per TOML section, every field documented with its default.
//!
//! These types are the *validated* form of a recipe. Raw TOML is parsed into them by
//! [`crate::load`], which also applies `--set` overrides and semantic validation.
//! Every section and every key is optional in the TOML file; a missing one takes the
//! default documented on its field.

use crate::choice::{Backend, DataKind, OptimizerKind, ScheduleKind, Task};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

/// A whole training recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Recipe {
    /// `[run]`: naming, seeding, where outputs go, which backend.
    pub run: RunSection,
    /// `[model]`: the model kind and its own keys.
    pub model: ModelSection,
    /// `[data]`: the dataset.
    pub data: DataSection,
    /// `[optimizer]`.
    pub optimizer: OptimizerSection,
    /// `[lr_schedule]`.
    pub lr_schedule: LrScheduleSection,
    /// `[training]`: length, effective batch, evaluation cadence.
    pub training: TrainingSection,
    /// `[micro_batch]`: bounds of the adaptive micro-batch.
    pub micro_batch: MicroBatchSection,
    /// `[checkpoint]`.
    pub checkpoint: CheckpointSection,
    /// `[supervisor]`.
    pub supervisor: SupervisorSection,
    /// `[distributed]`: data-parallel ranks in this process.
    pub distributed: DistributedSection,
    /// `[faults]`: simulated failures for tests and demos. Empty by default.
    pub faults: FaultsSection,
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Run name, used for the default run directory `output_dir/name`. Default `"run"`.
    pub name: String,
    /// Master seed: model init, data split, shuffling and per-step RNG derive from it. Default `42`.
    pub seed: u64,
    /// Parent directory of run directories. Default `"runs"`.
    pub output_dir: String,
    /// Backend: `"cpu"` (the embedded CPU default), `"ndarray"`, `"flex"`, `"cuda"`, or LibTorch
    /// (`"tch"` on the CPU, `"tch-cuda"` on the GPU `run.device`; the `tch` cargo feature). Default `"cpu"`.
    pub backend: Backend,
    /// Device index for GPU backends. Default `0`.
    pub device: usize,
    /// Emulated GPU capacity such as `"8GiB"` (GPU backends only). Default: none (whole device).
    pub gpu_memory_limit: Option<String>,
    /// Plain log line every this many steps when stderr is not a terminal. Default `10`.
    pub log_every: usize,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            name: "run".into(),
            seed: 42,
            output_dir: "runs".into(),
            backend: Backend::Cpu,
            device: 0,
            gpu_memory_limit: None,
            log_every: 10,
        }
    }
}

/// `[model]`: `kind` names a registered model; the remaining keys belong to that model
/// and are validated by its factory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSection {
    /// Registered model kind (`"mlp"`, `"gpt"`, or one a user binary registers). Default `"mlp"`.
    #[serde(default = "default_model_kind")]
    pub kind: String,
    /// The model's own keys, validated by the model factory (errors prefixed `model.`).
    #[serde(flatten)]
    pub params: toml::Table,
}

fn default_model_kind() -> String {
    "mlp".into()
}

impl Default for ModelSection {
    fn default() -> Self {
        Self { kind: "mlp".into(), params: toml::Table::new() }
    }
}

/// `[data]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// `"csv"`, `"text"`, `"synthetic"`, `"image_folder"` or `"program"`. Default
    /// `"synthetic"`.
    pub kind: DataKind,
    /// program: which of the program's registered data kinds. Default: none.
    pub name: Option<String>,
    /// File path (csv, text), folder (image_folder), or either (program data), relative to
    /// the recipe file's directory. Default: none.
    pub path: Option<String>,
    /// Fraction of the samples held out for validation, in `[0, 1)`. Default `0.1`.
    pub valid_fraction: f64,
    /// csv: the first row is a header. Default `true`.
    pub header: bool,
    /// csv: the label column, by header name or 0-based index (as a string; the TOML file
    /// may also give the index as an integer). Default: last column.
    #[serde(deserialize_with = "de_label_column")]
    pub label_column: Option<String>,
    /// csv/synthetic: `"classification"` or `"regression"`. Default `"classification"`.
    pub task: Task,
    /// csv: standardise each feature with mean/std of the training split. Default `true`.
    pub standardize: bool,
    /// synthetic: number of samples generated. Default `2048`.
    pub samples: usize,
    /// synthetic: number of features. Default `16`.
    pub features: usize,
    /// synthetic: number of classes (classification). Default `4`.
    pub classes: usize,
    /// synthetic: label noise / regression noise std. Default `0.1`.
    pub noise: f64,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            kind: DataKind::Synthetic,
            name: None,
            path: None,
            valid_fraction: 0.1,
            header: true,
            label_column: None,
            task: Task::Classification,
            standardize: true,
            samples: 2048,
            features: 16,
            classes: 4,
            noise: 0.1,
        }
    }
}

/// `[optimizer]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerSection {
    /// `"adamw"` or `"sgd"`. Default `"adamw"`.
    pub kind: OptimizerKind,
    /// Peak learning rate, > 0. Default `1e-3`.
    pub lr: f64,
    /// Decoupled weight decay (adamw) or L2 penalty (sgd), >= 0. Default `0.0`.
    pub weight_decay: f64,
    /// AdamW betas, each in `[0, 1)`. Default `[0.9, 0.999]`.
    pub betas: [f64; 2],
    /// AdamW epsilon, > 0. Default `1e-8`.
    pub eps: f64,
    /// SGD momentum in `[0, 1)`. Default `0.0`.
    pub momentum: f64,
    /// Clip gradients to this global L2 norm (over all parameters). Default: none.
    pub grad_clip_norm: Option<f64>,
}

impl Default for OptimizerSection {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Adamw,
            lr: 1e-3,
            weight_decay: 0.0,
            betas: [0.9, 0.999],
            eps: 1e-8,
            momentum: 0.0,
            grad_clip_norm: None,
        }
    }
}

/// `[lr_schedule]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LrScheduleSection {
    /// `"constant"`, `"cosine"` or `"linear"` (decay after warmup). Default `"constant"`.
    pub kind: ScheduleKind,
    /// Linear warmup from 0 to `optimizer.lr` over this many steps. Default `0`.
    pub warmup_steps: usize,
    /// Final learning rate as a fraction of `optimizer.lr`, in `[0, 1]`. Default `0.0`.
    pub final_lr_fraction: f64,
}

impl Default for LrScheduleSection {
    fn default() -> Self {
        Self { kind: ScheduleKind::Constant, warmup_steps: 0, final_lr_fraction: 0.0 }
    }
}

/// `[training]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSection {
    /// Number of optimizer steps. Default `100` unless `epochs` is given.
    pub steps: Option<usize>,
    /// Train for this many passes over the training split instead of `steps`.
    pub epochs: Option<usize>,
    /// Samples per optimizer step, whatever the micro-batch. Default `32`.
    pub effective_batch: usize,
    /// Evaluate every this many steps (0: only at the end). Default `0`.
    pub eval_every: usize,
    /// Micro-batch used for evaluation. Default: the training micro-batch limit.
    pub eval_batch: Option<usize>,
    /// Consecutive steps with a non-finite loss or gradient norm (each one skipped: no update)
    /// after which the run stops with exit code 5. At least 1. Default `10`.
    pub max_nonfinite_steps: usize,
}

/// Default of `training.max_nonfinite_steps`.
pub const DEFAULT_MAX_NONFINITE_STEPS: usize = 10;

impl Default for TrainingSection {
    fn default() -> Self {
        Self {
            steps: None,
            epochs: None,
            effective_batch: 32,
            eval_every: 0,
            eval_batch: None,
            max_nonfinite_steps: DEFAULT_MAX_NONFINITE_STEPS,
        }
    }
}

/// How the first micro-batch limit is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MicroInitial {
    /// Search for the largest limit that fits (TOML `"auto"`).
    Auto,
    /// Start at this many samples per micro-batch (TOML integer).
    Fixed(usize),
}

impl Serialize for MicroInitial {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            MicroInitial::Auto => serializer.serialize_str("auto"),
            MicroInitial::Fixed(n) => serializer.serialize_u64(n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for MicroInitial {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = MicroInitial;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"auto\" or a positive integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<MicroInitial, E> {
                if v == "auto" {
                    Ok(MicroInitial::Auto)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<MicroInitial, E> {
                match usize::try_from(v) {
                    Ok(n) if n >= 1 => Ok(MicroInitial::Fixed(n)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<MicroInitial, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Accepts the csv label column as a string (header name or index) or as a non-negative
/// integer index, and stores it as a string.
fn de_label_column<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a column name or a 0-based column index")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            if v >= 0 {
                Ok(Some(v.to_string()))
            } else {
                Err(E::invalid_value(de::Unexpected::Signed(v), &self))
            }
        }
    }
    deserializer.deserialize_any(V)
}

/// `[micro_batch]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MicroBatchSection {
    /// `"auto"` or an integer. Default `"auto"`.
    pub initial: MicroInitial,
    /// Never go below this many samples per micro-batch. Default `1`.
    pub min: usize,
    /// Never go above this many. Default: the effective batch.
    pub max: Option<usize>,
    /// Clean optimizer steps before trying a larger micro-batch. Default `50`.
    pub grow_after: usize,
    /// OOMs tolerated within one optimizer step before giving up. Default `8`.
    pub max_retries_per_step: usize,
}

impl Default for MicroBatchSection {
    fn default() -> Self {
        Self { initial: MicroInitial::Auto, min: 1, max: None, grow_after: 50, max_retries_per_step: 8 }
    }
}

/// `[checkpoint]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Checkpoint every this many steps (0: only at the end and on events). Default `100`.
    pub every: usize,
    /// Keep the newest this many complete checkpoints; at least 2. Default `3`.
    pub keep: usize,
    /// Checkpoint right after recovering from an OOM. Default `true`.
    pub on_oom: bool,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self { every: 100, keep: 3, on_oom: true }
    }
}

/// `[supervisor]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorSection {
    /// Run training in a supervised worker process. Default `true`.
    pub enabled: bool,
    /// Restarts after memory deaths before giving up. Default `5`.
    pub max_restarts: usize,
}

impl Default for SupervisorSection {
    fn default() -> Self {
        Self { enabled: true, max_restarts: 5 }
    }
}

/// `[distributed]`: data-parallel training with several ranks: threads of this process, one
/// per device, or one process per rank when torchrun or srun starts the processes
/// (`oomph_rundir::Launch`). A run may resume with another number of ranks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedSection {
    /// Data-parallel ranks, one thread per device (on the CPU backends every rank shares the
    /// CPU). At least 1 and at most `training.effective_batch`, so that every rank gets at
    /// least one sample of each step. Under a launcher, the number of processes it started (1
    /// here means the same). Default `1`.
    pub ranks: usize,
    /// Device indices, one per rank, distinct. Default: empty, meaning `run.device`,
    /// `run.device + 1`, ... (see [`Recipe::rank_devices`]).
    pub devices: Vec<usize>,
    /// Deadline of every collective call, in seconds: finite and > 0. Default `300.0`.
    pub timeout_s: f64,
    /// Every this many steps the ranks compare a checksum of their parameters (0: never).
    /// Default `50`.
    pub check_every: usize,
}

impl Default for DistributedSection {
    fn default() -> Self {
        Self { ranks: 1, devices: Vec::new(), timeout_s: 300.0, check_every: 50 }
    }
}

impl Recipe {
    /// The device the process computes on: rank 0's (`distributed.devices[0]` when devices are
    /// listed, else `run.device`).
    pub fn device(&self) -> usize {
        self.distributed.devices.first().copied().unwrap_or(self.run.device)
    }

    /// The device index of each rank: `distributed.devices` when given, else `distributed.ranks`
    /// consecutive indices from `run.device` (so one rank keeps using `run.device`).
    pub fn rank_devices(&self) -> Vec<usize> {
        let d = &self.distributed;
        if d.devices.is_empty() {
            consecutive_devices(self.run.device, d.ranks)
        } else {
            d.devices.clone()
        }
    }
}

/// `ranks` device indices counting up from `first`: the devices when `distributed.devices`
/// is empty.
pub(crate) fn consecutive_devices(first: usize, ranks: usize) -> Vec<usize> {
    (0..ranks).map(|r| first.saturating_add(r)).collect()
}

/// Training phase in which a fault is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// A micro-batch's forward pass.
    Forward,
    /// A micro-batch's backward pass.
    Backward,
    /// The optimizer step.
    Optimizer,
    /// Evaluation.
    Eval,
    /// Writing a checkpoint (`faults.die_at` only).
    Checkpoint,
}

/// One injected failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAt {
    /// Optimizer step (1-based) at which it fires, once.
    pub step: usize,
    /// Phase in which it fires.
    pub phase: Phase,
    /// The rank it fires on, below `distributed.ranks`. Default: none, every rank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
}

/// A change of the simulated capacity from a given step on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityChange {
    /// From this optimizer step (1-based) on...
    pub step: usize,
    /// ...micro-batches larger than this many samples fail as OOM.
    pub samples: usize,
    /// The rank whose capacity changes, below `distributed.ranks`. Default: none, every rank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
}

/// Whether an entry of rank `rank` (none: every rank) applies on rank `on`.
fn fires_on(rank: Option<usize>, on: usize) -> bool {
    rank.is_none_or(|r| r == on)
}

/// A value for every rank, or one value per rank. TOML: an integer, or an array of integers
/// whose length is `distributed.ranks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PerRank {
    /// The same value on every rank (TOML integer).
    All(usize),
    /// One value per rank, indexed by rank (TOML array).
    Each(Vec<usize>),
}

impl PerRank {
    /// The value of rank `rank`; `None` past the end of a per-rank list.
    pub fn get(&self, rank: usize) -> Option<usize> {
        match self {
            PerRank::All(v) => Some(*v),
            PerRank::Each(vs) => vs.get(rank).copied(),
        }
    }

    /// The value when every rank has the same one (always for `All`; for `Each` when its
    /// entries are equal), else `None`. A one-rank view ([`FaultsSection::for_rank`]) always
    /// has one.
    pub fn uniform(&self) -> Option<usize> {
        match self {
            PerRank::All(v) => Some(*v),
            PerRank::Each(vs) => vs.first().copied().filter(|first| vs.iter().all(|v| v == first)),
        }
    }
}

impl<'de> Deserialize<'de> for PerRank {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PerRank;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer or an array of them, one per rank")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PerRank, E> {
                usize::try_from(v).map(PerRank::All).map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PerRank, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<PerRank, A::Error> {
                let mut values = Vec::new();
                while let Some(v) = seq.next_element::<usize>()? {
                    values.push(v);
                }
                Ok(PerRank::Each(values))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// `[faults]`: SIMULATION ONLY. Injected failures travel the same classification and recovery
/// path as real ones. Empty by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FaultsSection {
    /// Simulated device capacity: any micro-batch larger than this many samples fails as an
    /// OOM. One integer for every rank, or an array with one per rank.
    pub simulate_memory_samples: Option<PerRank>,
    /// Capacity changes at given steps (overrides `simulate_memory_samples` from that step on).
    pub simulate_memory_changes: Vec<CapacityChange>,
    /// Simulated OOMs at given steps and phases.
    pub oom_at: Vec<FaultAt>,
    /// Simulated non-OOM panics (a model bug) at given steps and phases.
    pub panic_at: Vec<FaultAt>,
    /// Simulated worker deaths at given steps and phases: the worker aborts exactly as after
    /// a failed host allocation (`memory allocation of N bytes failed`, SIGABRT), so the
    /// supervisor restarts it. Each entry fires once per run (remembered in the run
    /// directory's `faults-fired.txt`, since the process that fired it is gone).
    pub die_at: Vec<FaultAt>,
    /// Simulated crashes that are not memory failures (the worker aborts with SIGABRT, no
    /// allocation failed): the supervisor must not restart them. Each fires once per run.
    pub abort_at: Vec<FaultAt>,
    /// Steps whose loss is made non-finite (NaN), as a diverging step's would be: the step is
    /// skipped. Fires on every attempt of the step, also after a resume.
    pub nan_at: Vec<usize>,
    /// Steps whose checkpoint write fails as on a full disk (`No space left on device`),
    /// after part of the checkpoint was written. Each fires once per run.
    pub disk_full_at: Vec<usize>,
    /// Real allocation failures, not simulated ones (Linux): when training starts, the
    /// worker's address space (`RLIMIT_AS`) is limited to what it maps then plus this much
    /// (a size such as "256MiB"), so allocations past it really fail. On the tch backend
    /// libtorch raises a catchable error that oomph recovers from in-process; on the Rust
    /// backends a failed allocation aborts the worker, which the supervisor restarts.
    pub address_space_headroom: Option<String>,
}

impl FaultsSection {
    /// The faults of rank `rank` alone: entries for other ranks removed (entries for every
    /// rank, and this rank's own, kept as written) and `simulate_memory_samples` resolved to
    /// this rank's value ([`PerRank::All`]).
    pub fn for_rank(&self, rank: usize) -> FaultsSection {
        let faults =
            |list: &[FaultAt]| list.iter().filter(|f| fires_on(f.rank, rank)).cloned().collect::<Vec<FaultAt>>();
        FaultsSection {
            simulate_memory_samples: self.simulate_memory_samples.as_ref().and_then(|s| s.get(rank)).map(PerRank::All),
            simulate_memory_changes: self
                .simulate_memory_changes
                .iter()
                .filter(|c| fires_on(c.rank, rank))
                .cloned()
                .collect(),
            oom_at: faults(&self.oom_at),
            panic_at: faults(&self.panic_at),
            die_at: faults(&self.die_at),
            abort_at: faults(&self.abort_at),
            nan_at: self.nan_at.clone(),
            disk_full_at: self.disk_full_at.clone(),
            address_space_headroom: self.address_space_headroom.clone(),
        }
    }
}
