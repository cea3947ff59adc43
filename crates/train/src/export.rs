//! The final weights: `model.safetensors`, readable by any safetensors tool.

use crate::error::TrainError;
use burn::module::Module;
use burn::tensor::backend::Backend;
use std::path::Path;

/// Writes the model's weights as safetensors (readable by any safetensors tool), through a
/// temporary file renamed into place, so a failed or interrupted write never leaves a
/// truncated file where the previous weights were.
pub fn save_safetensors<B: Backend, M: Module<B>>(model: &M, path: &Path) -> Result<(), TrainError> {
    use burn::store::{ModuleSnapshot, SafetensorsStore};
    let tmp = oomph_rundir::layout::temporary(path);
    let mut store = SafetensorsStore::from_file(&tmp).overwrite(true);
    let saved = model.save_into(&mut store).map_err(|e| format!("writing {}: {e}", tmp.display())).and_then(|()| {
        drop(store);
        std::fs::rename(&tmp, path).map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), path.display()))
    });
    if saved.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    saved.map_err(|e| {
        TrainError::Failed(format!(
            "writing the final weights {} failed: {e}. The run's checkpoints are intact. Fix: free disk space or \
             make the run directory writable, then run the same command again (it resumes from the final \
             checkpoint and writes the weights).",
            path.display()
        ))
    })
}
