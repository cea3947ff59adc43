//! Small helpers shared by the integration tests: the recipe builder every test starts from
//! ([`TestRecipe`]), a recipe file with its run directories ([`Fixture`]), readers of a run
//! directory, and process control (waits bounded by a count of polls, never by the clock).

use oomph::burn::backend::{Autodiff, Flex};
use oomph::models::Builtin;
use oomph::recipe::Recipe;
use oomph::train::{Data, Models, Registry, Session, Summary, TrainError};
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

/// A test recipe: a small base and typed overrides, the one fixture the tests build their
/// recipes from (a literal TOML text is kept only where a test is about that text).
///
/// [`set`](Self::set) takes any `section.key` with a value; the named methods cover the
/// settings that take several keys.
#[derive(Debug, Clone)]
pub struct TestRecipe(toml::Table);

/// A value [`TestRecipe::set`] takes: a TOML value, text, a float, a bool, any integer (as a
/// TOML integer), or a list of these.
pub trait IntoToml {
    /// The TOML value.
    fn into_toml(self) -> toml::Value;
}

impl IntoToml for toml::Value {
    fn into_toml(self) -> toml::Value {
        self
    }
}

impl IntoToml for &str {
    fn into_toml(self) -> toml::Value {
        toml::Value::String(self.to_string())
    }
}

impl IntoToml for String {
    fn into_toml(self) -> toml::Value {
        toml::Value::String(self)
    }
}

impl IntoToml for f64 {
    fn into_toml(self) -> toml::Value {
        toml::Value::Float(self)
    }
}

impl IntoToml for bool {
    fn into_toml(self) -> toml::Value {
        toml::Value::Boolean(self)
    }
}

macro_rules! integers_into_toml {
    ($($t:ty),*) => {$(
        impl IntoToml for $t {
            fn into_toml(self) -> toml::Value {
                toml::Value::Integer(i64::try_from(self).expect("a test integer fits in i64"))
            }
        }
    )*};
}

integers_into_toml!(i32, i64, u32, u64, usize);

impl<T: IntoToml> IntoToml for Vec<T> {
    fn into_toml(self) -> toml::Value {
        toml::Value::Array(self.into_iter().map(IntoToml::into_toml).collect())
    }
}

impl<T: IntoToml, const N: usize> IntoToml for [T; N] {
    fn into_toml(self) -> toml::Value {
        Vec::from(self).into_toml()
    }
}

impl TestRecipe {
    /// An MLP with one hidden layer of 16 on 600 synthetic samples (8 features, 3 classes),
    /// AdamW at lr 0.01, 30 steps of 64 samples, no periodic checkpoint.
    pub fn mlp() -> Self {
        Self::base("mlp")
            .set("model.hidden", [16])
            .synthetic(600, 8, 3)
            .adamw(0.01)
            .set("training.steps", 30)
            .set("training.effective_batch", 64)
            .set("checkpoint.every", 0)
    }

    /// The recipe of the several-ranks tests (threads and processes): the MLP with a hidden
    /// layer of 32, seed 5, 30 steps of 64 samples (shards of 32 with 2 ranks, 22/21/21 with 3),
    /// evaluation every 10 steps, a checkpoint every 4, the ranks' parameters compared every 2
    /// steps, no growth of the micro-batch.
    pub fn ranked() -> Self {
        Self::mlp()
            .set("run.seed", 5)
            .set("model.hidden", [32])
            .set("micro_batch.grow_after", 1000)
            .set("checkpoint.every", 4)
            .set("training.eval_every", 10)
            .set("distributed.check_every", 2)
    }

    /// A wide MLP (one hidden layer of 262144) whose activations grow with the micro-batch: the
    /// runs that meet a real address-space limit ([`limit_memory`]). Seed 1, SGD at lr 0.05, no
    /// growth of the micro-batch, up to 4 restarts; each test sets its data and sizes.
    pub fn wide() -> Self {
        Self::mlp()
            .set("run.seed", 1)
            .set("model.hidden", [262144])
            .sgd(0.05)
            .set("micro_batch.grow_after", 1000)
            .set("supervisor.max_restarts", 4)
    }

    /// The tiny gpt (one layer, 2 heads, width 16, sequence length 8) on the characters of
    /// `path`, AdamW at lr 0.003, 4 steps of 8 sequences, no periodic checkpoint.
    pub fn gpt(path: &Path) -> Self {
        Self::base("gpt")
            .set("model.n_layer", 1)
            .set("model.n_head", 2)
            .set("model.d_model", 16)
            .set("model.seq_len", 8)
            .set("data.kind", "text")
            .set("data.path", path.to_str().expect("a UTF-8 path"))
            .adamw(0.003)
            .set("training.steps", 4)
            .set("training.effective_batch", 8)
            .set("checkpoint.every", 0)
    }

    fn base(kind: &str) -> Self {
        Self(toml::Table::new()).set("run.name", "test").set("model.kind", kind)
    }

    /// Sets `section.key` (or a deeper dotted path) to `value`.
    pub fn set(mut self, key: &str, value: impl IntoToml) -> Self {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("a key");
        let mut t = &mut self.0;
        for part in parts {
            let entry = t.entry(part).or_insert_with(|| toml::Value::Table(Default::default()));
            t = entry.as_table_mut().unwrap_or_else(|| panic!("{part} in {key} is not a table"));
        }
        t.insert(last.to_string(), value.into_toml());
        self
    }

    /// Synthetic classification data: `samples` samples of `features` features in `classes` classes.
    pub fn synthetic(self, samples: usize, features: usize, classes: usize) -> Self {
        self.set("data.kind", "synthetic")
            .set("data.samples", samples)
            .set("data.features", features)
            .set("data.classes", classes)
    }

    /// AdamW at learning rate `lr`.
    pub fn adamw(self, lr: f64) -> Self {
        self.set("optimizer.kind", "adamw").set("optimizer.lr", lr)
    }

    /// SGD at learning rate `lr`.
    pub fn sgd(self, lr: f64) -> Self {
        self.set("optimizer.kind", "sgd").set("optimizer.lr", lr)
    }

    /// A cosine learning-rate schedule after `warmup` steps of linear warmup.
    pub fn cosine(self, warmup: usize) -> Self {
        self.set("lr_schedule.kind", "cosine").set("lr_schedule.warmup_steps", warmup)
    }

    /// The recipe as TOML text.
    pub fn text(&self) -> String {
        toml::to_string(&self.0).expect("a TOML table serialises")
    }

    /// The parsed recipe with `--set`-style `overrides` applied.
    pub fn recipe(&self, overrides: &[&str]) -> Recipe {
        recipe(&self.text(), overrides)
    }

    /// Writes the recipe to `dir/recipe.toml` and returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        write_recipe(dir, "recipe.toml", &self.text())
    }
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

/// Loads the data a built-in model kind needs, unsplit into feeds.
pub fn splits_for(recipe: &Recipe) -> oomph::data::Splits {
    let p = builtin().prepare(&recipe.model.kind, &recipe.model.params, "test.toml").unwrap();
    oomph::data::load(&recipe.data, recipe.run.seed, p.needs().seq_len).unwrap()
}

/// Loads the data a built-in model kind needs.
pub fn data_for(recipe: &Recipe) -> Data<B> {
    Data::from_splits(splits_for(recipe))
}

/// Trains a recipe with a built-in model kind, in-process.
pub fn train_builtin(recipe: Recipe, dir: &Path) -> Result<Summary, TrainError> {
    let data = data_for(&recipe);
    train_session(session(recipe, dir), &data)
}

/// Trains a prepared session with the built-in registry.
pub fn train_session(s: Session<B>, data: &Data<B>) -> Result<Summary, TrainError> {
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

/// A recipe file and the runs made from it, in one temp dir.
pub struct Fixture {
    /// The temp dir holding the recipe and the runs.
    pub dir: tempfile::TempDir,
    /// The recipe file.
    pub recipe: PathBuf,
}

impl Fixture {
    /// A fixture for `recipe`.
    pub fn new(recipe: &TestRecipe) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let recipe = recipe.write(dir.path());
        Self { dir, recipe }
    }

    /// The run directory named `name`.
    pub fn run(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `oomph train RECIPE --run-dir RUN ARGS...` (supervised unless ARGS say otherwise).
    pub fn cmd(&self, name: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_oomph"));
        c.arg("train").arg(&self.recipe).arg("--run-dir").arg(self.run(name)).args(args).current_dir(root());
        c
    }

    /// Runs `cmd` to completion.
    pub fn train(&self, name: &str, args: &[&str]) -> Output {
        self.cmd(name, args).output().expect("run oomph")
    }

    /// Trains `name` undisturbed in one process and asserts it finished.
    pub fn reference(&self, name: &str, args: &[&str]) -> PathBuf {
        let mut a = vec!["--no-supervise"];
        a.extend_from_slice(args);
        let o = self.train(name, &a);
        assert!(o.status.success(), "{}", text(&o));
        self.run(name)
    }
}

/// Events of `kind` in a run directory.
pub fn events(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    lines(&run.join("events.jsonl")).into_iter().filter(|v| v["kind"] == kind).collect()
}

/// The step lines of a run's `metrics.jsonl`, in file order.
pub fn step_records(run: &Path) -> Vec<serde_json::Value> {
    lines(&run.join("metrics.jsonl")).into_iter().filter(|v| v["kind"] == "step").collect()
}

/// The step numbers of `metrics.jsonl`'s step lines, in file order.
pub fn step_lines(run: &Path) -> Vec<u64> {
    step_records(run).iter().map(|v| v["step"].as_u64().unwrap()).collect()
}

/// A finished run's `summary.json`.
pub fn summary(run: &Path) -> Summary {
    let path = run.join("summary.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Asserts two runs' final tensors are equal bit for bit (the tensors, not the file: the
/// safetensors header's metadata order is not stable across writes); `what` names the case.
#[track_caller]
pub fn assert_same_bits(a: &Path, b: &Path, what: &str) {
    let (ta, tb) = (tensors(&a.join("model.safetensors")), tensors(&b.join("model.safetensors")));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>(), "{what}");
    for (k, va) in &ta {
        let vb = &tb[k];
        assert_eq!(va.len(), vb.len(), "{what}: {k}");
        let differing = va.iter().zip(vb).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        assert_eq!(
            differing,
            0,
            "{what}: {differing} values of {k} differ between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// xorshift64: a reproducible source of randomness for test schedules.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number (a step) in `lo..hi`.
    pub fn step(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo) as u64) as usize
    }
}

/// No `*.tmp` file or directory anywhere under `dir`.
pub fn assert_no_tmp(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        assert!(!name.ends_with(".tmp"), "{} was left behind", e.path().display());
        if e.path().is_dir() {
            assert_no_tmp(&e.path());
        }
    }
}

/// Pids of `pid`'s descendants (from /proc).
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
            if parent(child) == Some(p) {
                all.push(child);
                frontier.push(child);
            }
        }
    }
    all
}

/// A process's parent pid from /proc (`None` once it is gone).
pub fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...
    stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|x| x.parse::<u32>().ok())
}

/// The state letter of each thread of `pid` (none once it is gone).
fn thread_states(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()).map(str::to_string)
        })
        .collect()
}

/// How many times a wait on a process polls before the test fails: a bound on polls, not on
/// the clock, so that a process that never gets there cannot hang the test.
const PROCESS_POLLS: usize = 100_000;

/// Polls `done` until it is true, sleeping `every` between polls, at most `polls` times;
/// panics with `what` when it never is.
#[track_caller]
pub fn wait_for(what: &str, polls: usize, every: std::time::Duration, mut done: impl FnMut() -> bool) {
    for _ in 0..polls {
        if done() {
            return;
        }
        std::thread::sleep(every);
    }
    assert!(done(), "{what} (after {polls} polls)");
}

/// How many times a wait on a training run polls (5 ms apart) before the test fails.
const RUN_POLLS: usize = 12_000;

/// Polls `done` while `child` runs; panics when the child ends first or when `done` is still
/// false after a bounded number of polls (so a stuck run cannot hang the test).
#[track_caller]
pub fn wait_while_running(child: &mut std::process::Child, what: &str, mut done: impl FnMut() -> bool) {
    wait_for(&format!("no progress: {what}"), RUN_POLLS, std::time::Duration::from_millis(5), || {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before {what}");
        done()
    });
}

/// Waits until no thread of `pid` runs any more: each is stopped, a zombie or gone.
fn wait_stopped(pid: u32) {
    let stopped = || thread_states(pid).iter().all(|s| matches!(s.as_str(), "T" | "t" | "Z" | "X"));
    wait_for(&format!("process {pid} does not stop"), PROCESS_POLLS, std::time::Duration::from_micros(100), stopped);
}

/// Stops `pid` and every process below it (SIGSTOP, the root first so that it cannot start
/// a child meanwhile) and returns once no thread of the tree runs: until [`thaw`] or
/// [`kill_tree`], nothing in it changes a file. Returns the processes stopped, root first.
pub fn freeze(pid: u32) -> Vec<u32> {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    wait_stopped(pid);
    let tree: Vec<u32> = std::iter::once(pid).chain(descendants(pid)).collect();
    for p in &tree[1..] {
        // SAFETY: kill(2) on our own processes.
        unsafe { libc::kill(*p as i32, libc::SIGSTOP) };
    }
    for p in &tree[1..] {
        wait_stopped(*p);
    }
    tree
}

/// Resumes the processes [`freeze`] stopped, the children first.
pub fn thaw(tree: &[u32]) {
    for p in tree.iter().rev() {
        // SAFETY: kill(2) on our own processes.
        unsafe { libc::kill(*p as i32, libc::SIGCONT) };
    }
}

/// Kills `pid` and every process below it at once, as a machine crash would, and returns
/// once all of them are dead (zombies count as dead: they hold no file). The root is
/// stopped first, so it cannot start a worker between the listing and the kill.
pub fn kill_tree(pid: u32) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    wait_stopped(pid);
    let tree: Vec<u32> = descendants(pid).into_iter().rev().chain(std::iter::once(pid)).collect();
    for p in &tree {
        // SAFETY: kill(2) on our own processes.
        unsafe { libc::kill(*p as i32, libc::SIGKILL) };
    }
    // A zombie leader may still have threads finishing (a checkpoint writer inside fsync holds
    // the process's files until it exits): wait for every thread.
    for p in &tree {
        let dead = || thread_states(*p).iter().all(|s| matches!(s.as_str(), "Z" | "X"));
        wait_for(&format!("process {p} survives SIGKILL"), PROCESS_POLLS, std::time::Duration::from_micros(200), dead);
    }
}

#[cfg(not(feature = "tch"))]
/// Makes `cmd`'s process start under a 300 MiB address-space limit with two malloc arenas, so
/// that a [`TestRecipe::wide`] run meets a real allocation failure: glibc reserves 64 MiB of
/// address space per malloc arena and thread, and two arenas keep the baseline small and stable
/// so the limit bites on the activations.
pub fn limit_memory(cmd: &mut Command) {
    cmd.env("MALLOC_ARENA_MAX", "2");
    with_rlimit(cmd, libc::RLIMIT_AS, 300 << 20);
}

/// Whether signal `sig` is pending for process `pid` (sent to it and not yet delivered, e.g.
/// while it is stopped), from `/proc/PID/status`.
pub fn signal_pending(pid: u32, sig: libc::c_int) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter_map(|l| l.strip_prefix("ShdPnd:").or_else(|| l.strip_prefix("SigPnd:")))
        .any(|mask| u64::from_str_radix(mask.trim(), 16).is_ok_and(|m| m & (1u64 << (sig - 1)) != 0))
}

/// The current position of a worker of `supervisor` (its direct child, or the supervisor
/// itself for `--no-supervise`) from `run`'s `current.json`; `None` while no such worker
/// recorded one (a stale file of a dead worker does not count).
pub fn worker_position(run: &Path, supervisor: u32) -> Option<oomph::train::current::Current> {
    oomph::train::current::read(&run.join("current.json"))
        .filter(|c| c.pid == supervisor || parent(c.pid) == Some(supervisor))
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
