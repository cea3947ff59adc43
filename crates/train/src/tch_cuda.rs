//! LibTorch's CUDA caching allocator, for what neither tch nor burn-tch exposes
//! (`native/tch_cuda_memory.cpp`): releasing its cached blocks after an out-of-memory, as
//! `torch.cuda.empty_cache()` does, and the card's memory: its size, and what
//! `torch.cuda.memory_allocated` and `memory_reserved` report.

use std::ffi::{c_char, c_int, CStr};

unsafe extern "C" {
    fn oomph_tch_cuda_empty_cache(msg: *mut c_char, len: usize) -> c_int;
    fn oomph_tch_cuda_total(device: c_int, total: *mut u64, msg: *mut c_char, len: usize) -> c_int;
    fn oomph_tch_cuda_allocator(
        device: c_int,
        allocated: *mut u64,
        reserved: *mut u64,
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

fn index(device: usize) -> Result<c_int, String> {
    c_int::try_from(device).map_err(|_| format!("CUDA device {device} is out of range"))
}

/// CUDA device `device`'s memory in bytes, from the driver: no context is created and the
/// runtime's state is not touched, so asking never disturbs the run.
pub fn total(device: usize) -> Result<u64, String> {
    let (index, mut total, mut buf) = (index(device)?, 0u64, [0u8; 512]);
    // SAFETY: every pointer is to a live local; the call catches every C++ exception.
    match unsafe { oomph_tch_cuda_total(index, &mut total, buf.as_mut_ptr().cast(), buf.len()) } {
        0 => Ok(total),
        _ => Err(message(&buf)),
    }
}

/// The bytes in LibTorch's live CUDA tensors on `device` and the bytes its allocator holds
/// from the driver there (`torch.cuda.memory_allocated`, `memory_reserved`); both 0 before it
/// first allocates. Reads the allocator's counters only: no CUDA call.
pub fn allocator(device: usize) -> Result<(u64, u64), String> {
    let (index, mut allocated, mut reserved, mut buf) = (index(device)?, 0u64, 0u64, [0u8; 512]);
    // SAFETY: every pointer is to a live local; the call catches every C++ exception.
    let rc =
        unsafe { oomph_tch_cuda_allocator(index, &mut allocated, &mut reserved, buf.as_mut_ptr().cast(), buf.len()) };
    match rc {
        0 => Ok((allocated, reserved)),
        _ => Err(message(&buf)),
    }
}
