//! Tidy checks of the crate's invariants that the compiler does not enforce.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The crate holds no process-wide state: no statics, locks, once-cells, atomics, thread-locals
/// or panic hooks (those belong to `oomph-train`'s recovery boundary).
#[test]
fn no_global_state() {
    let mut files = Vec::new();
    sources(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    assert!(files.len() > 5, "found only {files:?}");
    // Identifiers (or their beginnings) that mean shared state.
    let forbidden = ["Mutex", "RwLock", "Once", "Atomic", "thread_local!", "lazy_static", "set_hook", "take_hook"];
    let mut offenders = Vec::new();
    for path in files.iter().filter(|p| !p.ends_with("tidy.rs")) {
        let text = std::fs::read_to_string(path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let mut words = code.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '!' || c == '\''));
            let shared = words.any(|w| w == "static" || forbidden.iter().any(|f| w.starts_with(f)));
            if shared {
                offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "oomph-sched must stay free of global state:\n{}", offenders.join("\n"));
}
