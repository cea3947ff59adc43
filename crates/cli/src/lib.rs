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
mod prepare;
pub mod supervise;

pub use alloc::TrackingAllocator;

use clap::{Parser, Subcommand};
use oomph_recipe::Recipe;
use oomph_rundir::{layout, Launch, RunDir, WorkerEnv};
use oomph_train::backend::{self, dispatch, BackendEnv, FlexTrain, WithBackend};
use oomph_train::error::{TrainError, EXIT_BAD_INPUT};
use oomph_train::{Console, Models, Resume, Session, Summary};
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

/// How a command that did not succeed ends.
#[derive(Debug)]
pub enum Failure {
    /// An error that `main` prints once, as one paragraph, and exits with its code.
    Error(TrainError),
    /// An exit code whose cause was already told: by the worker, on the stderr it shares
    /// with the supervisor, or in the supervisor's own notice.
    Code(i32),
}

impl From<TrainError> for Failure {
    fn from(e: TrainError) -> Self {
        Failure::Error(e)
    }
}

/// What a command returns.
pub type Outcome = Result<(), Failure>;

/// `oomph`'s own entry point: the built-in models only.
pub fn main() -> ExitCode {
    main_with::<oomph_models::Builtin>()
}

/// The command line for a program that adds model kinds `M` to the built-in ones.
pub fn main_with<M: Models>() -> ExitCode {
    init_tracing();
    if let Some(warning) = tracker_warning() {
        eprintln!("{warning}");
    }
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
    let outcome = match cli.cmd {
        Cmd::Train(args) => train_command::<M>(args),
        Cmd::Check { recipe, set } => check_command::<M>(&recipe, &set),
        Cmd::Report { run_dir } => report_command(&run_dir),
        Cmd::Inspect { checkpoint } => inspect::run(&checkpoint).map_err(Failure::from),
    };
    let code = match outcome {
        Ok(()) => 0,
        Err(Failure::Error(e)) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
        Err(Failure::Code(code)) => code,
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

/// The start-up warning of a program that trains without oomph's allocation tracker (a
/// worker does not repeat its supervisor's).
pub fn tracker_warning() -> Option<String> {
    if oomph_train::alloc::installed() || WorkerEnv::is_worker() {
        return None;
    }
    Some(
        "warning: this program does not install oomph's allocation tracker, so a failed host allocation \
         kills a worker with no note: the supervisor cannot tell that memory death from any other crash and \
         restarts at the same micro-batch instead of shrinking it. Fix: write `oomph::main!(YourModels);` in \
         place of your own `fn main`, or declare `#[global_allocator] static ALLOC: \
         oomph::cli::TrackingAllocator = oomph::cli::TrackingAllocator;`."
            .into(),
    )
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("OOMPH_LOG").unwrap_or_else(|_| EnvFilter::new("warn,cubecl_common=error"));
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).try_init();
}

/// `oomph check`: everything `oomph train` rejects before a run starts, on the CPU (a
/// backend that is not compiled in too; whether the GPU itself works is known only by
/// opening it, which `train` does); prints the resolved recipe.
fn check_command<M: Models>(path: &Path, set: &[String]) -> Outcome {
    let origin = path.display().to_string();
    let mut recipe = prepare::recipe(path, set)?;
    backend::check(recipe.run.backend, memory_limit(&recipe, &origin)?)?;
    // Under a launcher the ranks are processes, which need no feature.
    if Launch::from_env().ok().flatten().is_none() {
        backend::check_ranks(recipe.distributed.ranks)?;
    }
    let model = prepare::model::<FlexTrain, M>(&mut recipe, &origin)?;
    prepare::build(model, &recipe, &origin, &Default::default())?;
    print!("{}", oomph_recipe::to_toml_string(&recipe));
    Ok(())
}

/// `run.gpu_memory_limit` in bytes.
fn memory_limit(recipe: &Recipe, origin: &str) -> Result<Option<u64>, TrainError> {
    recipe.run.gpu_memory_limit.as_deref().map(oomph_recipe::parse_bytes).transpose().map_err(|e| {
        TrainError::BadInput(format!(
            "{origin}: `run.gpu_memory_limit` is invalid: {e}. Fix: write a size such as \"8GiB\"."
        ))
    })
}

/// The run directory a recipe and arguments imply.
pub fn run_dir_for(recipe: &Recipe, arg: Option<&Path>) -> PathBuf {
    arg.map(Path::to_path_buf).unwrap_or_else(|| Path::new(&recipe.run.output_dir).join(&recipe.run.name))
}

fn parse_resume(s: &str) -> Result<Resume, TrainError> {
    match s {
        "auto" => Ok(Resume::Auto),
        "never" => Ok(Resume::Never),
        n => n.parse::<usize>().map(Resume::Step).map_err(|_| {
            TrainError::BadInput(format!(
                "--resume {n:?} is not valid. Fix: use `auto`, `never`, or a checkpoint step number such as 200."
            ))
        }),
    }
}

fn train_command<M: Models>(args: TrainArgs) -> Outcome {
    // One rank of a launch's processes (torchrun, srun): never supervised (the launcher
    // restarts the gang), and never threads of ranks.
    let launch = if WorkerEnv::is_worker() { None } else { Launch::from_env().map_err(TrainError::BadInput)? };
    if let Some(l) = launch.as_ref().filter(|l| l.rank == 0) {
        // Before anything else: the port is the launch's, and a failure while preparing is
        // told to the ranks that connect meanwhile.
        oomph_train::gang::tcp::listen_early(l)?;
    }
    let result = train_steps::<M>(&args, launch.as_ref());
    if let (Err(Failure::Error(e)), Some(l)) = (&result, &launch) {
        // This rank failed before its gang formed: the others learn it now, not at their
        // deadline.
        let recipe = launch_recipe(&args, l).ok();
        let token = recipe.as_ref().map_or(0, |r| oomph_train::gang::tcp::launch_token(r, &l.attempt));
        let timeout = recipe.map_or(300.0, |r| r.distributed.timeout_s);
        let linger = oomph_train::gang::tcp::linger(timeout);
        let message = format!("rank {} failed: {e}", l.rank);
        oomph_train::gang::tcp::tell_gang(l.rank, l.world, &l.master(), token, &message, linger);
    }
    result
}

/// The recipe of one rank of `launch`: `distributed.ranks` is the launch's number of
/// processes (so that per-rank faults and devices are checked against it); a recipe may say
/// that number itself, or leave it at 1.
fn launch_recipe(args: &TrainArgs, launch: &Launch) -> Result<Recipe, TrainError> {
    let origin = args.recipe.display();
    let (world, launcher) = (launch.world, launch.launcher.name());
    if let Ok(asked) = prepare::recipe(&args.recipe, &args.set) {
        let (ranks, batch) = (asked.distributed.ranks, asked.training.effective_batch);
        if ranks != 1 && ranks != world {
            return Err(TrainError::BadInput(format!(
                "{origin}: `distributed.ranks` = {ranks}, but {launcher} started {world} processes, and each \
                 process is one rank. Fix: set distributed.ranks = {world} or leave it out, or start {ranks} processes."
            )));
        }
        if world > batch {
            return Err(TrainError::BadInput(format!(
                "{origin}: {launcher} started {world} ranks for an effective batch of {batch} samples, so some rank \
                 would get no sample of a step. Fix: start at most {batch} processes, or raise \
                 training.effective_batch."
            )));
        }
    }
    let mut set = args.set.clone();
    set.push(format!("distributed.ranks={world}"));
    prepare::recipe(&args.recipe, &set)
}

fn train_steps<M: Models>(args: &TrainArgs, launch: Option<&Launch>) -> Outcome {
    let origin = args.recipe.display().to_string();
    let mut recipe = match launch {
        Some(l) => launch_recipe(args, l)?,
        None => prepare::recipe(&args.recipe, &args.set)?,
    };
    let is_worker = WorkerEnv::is_worker();
    let worker_env = WorkerEnv::from_env();
    // `--resume` (and `--overwrite`) apply to the first worker, or the first attempt of a
    // launch, only: a restarted one resumes from the newest intact checkpoint of the run.
    let relaunched = launch.is_some_and(|l| l.restarts > 0);
    let resume_arg = match &worker_env.resume {
        Some(r) if is_worker => r.clone(),
        _ if relaunched => "auto".into(),
        _ => args.resume.clone(),
    };
    let overwrite = args.overwrite && !relaunched;
    let resume = parse_resume(&resume_arg)?;
    let limit = memory_limit(&recipe, &origin)?;
    let run_dir = run_dir_for(&recipe, args.run_dir.as_deref());
    backend::check(recipe.run.backend, limit)?;
    let device = match launch {
        Some(l) => launch_device(&recipe, l, &origin)?,
        None => {
            backend::check_ranks(recipe.distributed.ranks)?;
            // Rank 0's device (`distributed.devices[0]` when listed); the others are the ranks'.
            recipe.device()
        }
    };
    let leader = launch.is_none_or(|l| l.rank == 0);
    if !is_worker && leader {
        // What `--resume never` refuses needs nothing prepared: said at once (and asked again
        // under the lock, before anything is removed).
        replaces_a_run(&run_dir, resume, overwrite)?;
    }
    if !is_worker && launch.is_none() && recipe.supervisor.enabled && !args.no_supervise {
        // The supervisor trains nothing and never opens the device: it checks the model keys
        // (on the CPU registry) and leaves the rest to its worker, which also removes an old
        // run that `--overwrite` replaces, once everything is known good.
        prepare::model::<FlexTrain, M>(&mut recipe, &origin)?;
        // One run directory, one writer: held by this command and inherited by its workers.
        let lock = lock::RunLock::acquire(&run_dir).map_err(TrainError::BadInput)?;
        let replaces = replaces_a_run(&run_dir, resume, overwrite)?;
        return supervise::supervise(&recipe, &run_dir, &lock, replaces);
    }
    let mut lock = worker_env.lock_fd.filter(|_| is_worker).and_then(|fd| lock::RunLock::inherited(&run_dir, fd));
    let replace = if is_worker { Replace::Told(worker_env.replace) } else { Replace::Decide(resume, overwrite) };
    let WorkerEnv { mut lower_ceiling, mut lower_eval, in_place_update, restarts, .. } = worker_env;
    let mut first_update_in_place = in_place_update;
    let restarts = launch.map_or(restarts, |l| l.restarts);
    if let Some(l) = launch.filter(|l| l.rank == 0 && l.restarts > 0) {
        // A launcher's restart: what the death of the previous attempt asks, as the supervisor
        // would decide it; rank 0 tells the other ranks.
        let lowered = supervise::after_launch_death(&recipe, &run_dir, l)?;
        lower_ceiling = lowered.lower_micro;
        lower_eval = lowered.lower_eval;
        first_update_in_place = lowered.in_place;
    }
    let backend = recipe.run.backend;
    let job = Job::<M> {
        recipe,
        origin,
        run_dir: run_dir.clone(),
        lock: &mut lock,
        replace,
        resume,
        lower_ceiling,
        lower_eval,
        first_update_in_place,
        restarts,
        plain: args.plain,
        process: launch.cloned(),
        _m: std::marker::PhantomData,
    };
    dispatch(backend, device, limit, job)??;
    if !leader {
        // Rank 0 reports the run.
        return Ok(());
    }
    if let Err(e) = oomph_report::render(&run_dir) {
        tracing::warn!("the run finished but its report could not be drawn: {e}");
    }
    match oomph_report::summary_text(&run_dir) {
        Ok(t) => println!("{t}"),
        Err(e) => tracing::warn!("the run finished but its summary could not be read back: {e}"),
    }
    Ok(())
}

/// This process's device index as one rank of `launch`: `distributed.devices[LOCAL_RANK]`
/// when devices are listed, else `run.device + LOCAL_RANK`, or `run.device` when
/// `CUDA_VISIBLE_DEVICES` shows the process one GPU (on the CPU backends every rank shares the
/// CPU).
fn launch_device(recipe: &Recipe, launch: &Launch, origin: &str) -> Result<usize, TrainError> {
    let devices = &recipe.distributed.devices;
    if devices.is_empty() {
        // A process that sees one GPU (`srun --gpus-per-task 1`) takes it, whatever its local rank.
        let visible =
            std::env::var("CUDA_VISIBLE_DEVICES").map(|v| v.split(',').filter(|d| !d.trim().is_empty()).count());
        let local = if visible.is_ok_and(|n| n == 1) { 0 } else { launch.local_rank };
        return Ok(recipe.run.device.saturating_add(local));
    }
    devices.get(launch.local_rank).copied().ok_or_else(|| {
        TrainError::BadInput(format!(
            "{origin}: this process is local rank {} (LOCAL_RANK or SLURM_LOCALID) of its machine, and \
             `distributed.devices` lists {} device(s), one per local rank. Fix: list one device per process of a \
             machine, or leave distributed.devices out (each process then takes run.device + its local rank).",
            launch.local_rank,
            devices.len()
        ))
    })
}

fn report_command(run_dir: &Path) -> Outcome {
    let rendered = oomph_report::render(run_dir);
    let text = oomph_report::summary_text(run_dir).map_err(|e| TrainError::BadInput(e.to_string()))?;
    println!("{text}");
    rendered.map(drop).map_err(|e| TrainError::Failed(e.to_string()).into())
}

/// Whether starting this command removes an old run from `run_dir` (`--resume never
/// --overwrite` on a directory that holds one). Refuses to silently reuse a run directory
/// with `--resume never`, and a directory that also holds files oomph did not write.
fn replaces_a_run(run_dir: &Path, resume: Resume, overwrite: bool) -> Result<bool, TrainError> {
    if overwrite && resume != Resume::Never {
        return Err(TrainError::BadInput(format!(
            "--overwrite replaces an existing run and only goes with --resume never. Fix: add --resume never \
             to start over in {}, or drop --overwrite to continue the run.",
            run_dir.display()
        )));
    }
    let rd = RunDir::new(run_dir);
    let non_empty = |p: &Path| std::fs::read_dir(p).map(|mut r| r.next().is_some()).unwrap_or(false);
    let metrics = std::fs::metadata(rd.metrics()).map(|m| m.len() > 0).unwrap_or(false);
    let has_run = non_empty(&rd.checkpoints()) || metrics;
    if resume != Resume::Never || (!has_run && !overwrite) {
        return Ok(false);
    }
    if !overwrite {
        return Err(TrainError::BadInput(format!(
            "the run directory {} already holds a run, and --resume never refuses to overwrite it. \
             Fix: --resume auto to continue that run, add --overwrite to replace it, or pick another --run-dir.",
            run_dir.display()
        )));
    }
    let foreign = rd.foreign_entries();
    if !foreign.is_empty() {
        let shown: Vec<String> = foreign.iter().take(5).map(|p| p.display().to_string()).collect();
        return Err(TrainError::BadInput(format!(
            "--overwrite would replace the run in {}, but the directory also holds files that oomph did not \
             write ({}{}); nothing was removed. Fix: pick another --run-dir, or move those files away first.",
            run_dir.display(),
            shown.join(", "),
            if foreign.len() > 5 { format!(" and {} more", foreign.len() - 5) } else { String::new() }
        )));
    }
    Ok(true)
}

/// Removes the old run's files from `run_dir` (oomph's own; the lock stays, and so does the
/// allocation-failure note, which this process has already opened and emptied), once the new
/// run's recipe, data, model and device are known good.
fn remove_old_run(run_dir: &Path) -> Result<(), TrainError> {
    let mut removed = Vec::new();
    let kept = [layout::LOCK, layout::WORKER_DEATH];
    let ours = layout::RUN_FILES.iter().filter(|n| !kept.contains(n)).map(|n| run_dir.join(n));
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
            TrainError::Failed(format!(
                "removing {} of the old run failed: {err}. Fix: remove it by hand or pick another --run-dir.",
                p.display()
            ))
        })?;
        removed.push(p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    }
    if !removed.is_empty() {
        eprintln!("oomph: --overwrite removed the old run in {} ({})", run_dir.display(), removed.join(", "));
    }
    Ok(())
}

/// Whether an in-process run replaces the old run in its directory.
enum Replace {
    /// A worker does what its supervisor says ([`WorkerEnv::replace`]).
    Told(bool),
    /// The command itself decides from `--resume` and `--overwrite` ([`replaces_a_run`]),
    /// under the lock.
    Decide(Resume, bool),
}

/// Training in this process on the recipe's backend: the model is prepared and built here,
/// once.
struct Job<'l, M> {
    recipe: Recipe,
    origin: String,
    run_dir: PathBuf,
    /// The run directory's lock: inherited from the supervisor, or taken here once the model
    /// keys are known good (held by the caller until the command ends).
    lock: &'l mut Option<lock::RunLock>,
    replace: Replace,
    resume: Resume,
    lower_ceiling: Option<usize>,
    lower_eval: Option<usize>,
    first_update_in_place: bool,
    restarts: usize,
    plain: bool,
    /// This process's place among a launch's processes, if a launcher started it.
    process: Option<Launch>,
    _m: std::marker::PhantomData<M>,
}

/// Points the allocation-failure note at the run directory's `worker-death.txt` (creating
/// the directory), or, for rank `rank` > 0 of a launch in its attempt `attempt`, at that
/// rank's own note ([`RunDir::worker_death_of`]).
fn arm_note(run_dir: &Path, rank: usize, attempt: usize) {
    if std::fs::create_dir_all(run_dir).is_ok() {
        alloc::arm(&RunDir::new(run_dir).worker_death_of(rank, attempt));
    }
}

impl<M: Models> WithBackend for Job<'_, M> {
    type Output = Result<Summary, TrainError>;

    fn run<B: burn::tensor::backend::AutodiffBackend>(self, device: B::Device, env: BackendEnv) -> Self::Output {
        let mut recipe = self.recipe;
        // The model keys first: a typo in them leaves no run directory behind.
        let model = prepare::model::<B, M>(&mut recipe, &self.origin)?;
        // The other ranks of a launch read the run directory that rank 0 alone writes.
        let leader = self.process.as_ref().is_none_or(|l| l.rank == 0);
        if self.lock.is_none() && leader {
            *self.lock = Some(lock::RunLock::acquire(&self.run_dir).map_err(TrainError::BadInput)?);
        }
        // Armed before the data is loaded: a host allocation that fails while loading is a
        // memory death the supervisor (or a launch's restart) lowers the sizes after.
        match &self.process {
            Some(l) => arm_note(&self.run_dir, l.rank, l.restarts),
            None => arm_note(&self.run_dir, 0, 0),
        }
        let prepare::Loaded { model, data } = prepare::build(model, &recipe, &self.origin, &device)?;
        let replaces = match self.replace {
            _ if !leader => false,
            Replace::Told(r) => r,
            Replace::Decide(resume, overwrite) => replaces_a_run(&self.run_dir, resume, overwrite)?,
        };
        if replaces {
            remove_old_run(&self.run_dir)?;
        }
        let observer = Box::new(Console::new(recipe.run.log_every, self.plain));
        let session = Session {
            recipe,
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
            release: env.release.clone(),
            process: self.process,
        };
        // `env` (and the ballast it holds) lives until training ends.
        let result = model.train(session, &data);
        drop(env);
        result
    }
}
