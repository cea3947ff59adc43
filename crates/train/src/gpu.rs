//! CUDA start-up check: a machine without a GPU or driver fails at start with a one-line
//! explanation (exit code 2), not a panic.

use crate::error::TrainError;
use burn::tensor::{ElementConversion, Tensor};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Checks that CUDA device `index` exists and computes.
pub fn check_cuda(index: usize) -> Result<(), TrainError> {
    type B = burn::backend::Cuda<f32, i32>;
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = catch_unwind(AssertUnwindSafe(|| {
        let dev = burn::backend::cuda::CudaDevice::new(index);
        let t = Tensor::<B, 1>::from_floats([1.0, 2.0], &dev);
        t.sum().into_scalar().elem::<f64>()
    }));
    std::panic::set_hook(prev);
    match r {
        Ok(v) if (v - 3.0).abs() < 1e-6 => Ok(()),
        Ok(v) => Err(TrainError::BadInput(format!("CUDA device {index} computed 1+2 = {v}; the GPU or driver is faulty."))),
        Err(p) => {
            let msg = oomph_sched::oom::panics::panic_message(p.as_ref());
            Err(TrainError::BadInput(format!(
                "`run.backend` = \"cuda\" but CUDA device {index} is not usable here ({}). Fix: run on a machine \
                 with an NVIDIA GPU and driver, pick another `run.device`, or set run.backend = \"cpu\".",
                msg.lines().next().unwrap_or("no detail")
            )))
        }
    }
}
