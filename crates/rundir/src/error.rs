//! The error of every file operation in a run directory: what was done to which path.

use crate::layout::temporary;
use std::io;
use std::path::{Path, PathBuf};

/// A failed file operation: the operation, the path it was done to, and the cause, e.g.
/// `appending to /runs/a/metrics.jsonl: No space left on device`; a rename names both paths:
/// `renaming into place /runs/a/summary.json.tmp to /runs/a/summary.json: Is a directory`.
///
/// A file that exists but does not parse is reported with `op` = `"parsing"` and a source of
/// kind [`io::ErrorKind::InvalidData`] (see [`Error::is_malformed`]).
#[derive(Debug, thiserror::Error)]
#[error("{op} {}{}: {source}", path.display(), to_text(to.as_deref()))]
pub struct Error {
    /// The operation, e.g. `appending to`, `writing`, `renaming into place`.
    pub op: &'static str,
    /// The path it was done to (for a rename, the path renamed).
    pub path: PathBuf,
    /// For a rename, where `path` was to go.
    pub to: Option<PathBuf>,
    /// The cause.
    #[source]
    pub source: io::Error,
}

/// ` to TARGET` for a rename, nothing otherwise.
fn to_text(to: Option<&Path>) -> String {
    to.map(|t| format!(" to {}", t.display())).unwrap_or_default()
}

impl Error {
    /// An error of `op` on `path`.
    pub fn new(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self { op, path: path.to_path_buf(), to: None, source }
    }

    /// An error of the rename `op` of `from` to `to`.
    pub fn rename(op: &'static str, from: &Path, to: &Path, source: io::Error) -> Self {
        Self { op, path: from.to_path_buf(), to: Some(to.to_path_buf()), source }
    }

    /// A file that was read but whose contents are not what they should be (the cause's
    /// message says why).
    pub fn malformed(path: &Path, why: impl std::fmt::Display) -> Self {
        Self::new("parsing", path, io::Error::new(io::ErrorKind::InvalidData, why.to_string()))
    }

    /// Whether the file was read but its contents are malformed (as opposed to unreadable).
    pub fn is_malformed(&self) -> bool {
        self.source.kind() == io::ErrorKind::InvalidData
    }
}

/// Attaches an operation and a path to an I/O result.
pub(crate) trait Ctx<T> {
    /// The error names `op` and `path`.
    fn at(self, op: &'static str, path: &Path) -> Result<T, Error>;
}

impl<T> Ctx<T> for io::Result<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T, Error> {
        self.map_err(|source| Error::new(op, path, source))
    }
}

/// Reads `path` as text; `None` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, Error> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::new("reading", path, e)),
    }
}

/// Renames `from` to `to`; the error (of operation `op`) names both.
pub(crate) fn rename(op: &'static str, from: &Path, to: &Path) -> Result<(), Error> {
    std::fs::rename(from, to).map_err(|e| Error::rename(op, from, to, e))
}

/// Writes `bytes` to `path` through its [`temporary`] file renamed into place, so `path`
/// always holds either its old or its new contents; a failed write removes the temporary
/// file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = temporary(path);
    let written =
        std::fs::write(&tmp, bytes).at("writing", &tmp).and_then(|()| rename("renaming into place", &tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_operation_and_the_path() {
        let e = Error::new("appending to", Path::new("/x/metrics.jsonl"), io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(e.to_string().starts_with("appending to /x/metrics.jsonl: No space left on device"), "{e}");
        assert!(!e.is_malformed());
        assert!(Error::malformed(Path::new("/x/summary.json"), "expected value").is_malformed());
    }

    #[test]
    fn an_atomic_write_that_fails_leaves_no_temporary_file() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("summary.json");
        write_atomically(&target, b"one").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"one");
        // A directory in the way of the rename: the old contents stay, the tmp goes.
        let blocked = d.path().join("blocked");
        std::fs::create_dir_all(blocked.join("inner")).unwrap();
        let e = write_atomically(&blocked, b"two").unwrap_err();
        assert!(e.to_string().contains("blocked.tmp"), "{e}");
        assert!(!d.path().join("blocked.tmp").exists());
    }

    #[test]
    fn a_failed_rename_names_the_temporary_file_and_the_target() {
        let d = tempfile::tempdir().unwrap();
        let blocked = d.path().join("report.png");
        std::fs::create_dir_all(blocked.join("inner")).unwrap();
        let e = write_atomically(&blocked, b"two").unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&d.path().join("report.png.tmp").display().to_string()), "{text}");
        assert!(text.contains(&format!(" to {}: ", blocked.display())), "{text}");
    }
}
