//! Backend selection: `[run] backend` names one of the compiled-in backends, and
//! [`dispatch`] runs generic code with it, together with what the backend can tell about
//! its memory ([`BackendEnv`]).

use crate::error::TrainError;
use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::backend::AutodiffBackend;
use std::any::Any;
use std::sync::Arc;

/// The CPU backend used for `backend = "cpu"` (chosen by measurement; see BENCHMARKS.md).
pub const CPU_DEFAULT: &str = "flex";

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

/// What the chosen backend provides besides its device.
#[derive(Clone)]
pub struct BackendEnv {
    /// Human-readable backend and device, e.g. `flex (cpu)` or `cuda:0 (NVIDIA H100, 80.0 GiB)`.
    pub name: String,
    /// Memory statistics, where the backend reports them (CUDA); `None` on the CPU.
    pub memory: Option<MemoryProbe>,
    /// Allocations held for the whole run to emulate a smaller device
    /// (`run.gpu_memory_limit`); dropping them releases the memory.
    pub ballast: Arc<Vec<Box<dyn Any + Send + Sync>>>,
}

impl BackendEnv {
    /// A backend without memory statistics.
    pub fn plain(name: &str) -> Self {
        Self { name: name.to_string(), memory: None, ballast: Arc::new(Vec::new()) }
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
pub fn resolve(backend: &str) -> &str {
    if backend == "cpu" {
        CPU_DEFAULT
    } else {
        backend
    }
}

/// Whether a recipe's backend can run in this binary, decided from the recipe alone (no
/// device is opened): the name is known and compiled in, and `run.gpu_memory_limit` is only
/// set for the cuda backend. A process that never trains (the supervisor, `oomph check`)
/// asks this; [`dispatch`] asks it too before it opens the device.
pub fn check(backend: &str, memory_limit: Option<u64>) -> Result<(), TrainError> {
    let resolved = resolve(backend);
    if memory_limit.is_some() && resolved != "cuda" {
        return Err(TrainError::BadInput(format!(
            "`run.gpu_memory_limit` emulates a smaller GPU on the cuda backend, and `run.backend` = \"{backend}\" \
             is not it. Fix: remove run.gpu_memory_limit, or set run.backend = \"cuda\"."
        )));
    }
    match resolved {
        "ndarray" | "flex" => Ok(()),
        "cuda" if cfg!(feature = "cuda") => Ok(()),
        "cuda" => Err(TrainError::BadInput(
            "`run.backend` = \"cuda\" but this oomph binary was built without CUDA support. Fix: rebuild with \
             `cargo build --release --features cuda`, or set run.backend = \"cpu\"."
                .into(),
        )),
        "tch" | "tch-cuda" if cfg!(feature = "tch") => Ok(()),
        "tch" | "tch-cuda" => Err(TrainError::BadInput(
            "`run.backend` names LibTorch (\"tch\" or \"tch-cuda\"), but this oomph binary was built without it. \
             Fix: run `scripts/setup-tch.sh` (it installs PyTorch 2.9.0 into .venv-tch and builds oomph with the \
             `tch` feature), or set run.backend = \"cpu\"."
                .into(),
        )),
        other => Err(TrainError::BadInput(format!(
            "`run.backend` = \"{other}\" is not a backend oomph knows. Fix: use \"cpu\", \"ndarray\", \"flex\", \
             \"cuda\", \"tch\" or \"tch-cuda\"."
        ))),
    }
}

/// Runs `w` with the backend named `backend` (`cpu`, `ndarray`, `flex`, `cuda`, `tch`,
/// `tch-cuda`) on device index `device`; `memory_limit` (bytes) emulates a smaller GPU. A
/// backend that is not compiled in, or a GPU that is not there, is a bad-input error with a
/// one-paragraph explanation ([`check`]).
pub fn dispatch<W: WithBackend>(
    backend: &str,
    device: usize,
    memory_limit: Option<u64>,
    w: W,
) -> Result<W::Output, TrainError> {
    check(backend, memory_limit)?;
    match resolve(backend) {
        "ndarray" => Ok(w.run::<NdArrayTrain>(Default::default(), BackendEnv::plain("ndarray (cpu)"))),
        "flex" => Ok(w.run::<FlexTrain>(Default::default(), BackendEnv::plain("flex (cpu)"))),
        "cuda" => cuda(device, memory_limit, w),
        "tch" => tch(None, w),
        "tch-cuda" => tch(Some(device), w),
        other => unreachable!("backend::check accepted {other}"),
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
fn tch<W: WithBackend>(cuda: Option<usize>, w: W) -> Result<W::Output, TrainError> {
    use burn::backend::libtorch::LibTorchDevice;
    let (dev, name) = match cuda {
        None => (LibTorchDevice::Cpu, "tch (cpu, libtorch)".to_string()),
        Some(index) => {
            let count = tch::Cuda::device_count().max(0) as usize;
            if index >= count {
                return Err(TrainError::BadInput(format!(
                    "`run.backend` = \"tch-cuda\" asks for CUDA device {index}, but LibTorch sees {count} CUDA \
                     device(s){}. Fix: set run.device to a device that exists, or run.backend = \"tch\" for the CPU.",
                    if count == 0 { " (no usable GPU or driver, or a CPU-only PyTorch)" } else { "" }
                )));
            }
            (LibTorchDevice::Cuda(index), format!("tch-cuda:{index} (libtorch)"))
        }
    };
    Ok(w.run::<TchTrain>(dev, BackendEnv::plain(&name)))
}

#[cfg(not(feature = "tch"))]
fn tch<W: WithBackend>(_cuda: Option<usize>, _w: W) -> Result<W::Output, TrainError> {
    unreachable!("backend::check refuses tch in a build without it")
}
