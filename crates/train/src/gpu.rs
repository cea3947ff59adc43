//! CUDA: the start-up check (a machine without a GPU or driver fails at start with a
//! one-line explanation and exit code 2, not a panic), memory telemetry from cubecl's
//! memory statistics, and the emulated small GPU (`run.gpu_memory_limit`).
//!
//! The emulation is an emulation of **capacity**: at start, everything above the limit is
//! taken as ballast allocations (each below the largest single allocation cubecl accepts,
//! a quarter of the device) and held for the whole run, so the out-of-memory failures that
//! follow are real CUDA allocation failures, classified and recovered by the normal path.

use crate::backend::{BackendEnv, MemoryStats};
use crate::error::TrainError;
use burn::cubecl::cuda::CudaRuntime;
use burn::cubecl::Runtime;
use burn::tensor::{ElementConversion, Tensor};
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

type Inner = burn::backend::Cuda<f32, i32>;

/// Checks that CUDA device `index` exists and computes. Panics while it tries are kept quiet
/// (the driver's runner thread panics with the real cause); the first one is the explanation.
pub fn check_cuda(index: usize) -> Result<(), TrainError> {
    let r = crate::recovery::quietly(|| {
        let dev = burn::backend::cuda::CudaDevice::new(index);
        let t = Tensor::<Inner, 1>::from_floats([1.0, 2.0], &dev);
        t.sum().into_scalar().elem::<f64>()
    });
    match r {
        Ok(v) if (v - 3.0).abs() < 1e-6 => Ok(()),
        Ok(v) => {
            Err(TrainError::BadInput(format!("CUDA device {index} computed 1+2 = {v}; the GPU or driver is faulty.")))
        }
        Err(cause) => Err(TrainError::BadInput(format!(
            "`run.backend` = \"cuda\" but CUDA device {index} is not usable here ({}). Fix: run on a machine \
             with an NVIDIA GPU and driver, pick another `run.device`, or set run.backend = \"cpu\".",
            short_cause(&cause)
        ))),
    }
}

/// The first line of a driver message, without the long library search list.
fn short_cause(msg: &str) -> String {
    let first = msg.lines().next().unwrap_or("no detail");
    let cut = first.split(" - ").next().unwrap_or(first);
    cut.chars().take(160).collect()
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Memory telemetry and, with `limit`, the ballast that emulates a smaller device.
pub fn cuda_env(
    device: &burn::backend::cuda::CudaDevice,
    index: usize,
    limit: Option<u64>,
) -> Result<BackendEnv, TrainError> {
    let client = CudaRuntime::client(device);
    // cubecl-cuda sets the largest single allocation to a quarter of the device's memory.
    let max_alloc = client.properties().memory.max_page_size;
    let total = max_alloc.saturating_mul(4);
    let mut ballast: Vec<Box<dyn Any + Send + Sync>> = Vec::new();
    let capacity = match limit {
        Some(l) if l < total => {
            let in_use = client.memory_usage().map(|u| u.bytes_reserved).unwrap_or(0);
            let mut remaining = total.saturating_sub(l).saturating_sub(in_use);
            // Chunks well below the largest single allocation; the last ones may not fit next
            // to the driver's own reservations, which only makes the emulation stricter.
            let chunk = (max_alloc / 2).max(1 << 20);
            while remaining >= (1 << 20) {
                let bytes = remaining.min(chunk);
                let floats = (bytes / 4) as usize;
                let dev = device.clone();
                let t = catch_unwind(AssertUnwindSafe(move || {
                    let t = Tensor::<Inner, 1>::zeros([floats], &dev);
                    let _ = <Inner as burn::tensor::backend::Backend>::sync(&dev);
                    t
                }));
                match t {
                    Ok(t) => ballast.push(Box::new(t)),
                    Err(_) => break,
                }
                remaining -= bytes;
            }
            tracing::info!(limit = l, total, chunks = ballast.len(), "emulating a smaller GPU with ballast");
            l
        }
        Some(l) => {
            tracing::warn!("run.gpu_memory_limit ({l} bytes) is not below the device's {total} bytes; ignored");
            total
        }
        None => total,
    };
    let probe_client = client.clone();
    let ballast_bytes: u64 = total.saturating_sub(capacity);
    let memory = Arc::new(move || {
        probe_client.memory_usage().ok().map(|u| MemoryStats {
            in_use: u.bytes_in_use.saturating_sub(ballast_bytes.min(u.bytes_in_use)),
            reserved: u.bytes_reserved.saturating_sub(ballast_bytes.min(u.bytes_reserved)),
            capacity,
        })
    });
    let name = format!(
        "cuda:{index} ({:.1} GiB{})",
        total as f64 / GIB,
        match limit {
            Some(l) if l < total => format!(", emulating {:.1} GiB", l as f64 / GIB),
            _ => String::new(),
        }
    );
    Ok(BackendEnv { name, memory: Some(memory), release: None, ballast: Arc::new(ballast) })
}
