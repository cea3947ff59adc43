//! Crash-safe checkpoints.
//!
//! Layout: `checkpoints/step-N/{model.mpk, optim.mpk, state.json, manifest.json}`.
//! **Invariant:** a checkpoint directory counts only when its manifest exists; the manifest
//! (per-file sizes and SHA-256) is written last, inside `step-N.tmp/`, every file is fsynced,
//! and the directory is renamed to `step-N/` and the parent fsynced. Loading verifies every
//! checksum and falls back to the previous checkpoint when the newest is damaged.

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
    /// Every other file with its size and checksum.
    pub files: Vec<FileEntry>,
}

/// The files of a checkpoint, already serialised (bytes), ready to be written.
pub struct Payload {
    /// Step.
    pub step: usize,
    /// (file name, contents).
    pub files: Vec<(String, Vec<u8>)>,
}

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
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
/// but the newest `keep` complete checkpoints. Returns the final directory.
pub fn write(root: &Path, payload: &Payload, keep: usize) -> std::io::Result<PathBuf> {
    fs::create_dir_all(root)?;
    let tmp = root.join(format!("{}.tmp", dir_name(payload.step)));
    let fin = root.join(dir_name(payload.step));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir_all(&tmp)?;
    let mut entries = Vec::new();
    for (name, bytes) in &payload.files {
        let mut f = File::create(tmp.join(name))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        entries.push(FileEntry { name: name.clone(), bytes: bytes.len() as u64, sha256: sha256_hex(bytes) });
    }
    let manifest = Manifest { format: FORMAT, step: payload.step, files: entries };
    let mut f = File::create(tmp.join("manifest.json"))?;
    f.write_all(serde_json::to_string_pretty(&manifest).map_err(std::io::Error::other)?.as_bytes())?;
    f.sync_all()?;
    fsync_dir(&tmp);
    if fin.exists() {
        discard(root, &fin)?;
    }
    fs::rename(&tmp, &fin)?;
    fsync_dir(root);
    prune(root, keep)?;
    Ok(fin)
}

/// Complete checkpoint directories (with a manifest) under `root`, newest first.
pub fn list(root: &Path) -> Vec<(usize, PathBuf)> {
    let mut v: Vec<(usize, PathBuf)> = fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse::<usize>().ok()?;
            let p = e.path();
            p.join("manifest.json").is_file().then_some((step, p))
        })
        .collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.0));
    v
}

/// Removes a checkpoint directory so that a crash at any moment never leaves a
/// half-deleted directory that still looks complete: it is first renamed (atomically) out of
/// the `step-N` namespace, then deleted.
fn discard(root: &Path, dir: &Path) -> std::io::Result<()> {
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let trash = root.join(format!("{name}.trash"));
    if trash.exists() {
        fs::remove_dir_all(&trash)?;
    }
    fs::rename(dir, &trash)?;
    fsync_dir(root);
    fs::remove_dir_all(&trash)
}

fn prune(root: &Path, keep: usize) -> std::io::Result<()> {
    for (_, p) in list(root).into_iter().skip(keep.max(1)) {
        discard(root, &p)?;
    }
    // Leftovers of writes or deletions that a crash interrupted are garbage.
    for e in fs::read_dir(root)?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".tmp") || name.ends_with(".trash") {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    Ok(())
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
    let mtext = fs::read_to_string(dir.join("manifest.json"))
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
        .find(|(n, _)| n == "state.json")
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
    /// Warnings about damaged checkpoints that were skipped.
    pub skipped: Vec<String>,
}

/// Finds the newest verifiable checkpoint under `root` (or exactly step `want`).
pub fn find(root: &Path, want: Option<usize>) -> Result<Found, String> {
    let all = list(root);
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
            Err(e) => skipped.push(e),
        }
    }
    if !skipped.is_empty() {
        return Err(format!(
            "every checkpoint in {} is damaged: {}. Fix: remove the run directory (or pass --resume never \
             --overwrite) to start over.",
            root.display(),
            skipped.join("; ")
        ));
    }
    Ok(Found { checkpoint: None, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(step: usize) -> Payload {
        Payload { step, files: vec![("a.bin".into(), vec![step as u8; 100]), ("state.json".into(), b"{}".to_vec())] }
    }

    #[test]
    fn write_lists_prunes_and_detects_damage() {
        let d = tempfile::tempdir().unwrap();
        for s in [10, 20, 30] {
            write(d.path(), &payload(s), 2).unwrap();
        }
        let l: Vec<usize> = list(d.path()).iter().map(|x| x.0).collect();
        assert_eq!(l, vec![30, 20]);
        // state.json "{}" does not parse as TrainState: verify reports it.
        let e = verify(&d.path().join("step-30")).unwrap_err();
        assert!(e.contains("state.json"), "{e}");
        // Truncation is detected by size.
        std::fs::write(d.path().join("step-30/a.bin"), [1u8; 10]).unwrap();
        let e = verify(&d.path().join("step-30")).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        // Same size, flipped byte: checksum.
        std::fs::write(d.path().join("step-20/a.bin"), [7u8; 100]).unwrap();
        let e = verify(&d.path().join("step-20")).unwrap_err();
        assert!(e.contains("checksum"), "{e}");
        // A directory without manifest does not count.
        std::fs::create_dir_all(d.path().join("step-99")).unwrap();
        assert_eq!(list(d.path())[0].0, 30);
    }
}
