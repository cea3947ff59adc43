//! A global-allocator wrapper that leaves a note when an allocation fails.
//!
//! A failed host allocation aborts a Rust process ("memory allocation of N bytes failed",
//! SIGABRT) before any Rust code can react. The wrapper writes `alloc-failure <bytes>` to a
//! file the worker opened at start (with `write(2)` only: no allocation, async-signal-safe),
//! so the supervisor can tell a memory death from any other abort. Declare it in your binary:
//!
//! ```no_run
//! #[global_allocator]
//! static ALLOC: oomph_train::alloc::TrackingAllocator = oomph_train::alloc::TrackingAllocator;
//!
//! fn main() {}
//! ```
//!
//! A failure the process survives (a fallible allocation, a backend that turns it into an
//! error) must not make a later, unrelated abort look like a memory death: the trainer calls
//! [`survived`] after every step and every recovered out-of-memory, which clears the note.
//! A failure on the checkpoint writer thread is noted as such (`alloc-failure N checkpoint`),
//! so the supervisor blames the checkpoint, not the micro-batch. A failure on a thread that
//! told where it is ([`set_thread_position`]: each rank's training thread) is noted with that
//! phase and step (`alloc-failure N train 12`): with several ranks in one process, the rank
//! that failed may be elsewhere than the position `current.json` shows.

use oomph_rundir::WorkerPhase;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

static DEATH_FD: AtomicI32 = AtomicI32::new(-1);
/// Set by the tracker when an allocation fails: how [`installed`] sees it is the global
/// allocator, without a cost on allocations that succeed.
static SAW_FAILURE: AtomicBool = AtomicBool::new(false);
/// Which threads wrote a note since it was last cleared: [`OTHER`], [`CHECKPOINT`], and one
/// bit per rank's training thread ([`rank_bit`]; only that rank says it survived its notes).
static NOTED: AtomicU64 = AtomicU64::new(0);
/// A note from a thread that is neither a rank's training thread nor the checkpoint writer
/// (the only training thread of a one-rank run, a backend's pool).
const OTHER: u64 = 1;
/// A note from the checkpoint writer thread.
const CHECKPOINT: u64 = 2;

/// The bit of rank `rank`'s training thread (ranks beyond 61 share the last bit).
fn rank_bit(rank: usize) -> u64 {
    1 << (2 + rank.min(61))
}

thread_local! {
    /// Set on the checkpoint writer thread.
    static IN_CHECKPOINT: Cell<bool> = const { Cell::new(false) };
    /// Where this thread's loop is (phase and the step it belongs to), when it said so.
    static POSITION: Cell<Option<(WorkerPhase, usize)>> = const { Cell::new(None) };
}

/// The system allocator plus a note on failure.
pub struct TrackingAllocator;

fn note_failure(size: usize) {
    let fd = DEATH_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    let in_checkpoint = IN_CHECKPOINT.try_with(Cell::get).unwrap_or(false);
    NOTED.fetch_or(if in_checkpoint { CHECKPOINT } else { own_bit() }, Ordering::Relaxed);
    let (phase, step) = match (in_checkpoint, POSITION.try_with(Cell::get).ok().flatten()) {
        (true, _) => (Some(WorkerPhase::Checkpoint), None),
        (false, Some((phase, step))) => (Some(phase), Some(step)),
        (false, None) => (None, None),
    };
    oomph_rundir::note::write_note(fd, size, phase, step);
}

// SAFETY: delegates every call to `System`; only observes null results.
unsafe impl GlobalAlloc for TrackingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            SAW_FAILURE.store(true, Ordering::Relaxed);
            note_failure(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            SAW_FAILURE.store(true, Ordering::Relaxed);
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
            SAW_FAILURE.store(true, Ordering::Relaxed);
            note_failure(new_size);
        }
        p
    }
}

/// Whether this program's global allocator is the [`TrackingAllocator`]: asks the global
/// allocator for an impossible size (half the address space, which any allocator refuses at
/// once) and looks whether the tracker saw the failure. Call it before [`arm`]: an armed
/// tracker would note the failure. Without the tracker a failed host allocation kills the
/// worker with no note, and the supervisor cannot tell a memory death from any other crash.
pub fn installed() -> bool {
    if SAW_FAILURE.load(Ordering::Relaxed) {
        return true;
    }
    let Ok(layout) = Layout::from_size_align(isize::MAX as usize / 2 + 1, 1) else { return false };
    // Called through an opaque function pointer: the compiler may remove a call to the
    // allocation function it knows whose result goes unused (and assume it succeeded).
    let alloc: unsafe fn(Layout) -> *mut u8 = std::hint::black_box(std::alloc::alloc);
    // SAFETY: a non-zero size; the result is freed if it is ever non-null.
    let p = unsafe { alloc(layout) };
    if !p.is_null() {
        // SAFETY: allocated just above with this layout.
        unsafe { std::alloc::dealloc(p, layout) };
    }
    SAW_FAILURE.load(Ordering::Relaxed)
}

/// Marks this thread as the checkpoint writer: an allocation failure on it is noted as a
/// checkpoint's.
pub fn mark_checkpoint_thread() {
    IN_CHECKPOINT.with(|c| c.set(true));
}

/// Tells where this thread's training loop is (`phase`, and the step it belongs to, as in
/// `current.json`), for the note of an allocation that fails on it; `None` when it no longer
/// trains.
pub fn set_thread_position(position: Option<(WorkerPhase, usize)>) {
    let _ = POSITION.try_with(|p| p.set(position));
}

/// This thread's bit in [`NOTED`]: its rank's ([`crate::gang::set_thread_rank`]), else
/// [`OTHER`].
fn own_bit() -> u64 {
    crate::gang::thread_rank().map_or(OTHER, rank_bit)
}

/// The calling training thread survived the allocation failures it noted, and those of
/// threads that belong to no rank (called after every step and every out-of-memory the
/// boundary caught): clears their note. A note of another rank's thread stays (that rank may
/// be dying, and only it knows it survived), and so does one of the checkpoint writer until
/// its write ended ([`checkpoint_survived`]). Cheap when nothing was noted (one atomic load).
pub fn survived() {
    clear(own_bit() | OTHER);
}

/// The checkpoint writer finished its write: any allocation failure it noted was survived.
pub fn checkpoint_survived() {
    clear(CHECKPOINT);
}

fn clear(which: u64) {
    if NOTED.load(Ordering::Relaxed) & which == 0 {
        return;
    }
    if NOTED.fetch_and(!which, Ordering::Relaxed) & !which == 0 {
        let fd = DEATH_FD.load(Ordering::Relaxed);
        if fd >= 0 {
            oomph_rundir::note::clear_note(fd);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use oomph_rundir::note::{read_note, Note};

    /// A test binary keeps the system allocator: the tracker reports itself missing.
    #[test]
    fn without_the_tracker_as_global_allocator_it_is_not_installed() {
        assert!(!installed());
    }

    /// The tests that arm the process's one note run one at a time.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        SERIAL.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a thread of rank `rank` at `position`. (Notes of ranks' threads: other
    /// tests of this binary end attempts, and their `survived` clears the notes of threads of
    /// no rank.)
    fn on_rank(rank: usize, position: Option<(WorkerPhase, usize)>, f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(move || {
            crate::gang::set_thread_rank(Some(rank));
            set_thread_position(position);
            f();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_loop_clears_its_own_notes_but_not_the_checkpoint_writers() {
        let _serial = serial();
        let d = tempfile::tempdir().unwrap();
        let note = d.path().join("worker-death.txt");
        arm(&note);
        note_failure(32);
        survived();
        assert_eq!(read_note(&note), None, "a failure the loop survived is forgotten");
        std::thread::spawn(|| {
            mark_checkpoint_thread();
            note_failure(64);
        })
        .join()
        .unwrap();
        survived();
        let ck = Note { bytes: 64, phase: Some(WorkerPhase::Checkpoint), step: None };
        assert_eq!(read_note(&note), Some(ck), "the writer may still be dying");
        checkpoint_survived();
        assert_eq!(read_note(&note), None);
    }

    /// A rank that survived its own failure does not erase the note of another rank that is
    /// dying (regression: every rank's end of step cleared the process's one note, so a rank
    /// behind the others wiped a fresh death note and the supervisor took a memory death for
    /// another abort).
    #[test]
    fn a_rank_that_survived_leaves_another_ranks_note() {
        let _serial = serial();
        let d = tempfile::tempdir().unwrap();
        let note = d.path().join("worker-death.txt");
        arm(&note);
        let at = Some((WorkerPhase::Train, 9));
        // Rank 2 notes a failure (and is dying); rank 0 ends its step.
        on_rank(2, at, || note_failure(64));
        on_rank(0, at, survived);
        assert_eq!(read_note(&note).map(|n| n.bytes), Some(64), "rank 0 erased rank 2's note");
        // Rank 2 itself survived it.
        on_rank(2, at, survived);
        assert_eq!(read_note(&note), None);
        // A rank's own note, and one of a thread of no rank, are cleared by its end of step.
        on_rank(1, at, || {
            note_failure(8);
            std::thread::spawn(|| note_failure(16)).join().unwrap();
            survived();
        });
        assert_eq!(read_note(&note), None);
    }

    #[test]
    fn a_failure_on_a_thread_that_said_where_it_is_is_noted_with_its_phase_and_step() {
        let _serial = serial();
        let d = tempfile::tempdir().unwrap();
        let note = d.path().join("worker-death.txt");
        arm(&note);
        // A rank's thread in the backward pass of step 5 while another is in the update.
        on_rank(5, Some((WorkerPhase::Train, 5)), || note_failure(16));
        let train = Note { bytes: 16, phase: Some(WorkerPhase::Train), step: Some(5) };
        assert_eq!(read_note(&note), Some(train));
        // A thread that never said where it is: the position is not known.
        on_rank(6, None, || note_failure(8));
        assert_eq!(read_note(&note), Some(Note { bytes: 8, phase: None, step: None }));
        on_rank(5, None, survived);
        on_rank(6, None, survived);
        assert_eq!(read_note(&note), None);
    }
}
