//! `worker-death.txt`: the note a worker leaves when a host allocation fails.
//!
//! A failed host allocation aborts a Rust process before any Rust code can react, so the
//! global allocator of a worker (`oomph_train::alloc`) writes one line to a file it opened at
//! start, from inside the failing allocation: `alloc-failure <bytes>\n`, or
//! `alloc-failure <bytes> checkpoint\n` when it failed on the checkpoint writer thread. The
//! line is written at offset 0 with `pwrite(2)` by [`write_note`], which allocates nothing and
//! is async-signal-safe; an empty file ([`clear_note`]) means no memory death. The
//! supervisor reads it with [`read_note`] after the worker died of SIGABRT.

use std::os::unix::io::RawFd;
use std::path::Path;

/// The start of a note.
const PREFIX: &str = "alloc-failure ";
/// The word after the size when the allocation failed on the checkpoint writer thread.
pub const CHECKPOINT: &str = "checkpoint";
/// The longest note, in bytes (a 20-digit size, the tag and the newline fit).
const MAX_LEN: usize = 64;

/// What a note says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note {
    /// The size of the allocation that failed.
    pub bytes: u64,
    /// Whether it failed on the checkpoint writer thread.
    pub checkpoint: bool,
}

/// Formats the note into `buf` without allocating; returns its length (newline included).
fn format_note(buf: &mut [u8; MAX_LEN], bytes: usize, checkpoint: bool) -> usize {
    let prefix = PREFIX.as_bytes();
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut digits = [0u8; 24];
    let mut n = bytes;
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
    let mut end = prefix.len() + d.len();
    buf[prefix.len()..end].copy_from_slice(d);
    if checkpoint {
        buf[end] = b' ';
        buf[end + 1..end + 1 + CHECKPOINT.len()].copy_from_slice(CHECKPOINT.as_bytes());
        end += 1 + CHECKPOINT.len();
    }
    buf[end] = b'\n';
    end + 1
}

/// Writes the note to the open file `fd` at offset 0. Allocates nothing and makes one
/// system call (`pwrite(2)`, async-signal-safe), so a global allocator may call it from
/// inside a failed allocation. Errors are ignored: there is nobody left to tell.
pub fn write_note(fd: RawFd, bytes: usize, checkpoint: bool) {
    let mut buf = [0u8; MAX_LEN];
    let len = format_note(&mut buf, bytes, checkpoint);
    // SAFETY: writing `len` bytes of a stack buffer to a descriptor the caller owns.
    unsafe {
        libc::pwrite(fd, buf.as_ptr().cast(), len, 0);
    }
}

/// Empties the note in the open file `fd` (the failure was survived). Allocates nothing.
pub fn clear_note(fd: RawFd) {
    // SAFETY: truncating a descriptor the caller owns.
    unsafe {
        libc::ftruncate(fd, 0);
    }
}

/// Parses a note's text (its first line); `None` when it is empty or not a note.
fn parse_note(text: &str) -> Option<Note> {
    let rest = text.lines().next()?.strip_prefix(PREFIX)?;
    let mut words = rest.split_whitespace();
    let bytes = words.next()?.parse().ok()?;
    Some(Note { bytes, checkpoint: words.next() == Some(CHECKPOINT) })
}

/// Reads the note at `path` (`None` when absent, empty or unreadable: no memory death).
pub fn read_note(path: &Path) -> Option<Note> {
    parse_note(&std::fs::read_to_string(path).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::os::unix::io::AsRawFd;

    /// Counts this thread's allocations (the test binary's allocator).
    struct Counting;

    thread_local! {
        static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    }

    // SAFETY: delegates every call to `System`.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
            // SAFETY: same contract as the caller's.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: same contract as the caller's.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    #[test]
    fn a_note_is_written_without_allocating_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("worker-death.txt");
        let f = std::fs::File::create(&p).unwrap();
        let fd = f.as_raw_fd();
        let before = ALLOCATIONS.with(Cell::get);
        write_note(fd, 123_456_789, false);
        assert_eq!(ALLOCATIONS.with(Cell::get), before, "writing a note allocated");
        let counted = Box::new(1u8);
        assert!(ALLOCATIONS.with(Cell::get) > before, "the counter counts");
        drop(counted);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "alloc-failure 123456789\n");
        assert_eq!(read_note(&p), Some(Note { bytes: 123_456_789, checkpoint: false }));
        clear_note(fd);
        assert_eq!(read_note(&p), None);
        write_note(fd, usize::MAX, true);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("alloc-failure {} checkpoint\n", usize::MAX));
        assert_eq!(read_note(&p), Some(Note { bytes: usize::MAX as u64, checkpoint: true }));
        // A shorter note over a longer one: the first line is the note.
        write_note(fd, 7, false);
        assert_eq!(read_note(&p), Some(Note { bytes: 7, checkpoint: false }));
    }

    #[test]
    fn todays_notes_parse_and_others_do_not() {
        assert_eq!(parse_note("alloc-failure 64\n"), Some(Note { bytes: 64, checkpoint: false }));
        assert_eq!(parse_note("alloc-failure 64 checkpoint\n"), Some(Note { bytes: 64, checkpoint: true }));
        for text in ["", "\n", "alloc-failure \n", "alloc-failure x\n", "something else\n"] {
            assert_eq!(parse_note(text), None, "{text:?}");
        }
        assert_eq!(read_note(Path::new("/nonexistent/worker-death.txt")), None);
    }
}
