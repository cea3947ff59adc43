//! Small helpers shared by the integration tests.

use oomph::burn::backend::{Autodiff, Flex};
use oomph::data::Splits;
use oomph::models::Builtin;
use oomph::recipe::Recipe;
use oomph::train::{Models, Registry, Session, Summary, TrainError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The CPU backend the tests train on.
pub type B = Autodiff<Flex>;

/// The repository root (recipes in `configs/` refer to `../data/`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Parses a recipe text as if it were a file in `configs/`.
pub fn recipe(text: &str, overrides: &[&str]) -> Recipe {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    oomph::recipe::parse(text, "test.toml", &root().join("configs"), &o).unwrap_or_else(|e| panic!("{e}"))
}

/// A silent session in `dir`.
pub fn session(recipe: Recipe, dir: &Path) -> Session<B> {
    Session::new(recipe, "test.toml", Default::default(), dir)
}

/// The built-in model kinds.
fn builtin() -> Registry<B> {
    let mut reg = Registry::<B>::new();
    Builtin::register(&mut reg);
    reg
}

/// Loads the data a built-in model kind needs.
pub fn data_for(recipe: &Recipe) -> Splits {
    let p = builtin().prepare(&recipe.model.kind, &recipe.model.params, "test.toml").unwrap();
    oomph::data::load(&recipe.data, recipe.run.seed, p.needs().seq_len).unwrap()
}

/// Trains a recipe with a built-in model kind, in-process.
pub fn train_builtin(recipe: Recipe, dir: &Path) -> Result<Summary, TrainError> {
    let data = data_for(&recipe);
    train_session(session(recipe, dir), &data)
}

/// Trains a prepared session with the built-in registry.
pub fn train_session(s: Session<B>, data: &Splits) -> Result<Summary, TrainError> {
    let _turn = serial();
    let p = builtin().prepare(&s.recipe.model.kind, &s.recipe.model.params, "test.toml").unwrap();
    p.train(s, data)
}

/// Every tensor of a safetensors file, as f32 values by name.
pub fn tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let v = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            // Test wrappers hold the model under test as `inner`.
            (name.strip_prefix("inner.").unwrap_or(&name).to_string(), v)
        })
        .collect()
}

/// burn's CPU backends keep one process-wide RNG: in-process training runs (which seed it)
/// take turns so that parallel tests stay deterministic.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Largest absolute difference between two runs' final parameters.
pub fn max_param_diff(a: &Path, b: &Path) -> f32 {
    let (ta, tb) = (tensors(&a.join("model.safetensors")), tensors(&b.join("model.safetensors")));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    let mut m = 0f32;
    for (k, va) in &ta {
        let vb = &tb[k];
        assert_eq!(va.len(), vb.len(), "{k}");
        for (x, y) in va.iter().zip(vb) {
            m = m.max((x - y).abs());
        }
    }
    m
}

/// Runs the real `oomph` binary.
pub fn oomph(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oomph")).args(args).current_dir(root()).output().expect("run oomph")
}

/// stdout + stderr of a finished command, for assertion messages.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Every JSON line of a run file.
pub fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Writes a recipe file into `dir` and returns its path.
pub fn write_recipe(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Pids of `pid`'s descendants (from /proc).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let ppid =
                stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|x| x.parse::<u32>().ok());
            if ppid == Some(p) {
                all.push(child);
                frontier.push(child);
            }
        }
    }
    all
}

/// A process's state letter from /proc (`None` once it is gone).
fn proc_state(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()).map(str::to_string)
}

/// Kills `pid` and every process below it at once, as a machine crash would, and returns
/// once all of them are dead (zombies count as dead: they hold no file). The root is
/// stopped first, so it cannot start a worker between the listing and the kill.
pub fn kill_tree(pid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    while proc_state(pid).is_some_and(|s| !matches!(s.as_str(), "T" | "t" | "Z")) {
        assert!(std::time::Instant::now() < deadline, "process {pid} does not stop");
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    let tree: Vec<u32> = descendants(pid).into_iter().rev().chain(std::iter::once(pid)).collect();
    for p in &tree {
        // SAFETY: kill(2) on our own processes.
        unsafe { libc::kill(*p as i32, libc::SIGKILL) };
    }
    // A zombie leader may still have threads finishing (a checkpoint writer inside fsync holds
    // the process's files until it exits): wait for every thread.
    let alive = |p: u32| {
        std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten().any(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()).unwrap_or("Z");
            state != "Z" && state != "X"
        })
    };
    for p in &tree {
        while alive(*p) {
            assert!(std::time::Instant::now() < deadline, "process {p} survives SIGKILL");
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
}

/// Makes `cmd`'s process start under `resource` (e.g. `libc::RLIMIT_AS`) limited to `limit`;
/// with `RLIMIT_FSIZE`, SIGXFSZ is ignored so an oversized write fails with EFBIG instead.
pub fn with_rlimit(cmd: &mut std::process::Command, resource: libc::__rlimit_resource_t, limit: libc::rlim_t) {
    use std::os::unix::process::CommandExt;
    // SAFETY: signal and setrlimit in the child before exec; no allocation.
    unsafe {
        cmd.pre_exec(move || {
            if resource == libc::RLIMIT_FSIZE {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            }
            let l = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            if libc::setrlimit(resource, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
