//! One run directory, one writer: an exclusive `flock(2)` on `RUN/oomph.lock`, taken by the
//! command that trains (the supervisor, or the process itself with `--no-supervise`) and
//! shared with its worker, which inherits the locked file (`OOMPH_LOCK_FD`). The kernel
//! releases it when the last of them exits, however it dies, so a stale lock cannot exist.
//! `oomph report` and `oomph inspect` never take it: they stay usable on a running run.

use oomph_rundir::RunDir;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;

/// A held run-directory lock (released when dropped or when the process exits).
pub struct RunLock {
    file: File,
}

impl RunLock {
    /// Takes the lock of `run_dir` (creating the directory), or says who holds it: a
    /// one-paragraph error naming the holder's pid and command and the fix.
    pub fn acquire(run_dir: &Path) -> Result<RunLock, String> {
        std::fs::create_dir_all(run_dir).map_err(|e| {
            format!(
                "cannot create the run directory {}: {e}. Fix: pick a writable --run-dir (or run.output_dir).",
                run_dir.display()
            )
        })?;
        let path = RunDir::new(run_dir).lock();
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| {
                format!("cannot open the lock file {}: {e}. Fix: make the run directory writable.", path.display())
            })?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(format!(
                    "cannot lock {}: {err}. Fix: use a run directory on a local disk.",
                    path.display()
                ));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(busy_message(run_dir, &holder));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let command: Vec<String> = std::env::args().collect();
        let text = format!("pid {}\nsince {now}\ncommand {}\n", std::process::id(), command.join(" "));
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = file.write_all(text.as_bytes());
        Ok(RunLock { file })
    }

    /// The lock a supervised worker inherited from its supervisor, if `fd` (its
    /// `OOMPH_LOCK_FD`, [`oomph_rundir::WorkerEnv::lock_fd`]) is an open descriptor of this run
    /// directory's lock file.
    pub fn inherited(run_dir: &Path, fd: RawFd) -> Option<RunLock> {
        let ours = std::fs::metadata(RunDir::new(run_dir).lock()).ok()?;
        // SAFETY: fstat on a descriptor number; a closed one fails with EBADF.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return None;
        }
        use std::os::unix::fs::MetadataExt;
        if st.st_ino != ours.ino() || st.st_dev != ours.dev() {
            return None;
        }
        // SAFETY: the descriptor is open, refers to our lock file, and is handed to us alone.
        Some(RunLock { file: unsafe { File::from_raw_fd(fd) } })
    }

    /// The descriptor to hand to a worker (it must survive `exec`: see [`RunLock::share`]).
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Makes the descriptor survive `exec` (clears close-on-exec); call in the child before
    /// `exec`. Async-signal-safe.
    pub fn share(fd: RawFd) -> std::io::Result<()> {
        // SAFETY: fcntl on a descriptor we own; async-signal-safe.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The error when another command holds the lock.
fn busy_message(run_dir: &Path, holder: &str) -> String {
    let field = |name: &str| holder.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
    let pid = field("pid ").unwrap_or_else(|| "unknown".into());
    let command = field("command ").unwrap_or_else(|| "unknown".into());
    let since = field("since ")
        .and_then(|s| s.parse::<u64>().ok())
        .and_then(|t| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
            Some(format!(", started {} s ago", now.saturating_sub(t)))
        })
        .unwrap_or_default();
    format!(
        "the run directory {} is in use by another oomph command (pid {pid}{since}: `{command}`), or by its \
         worker. Two commands writing one run would mix their checkpoints and metrics. Fix: wait for it to \
         finish or stop it (Ctrl-C checkpoints it), or train into another --run-dir; `oomph report` and \
         `oomph inspect` work on it meanwhile.",
        run_dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_names_the_holder() {
        let d = tempfile::tempdir().unwrap();
        let held = RunLock::acquire(d.path()).unwrap();
        let e = RunLock::acquire(d.path()).err().expect("the second lock must fail");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        assert!(e.contains("--run-dir"), "{e}");
        drop(held);
        RunLock::acquire(d.path()).expect("released when dropped");
    }
}
