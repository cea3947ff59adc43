//! `oomph inspect CHECKPOINT`: what a checkpoint holds, verified.

use oomph_rundir::{checkpoint, layout, RunDir};
use oomph_train::error::TrainError;
use std::path::Path;

/// Prints a verified checkpoint's contents; a run directory shows its newest checkpoint.
/// An unusable checkpoint is a [`TrainError::Checkpoint`] (exit 4).
pub fn run(path: &Path) -> Result<(), TrainError> {
    let dir = if path.join(layout::CKPT_MANIFEST).is_file() {
        path.to_path_buf()
    } else {
        let root = RunDir::new(path).checkpoints();
        let newest = checkpoint::newest(&root).map_err(|e| {
            TrainError::Checkpoint(format!(
                "{e}. Fix: make {} a readable directory again (check its permissions and the disk).",
                root.display()
            ))
        })?;
        match newest {
            Some(newest) => newest.dir,
            None => {
                return Err(TrainError::Checkpoint(format!(
                    "{} is neither a checkpoint (no manifest.json) nor a run directory with checkpoints. \
                     Fix: pass RUN_DIR or RUN_DIR/checkpoints/step-N.",
                    path.display()
                )))
            }
        }
    };
    match checkpoint::verify(&dir) {
        Ok(v) => {
            let s = &v.state;
            println!("checkpoint {} (verified: {} files, checksums ok)", v.dir.display(), v.manifest.files.len());
            for f in &v.manifest.files {
                println!("  {:<12} {:>12} bytes  sha256 {}", f.name, f.bytes, &f.sha256[..16]);
            }
            println!(
                "step {} | samples_seen {} | reason {} | ranks {} (a resume may use another number)",
                s.step, s.samples_seen, s.reason, s.ranks
            );
            println!("sampler cursor: epoch {} position {}", s.cursor.epoch, s.cursor.position);
            println!("micro-batch policy: limit {} | history {:?}", s.policy.limit, s.policy.history);
            println!(
                "eval micro-batch {} | seed {} | recipe fingerprint {}",
                s.eval_batch,
                s.seed,
                &s.recipe_fingerprint[..16.min(s.recipe_fingerprint.len())]
            );
            println!(
                "last loss {} | oom events {} | recovery {:.2}s | wall {:.1}s | restarts {} | resumes {}",
                s.last_loss.map(|l| format!("{l:.4}")).unwrap_or_else(|| "-".into()),
                s.oom_events,
                s.recovery_s,
                s.wall_s,
                s.restarts,
                s.resumes
            );
            Ok(())
        }
        Err(e) => Err(TrainError::Checkpoint(format!(
            "checkpoint unusable: {e}. Fix: resume from an older checkpoint (--resume STEP) or start over."
        ))),
    }
}
