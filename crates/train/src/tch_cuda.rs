//! LibTorch's CUDA caching allocator, for what neither tch nor burn-tch exposes
//! (`native/tch_cuda_memory.cpp`): releasing its cached blocks after an out-of-memory, as
//! `torch.cuda.empty_cache()` does, and the card's memory as `torch.cuda.memory_allocated`,
//! `memory_reserved` and `mem_get_info` report it.

use crate::backend::MemoryStats;
use std::ffi::{c_char, c_int, CStr};

unsafe extern "C" {
    fn oomph_tch_cuda_empty_cache(msg: *mut c_char, len: usize) -> c_int;
    fn oomph_tch_cuda_memory(
        device: c_int,
        allocated: *mut u64,
        reserved: *mut u64,
        total: *mut u64,
        msg: *mut c_char,
        len: usize,
    ) -> c_int;
}

fn message(buf: &[u8]) -> String {
    CStr::from_bytes_until_nul(buf).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The CUDA devices LibTorch sees (0 without a driver, or with a CPU-only libtorch).
pub fn device_count() -> usize {
    tch::Cuda::device_count().max(0) as usize
}

/// Hands the blocks LibTorch's CUDA allocator caches, and no tensor uses, back to the driver.
/// `Ok(false)`: there was nothing to release (no CUDA allocator, or it never allocated).
pub fn empty_cache() -> Result<bool, String> {
    let mut buf = [0u8; 512];
    // SAFETY: the buffer outlives the call, which writes at most `len` bytes into it and
    // catches every C++ exception.
    match unsafe { oomph_tch_cuda_empty_cache(buf.as_mut_ptr().cast(), buf.len()) } {
        0 => Ok(true),
        1 => Ok(false),
        _ => Err(message(&buf)),
    }
}

/// CUDA device `device`'s memory: bytes in LibTorch's live tensors, bytes its allocator holds
/// from the driver, and the card's total.
pub fn memory(device: usize) -> Result<MemoryStats, String> {
    let index = c_int::try_from(device).map_err(|_| format!("CUDA device {device} is out of range"))?;
    let (mut in_use, mut reserved, mut capacity) = (0u64, 0u64, 0u64);
    let mut buf = [0u8; 512];
    // SAFETY: every pointer is to a live local; the call catches every C++ exception.
    let rc = unsafe {
        oomph_tch_cuda_memory(index, &mut in_use, &mut reserved, &mut capacity, buf.as_mut_ptr().cast(), buf.len())
    };
    match rc {
        0 => Ok(MemoryStats { in_use, reserved, capacity }),
        _ => Err(message(&buf)),
    }
}
