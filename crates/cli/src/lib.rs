//! The `oomph` command line: `train`, `check`, `report`, `inspect`, and the supervisor that
//! restarts a training worker after a memory death.
//!
//! A program with its own model kinds gets the same command line (and supervision) with
//! [`main_with`]. Only this crate prints to stdout.

/// The allocation-failure note for the supervisor (it lives in `oomph_train`: the trainer
/// clears it after a failure it survived).
pub use oomph_train::alloc;
pub mod inspect;
pub mod lock;
pub mod supervise;

pub use alloc::TrackingAllocator;

use anyhow::Result;
use clap::{Parser, Subcommand};
use oomph_recipe::Recipe;
use oomph_rundir::{layout, RunDir, WorkerEnv};
use oomph_train::backend::{dispatch, BackendEnv, WithBackend};
use oomph_train::error::{TrainError, EXIT_BAD_INPUT};
use oomph_train::{Console, Models, Registry, Resume, Session, Summary};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "oomph",
    version,
    about = "Training that survives out-of-memory: fixed effective batch, adaptive micro-batch, crash-safe checkpoints."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Arguments of `oomph train`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// The TOML recipe.
    pub recipe: PathBuf,
    /// Override a recipe field: `--set section.key=value` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Run directory (default: `run.output_dir/run.name`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// `auto` (newest intact checkpoint, if any), `never`, or a step number.
    #[arg(long, default_value = "auto")]
    pub resume: String,
    /// With `--resume never`: delete an existing run in the run directory first.
    #[arg(long)]
    pub overwrite: bool,
    /// Train in this process, without a supervising parent.
    #[arg(long)]
    pub no_supervise: bool,
    /// Plain log lines even on a terminal.
    #[arg(long)]
    pub plain: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Train from a recipe.
    Train(TrainArgs),
    /// Validate a recipe and print it resolved (all defaults filled in).
    Check {
        /// The TOML recipe.
        recipe: PathBuf,
        /// Override a recipe field (repeatable).
        #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
        set: Vec<String>,
    },
    /// Plot a run (report.png, report.svg in the run directory) and print its summary; works
    /// on a finished, running or crashed run.
    Report {
        /// The run directory.
        run_dir: PathBuf,
    },
    /// Print what a checkpoint holds.
    Inspect {
        /// A checkpoint directory (`RUN/checkpoints/step-N`) or a run directory.
        checkpoint: PathBuf,
    },
}

/// `oomph`'s own entry point: the built-in models only.
pub fn main() -> ExitCode {
    main_with::<oomph_models::Builtin>()
}

/// The command line for a program that adds model kinds `M` to the built-in ones.
pub fn main_with<M: Models>() -> ExitCode {
    init_tracing();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_BAD_INPUT } else { 0 };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    if !matches!(cli.cmd, Cmd::Train(_)) {
        // `oomph inspect RUN | head` ends quietly when the reader goes away, as other command
        // line tools do (Rust ignores SIGPIPE, which turns the next print into a panic).
        // Training keeps ignoring it: a closed pipe must not end a run.
        // SAFETY: restoring the default disposition of one signal before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let code = match cli.cmd {
        Cmd::Train(args) => train_command::<M>(args),
        Cmd::Check { recipe, set } => check_command::<M>(&recipe, &set),
        Cmd::Report { run_dir } => report_command(&run_dir),
        Cmd::Inspect { checkpoint } => inspect::run(&checkpoint),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("OOMPH_LOG").unwrap_or_else(|_| EnvFilter::new("warn,cubecl_common=error"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

/// Prints an error as one paragraph and returns its exit code.
pub fn report_error(e: &TrainError) -> i32 {
    eprintln!("error: {e}");
    e.exit_code()
}

fn load_recipe(path: &Path, set: &[String]) -> Result<Recipe, i32> {
    oomph_recipe::load(path, set).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_BAD_INPUT
    })
}

/// Validates the model keys (model keys do not depend on the backend, so the CPU registry
/// answers) and fills in the model's defaults.
fn check_model<M: Models>(recipe: &mut Recipe, origin: &str) -> Result<(), i32> {
    let mut reg = Registry::<oomph_train::backend::FlexTrain>::new();
    oomph_models::Builtin::register(&mut reg);
    M::register(&mut reg);
    let prepared = reg.prepare(&recipe.model.kind, &recipe.model.params, origin).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_BAD_INPUT
    })?;
    recipe.model.params = prepared.resolved_params();
    Ok(())
}

fn check_command<M: Models>(path: &Path, set: &[String]) -> i32 {
    let origin = path.display().to_string();
    let mut recipe = match load_recipe(path, set) {
        Ok(r) => r,
        Err(c) => return c,
    };
    if let Err(c) = check_model::<M>(&mut recipe, &origin) {
        return c;
    }
    if let Err(c) = check_data::<M>(&recipe, &origin) {
        return c;
    }
    print!("{}", oomph_recipe::to_toml_string(&recipe));
    0
}

/// Loads the data and builds the model for it once (on the CPU), so `oomph check` rejects
/// what `oomph train` would: data errors, an effective batch larger than the training split,
/// a model that cannot take the data.
fn check_data<M: Models>(recipe: &Recipe, origin: &str) -> Result<(), i32> {
    let fail = |msg: String| {
        eprintln!("error: {msg}");
        EXIT_BAD_INPUT
    };
    let mut reg = Registry::<oomph_train::backend::FlexTrain>::new();
    oomph_models::Builtin::register(&mut reg);
    M::register(&mut reg);
    let prepared = reg.prepare(&recipe.model.kind, &recipe.model.params, origin).map_err(|e| fail(e.to_string()))?;
    let data = oomph_data::load(&recipe.data, recipe.run.seed, prepared.needs().seq_len)
        .map_err(|e| fail(format!("{origin}: {e}")))?;
    oomph_train::trainer::check_data_fits(recipe, origin, &data).map_err(|e| fail(e.to_string()))?;
    prepared.check(&data, &Default::default()).map_err(|e| {
        fail(format!(
            "{origin}: model.kind = \"{}\" cannot be built for this data: {e}. Fix: pick a model.kind that takes \
             {} data, or change the [data] section to data this model takes.",
            recipe.model.kind, recipe.data.kind
        ))
    })
}

/// The run directory a recipe and arguments imply.
pub fn run_dir_for(recipe: &Recipe, arg: Option<&Path>) -> PathBuf {
    arg.map(Path::to_path_buf).unwrap_or_else(|| Path::new(&recipe.run.output_dir).join(&recipe.run.name))
}

fn parse_resume(s: &str) -> Result<Resume, i32> {
    match s {
        "auto" => Ok(Resume::Auto),
        "never" => Ok(Resume::Never),
        n => n.parse::<usize>().map(Resume::Step).map_err(|_| {
            eprintln!("error: --resume {n:?} is not valid. Fix: use `auto`, `never`, or a checkpoint step number such as 200.");
            EXIT_BAD_INPUT
        }),
    }
}

fn train_command<M: Models>(args: TrainArgs) -> i32 {
    let origin = args.recipe.display().to_string();
    let mut recipe = match load_recipe(&args.recipe, &args.set) {
        Ok(r) => r,
        Err(c) => return c,
    };
    if let Err(c) = check_model::<M>(&mut recipe, &origin) {
        return c;
    }
    let is_worker = WorkerEnv::is_worker();
    let worker_env = WorkerEnv::from_env();
    // `--resume` applies to the first worker only: a restarted one resumes from the newest
    // intact checkpoint of the run.
    let resume_arg = match &worker_env.resume {
        Some(r) if is_worker => r.clone(),
        _ => args.resume.clone(),
    };
    let resume = match parse_resume(&resume_arg) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let run_dir = run_dir_for(&recipe, args.run_dir.as_deref());
    // One run directory, one writer: held by this command (and its worker) until they exit.
    let inherited = worker_env.lock_fd.filter(|_| is_worker).and_then(|fd| lock::RunLock::inherited(&run_dir, fd));
    let _lock = match inherited {
        Some(l) => l,
        None => match lock::RunLock::acquire(&run_dir) {
            Ok(l) => l,
            Err(msg) => {
                eprintln!("error: {msg}");
                return EXIT_BAD_INPUT;
            }
        },
    };
    if !is_worker {
        if let Err(c) = prepare_run_dir(&run_dir, resume, args.overwrite) {
            return c;
        }
        if recipe.supervisor.enabled && !args.no_supervise {
            return supervise::supervise(&recipe, &run_dir, &_lock);
        }
    }
    let WorkerEnv { lower_ceiling, lower_eval, in_place_update: first_update_in_place, restarts, .. } = worker_env;
    if std::fs::create_dir_all(&run_dir).is_ok() {
        alloc::arm(&RunDir::new(&run_dir).worker_death());
    }
    let origin_copy = origin.clone();
    let job = Job::<M> {
        recipe: recipe.clone(),
        origin,
        run_dir,
        resume,
        lower_ceiling,
        lower_eval,
        first_update_in_place,
        restarts,
        plain: args.plain,
        _m: std::marker::PhantomData,
    };
    let limit = match recipe.run.gpu_memory_limit.as_deref().map(oomph_recipe::parse_bytes).transpose() {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "error: {origin_copy}: `run.gpu_memory_limit` is invalid: {e}. Fix: write a size such as \"8GiB\"."
            );
            return EXIT_BAD_INPUT;
        }
    };
    match dispatch(&recipe.run.backend, recipe.run.device, limit, job).and_then(|r| r) {
        Ok(summary) => {
            let run_dir = Path::new(&summary.model_path).parent().map(Path::to_path_buf).unwrap_or_default();
            if let Err(e) = oomph_report::render(&run_dir) {
                tracing::warn!("the run finished but its report could not be drawn: {e}");
            }
            match oomph_report::summary_text(&run_dir) {
                Ok(t) => println!("{t}"),
                Err(e) => tracing::warn!("the run finished but its summary could not be read back: {e}"),
            }
            0
        }
        Err(e) => report_error(&e),
    }
}

fn report_command(run_dir: &Path) -> i32 {
    let rendered = oomph_report::render(run_dir);
    match oomph_report::summary_text(run_dir) {
        Ok(t) => println!("{t}"),
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_BAD_INPUT;
        }
    }
    match rendered {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// Refuses to silently reuse a run directory with `--resume never`; with `--overwrite`,
/// removes the old run's files (oomph's only: a directory that holds anything else is
/// refused, never emptied).
fn prepare_run_dir(run_dir: &Path, resume: Resume, overwrite: bool) -> Result<(), i32> {
    if overwrite && resume != Resume::Never {
        eprintln!(
            "error: --overwrite replaces an existing run and only goes with --resume never. Fix: add --resume never \
             to start over in {}, or drop --overwrite to continue the run.",
            run_dir.display()
        );
        return Err(EXIT_BAD_INPUT);
    }
    let rd = RunDir::new(run_dir);
    let non_empty = |p: &Path| std::fs::read_dir(p).map(|mut r| r.next().is_some()).unwrap_or(false);
    let metrics = std::fs::metadata(rd.metrics()).map(|m| m.len() > 0).unwrap_or(false);
    let has_run = non_empty(&rd.checkpoints()) || metrics;
    if resume != Resume::Never || (!has_run && !overwrite) {
        return Ok(());
    }
    if !overwrite {
        eprintln!(
            "error: the run directory {} already holds a run, and --resume never refuses to overwrite it. \
             Fix: --resume auto to continue that run, add --overwrite to replace it, or pick another --run-dir.",
            run_dir.display()
        );
        return Err(EXIT_BAD_INPUT);
    }
    let foreign = rd.foreign_entries();
    if !foreign.is_empty() {
        let shown: Vec<String> = foreign.iter().take(5).map(|p| p.display().to_string()).collect();
        eprintln!(
            "error: --overwrite would replace the run in {}, but the directory also holds files that oomph did not \
             write ({}{}); nothing was removed. Fix: pick another --run-dir, or move those files away first.",
            run_dir.display(),
            shown.join(", "),
            if foreign.len() > 5 { format!(" and {} more", foreign.len() - 5) } else { String::new() }
        );
        return Err(EXIT_BAD_INPUT);
    }
    let mut removed = Vec::new();
    let ours = layout::RUN_FILES.iter().filter(|n| **n != layout::LOCK).map(|n| run_dir.join(n));
    // A writer's temporary file that a crash left behind goes too.
    for p in ours.flat_map(|p| [layout::temporary(&p), p]) {
        let result = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else if p.exists() {
            std::fs::remove_file(&p)
        } else {
            continue;
        };
        result.map_err(|err| {
            eprintln!(
                "error: removing {} of the old run failed: {err}. Fix: remove it by hand or pick another --run-dir.",
                p.display()
            );
            1
        })?;
        removed.push(p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    }
    if !removed.is_empty() {
        eprintln!("oomph: --overwrite removed the old run in {} ({})", run_dir.display(), removed.join(", "));
    }
    Ok(())
}

struct Job<M> {
    recipe: Recipe,
    origin: String,
    run_dir: PathBuf,
    resume: Resume,
    lower_ceiling: Option<usize>,
    lower_eval: Option<usize>,
    first_update_in_place: bool,
    restarts: usize,
    plain: bool,
    _m: std::marker::PhantomData<M>,
}

impl<M: Models> WithBackend for Job<M> {
    type Output = Result<Summary, TrainError>;

    fn run<B: burn::tensor::backend::AutodiffBackend>(self, device: B::Device, env: BackendEnv) -> Self::Output {
        let mut reg = Registry::<B>::new();
        oomph_models::Builtin::register(&mut reg);
        M::register(&mut reg);
        let prepared = reg
            .prepare(&self.recipe.model.kind, &self.recipe.model.params, &self.origin)
            .map_err(|e| TrainError::BadInput(e.to_string()))?;
        let needs = prepared.needs();
        let data = oomph_data::load(&self.recipe.data, self.recipe.run.seed, needs.seq_len)
            .map_err(|e| TrainError::BadInput(format!("{}: {e}", self.origin)))?;
        let observer = Box::new(Console::new(self.recipe.run.log_every, self.plain));
        let session = Session {
            recipe: self.recipe,
            origin: self.origin,
            device,
            backend_name: env.name.clone(),
            run_dir: self.run_dir,
            observer,
            resume: self.resume,
            lower_ceiling: self.lower_ceiling,
            lower_eval: self.lower_eval,
            first_update_in_place: self.first_update_in_place,
            restarts: self.restarts,
            banner: Vec::new(),
            stop: Default::default(),
            memory: env.memory.clone(),
        };
        // `env` (and the ballast it holds) lives until training ends.
        let result = prepared.train(session, &data);
        drop(env);
        result
    }
}
