//! `checkpoints/`: crash-safe checkpoints.
//!
//! Layout: `checkpoints/step-N/{model.mpk, optim.mpk, recipe.toml, state.json, manifest.json}`
//! (the names are in [`crate::layout`]); the contents of the records are the trainer's, this
//! module writes, lists, verifies, retains and sets aside the directories.
//! **Invariant:** a checkpoint directory counts only when its manifest exists; the manifest
//! (per-file sizes and SHA-256) is written last, inside `step-N.tmp/`, every file is fsynced,
//! and the directory is renamed to `step-N/` and the parent fsynced. Loading verifies every
//! checksum and falls back to the previous checkpoint when the newest is damaged.

use crate::error::{rename, Ctx, Error};
use crate::layout::{ABANDONED, CKPT_MANIFEST, CKPT_STATE};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Format version written in manifests.
pub const FORMAT: u32 = 1;

/// The training state saved beside the model and optimizer records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: usize,
    /// Samples consumed.
    pub samples_seen: u64,
    /// Sampler position.
    pub cursor: oomph_data::Cursor,
    /// Micro-batch policy state (limit, ceilings, growth counters).
    pub policy: oomph_sched::PolicyState,
    /// Evaluation micro-batch in force.
    pub eval_batch: usize,
    /// Master seed; step `s` runs with backend seed `step_seed(seed, s)`.
    pub seed: u64,
    /// Fingerprint of the recipe's training-relevant fields.
    pub recipe_fingerprint: String,
    /// Mean loss of the last step.
    pub last_loss: Option<f64>,
    /// OOM events so far.
    pub oom_events: usize,
    /// Seconds lost to recovery so far.
    pub recovery_s: f64,
    /// Wall time of all workers so far.
    pub wall_s: f64,
    /// Supervisor restarts so far.
    pub restarts: usize,
    /// Resumes so far.
    pub resumes: usize,
    /// Why this checkpoint was written (`every`, `oom`, `final`, `signal`).
    pub reason: String,
    /// What the run trains on (absent in checkpoints written before it was recorded).
    #[serde(default)]
    pub data: Option<oomph_data::DataIdentity>,
    /// The run length in force when this was written (absent in older checkpoints).
    #[serde(default)]
    pub total_steps: Option<usize>,
    /// Steps skipped so far because their loss or gradient norm was not finite.
    #[serde(default)]
    pub nonfinite_steps: usize,
    /// Consecutive non-finite steps just before this checkpoint.
    #[serde(default)]
    pub nonfinite_run: usize,
    /// The ranks that wrote it (`distributed.ranks`; 1 in older checkpoints): the policy's
    /// limit was capped by their shard, not only by memory.
    #[serde(default = "one")]
    pub ranks: usize,
}

fn one() -> usize {
    1
}

/// One file of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// File name inside the checkpoint directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Hex SHA-256.
    pub sha256: String,
}

/// `manifest.json`: written last; its presence makes a checkpoint count.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Format version.
    pub format: u32,
    /// Step of the checkpoint.
    pub step: usize,
    /// Write order in the run directory (1 for the first checkpoint, then increasing);
    /// retention keeps the newest writes, not the highest steps. 0 in older checkpoints.
    #[serde(default)]
    pub seq: u64,
    /// Every other file with its size and checksum.
    pub files: Vec<FileEntry>,
}

/// The files of a checkpoint, already serialised (bytes), ready to be written.
pub struct Payload {
    /// Step.
    pub step: usize,
    /// (file name, contents).
    pub files: Vec<(String, Vec<u8>)>,
    /// SIMULATION (`faults.disk_full_at`): the write fails with "No space left on device"
    /// after its first file, as on a full disk.
    pub simulate_full_disk: bool,
}

/// Hex SHA-256 of bytes.
fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Directory name of the checkpoint of `step`.
pub fn dir_name(step: usize) -> String {
    format!("step-{step}")
}

fn fsync_dir(dir: &Path) {
    if let Ok(f) = File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Writes a checkpoint atomically under `root` (the `checkpoints/` directory) and prunes all
/// but the `keep` most recently written complete checkpoints. Returns the final directory.
///
/// On failure the partial `step-N.tmp/` is removed, the checkpoints already there are left
/// intact, and the error names the operation and the path. Rewriting a step that already has
/// a checkpoint swaps the new one in atomically (Linux `RENAME_EXCHANGE`; elsewhere the old
/// one stays findable as `step-N.old` until the new one is in place), so there is never a
/// moment without a complete copy of that step.
pub fn write(root: &Path, payload: &Payload, keep: usize) -> Result<PathBuf, Error> {
    fs::create_dir_all(root).at("creating", root)?;
    let tmp = root.join(format!("{}.tmp", dir_name(payload.step)));
    let fin = root.join(dir_name(payload.step));
    if let Err(e) = write_tmp(root, &tmp, payload) {
        let _ = fs::remove_dir_all(&tmp);
        fsync_dir(root);
        return Err(e);
    }
    install(root, &tmp, &fin)?;
    prune(root, keep)?;
    Ok(fin)
}

/// Writes every file and the manifest (last) into `tmp`, fsyncing each.
fn write_tmp(root: &Path, tmp: &Path, payload: &Payload) -> Result<(), Error> {
    if tmp.exists() {
        fs::remove_dir_all(tmp).at("removing the leftover", tmp)?;
    }
    fs::create_dir_all(tmp).at("creating", tmp)?;
    let mut entries = Vec::new();
    for (i, (name, bytes)) in payload.files.iter().enumerate() {
        let p = tmp.join(name);
        if payload.simulate_full_disk && i == 1 {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
                .at("writing (simulated by faults.disk_full_at)", &p);
        }
        let mut f = File::create(&p).at("creating", &p)?;
        f.write_all(bytes).at("writing", &p)?;
        f.sync_all().at("syncing", &p)?;
        entries.push(FileEntry { name: name.clone(), bytes: bytes.len() as u64, sha256: sha256_hex(bytes) });
    }
    let manifest = Manifest { format: FORMAT, step: payload.step, seq: next_seq(root)?, files: entries };
    let p = tmp.join(CKPT_MANIFEST);
    let text = serde_json::to_string_pretty(&manifest).map_err(std::io::Error::other).at("serialising", &p)?;
    let mut f = File::create(&p).at("creating", &p)?;
    f.write_all(text.as_bytes()).at("writing", &p)?;
    f.sync_all().at("syncing", &p)?;
    fsync_dir(tmp);
    Ok(())
}

/// Moves the finished `tmp` to `fin`, replacing a checkpoint of the same step atomically.
fn install(root: &Path, tmp: &Path, fin: &Path) -> Result<(), Error> {
    if !fin.exists() {
        rename("renaming into place", tmp, fin)?;
        fsync_dir(root);
        return Ok(());
    }
    if exchange(tmp, fin).is_ok() {
        // `tmp` now holds the old checkpoint.
        fsync_dir(root);
        return discard(root, tmp);
    }
    // Without an atomic exchange the old copy stays findable as `step-N.old` (see `list`)
    // until the new one is in place.
    let old = fin.with_extension("old");
    if old.exists() {
        fs::remove_dir_all(&old).at("removing the leftover", &old)?;
    }
    rename("renaming aside", fin, &old)?;
    fsync_dir(root);
    rename("renaming into place", tmp, fin)?;
    fsync_dir(root);
    discard(root, &old)
}

/// Atomically swaps two directories (Linux `renameat2(RENAME_EXCHANGE)`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    const RENAME_EXCHANGE: libc::c_uint = 2;
    // SAFETY: two valid NUL-terminated paths; the syscall reads them only.
    let r = unsafe {
        libc::syscall(libc::SYS_renameat2, libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), RENAME_EXCHANGE)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// The step of a checkpoint directory name: `step-N`, or `step-N.old` (a replaced copy that
/// counts only while `step-N` itself is missing).
fn parse_name(name: &str) -> Option<(usize, bool)> {
    let rest = name.strip_prefix("step-")?;
    match rest.strip_suffix(".old") {
        Some(n) => n.parse().ok().map(|s| (s, true)),
        None => rest.parse().ok().map(|s| (s, false)),
    }
}

/// Complete checkpoint directories (with a manifest) under `root`, highest step first. A
/// missing `root` holds none; one that cannot be listed is an error naming it (never "no
/// checkpoints": a resume would start over and trim the run's history).
pub fn list(root: &Path) -> Result<Vec<(usize, PathBuf)>, Error> {
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::new("listing", root, e)),
    };
    let mut found: Vec<(usize, bool, PathBuf)> = Vec::new();
    for e in entries {
        let e = e.at("listing", root)?;
        if let Some((step, old)) = parse_name(&e.file_name().to_string_lossy()) {
            let p = e.path();
            if p.join(CKPT_MANIFEST).is_file() {
                found.push((step, old, p));
            }
        }
    }
    let current: Vec<usize> = found.iter().filter(|c| !c.1).map(|c| c.0).collect();
    found.retain(|(step, old, _)| !old || !current.contains(step));
    let mut v: Vec<(usize, PathBuf)> = found.into_iter().map(|(s, _, p)| (s, p)).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.0));
    Ok(v)
}

/// The write order of a checkpoint (its manifest's `seq`; 0 when unreadable or older).
fn seq_of(dir: &Path) -> u64 {
    fs::read_to_string(dir.join(CKPT_MANIFEST))
        .ok()
        .and_then(|t| serde_json::from_str::<Manifest>(&t).ok())
        .map(|m| m.seq)
        .unwrap_or(0)
}

/// The next write-order number: one more than any complete checkpoint's.
fn next_seq(root: &Path) -> Result<u64, Error> {
    Ok(list(root)?.iter().map(|(_, d)| seq_of(d)).max().unwrap_or(0) + 1)
}

/// Complete checkpoints, most recently written first (ties: higher step first).
fn by_write_order(root: &Path) -> Result<Vec<(usize, PathBuf)>, Error> {
    let mut v: Vec<(u64, usize, PathBuf)> = list(root)?.into_iter().map(|(s, d)| (seq_of(&d), s, d)).collect();
    v.sort_by_key(|b| std::cmp::Reverse((b.0, b.1)));
    Ok(v.into_iter().map(|(_, s, d)| (s, d)).collect())
}

/// Removes a checkpoint directory so that a crash at any moment never leaves a
/// half-deleted directory that still looks complete: it is first renamed (atomically) out of
/// the `step-N` namespace, then deleted.
fn discard(root: &Path, dir: &Path) -> Result<(), Error> {
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let trash = root.join(format!("{name}.trash"));
    if trash.exists() {
        fs::remove_dir_all(&trash).at("removing", &trash)?;
    }
    rename("renaming out of the checkpoint namespace", dir, &trash)?;
    fsync_dir(root);
    fs::remove_dir_all(&trash).at("removing", &trash)
}

fn prune(root: &Path, keep: usize) -> Result<(), Error> {
    for (_, p) in by_write_order(root)?.into_iter().skip(keep.max(1)) {
        discard(root, &p)?;
    }
    // Leftovers of writes or deletions that a crash interrupted are garbage, and so is a
    // replaced copy once its successor is in place.
    let listed: Vec<PathBuf> = list(root)?.into_iter().map(|(_, p)| p).collect();
    for e in fs::read_dir(root).at("listing", root)?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let garbage = name.ends_with(".tmp")
            || name.ends_with(".trash")
            || (name.ends_with(".old") && name.starts_with("step-") && !listed.contains(&e.path()));
        if garbage {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}

/// Moves a checkpoint directory out of the `step-N` namespace into `root/<into>/`, keeping
/// it (a name that is taken gets a `.2`, `.3`, ... suffix). Returns the new path.
pub fn set_aside(root: &Path, dir: &Path, into: &str) -> Result<PathBuf, Error> {
    let target_dir = root.join(into);
    fs::create_dir_all(&target_dir).at("creating", &target_dir)?;
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let name = name.strip_suffix(".old").unwrap_or(&name).to_string();
    let mut target = target_dir.join(&name);
    let mut k = 2;
    while target.exists() {
        target = target_dir.join(format!("{name}.{k}"));
        k += 1;
    }
    rename("moving aside", dir, &target)?;
    fsync_dir(root);
    fsync_dir(&target_dir);
    Ok(target)
}

/// Moves every checkpoint later than `step` into `root/abandoned/`: resuming from an earlier
/// step starts a new history, and retention, `--resume auto` and the final weights must never
/// pick up the abandoned one. Returns the steps moved.
pub fn abandon_after(root: &Path, step: usize) -> Result<Vec<usize>, Error> {
    let mut moved = Vec::new();
    for (s, dir) in list(root)?.into_iter().rev() {
        if s > step {
            set_aside(root, &dir, ABANDONED)?;
            moved.push(s);
        }
    }
    Ok(moved)
}

/// A checkpoint whose checksums were verified.
#[derive(Debug)]
pub struct Verified {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its training state.
    pub state: TrainState,
    /// Contents of the files, by name.
    pub files: Vec<(String, Vec<u8>)>,
}

impl Verified {
    /// Contents of file `name`.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.iter().find(|(n, _)| n == name).map(|(_, b)| b.as_slice())
    }
}

/// Reads and verifies the checkpoint in `dir`: manifest present, every file present with the
/// recorded size and SHA-256, state parses.
pub fn verify(dir: &Path) -> Result<Verified, String> {
    let mtext = fs::read_to_string(dir.join(CKPT_MANIFEST))
        .map_err(|e| format!("{}: manifest unreadable ({e})", dir.display()))?;
    let manifest: Manifest =
        serde_json::from_str(&mtext).map_err(|e| format!("{}: manifest corrupt ({e})", dir.display()))?;
    let mut files = Vec::new();
    for entry in &manifest.files {
        let p = dir.join(&entry.name);
        let mut bytes = Vec::new();
        File::open(&p)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| format!("{}: missing or unreadable ({e})", p.display()))?;
        if bytes.len() as u64 != entry.bytes {
            return Err(format!(
                "{}: truncated or altered ({} bytes, manifest says {})",
                p.display(),
                bytes.len(),
                entry.bytes
            ));
        }
        if sha256_hex(&bytes) != entry.sha256 {
            return Err(format!("{}: checksum mismatch (corrupt)", p.display()));
        }
        files.push((entry.name.clone(), bytes));
    }
    let state_bytes = files
        .iter()
        .find(|(n, _)| n == CKPT_STATE)
        .map(|(_, b)| b.clone())
        .ok_or_else(|| format!("{}: no state.json in manifest", dir.display()))?;
    let state: TrainState = serde_json::from_slice(&state_bytes)
        .map_err(|e| format!("{}: state.json does not parse ({e})", dir.display()))?;
    Ok(Verified { dir: dir.to_path_buf(), manifest, state, files })
}

/// Outcome of looking for a checkpoint to resume from.
#[derive(Debug)]
pub struct Found {
    /// The verified checkpoint, if any.
    pub checkpoint: Option<Verified>,
    /// Damaged checkpoints that were skipped: their directory and what is wrong.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Finds the newest verifiable checkpoint under `root` (or exactly step `want`).
pub fn find(root: &Path, want: Option<usize>) -> Result<Found, String> {
    let all = list(root).map_err(|e| {
        format!(
            "{e}, so the run's checkpoints cannot be found; nothing was changed. Fix: make {} a readable \
             directory again (check its permissions and the disk), then run the same command again.",
            root.display()
        )
    })?;
    let mut skipped = Vec::new();
    if let Some(step) = want {
        let Some((_, dir)) = all.iter().find(|(s, _)| *s == step) else {
            let have: Vec<String> = all.iter().map(|(s, _)| s.to_string()).collect();
            return Err(format!(
                "no complete checkpoint for step {step} in {}; available steps: [{}]. Fix: pass one of \
                 those to --resume, or --resume auto for the newest.",
                root.display(),
                have.join(", ")
            ));
        };
        return verify(dir).map(|v| Found { checkpoint: Some(v), skipped: vec![] }).map_err(|e| {
            format!(
                "checkpoint for step {step} is unusable: {e}. Fix: --resume auto falls back to the newest intact one."
            )
        });
    }
    for (_, dir) in &all {
        match verify(dir) {
            Ok(v) => return Ok(Found { checkpoint: Some(v), skipped }),
            Err(e) => skipped.push((dir.clone(), e)),
        }
    }
    if !skipped.is_empty() {
        return Err(format!(
            "every checkpoint in {} is damaged: {}. Fix: remove the run directory (or pass --resume never \
             --overwrite) to start over.",
            root.display(),
            skipped.iter().map(|s| s.1.as_str()).collect::<Vec<_>>().join("; ")
        ));
    }
    Ok(Found { checkpoint: None, skipped })
}

/// What a checkpoint's `state.json` says that a report reads without verifying the
/// checkpoint, read leniently (absent in an older or partial state).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PartialState {
    /// Seconds lost to recovery so far.
    pub recovery_s: Option<f64>,
}

/// The newest complete checkpoint, found without verifying it.
#[derive(Debug, Clone, PartialEq)]
pub struct Newest {
    /// Its step.
    pub step: usize,
    /// Its directory.
    pub dir: PathBuf,
    /// What its `state.json` says (`None` when missing or not a JSON object).
    pub state: Option<PartialState>,
}

/// The complete checkpoint (with a manifest) of the highest step under `root`, with its
/// state read leniently; no checksum is verified (see [`verify`] for that).
pub fn newest(root: &Path) -> Result<Option<Newest>, Error> {
    let Some((step, dir)) = list(root)?.into_iter().next() else { return Ok(None) };
    let state = fs::read_to_string(dir.join(CKPT_STATE)).ok().and_then(|t| serde_json::from_str(&t).ok());
    Ok(Some(Newest { step, dir, state }))
}

#[cfg(test)]
mod tests;
