//! Backend selection: `[run] backend` names one of the compiled-in backends, and
//! [`dispatch`] runs generic code with it.

use crate::error::TrainError;
use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::backend::AutodiffBackend;

/// The CPU backend used for `backend = "cpu"` (chosen by measurement; see BENCHMARKS.md).
pub const CPU_DEFAULT: &str = "flex";

/// Training on the ndarray CPU backend.
pub type NdArrayTrain = Autodiff<NdArray<f32>>;
/// Training on the flex CPU backend.
pub type FlexTrain = Autodiff<Flex>;
/// Training on CUDA.
#[cfg(feature = "cuda")]
pub type CudaTrain = Autodiff<burn::backend::Cuda<f32, i32>>;

/// Generic code to run with a chosen backend.
pub trait WithBackend {
    /// What it returns.
    type Output;
    /// Runs with backend `B` on `device`; `name` describes backend and device.
    fn run<B: AutodiffBackend>(self, device: B::Device, name: String) -> Self::Output;
}

/// The backend a recipe's `run.backend` resolves to (`"cpu"` becomes [`CPU_DEFAULT`]).
pub fn resolve(backend: &str) -> &str {
    if backend == "cpu" {
        CPU_DEFAULT
    } else {
        backend
    }
}

/// Runs `w` with the backend named `backend` (`cpu`, `ndarray`, `flex`, `cuda`) on device
/// index `device`. A backend that is not compiled in, or a GPU that is not there, is a
/// bad-input error with a one-paragraph explanation.
pub fn dispatch<W: WithBackend>(backend: &str, device: usize, w: W) -> Result<W::Output, TrainError> {
    match resolve(backend) {
        "ndarray" => Ok(w.run::<NdArrayTrain>(Default::default(), "ndarray (cpu)".into())),
        "flex" => Ok(w.run::<FlexTrain>(Default::default(), "flex (cpu)".into())),
        "cuda" => cuda(device, w),
        other => Err(TrainError::BadInput(format!(
            "`run.backend` = \"{other}\" is not a backend oomph knows. Fix: use \"cpu\", \"ndarray\", \"flex\" or \"cuda\"."
        ))),
    }
}

#[cfg(feature = "cuda")]
fn cuda<W: WithBackend>(device: usize, w: W) -> Result<W::Output, TrainError> {
    crate::gpu::check_cuda(device)?;
    let dev = burn::backend::cuda::CudaDevice::new(device);
    Ok(w.run::<CudaTrain>(dev, format!("cuda:{device}")))
}

#[cfg(not(feature = "cuda"))]
fn cuda<W: WithBackend>(_device: usize, _w: W) -> Result<W::Output, TrainError> {
    Err(TrainError::BadInput(
        "`run.backend` = \"cuda\" but this oomph binary was built without CUDA support. Fix: rebuild with \
         `cargo build --release --features cuda`, or set run.backend = \"cpu\"."
            .into(),
    ))
}
