//! Backend selection: `[run] backend` names one of the compiled-in backends, and
//! [`dispatch`] runs generic code with it, together with what the backend can tell about
//! its memory ([`BackendEnv`]).

use crate::error::TrainError;
use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::backend::AutodiffBackend;
use oomph_recipe::Backend;
use std::any::Any;
#[cfg(feature = "tch")]
use std::panic::catch_unwind;
use std::sync::Arc;

/// The CPU backend used for `backend = "cpu"` (chosen by measurement; see BENCHMARKS.md).
pub const CPU_DEFAULT: Backend = Backend::Flex;

/// Training on the ndarray CPU backend.
pub type NdArrayTrain = Autodiff<NdArray<f32>>;
/// Training on the flex CPU backend.
pub type FlexTrain = Autodiff<Flex>;
/// Training on CUDA.
#[cfg(feature = "cuda")]
pub type CudaTrain = Autodiff<burn::backend::Cuda<f32, i32>>;
/// Training on LibTorch (PyTorch's kernels and allocator), on the CPU or a CUDA device.
#[cfg(feature = "tch")]
pub type TchTrain = Autodiff<burn::backend::LibTorch<f32>>;

/// Device memory as the backend reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes in live tensors.
    pub in_use: u64,
    /// Bytes the backend's pool holds from the device (its high-water mark in practice).
    pub reserved: u64,
    /// Bytes usable by this run: the device's memory, or `run.gpu_memory_limit` when set.
    pub capacity: u64,
}

/// Reads the device's memory statistics.
pub type MemoryProbe = Arc<dyn Fn() -> Option<MemoryStats> + Send + Sync>;

/// Hands the blocks a backend's allocator caches back to the device after a failed attempt,
/// where burn's `memory_cleanup` does not (LibTorch's CUDA cache: `torch.cuda.empty_cache()`).
pub type CacheRelease = Arc<dyn Fn() + Send + Sync>;

/// What the chosen backend provides besides its device.
#[derive(Clone)]
pub struct BackendEnv {
    /// Human-readable backend and device, e.g. `flex (cpu)` or `cuda:0 (NVIDIA H100, 80.0 GiB)`.
    pub name: String,
    /// Memory statistics, where the backend reports them (CUDA); `None` on the CPU.
    pub memory: Option<MemoryProbe>,
    /// What to call after burn's `memory_cleanup` once a failed attempt's tensors are dropped.
    pub release: Option<CacheRelease>,
    /// Allocations held for the whole run to emulate a smaller device
    /// (`run.gpu_memory_limit`); dropping them releases the memory.
    pub ballast: Arc<Vec<Box<dyn Any + Send + Sync>>>,
}

impl BackendEnv {
    /// A backend without memory statistics.
    pub fn plain(name: &str) -> Self {
        Self { name: name.to_string(), memory: None, release: None, ballast: Arc::new(Vec::new()) }
    }
}

/// Generic code to run with a chosen backend.
pub trait WithBackend {
    /// What it returns.
    type Output;
    /// Runs with backend `B` on `device`.
    fn run<B: AutodiffBackend>(self, device: B::Device, env: BackendEnv) -> Self::Output;
}

/// The backend a recipe's `run.backend` resolves to (`"cpu"` becomes [`CPU_DEFAULT`]).
pub fn resolve(backend: Backend) -> Backend {
    match backend {
        Backend::Cpu => CPU_DEFAULT,
        other => other,
    }
}

/// Whether a recipe's backend can run in this binary, decided from the recipe alone (no
/// device is opened): it is compiled in, and `run.gpu_memory_limit` is only set for a GPU
/// backend (cuda, tch-cuda). A process that never trains (the supervisor, `oomph check`)
/// asks this; [`dispatch`] asks it too before it opens the device.
pub fn check(backend: Backend, memory_limit: Option<u64>) -> Result<(), TrainError> {
    let resolved = resolve(backend);
    if memory_limit.is_some() && !matches!(resolved, Backend::Cuda | Backend::TchCuda) {
        return Err(TrainError::BadInput(format!(
            "`run.gpu_memory_limit` emulates a smaller GPU on the cuda and tch-cuda backends, and `run.backend` = \
             \"{backend}\" is neither. Fix: remove run.gpu_memory_limit, or set run.backend = \"cuda\"."
        )));
    }
    match resolved {
        Backend::Cpu | Backend::Ndarray | Backend::Flex => Ok(()),
        Backend::Cuda if cfg!(feature = "cuda") => Ok(()),
        Backend::Cuda => Err(TrainError::BadInput(
            "`run.backend` = \"cuda\" but this oomph binary was built without CUDA support. Fix: rebuild with \
             `cargo build --release --features cuda`, or set run.backend = \"cpu\"."
                .into(),
        )),
        Backend::Tch | Backend::TchCuda if cfg!(feature = "tch") => Ok(()),
        Backend::Tch | Backend::TchCuda => Err(TrainError::BadInput(
            "`run.backend` names LibTorch (\"tch\" or \"tch-cuda\"), but this oomph binary was built without it. \
             Fix: run `scripts/setup-tch.sh` (it installs PyTorch 2.9.0 into .venv-tch and builds oomph with the \
             `tch` feature), or set run.backend = \"cpu\"."
                .into(),
        )),
    }
}

/// Whether `ranks` ranks (`distributed.ranks`) can train in this binary: several need the
/// `distributed` feature (burn's collective). Asked where [`check`] is.
pub fn check_ranks(ranks: usize) -> Result<(), TrainError> {
    if ranks > 1 && !cfg!(feature = "distributed") {
        return Err(TrainError::BadInput(format!(
            "distributed.ranks = {ranks} asks for several ranks as threads of this process, but this oomph binary \
             was built without the `distributed` feature (burn's collective). Fix: rebuild with `cargo build \
             --release --features distributed`, start {ranks} processes with torchrun or srun (which needs no \
             feature), or set distributed.ranks = 1."
        )));
    }
    Ok(())
}

/// Runs `w` with `backend` on device index `device`; `memory_limit` (bytes) emulates a
/// smaller GPU. A backend that is not compiled in, or a GPU that is not there, is a
/// bad-input error with a one-paragraph explanation ([`check`]).
pub fn dispatch<W: WithBackend>(
    backend: Backend,
    device: usize,
    memory_limit: Option<u64>,
    w: W,
) -> Result<W::Output, TrainError> {
    check(backend, memory_limit)?;
    match resolve(backend) {
        Backend::Ndarray => Ok(w.run::<NdArrayTrain>(Default::default(), BackendEnv::plain("ndarray (cpu)"))),
        Backend::Cpu | Backend::Flex => Ok(w.run::<FlexTrain>(Default::default(), BackendEnv::plain("flex (cpu)"))),
        Backend::Cuda => cuda(device, memory_limit, w),
        Backend::Tch => tch(None, None, w),
        Backend::TchCuda => tch(Some(device), memory_limit, w),
    }
}

#[cfg(feature = "cuda")]
fn cuda<W: WithBackend>(device: usize, memory_limit: Option<u64>, w: W) -> Result<W::Output, TrainError> {
    crate::gpu::check_cuda(device)?;
    let dev = burn::backend::cuda::CudaDevice::new(device);
    let env = crate::gpu::cuda_env(&dev, device, memory_limit)?;
    Ok(w.run::<CudaTrain>(dev, env))
}

#[cfg(not(feature = "cuda"))]
fn cuda<W: WithBackend>(_device: usize, _memory_limit: Option<u64>, _w: W) -> Result<W::Output, TrainError> {
    unreachable!("backend::check refuses cuda in a build without it")
}

#[cfg(feature = "tch")]
fn tch<W: WithBackend>(cuda: Option<usize>, memory_limit: Option<u64>, w: W) -> Result<W::Output, TrainError> {
    use burn::backend::libtorch::LibTorchDevice;
    let env = match cuda {
        None => (LibTorchDevice::Cpu, BackendEnv::plain("tch (cpu, libtorch)")),
        Some(index) => {
            let count = crate::tch_cuda::device_count();
            if index >= count {
                return Err(TrainError::BadInput(format!(
                    "`run.backend` = \"tch-cuda\" asks for CUDA device {index}, but LibTorch sees {count} CUDA \
                     device(s){}. Fix: set run.device to a device that exists, or run.backend = \"tch\" for the CPU.",
                    if count == 0 { " (no usable GPU or driver, or a CPU-only PyTorch)" } else { "" }
                )));
            }
            (LibTorchDevice::Cuda(index), tch_cuda_env(index, memory_limit)?)
        }
    };
    Ok(w.run::<TchTrain>(env.0, env.1))
}

/// LibTorch on CUDA device `index`: the card's memory as its caching allocator reports it
/// (allocated, reserved, total), its cache released after an out-of-memory, and with `limit`
/// a smaller card emulated as on the cuda backend: tensors that take the rest are held for
/// the whole run, and the statistics leave them out.
#[cfg(feature = "tch")]
fn tch_cuda_env(index: usize, limit: Option<u64>) -> Result<BackendEnv, TrainError> {
    let total = match (crate::tch_cuda::total(index), limit) {
        (Ok(total), _) => total,
        (Err(why), Some(_)) => {
            return Err(TrainError::BadInput(format!(
                "`run.gpu_memory_limit` needs the size of CUDA device {index}, and the driver could not tell it: \
                 {why}. Fix: remove run.gpu_memory_limit, or check the driver with nvidia-smi."
            )))
        }
        (Err(why), None) => {
            tracing::warn!("the size of CUDA device {index} is not known: {why}");
            0
        }
    };
    let mut ballast: Vec<Box<dyn Any + Send + Sync>> = Vec::new();
    let mut held = 0u64;
    let capacity = match limit {
        Some(l) if l < total => {
            let device = burn::backend::libtorch::LibTorchDevice::Cuda(index);
            let in_use = crate::tch_cuda::allocator(index).map(|(_, reserved)| reserved).unwrap_or(0);
            let mut remaining = total.saturating_sub(l).saturating_sub(in_use);
            // The last chunks may not fit next to the driver's own reservations, which only
            // makes the emulation stricter.
            while remaining >= 1 << 20 {
                let bytes = remaining.min(1 << 30);
                let dev = device;
                let floats = (bytes / 4) as usize;
                let chunk = catch_unwind(move || {
                    burn::tensor::Tensor::<burn::backend::LibTorch<f32>, 1>::empty([floats], &dev)
                });
                match chunk {
                    Ok(t) => ballast.push(Box::new(t)),
                    Err(_) => break,
                }
                held += bytes;
                remaining -= bytes;
            }
            tracing::info!(limit = l, total, held, "emulating a smaller GPU with ballast");
            l
        }
        Some(l) => {
            tracing::warn!("run.gpu_memory_limit ({l} bytes) is not below the device's {total} bytes; ignored");
            total
        }
        None => total,
    };
    let name = match (total, limit) {
        (0, _) => format!("tch-cuda:{index} (libtorch)"),
        (t, Some(l)) if l < t => format!("tch-cuda:{index} (libtorch, {:.1} GiB, emulating {:.1} GiB)", gib(t), gib(l)),
        (t, _) => format!("tch-cuda:{index} (libtorch, {:.1} GiB)", gib(t)),
    };
    let memory: Option<MemoryProbe> = match total {
        0 => None,
        _ => Some(Arc::new(move || {
            crate::tch_cuda::allocator(index).ok().map(|(in_use, reserved)| MemoryStats {
                in_use: in_use.saturating_sub(held),
                reserved: reserved.saturating_sub(held),
                capacity,
            })
        })),
    };
    let release: CacheRelease = Arc::new(|| {
        if let Err(why) = crate::tch_cuda::empty_cache() {
            tracing::warn!("releasing LibTorch's CUDA cache failed: {why}");
        }
    });
    Ok(BackendEnv { name, memory, release: Some(release), ballast: Arc::new(ballast) })
}

#[cfg(feature = "tch")]
fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

#[cfg(not(feature = "tch"))]
fn tch<W: WithBackend>(_cuda: Option<usize>, _limit: Option<u64>, _w: W) -> Result<W::Output, TrainError> {
    unreachable!("backend::check refuses tch in a build without it")
}
