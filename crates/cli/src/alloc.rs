//! A global-allocator wrapper that leaves a note when an allocation fails.
//!
//! A failed host allocation aborts a Rust process ("memory allocation of N bytes failed",
//! SIGABRT) before any Rust code can react. The wrapper writes `alloc-failure <bytes>` to a
//! file the worker opened at start (with `write(2)` only: no allocation, async-signal-safe),
//! so the supervisor can tell a memory death from any other abort. Declare it in your binary:
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: oomph_cli::TrackingAllocator = oomph_cli::TrackingAllocator;
//!
//! fn main() {}
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI32, Ordering};

static DEATH_FD: AtomicI32 = AtomicI32::new(-1);

/// The system allocator plus a note on failure.
pub struct TrackingAllocator;

fn note_failure(size: usize) {
    let fd = DEATH_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    let mut buf = [0u8; 48];
    let prefix = b"alloc-failure ";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 24];
    let mut n = size;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let d = &digits[i..];
    let end = prefix.len() + d.len();
    buf[prefix.len()..end].copy_from_slice(d);
    buf[end] = b'\n';
    // SAFETY: writing a stack buffer to a file descriptor we own.
    unsafe {
        libc::write(fd, buf.as_ptr().cast(), end + 1);
    }
}

// SAFETY: delegates every call to `System`; only observes null results.
unsafe impl GlobalAlloc for TrackingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            note_failure(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            note_failure(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            note_failure(new_size);
        }
        p
    }
}

/// Opens (truncating) the file that receives allocation-failure notes.
pub fn arm(path: &std::path::Path) {
    use std::os::unix::io::IntoRawFd;
    if let Ok(f) = std::fs::File::create(path) {
        let old = DEATH_FD.swap(f.into_raw_fd(), Ordering::SeqCst);
        if old >= 0 {
            // SAFETY: we own the previous descriptor.
            unsafe { libc::close(old) };
        }
    }
}
