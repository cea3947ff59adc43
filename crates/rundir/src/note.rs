//! `worker-death.txt`: the note a worker leaves when a host allocation fails.
//!
//! A failed host allocation aborts a Rust process before any Rust code can react, so the
//! global allocator of a worker (`oomph_train::alloc`) writes one line to a file it opened at
//! start, from inside the failing allocation: `alloc-failure <bytes>\n`, then, when the
//! failing thread knows where it was, its phase (`train`, `optimizer`, `eval`; `checkpoint` on
//! the checkpoint writer thread) and the step that phase belongs to (as in `current.json`):
//! `alloc-failure <bytes> train 12\n`. With several ranks in one process the note names where
//! the rank that failed was, which `current.json` (the gang's earliest position) cannot. The
//! line is written at offset 0 with `pwrite(2)` by [`write_note`], which allocates nothing and
//! is async-signal-safe; an empty file ([`clear_note`]) means no memory death. The supervisor
//! reads it with [`read_note`] after the worker died of SIGABRT.

use crate::WorkerPhase;
use std::os::unix::io::RawFd;
use std::path::Path;

/// The start of a note.
const PREFIX: &str = "alloc-failure ";
/// The longest note, in bytes (a 20-digit size, the phase, a 20-digit step and the newline fit).
const MAX_LEN: usize = 80;

/// What a note says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Note {
    /// The size of the allocation that failed.
    pub bytes: u64,
    /// The failing thread's phase, when it knows it (`Checkpoint` on the checkpoint writer).
    pub phase: Option<WorkerPhase>,
    /// The step that phase belongs to, when the failing thread knows it.
    pub step: Option<usize>,
}

impl Note {
    /// Whether the allocation failed on the checkpoint writer thread.
    pub fn checkpoint(&self) -> bool {
        self.phase == Some(WorkerPhase::Checkpoint)
    }
}

/// Appends `n` in decimal to `buf` at `end` without allocating; returns the new end.
fn put_number(buf: &mut [u8; MAX_LEN], end: usize, mut n: usize) -> usize {
    let mut digits = [0u8; 24];
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
    buf[end..end + d.len()].copy_from_slice(d);
    end + d.len()
}

/// Appends a space and `word` to `buf` at `end`; returns the new end.
fn put_word(buf: &mut [u8; MAX_LEN], end: usize, word: &[u8]) -> usize {
    buf[end] = b' ';
    buf[end + 1..end + 1 + word.len()].copy_from_slice(word);
    end + 1 + word.len()
}

/// Formats the note into `buf` without allocating; returns its length (newline included).
fn format_note(buf: &mut [u8; MAX_LEN], bytes: usize, phase: Option<WorkerPhase>, step: Option<usize>) -> usize {
    let prefix = PREFIX.as_bytes();
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut end = put_number(buf, prefix.len(), bytes);
    if let Some(phase) = phase {
        end = put_word(buf, end, phase.as_str().as_bytes());
        if let Some(step) = step {
            buf[end] = b' ';
            end = put_number(buf, end + 1, step);
        }
    }
    buf[end] = b'\n';
    end + 1
}

/// Writes the note to the open file `fd` at offset 0. Allocates nothing and makes one
/// system call (`pwrite(2)`, async-signal-safe), so a global allocator may call it from
/// inside a failed allocation. Errors are ignored: there is nobody left to tell.
pub fn write_note(fd: RawFd, bytes: usize, phase: Option<WorkerPhase>, step: Option<usize>) {
    let mut buf = [0u8; MAX_LEN];
    let len = format_note(&mut buf, bytes, phase, step);
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
    let phase = words.next().and_then(|w| WorkerPhase::ALL.into_iter().find(|p| p.as_str() == w));
    let step = phase.and(words.next()).and_then(|w| w.parse().ok());
    Some(Note { bytes, phase, step })
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
        write_note(fd, 123_456_789, None, None);
        assert_eq!(ALLOCATIONS.with(Cell::get), before, "writing a note allocated");
        let counted = Box::new(1u8);
        assert!(ALLOCATIONS.with(Cell::get) > before, "the counter counts");
        drop(counted);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "alloc-failure 123456789\n");
        assert_eq!(read_note(&p), Some(Note { bytes: 123_456_789, phase: None, step: None }));
        clear_note(fd);
        assert_eq!(read_note(&p), None);
        write_note(fd, usize::MAX, Some(WorkerPhase::Checkpoint), None);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), format!("alloc-failure {} checkpoint\n", usize::MAX));
        assert_eq!(
            read_note(&p),
            Some(Note { bytes: usize::MAX as u64, phase: Some(WorkerPhase::Checkpoint), step: None })
        );
        // The longest note: every field at its widest.
        let before = ALLOCATIONS.with(Cell::get);
        write_note(fd, usize::MAX, Some(WorkerPhase::Optimizer), Some(usize::MAX));
        assert_eq!(ALLOCATIONS.with(Cell::get), before, "writing a note allocated");
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!("alloc-failure {} optimizer {}\n", usize::MAX, usize::MAX)
        );
        assert_eq!(
            read_note(&p),
            Some(Note { bytes: usize::MAX as u64, phase: Some(WorkerPhase::Optimizer), step: Some(usize::MAX) })
        );
        // A shorter note over a longer one: the first line is the note.
        write_note(fd, 7, Some(WorkerPhase::Train), Some(3));
        assert_eq!(read_note(&p), Some(Note { bytes: 7, phase: Some(WorkerPhase::Train), step: Some(3) }));
    }

    #[test]
    fn todays_notes_parse_and_others_do_not() {
        let note = |phase, step| Some(Note { bytes: 64, phase, step });
        assert_eq!(parse_note("alloc-failure 64\n"), note(None, None));
        assert_eq!(parse_note("alloc-failure 64 checkpoint\n"), note(Some(WorkerPhase::Checkpoint), None));
        assert_eq!(parse_note("alloc-failure 64 eval 10\n"), note(Some(WorkerPhase::Eval), Some(10)));
        // A word that is no phase, or a step that is no number, is not known.
        assert_eq!(parse_note("alloc-failure 64 lunch 10\n"), note(None, None));
        assert_eq!(parse_note("alloc-failure 64 train x\n"), note(Some(WorkerPhase::Train), None));
        for text in ["", "\n", "alloc-failure \n", "alloc-failure x\n", "something else\n"] {
            assert_eq!(parse_note(text), None, "{text:?}");
        }
        assert_eq!(read_note(Path::new("/nonexistent/worker-death.txt")), None);
    }
}
