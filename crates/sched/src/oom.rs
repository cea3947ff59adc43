//! The one place that decides what is an out-of-memory failure.
//!
//! [`classify`] looks at the text of a panic payload, a backend error (`ExecutionError`,
//! `IoError`, `ServerError`, ...) or a worker's stderr and says whether it is an
//! out-of-memory, and of which kind. The patterns are the real strings produced by the
//! libraries oomph runs on (burn 0.21, cubecl 0.10, cudarc 0.19, wgpu 29, std); each has a
//! unit test quoting where it comes from.
//!
//! The classifier is deliberately narrow: a message that merely mentions memory
//! ("memory access out of bounds", "Too much shared memory requested", "capacity overflow")
//! is *not* an out-of-memory, because retrying such a failure with a smaller micro-batch
//! would hide a real bug.
//!
//! The classifier only reads text. Collecting that text (a panic on another thread, a
//! backend's error) is the recovery boundary's job in `oomph-train` (`recovery/panics.rs`
//! records panics raised on threads the trainer does not own: cubecl's device runner catches
//! its own panics and only logs "Task failed: ...").

use serde::{Deserialize, Serialize};

/// The prefix of every simulated out-of-memory message oomph raises itself (the `[faults]`
/// recipe section). Simulated failures are named as simulation everywhere.
pub const SIMULATED_OOM_PREFIX: &str = "oomph simulated out-of-memory";

/// What kind of out-of-memory a message describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OomKind {
    /// cubecl's memory manager could not reserve a device buffer
    /// (`IoError::BufferTooBig`: "can't allocate buffer of size: N"; cubecl-cuda maps
    /// `CUDA_ERROR_OUT_OF_MEMORY` from `cuMemAlloc` to it), a kernel launch out of memory,
    /// or a generic "out of memory" message without a more specific origin.
    DeviceAlloc,
    /// The CUDA (or HIP) driver itself reported out-of-memory (`CUDA_ERROR_OUT_OF_MEMORY`,
    /// `cudaErrorMemoryAllocation`, `hipErrorOutOfMemory`, "CUDA out of memory").
    CudaDriver,
    /// wgpu reported out-of-memory ("wgpu error: Out of Memory", wgpu-core's
    /// "Not enough memory left.", WebGPU's `GPUOutOfMemoryError`).
    Wgpu,
    /// A host (CPU RAM) allocation failed: std's "memory allocation of N bytes failed",
    /// `TryReserveError` "...the memory allocator returned an error", `ENOMEM`
    /// ("Cannot allocate memory"), C++ `std::bad_alloc`.
    HostAlloc,
    /// oomph's own simulated out-of-memory (message starts with [`SIMULATED_OOM_PREFIX`]).
    Simulated,
}

impl OomKind {
    /// A stable lowercase name, as used in `events.jsonl`.
    pub fn as_str(self) -> &'static str {
        match self {
            OomKind::DeviceAlloc => "device_alloc",
            OomKind::CudaDriver => "cuda_driver",
            OomKind::Wgpu => "wgpu",
            OomKind::HostAlloc => "host_alloc",
            OomKind::Simulated => "simulated",
        }
    }
}

impl std::fmt::Display for OomKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `message` describes an out-of-memory failure. Same as `classify(message).is_some()`.
pub fn is_oom(message: &str) -> bool {
    classify(message).is_some()
}

/// Case-sensitive markers of cubecl's own allocator refusing a buffer.
const DEVICE_ALLOC_MARKERS: &[&str] = &[
    // cubecl-runtime src/server/base.rs, IoError::BufferTooBig Display.
    "can't allocate buffer of size",
    // cubecl-runtime src/server/base.rs, LaunchError::OutOfMemory Display.
    "An out-of-memory error happened during launch",
    // cubecl-hip src/compute/context.rs, LaunchError::OutOfMemory reason.
    "Out of memory when launching kernel",
];

/// Case-sensitive markers of a CUDA / HIP driver out-of-memory.
const CUDA_MARKERS: &[&str] = &[
    // cudarc sys: CUresult::CUDA_ERROR_OUT_OF_MEMORY (Debug of DriverError).
    "CUDA_ERROR_OUT_OF_MEMORY",
    // CUDA runtime API name of the same error.
    "cudaErrorMemoryAllocation",
    // HIP: hipError_t::hipErrorOutOfMemory.
    "hipErrorOutOfMemory",
    // libtorch's CUDA caching allocator (c10/cuda/CUDACachingAllocator.cpp, tch backend):
    // "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of ...".
    "CUDA out of memory. Tried to allocate",
    // cuBLAS could not allocate its workspace (libtorch's CUDABlas.cpp names the status).
    "CUBLAS_STATUS_ALLOC_FAILED",
];

/// Case-sensitive markers of a wgpu out-of-memory.
const WGPU_MARKERS: &[&str] = &[
    // wgpu src/backend/wgpu_core.rs default_error_handler: panic!("wgpu error: {err}\n"),
    // with wgpu::Error::OutOfMemory displaying as "Out of Memory".
    "wgpu error: Out of Memory",
    // wgpu-core src/device/mod.rs, DeviceError::OutOfMemory Display.
    "Not enough memory left",
    // WebGPU's error class (wgpu webgpu backend).
    "GPUOutOfMemoryError",
    "GpuOutOfMemoryError",
];

/// Case-sensitive markers of a failed host allocation.
const HOST_MARKERS: &[&str] = &[
    // std alloc::default_alloc_error_hook: "memory allocation of {size} bytes failed".
    // (Matched with a number in between by `host_alloc_of_n_bytes`.)
    // TryReserveErrorKind::AllocError Display.
    "memory allocation failed because the memory allocator returned an error",
    // strerror(ENOMEM), e.g. io::Error "Cannot allocate memory (os error 12)".
    "Cannot allocate memory",
    // io::ErrorKind::OutOfMemory Debug inside an io::Error Debug.
    "kind: OutOfMemory",
    // C++ (libtorch through tch).
    "std::bad_alloc",
    // libtorch's CPU allocator (c10/core/impl/alloc_cpu.cpp): "[enforce fail at
    // alloc_cpu.cpp:124] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to
    // allocate 6400000000 bytes. Error code 12 (Cannot allocate memory)".
    "DefaultCPUAllocator: can't allocate memory",
];

/// Decides whether `message` is an out-of-memory failure, and of which kind.
///
/// The order of the checks is: oomph's simulation prefix; cubecl's allocator; CUDA/HIP
/// driver codes; wgpu; host allocation; then generic phrases ("out of memory",
/// "out-of-memory", the identifiers `OutOfMemory`/`BufferTooBig`), whose kind is guessed
/// from the context (`cuda`/`wgpu` mentioned or not).
///
/// ```
/// use oomph_sched::oom::{classify, OomKind};
/// assert_eq!(
///     classify("called `Result::unwrap()` on an `Err` value: can't allocate buffer of size: 4294967296"),
///     Some(OomKind::DeviceAlloc)
/// );
/// assert_eq!(classify("index out of bounds: the len is 3 but the index is 7"), None);
/// ```
pub fn classify(message: &str) -> Option<OomKind> {
    if message.contains(SIMULATED_OOM_PREFIX) {
        return Some(OomKind::Simulated);
    }
    if DEVICE_ALLOC_MARKERS.iter().any(|m| message.contains(m)) {
        return Some(OomKind::DeviceAlloc);
    }
    if CUDA_MARKERS.iter().any(|m| message.contains(m)) {
        return Some(OomKind::CudaDriver);
    }
    if WGPU_MARKERS.iter().any(|m| message.contains(m)) {
        return Some(OomKind::Wgpu);
    }
    if host_alloc_of_n_bytes(message) || HOST_MARKERS.iter().any(|m| message.contains(m)) {
        return Some(OomKind::HostAlloc);
    }
    let lower = message.to_ascii_lowercase();
    let generic =
        has_oom_phrase(&lower) || has_identifier(message, "OutOfMemory") || has_identifier(message, "BufferTooBig");
    if !generic {
        return None;
    }
    if lower.contains("cuda") || lower.contains("hip error") {
        Some(OomKind::CudaDriver)
    } else if lower.contains("wgpu") || lower.contains("webgpu") {
        Some(OomKind::Wgpu)
    } else {
        Some(OomKind::DeviceAlloc)
    }
}

/// std's allocation-failure text: "memory allocation of 1234 bytes failed".
fn host_alloc_of_n_bytes(message: &str) -> bool {
    const HEAD: &str = "memory allocation of ";
    let mut rest = message;
    while let Some(i) = rest.find(HEAD) {
        let after = &rest[i + HEAD.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(" bytes failed") {
            return true;
        }
        rest = after;
    }
    false
}

/// "out of memory" / "out-of-memory" as a phrase, not followed by "bounds"/"range"
/// (e.g. a hypothetical "index out of memory bounds" is an indexing bug).
fn has_oom_phrase(lower: &str) -> bool {
    for phrase in ["out of memory", "out-of-memory", "out_of_memory"] {
        let mut from = 0;
        while let Some(i) = lower[from..].find(phrase) {
            let start = from + i;
            let end = start + phrase.len();
            let before_ok = start == 0 || !lower.as_bytes()[start - 1].is_ascii_alphanumeric();
            let tail = lower[end..].trim_start();
            let after_ok = !(tail.starts_with("bound") || tail.starts_with("range"));
            if before_ok && after_ok {
                return true;
            }
            from = end;
        }
    }
    false
}

/// `ident` as a whole identifier: not preceded by an identifier character (so
/// `ImmediateOutOfMemory`, wgpu's "ran out of immediate data space", does not count), and not
/// followed by a lowercase letter or digit.
fn has_identifier(message: &str, ident: &str) -> bool {
    let bytes = message.as_bytes();
    let mut from = 0;
    while let Some(i) = message[from..].find(ident) {
        let start = from + i;
        let end = start + ident.len();
        let before_ok = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let after_ok = end == bytes.len() || !(bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit());
        if before_ok && after_ok {
            return true;
        }
        from = end;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(m: &str) -> Option<OomKind> {
        classify(m)
    }

    #[test]
    fn cubecl_buffer_too_big() {
        // cubecl-runtime-0.10.0/src/server/base.rs:
        //   #[error("can't allocate buffer of size: {size}\n{backtrace}")] BufferTooBig
        // raised by memory_manage.rs `reserve`, exclusive_pool.rs `alloc`, storage/bytes_cpu.rs
        // and cubecl-cuda-0.10.0/src/compute/storage/gpu.rs (CUDA_ERROR_OUT_OF_MEMORY mapped).
        // It panics on the runner thread via cubecl-cuda compute/server.rs
        // `command.reserve(size).unwrap()` in `initialize_memory`.
        let m = "called `Result::unwrap()` on an `Err` value: can't allocate buffer of size: 8589934592\nNo backtrace available";
        assert_eq!(kind(m), Some(OomKind::DeviceAlloc));
        // Debug of IoError is its Display; Debug of a derived enum wrapping it names the variant.
        assert_eq!(
            kind("Io(BufferTooBig { size: 1024, backtrace: No backtrace available })"),
            Some(OomKind::DeviceAlloc)
        );
    }

    #[test]
    fn burn_execution_error_wrapping_cubecl() {
        // burn-backend-0.21.0/src/backend/base.rs ExecutionError::WithContext
        //   "An error happened during execution\nCaused by:\n  {reason}"
        // burn-cubecl-0.21.0/src/backend.rs `sync` maps the cubecl ServerError into `reason`;
        // cubecl-runtime ServerError::Io: "An execution error happened during profiling\nCaused by:\n  {0}".
        let m = "An error happened during execution\nCaused by:\n  An execution error happened during profiling\nCaused by:\n  can't allocate buffer of size: 268435456\nNo backtrace available";
        assert_eq!(kind(m), Some(OomKind::DeviceAlloc));
        // ServerError::ServerUnhealthy { errors:? }.
        let m = "The server is in an invalid state\nCaused by:\n  [An execution error happened during profiling\nCaused by:\n  can't allocate buffer of size: 64\nNo backtrace available]";
        assert_eq!(kind(m), Some(OomKind::DeviceAlloc));
    }

    #[test]
    fn cubecl_launch_out_of_memory() {
        // cubecl-runtime-0.10.0/src/server/base.rs LaunchError::OutOfMemory
        //   "An out-of-memory error happened during launch\nCaused by:\n  {reason}\nBacktrace\n{backtrace}"
        // cubecl-hip-0.10.0/src/compute/context.rs reason: "Out of memory when launching kernel: {kernel_id:?}"
        let m = "An out-of-memory error happened during launch\nCaused by:\n  Out of memory when launching kernel: KernelId { .. }\nBacktrace\nNo backtrace available";
        assert_eq!(kind(m), Some(OomKind::DeviceAlloc));
    }

    #[test]
    fn cuda_driver() {
        // cudarc-0.19.10/src/driver/result.rs: DriverError Display = Debug =
        //   DriverError(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")
        assert_eq!(kind("DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")"), Some(OomKind::CudaDriver));
        assert_eq!(
            kind("CUDA allocation error: DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")"),
            Some(OomKind::CudaDriver)
        );
        assert_eq!(kind("cudaErrorMemoryAllocation"), Some(OomKind::CudaDriver));
        assert_eq!(kind("hipErrorOutOfMemory"), Some(OomKind::CudaDriver));
        // libtorch (tch backend) phrase.
        assert_eq!(kind("CUDA out of memory. Tried to allocate 2.00 GiB"), Some(OomKind::CudaDriver));
    }

    /// The texts of libtorch 2.9.0 (the `tch` backend): PyTorch 2.9.0's own messages, as tch
    /// carries them in `TchError::Torch` (a panic's `Torch("...")`), with libtorch's
    /// "Exception raised from ..." trace after them.
    #[test]
    fn libtorch() {
        // Under `prlimit --as=5000000000`, torch.empty(1_600_000_000) (6.4 GB of f32):
        let cpu = "called `Result::unwrap()` on an `Err` value: Torch(\"[enforce fail at alloc_cpu.cpp:124] err == 0. \
                   DefaultCPUAllocator: can't allocate memory: you tried to allocate 6400000000 bytes. Error code 12 \
                   (Cannot allocate memory)\\nException raised from alloc_cpu at /pytorch/c10/core/impl/alloc_cpu.cpp:124 \
                   (most recent call first):\")";
        assert_eq!(kind(cpu), Some(OomKind::HostAlloc));
        // The same with the errno text cut off.
        assert_eq!(
            kind("DefaultCPUAllocator: can't allocate memory: you tried to allocate 64 bytes."),
            Some(OomKind::HostAlloc)
        );
        // c10/cuda/CUDACachingAllocator.cpp, PyTorch 2.9.0:
        let cuda =
            "Torch(\"CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB of \
                    which 3.06 GiB is free. Including non-PyTorch memory, this process has 76.12 GiB memory in use. Of \
                    the allocated memory 75.50 GiB is allocated by PyTorch, and 1.12 MiB is reserved by PyTorch but \
                    unallocated. If reserved but unallocated memory is large try setting \
                    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.\")";
        assert_eq!(kind(cuda), Some(OomKind::CudaDriver));
        // aten/src/ATen/cuda/CUDABlas.cpp: TORCH_CUDABLAS_CHECK's text.
        let cublas = "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`";
        assert_eq!(kind(cublas), Some(OomKind::CudaDriver));
        // libtorch's other errors (PyTorch 2.9.0's texts) are not memory.
        for m in [
            "The size of tensor a (3) must match the size of tensor b (4) at non-singleton dimension 0",
            "mat1 and mat2 shapes cannot be multiplied (2x3 and 2x3)",
            "dot : expected both vectors to have same dtype, but found Float and Double",
            "expected scalar type Float but found Double",
            "Target 5 is out of bounds.",
            "index 7 is out of bounds for dimension 0 with size 3",
            "CUDA error: an illegal memory access was encountered",
            "CUDA error: device-side assert triggered",
        ] {
            assert_eq!(kind(m), None, "{m:?} must not be an OOM");
        }
    }

    #[test]
    fn wgpu() {
        // wgpu-29.0.4/src/backend/wgpu_core.rs default_error_handler: panic!("wgpu error: {err}\n")
        // wgpu-29.0.4/src/api/device.rs Error::OutOfMemory Display: "Out of Memory"
        assert_eq!(kind("wgpu error: Out of Memory\n"), Some(OomKind::Wgpu));
        // wgpu-core-29.0.4/src/device/mod.rs DeviceError::OutOfMemory: "Not enough memory left."
        assert_eq!(kind("Not enough memory left."), Some(OomKind::Wgpu));
        // wgpu-hal-29.0.4/src/lib.rs DeviceError::OutOfMemory: "Out of memory" (phrase; wgpu context)
        assert_eq!(kind("wgpu-hal: Out of memory"), Some(OomKind::Wgpu));
        // wgpu Error Debug.
        assert_eq!(kind("OutOfMemory { source: wgpu }"), Some(OomKind::Wgpu));
        assert_eq!(kind("GPUOutOfMemoryError"), Some(OomKind::Wgpu));
    }

    #[test]
    fn host_allocation() {
        // std library/std/src/alloc.rs default_alloc_error_hook:
        //   "memory allocation of {} bytes failed"
        assert_eq!(kind("memory allocation of 17179869184 bytes failed"), Some(OomKind::HostAlloc));
        assert_eq!(
            kind("worker stderr: memory allocation of 8 bytes failed\nAborted (core dumped)"),
            Some(OomKind::HostAlloc)
        );
        // alloc TryReserveErrorKind::AllocError Display.
        assert_eq!(
            kind("memory allocation failed because the memory allocator returned an error"),
            Some(OomKind::HostAlloc)
        );
        // io::Error from ENOMEM.
        assert_eq!(
            kind("failed to spawn thread: Os { code: 12, kind: OutOfMemory, message: \"Cannot allocate memory\" }"),
            Some(OomKind::HostAlloc)
        );
        assert_eq!(kind("terminate called after throwing an instance of 'std::bad_alloc'"), Some(OomKind::HostAlloc));
    }

    #[test]
    fn simulated() {
        let m = format!(
            "{SIMULATED_OOM_PREFIX}: a micro-batch of 64 samples does not fit the simulated capacity of 12 samples"
        );
        assert_eq!(kind(&m), Some(OomKind::Simulated));
        let m = format!("{SIMULATED_OOM_PREFIX}: injected by faults.oom_at in forward of step 3");
        assert_eq!(kind(&m), Some(OomKind::Simulated));
    }

    #[test]
    fn generic_phrases() {
        assert_eq!(kind("out of memory"), Some(OomKind::DeviceAlloc));
        assert_eq!(kind("device OUT OF MEMORY while allocating"), Some(OomKind::DeviceAlloc));
        assert_eq!(kind("AllocationError::OutOfMemory"), Some(OomKind::DeviceAlloc));
        assert_eq!(kind("Err(OutOfMemory)"), Some(OomKind::DeviceAlloc));
    }

    #[test]
    fn not_out_of_memory() {
        let negatives = [
            "",
            "memory access out of bounds",
            "index out of bounds: the len is 3 but the index is 5",
            // alloc raw_vec capacity_overflow(): a size computation bug, not a lack of memory.
            "capacity overflow",
            // TryReserveErrorKind::CapacityOverflow Display.
            "memory allocation failed because the computed capacity exceeded the collection's maximum",
            // wgpu-core-29.0.4/src/command/compute.rs ImmediateOutOfMemory.
            "Ran out of immediate data space. Don't set 4gb of immediates per ComputePass.",
            "ImmediateOutOfMemory",
            // cubecl-runtime ResourceLimitError::SharedMemory: a kernel configuration error.
            "Too much shared memory requested.\nRequested 65536 bytes, maximum 49152 bytes available.",
            // cubecl-runtime IoError::NotFound / FreeError.
            "couldn't find resource for that handle: No reason provided for the error",
            "couldn't free the handle, since it is currently in used. ",
            // cubecl-common device/handle/channel.rs: the runner's log line, by itself.
            "Task failed: Any { .. }",
            "DriverError(CUDA_ERROR_ILLEGAL_ADDRESS, \"an illegal memory access was encountered\")",
            "Device is lost",
            "Shape mismatch: lhs [2, 3] rhs [4, 5]",
            "simulated model bug injected by faults.panic_at in forward of step 3 (not a memory failure)",
            "index out of memory bounds",
            "attempt to subtract with overflow",
            "OutOfMemoryish",
        ];
        for m in negatives {
            assert_eq!(kind(m), None, "{m:?} must not be an OOM");
            assert!(!is_oom(m));
        }
    }

    #[test]
    fn kind_names() {
        assert_eq!(OomKind::HostAlloc.to_string(), "host_alloc");
        assert_eq!(serde_json::to_string(&OomKind::CudaDriver).unwrap(), "\"cuda_driver\"");
    }
}
