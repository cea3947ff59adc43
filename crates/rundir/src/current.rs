//! `current.json`: what a worker is doing right now (step, phase, sizes in force), for the
//! supervisor to read after the worker died without a word (SIGKILL from the OOM killer, an
//! aborted allocation). It is a fixed-length file mapped into memory with a fixed slot per
//! value, so an update copies the few bytes that changed, without a system call (the loop
//! updates it at every phase change); the kernel keeps the page when the process dies, so
//! the supervisor reads what was last written.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Length of the file: the JSON object padded with spaces (JSON allows them), then `\n`.
const LEN: usize = 512;

/// What the worker's main thread is doing: `train`, `optimizer`, `eval` or `checkpoint`. The
/// one typed phase of oomph, owned by `oomph_sched` (its decisions are taken per phase).
pub use oomph_sched::OomPhase as WorkerPhase;

/// What `current.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Current {
    /// The worker's process id.
    pub pid: u32,
    /// The optimizer step the phase belongs to: the one in progress for `train` and
    /// `optimizer`, the one just completed for `eval` and `checkpoint`.
    pub step: usize,
    /// The main thread's phase (a checkpoint written in the background is `checkpoint_step`).
    pub phase: WorkerPhase,
    /// The training micro-batch limit in force.
    pub micro_batch: usize,
    /// The evaluation micro-batch in force.
    pub eval_batch: usize,
    /// The smallest training micro-batch the recipe allows.
    pub min_micro_batch: usize,
    /// Model parameters (for the memory report).
    pub parameters: usize,
    /// The step whose checkpoint is being written in the background, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_step: Option<usize>,
}

/// The fields of the file in order, each with the width of its value's slot. The object
/// is laid out once with every value padded by spaces to its slot (JSON allows whitespace
/// after a value), so a write rewrites only the slots whose value changed: the loop's two
/// writes per step touch the phase and the step, a few bytes each. `writing` is `1` while
/// slots change: a worker killed in the middle of a write leaves a file that [`read`] turns
/// down rather than one that mixes two positions.
const FIELDS: [(&str, usize); 9] = [
    ("writing", 1),
    ("pid", 10),
    ("step", 20),
    ("phase", 12),
    ("micro_batch", 20),
    ("eval_batch", 20),
    ("min_micro_batch", 20),
    ("parameters", 20),
    ("checkpoint_step", 20),
];

/// A value's text in its slot, padded with spaces.
type Slot = [u8; 20];

/// The mapped `current.json` of a running worker (or, where the file system cannot map it,
/// the open file, rewritten with one positioned write per update).
pub struct CurrentFile {
    ptr: *mut u8,
    file: Option<std::fs::File>,
    /// The whole file as it is now.
    text: [u8; LEN],
    /// Where each field's value slot starts in `text`.
    offsets: [usize; FIELDS.len()],
    /// What the file holds (`None` before the first write).
    last: Option<Current>,
}

// SAFETY: the mapping is this value's alone: `ptr` never leaves it and every access goes
// through `&mut self` (or `drop`), so moving it to another thread (the ranks of a process
// share one behind a mutex) is sound.
unsafe impl Send for CurrentFile {}

impl CurrentFile {
    /// Creates (or reuses) `path` and maps it; `None` when that fails (the supervisor then
    /// knows less, training goes on).
    pub fn open(path: &Path) -> Option<Self> {
        use std::os::unix::io::AsRawFd;
        let f = std::fs::OpenOptions::new().create(true).read(true).write(true).truncate(false).open(path).ok()?;
        f.set_len(LEN as u64).ok()?;
        // SAFETY: mapping LEN bytes of a file we just sized to LEN; the mapping outlives the
        // descriptor (closed when `f` drops), as mmap(2) allows.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        let (text, offsets) = layout();
        let (ptr, file) = if ptr == libc::MAP_FAILED { (std::ptr::null_mut(), Some(f)) } else { (ptr.cast(), None) };
        Some(Self { ptr, file, text, offsets, last: None })
    }

    /// Writes `c` unless it is what the file already holds.
    pub fn write(&mut self, c: &Current) {
        if self.last.as_ref() == Some(c) {
            return;
        }
        let changed: [bool; FIELDS.len()] = match &self.last {
            None => [true; FIELDS.len()],
            Some(last) => std::array::from_fn(|i| i > 0 && differs(last, c, i)),
        };
        match self.file.take() {
            Some(f) => {
                for i in 1..FIELDS.len() {
                    self.set(i, &render(c, i));
                }
                use std::os::unix::fs::FileExt;
                let _ = f.write_all_at(&self.text, 0);
                self.file = Some(f);
            }
            None => {
                use std::sync::atomic::{fence, Ordering};
                if self.last.is_none() {
                    // The first write lays the whole object out, marked as being written.
                    self.text[self.offsets[0]] = b'1';
                    self.flush(0, LEN);
                    fence(Ordering::Release);
                } else {
                    self.mark(b'1');
                }
                for i in (1..FIELDS.len()).filter(|&i| changed[i]) {
                    self.set(i, &render(c, i));
                    self.flush(self.offsets[i], FIELDS[i].1);
                }
                fence(Ordering::Release);
                self.mark(b'0');
            }
        }
        self.last = Some(c.clone());
    }

    /// Puts slot `i`'s text into `text`.
    fn set(&mut self, i: usize, slot: &Slot) {
        let (at, width) = (self.offsets[i], FIELDS[i].1);
        self.text[at..at + width].copy_from_slice(&slot[..width]);
    }

    /// Sets the `writing` flag, in `text` and in the mapping (one byte: it cannot tear).
    fn mark(&mut self, flag: u8) {
        let at = self.offsets[0];
        self.text[at] = flag;
        self.flush(at, 1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
    }

    /// Copies `text[at..at + len]` into the mapping.
    fn flush(&self, at: usize, len: usize) {
        debug_assert!(!self.ptr.is_null() && at + len <= LEN);
        // SAFETY: `ptr` maps LEN writable bytes and `at + len <= LEN`.
        unsafe { std::ptr::copy_nonoverlapping(self.text.as_ptr().add(at), self.ptr.add(at), len) };
    }
}

/// The empty layout (`writing` 0, every other slot blank) and where each slot starts.
fn layout() -> ([u8; LEN], [usize; FIELDS.len()]) {
    let mut text = [b' '; LEN];
    text[LEN - 1] = b'\n';
    let mut offsets = [0; FIELDS.len()];
    let mut at = 0;
    let put = |text: &mut [u8; LEN], at: &mut usize, s: &[u8]| {
        text[*at..*at + s.len()].copy_from_slice(s);
        *at += s.len();
    };
    for (i, (name, width)) in FIELDS.iter().enumerate() {
        put(&mut text, &mut at, if i == 0 { b"{\"" } else { b",\"" });
        put(&mut text, &mut at, name.as_bytes());
        put(&mut text, &mut at, b"\":");
        offsets[i] = at;
        put(&mut text, &mut at, &[b' '; 20][..*width]);
    }
    put(&mut text, &mut at, b"}");
    text[offsets[0]] = b'0';
    (text, offsets)
}

/// Whether field `i` of [`FIELDS`] differs between `a` and `b`.
fn differs(a: &Current, b: &Current, i: usize) -> bool {
    match i {
        1 => a.pid != b.pid,
        2 => a.step != b.step,
        3 => a.phase != b.phase,
        4 => a.micro_batch != b.micro_batch,
        5 => a.eval_batch != b.eval_batch,
        6 => a.min_micro_batch != b.min_micro_batch,
        7 => a.parameters != b.parameters,
        _ => a.checkpoint_step != b.checkpoint_step,
    }
}

/// Field `i` of [`FIELDS`] (past `writing`) as its slot's text.
fn render(c: &Current, i: usize) -> Slot {
    use std::io::Write;
    let mut slot = [b' '; 20];
    let number = match i {
        1 => Some(c.pid as u64),
        2 => Some(c.step as u64),
        4 => Some(c.micro_batch as u64),
        5 => Some(c.eval_batch as u64),
        6 => Some(c.min_micro_batch as u64),
        7 => Some(c.parameters as u64),
        8 => c.checkpoint_step.map(|v| v as u64),
        _ => None,
    };
    match (i, number) {
        (3, _) => {
            let phase = c.phase.as_str().as_bytes();
            slot[0] = b'"';
            slot[1..1 + phase.len()].copy_from_slice(phase);
            slot[1 + phase.len()] = b'"';
        }
        (_, Some(v)) => {
            let _ = write!(&mut slot[..], "{v}");
        }
        (_, None) => slot[..4].copy_from_slice(b"null"),
    }
    slot
}

impl Drop for CurrentFile {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: unmapping the mapping made in `open`.
            unsafe { libc::munmap(self.ptr.cast(), LEN) };
        }
    }
}

/// Reads a worker's `current.json` (`None` when absent, unreadable, not a `Current`, or
/// torn: its worker died in the middle of a write).
pub fn read(path: &Path) -> Option<Current> {
    #[derive(Deserialize)]
    struct Flag {
        #[serde(default)]
        writing: u8,
    }
    // A reader while the worker runs can overlap a write: two equal reads with the flag
    // down are one position (a write takes well under a microsecond).
    let mut text = std::fs::read_to_string(path).ok()?;
    for _ in 0..8 {
        let again = std::fs::read_to_string(path).ok()?;
        if again == text {
            let flag: Flag = serde_json::from_str(text.trim()).ok()?;
            return if flag.writing == 0 { serde_json::from_str(text.trim()).ok() } else { None };
        }
        text = again;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_through_the_mapping_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("current.json");
        let mut f = CurrentFile::open(&p).unwrap();
        let mut c = Current { pid: 7, step: 3, phase: WorkerPhase::Train, micro_batch: 16, ..Default::default() };
        f.write(&c);
        assert_eq!(read(&p), Some(c.clone()));
        c.phase = WorkerPhase::Optimizer;
        c.checkpoint_step = Some(2);
        f.write(&c);
        drop(f);
        assert_eq!(read(&p), Some(c));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), LEN as u64);
    }

    #[test]
    fn every_write_reads_back_as_written_whatever_changed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("current.json");
        let mut f = CurrentFile::open(&p).unwrap();
        let phases = [WorkerPhase::Checkpoint, WorkerPhase::Eval, WorkerPhase::Train, WorkerPhase::Optimizer];
        // Values that grow and shrink by digits (a shorter value must not keep the tail of a
        // longer one), the longest and shortest phases, a checkpoint step that comes and goes.
        let sizes = [0usize, 9, 10, 99_999, 7, usize::MAX, 1];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut c = Current::default();
        for _ in 0..400 {
            let r = next();
            match r % 8 {
                0 => c.pid = (r >> 8) as u32,
                1 | 2 => c.step = sizes[(r >> 8) as usize % sizes.len()],
                3 | 4 => c.phase = phases[(r >> 8) as usize % phases.len()],
                5 => c.micro_batch = sizes[(r >> 8) as usize % sizes.len()],
                6 => {
                    (c.eval_batch, c.min_micro_batch, c.parameters) =
                        ((r >> 8) as usize, (r >> 16) as usize % 3, r as usize)
                }
                _ => c.checkpoint_step = (r & 256 == 0).then(|| sizes[(r >> 9) as usize % sizes.len()]),
            }
            f.write(&c);
            assert_eq!(read(&p).as_ref(), Some(&c));
        }
        assert_eq!(std::fs::metadata(&p).unwrap().len(), LEN as u64);
    }

    #[test]
    fn every_phase_and_number_fits_its_slot() {
        let phase_slot = FIELDS.iter().find(|f| f.0 == "phase").unwrap().1;
        for ph in [WorkerPhase::Train, WorkerPhase::Optimizer, WorkerPhase::Eval, WorkerPhase::Checkpoint] {
            assert!(ph.as_str().len() + 2 <= phase_slot, "{ph:?} does not fit the phase slot");
        }
        assert!(FIELDS.iter().all(|f| f.1 <= 20), "a slot is wider than the rendered text");
        assert_eq!(u64::MAX.to_string().len(), 20, "the widest number fills a slot");
    }

    #[test]
    fn a_write_cut_short_reads_as_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("current.json");
        let mut f = CurrentFile::open(&p).unwrap();
        f.write(&Current { pid: 7, step: 3, ..Default::default() });
        drop(f);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with(r#"{"writing":0,"#), "{text}");
        // A worker killed between the flag and the end of its write leaves the flag set.
        std::fs::write(&p, text.replacen(r#""writing":0"#, r#""writing":1"#, 1)).unwrap();
        assert_eq!(read(&p), None);
    }

    #[test]
    fn todays_file_reads_and_the_phase_is_lowercase() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("current.json");
        let text = r#"{"pid":42,"step":5,"phase":"eval","micro_batch":32,"eval_batch":64,"min_micro_batch":1,"parameters":1000,"checkpoint_step":4}"#;
        std::fs::write(&p, format!("{text}{}\n", " ".repeat(LEN - 1 - text.len()))).unwrap();
        let c = read(&p).unwrap();
        assert_eq!((c.pid, c.step, c.phase, c.checkpoint_step), (42, 5, WorkerPhase::Eval, Some(4)));
        assert_eq!(serde_json::to_string(&c).unwrap(), text);
        for ph in [WorkerPhase::Train, WorkerPhase::Optimizer, WorkerPhase::Eval, WorkerPhase::Checkpoint] {
            assert_eq!(serde_json::to_string(&ph).unwrap(), format!("\"{}\"", ph.as_str()));
        }
        std::fs::write(&p, r#"{"pid":42,"st"#).unwrap();
        assert_eq!(read(&p), None, "a torn file reads as nothing");
    }
}
