//! `current.json`: what a worker is doing right now (step, phase, sizes in force), for the
//! supervisor to read after the worker died without a word (SIGKILL from the OOM killer, an
//! aborted allocation). It is a fixed-length file mapped into memory, so an update is a
//! memory copy, not a system call (the loop updates it at every phase change); the kernel
//! keeps the page when the process dies, so the supervisor reads what was last written.

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

/// The mapped `current.json` of a running worker (or, where the file system cannot map it,
/// the open file, rewritten with one positioned write per update).
pub struct CurrentFile {
    ptr: *mut u8,
    file: Option<std::fs::File>,
    last: Current,
}

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
        if ptr == libc::MAP_FAILED {
            return Some(Self { ptr: std::ptr::null_mut(), file: Some(f), last: Current::default() });
        }
        Some(Self { ptr: ptr.cast(), file: None, last: Current::default() })
    }

    /// Writes `c` unless it is what the file already holds.
    pub fn write(&mut self, c: &Current) {
        if *c == self.last {
            return;
        }
        // The object, padded with spaces, then a newline; built on the stack (no allocation:
        // the loop writes this twice per step). An object that does not fit is not written.
        let mut text = [b' '; LEN];
        text[LEN - 1] = b'\n';
        if serde_json::to_writer(&mut &mut text[..LEN - 1], c).is_err() {
            return;
        }
        match &self.file {
            Some(f) => {
                use std::os::unix::fs::FileExt;
                let _ = f.write_all_at(&text, 0);
            }
            // SAFETY: `ptr` maps LEN writable bytes and `text` is exactly LEN bytes long.
            None => unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), self.ptr, LEN) },
        }
        self.last = c.clone();
    }
}

impl Drop for CurrentFile {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: unmapping the mapping made in `open`.
            unsafe { libc::munmap(self.ptr.cast(), LEN) };
        }
    }
}

/// Reads a worker's `current.json` (`None` when absent, unreadable or not a `Current`).
pub fn read(path: &Path) -> Option<Current> {
    serde_json::from_str(std::fs::read_to_string(path).ok()?.trim()).ok()
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
