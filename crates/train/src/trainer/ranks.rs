//! Several ranks in one process (`distributed.ranks` > 1): one thread per rank, each with
//! its copy of the model on its device and its shard of every step, joined through burn's
//! collective ([`crate::gang`]). Rank 0 runs on the calling thread and writes the run
//! directory; when any rank fails, every rank stops and the run ends with that rank's error.

use crate::error::TrainError;
use crate::feed::{Data, ModelFeeds};
use crate::objective::Objective;
use crate::session::Session;
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use oomph_rundir::Summary;

/// Trains `model` with `distributed.ranks` ranks.
#[cfg(feature = "distributed")]
pub(super) fn train_ranks<B, M>(
    session: Session<B>,
    data: &Data<B>,
    feeds: &ModelFeeds<B, M>,
    model: M,
) -> Result<Summary, TrainError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Objective<B> + 'static,
    M::InnerModule: Objective<B::InnerBackend>,
{
    use super::Run;
    use crate::gang::burn_collective::{abandon, BurnCollective};
    use crate::gang::{Board, Link};
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::Arc;
    use std::time::Duration;

    let dist = session.recipe.distributed.clone();
    let world = dist.ranks;
    // A deadline beyond what a `Duration` holds is no deadline.
    let deadline = Duration::try_from_secs_f64(dist.timeout_s).unwrap_or(Duration::MAX);
    let board = Arc::new(Board::default());
    let devices = rank_devices::<B>(&session, world)?;
    // Ranks that share a device are summed in an order burn's collective does not fix: their
    // gradients are gathered and added in rank order instead (reproducible from run to run).
    let shared = devices.iter().enumerate().any(|(i, d)| devices[..i].contains(d));
    let link = |r: usize| {
        let collective = BurnCollective::<B::InnerBackend>::new(r, world, devices[r].clone());
        Link::new(
            r,
            world,
            devices[r].clone(),
            Box::new(collective),
            board.clone(),
            deadline,
            abandon::<B::InnerBackend>,
        )
        .in_rank_order(shared && world > 2)
    };
    // Parameters a module initialises lazily are drawn now, once: each rank's copy must hold
    // the same values, not draw its own on first use.
    crate::gang::checksum::<B, M>(&model);
    let followers: Vec<_> = (1..world)
        .map(|r| (r, session.follower(devices[r].clone()), model.clone().fork(&devices[r]), link(r)))
        .collect();
    let mut first = Run::open(session, data, feeds, model, Some(link(0)))?;
    // Every rank records where it is in rank 0's `current.json` (which says the earliest).
    let position = first.log.share_position();
    // Rank 0 resumes first (it trims what a dead worker left); the others read what it kept.
    first.resume()?;
    let _limit = first.faults.limit_address_space()?;
    crate::signals::install();
    let summary = std::thread::scope(|scope| {
        for (r, session, model, link) in followers {
            let board = board.clone();
            let position = position.clone();
            std::thread::Builder::new()
                .name(format!("oomph-rank-{r}"))
                .spawn_scoped(scope, move || {
                    crate::gang::set_thread_rank(Some(r));
                    let run = || -> Result<Summary, TrainError> {
                        let mut run = Run::open(session, data, feeds, model, Some(link))?;
                        run.log.join(r, position);
                        run.resume()?;
                        run.go()
                    };
                    let result = catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|p| Err(panicked(r, p)));
                    if let Err(e) = result {
                        board.fail(r, e);
                    }
                })
                .expect("oomph: cannot start a rank's thread");
        }
        first.banner();
        crate::gang::set_thread_rank(Some(0));
        let result = catch_unwind(AssertUnwindSafe(|| first.go())).unwrap_or_else(|p| Err(panicked(0, p)));
        crate::gang::set_thread_rank(None);
        if let Err(e) = &result {
            board.fail(0, TrainError::Gang(e.to_string()));
        }
        result
    });
    // Threads still blocked in a collective call (a rank that failed left them there) return.
    abandon::<B::InnerBackend>();
    match (summary, board.take()) {
        (Ok(summary), None) => Ok(summary),
        // Rank 0's own error, unless it only stopped because another rank failed first (then
        // that rank's error is the cause). When every rank fails alike (a divergence), rank 0
        // says it with what only it knows (the checkpoints it wrote).
        (Err(e), first) if !matches!(e, TrainError::Gang(_)) || first.as_ref().is_none_or(|(r, _)| *r == 0) => Err(e),
        (_, Some((r, e))) => Err(on_rank(r, e)),
        (Err(e), None) => Err(e),
    }
}

/// Trains `model` as one rank of the processes of a launch (torchrun, Slurm:
/// [`Session::process`]), joined over TCP ([`crate::gang::tcp`]); needs no cargo feature.
///
/// Rank 0 listens, waits for every rank to join, then alone resumes (it trims what a dead
/// gang left in the run directory, which it alone writes) and tells the others the step it
/// resumed, which they load from the same run directory (a filesystem every rank sees). A rank
/// that fails tells the others why before its process ends; a rank that dies closes its
/// connections, so the others stop at once, naming it.
pub(super) fn train_process<B, M>(
    session: Session<B>,
    data: &Data<B>,
    feeds: &ModelFeeds<B, M>,
    model: M,
) -> Result<Summary, TrainError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Objective<B> + 'static,
    M::InnerModule: Objective<B::InnerBackend>,
{
    use super::Run;
    use crate::gang::tcp::{launch_token, listen_for, set_joined, take_early, Star, TcpCollective, PEER_GRACE};
    use crate::gang::{Board, Link};
    use crate::resume::Resume;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::Arc;
    use std::time::Duration;

    let launch = session.process.clone().expect("train_process runs one rank of a launch");
    let (rank, world) = (launch.rank, launch.world);
    let deadline = Duration::try_from_secs_f64(session.recipe.distributed.timeout_s).unwrap_or(Duration::MAX);
    let token = launch_token(&session.recipe, &launch.attempt);
    let joined = if rank == 0 {
        let listening = match take_early() {
            Some(l) => l,
            None => listen_for(&launch)?,
        };
        let star = listening.accept(world, token, deadline);
        if let Err(e) = &star {
            // The ranks not yet connected learn it too.
            listening.tell_failure(world, e, crate::gang::tcp::linger(session.recipe.distributed.timeout_s));
        }
        star
    } else {
        Star::join(&launch.master(), rank, world, token, deadline)
    };
    let star =
        joined.map_err(|e| TrainError::Gang(format!("rank {rank} of {world} could not join the other ranks: {e}")))?;
    set_joined();
    let device = session.device.clone();
    let collective = TcpCollective::<B::InnerBackend>::new(star, device.clone());
    let board = Arc::new(Board::default());
    // The transport's own deadlines come first (rank 0's, then the others' after a grace), so
    // that the rank that does not answer is named; the link's is the last resort.
    let last_resort = deadline.saturating_add(PEER_GRACE.saturating_mul(2));
    let link = Link::new(rank, world, device, Box::new(collective), board, last_resort, abandon_nothing);
    crate::gang::set_thread_rank(Some(rank));
    // Parameters a module initialises lazily are drawn now, as every rank's are (the first
    // comparison of checksums checks that every process drew the same).
    crate::gang::checksum::<B, M>(&model);
    let mut run = Run::open(session, data, feeds, model, Some(link))?;
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<Summary, TrainError> {
        let link = run.link.as_mut().expect("a rank of a launch has its link");
        let identity = data.identity();
        let described = format!(
            "{} data, {} training and {} validation samples, sha256 {}",
            identity.kind, identity.train_len, identity.valid_len, identity.content_sha256
        );
        link.check_same_data(&format!("{identity:?}"), &described)?;
        if rank == 0 {
            run.resume()?;
        }
        // Rank 0's step (in 16-bit pieces, exact in the round's f32; 0: start over) and what the
        // death of the previous attempt asks (a size + 1, or 0 for none).
        let size = |s: Option<usize>| s.map_or(0.0, |s| (s.min(1 << 23) + 1) as f64);
        let mine = match rank {
            0 => [
                (run.step & 0xffff) as f64,
                (run.step >> 16) as f64,
                size(run.s.lower_ceiling),
                size(run.s.lower_eval),
                f64::from(u8::from(run.s.first_update_in_place)),
            ],
            _ => [0.0; 5],
        };
        let link = run.link.as_mut().expect("a rank of a launch has its link");
        let rows = link.agree(&mine)?;
        let step = rows[0][0] as usize | ((rows[0][1] as usize) << 16);
        if rank > 0 {
            let told = |v: f64| (v > 0.0).then(|| v as usize - 1);
            run.s.lower_ceiling = told(rows[0][2]);
            run.s.lower_eval = told(rows[0][3]);
            run.net.set_first_in_place(rows[0][4] != 0.0);
            if step == 0 {
                run.lower_after_death();
            }
        }
        if rank > 0 && step > 0 {
            run.s.resume = Resume::Step(step);
            run.resume().map_err(|e| match e {
                TrainError::Checkpoint(m) => TrainError::Checkpoint(format!(
                    "rank {rank} cannot load the checkpoint of step {step}, which rank 0 resumed from its run \
                     directory ({m}). Fix: every rank must see rank 0's run directory: the same --run-dir (or \
                     run.output_dir) on a filesystem every machine shares.",
                    m = m.split(". Fix:").next().unwrap_or(&m)
                )),
                e => e,
            })?;
        }
        let _limit = run.faults.limit_address_space()?;
        crate::signals::install();
        if rank == 0 {
            run.banner();
        }
        run.go()
    }))
    .unwrap_or_else(|p| Err(panicked(rank, p)));
    crate::gang::set_thread_rank(None);
    if let Some(link) = run.link.take() {
        if let Err(e) = &result {
            link.fail(TrainError::Gang(e.to_string()));
        }
        link.close(Duration::from_secs(2));
    }
    result
}

/// The TCP transport leaves no call of another rank's in this process to abandon: each call
/// ends at its own deadline.
fn abandon_nothing() {}

/// Without the `distributed` feature: a clear error.
#[cfg(not(feature = "distributed"))]
pub(super) fn train_ranks<B, M>(
    session: Session<B>,
    _data: &Data<B>,
    _feeds: &ModelFeeds<B, M>,
    _model: M,
) -> Result<Summary, TrainError>
where
    B: AutodiffBackend,
    M: AutodiffModule<B> + Objective<B> + 'static,
    M::InnerModule: Objective<B::InnerBackend>,
{
    crate::backend::check_ranks(session.recipe.distributed.ranks)?;
    unreachable!("check_ranks refuses several ranks in a build without the distributed feature")
}

/// Each rank's device: on the CPU every rank shares the one device; on a GPU backend rank `r`
/// takes `distributed.devices[r]` (default: `run.device + r`). Each device a follower takes
/// must compute (rank 0's was checked when the backend started): a clear error otherwise.
#[cfg(feature = "distributed")]
fn rank_devices<B: AutodiffBackend>(session: &Session<B>, world: usize) -> Result<Vec<B::Device>, TrainError> {
    use burn::tensor::{ElementConversion, Tensor};
    let devices = place_ranks::<B>(session, world);
    let indices = session.recipe.rank_devices();
    for (r, device) in devices.iter().enumerate().skip(1) {
        if *device == devices[0] {
            continue;
        }
        let computed = crate::recovery::quietly(|| {
            Tensor::<B::InnerBackend, 1>::from_floats([1.0, 2.0], device).sum().into_scalar().elem::<f64>()
        });
        let cause = match computed {
            Ok(v) if (v - 3.0).abs() < 1e-6 => continue,
            Ok(v) => format!("it computed 1 + 2 = {v}"),
            Err(cause) => cause.lines().next().unwrap_or("no detail").chars().take(160).collect(),
        };
        return Err(TrainError::BadInput(format!(
            "rank {r} would train on device {} ({device:?}), which is not usable here ({cause}). Fix: list devices \
             that exist in distributed.devices (one per rank), or use fewer distributed.ranks.",
            indices[r]
        )));
    }
    Ok(devices)
}

/// Each rank's device, as [`rank_devices`] places them (unchecked).
#[cfg(feature = "distributed")]
fn place_ranks<B: AutodiffBackend>(session: &Session<B>, world: usize) -> Vec<B::Device> {
    use burn::tensor::backend::Device as _;
    use oomph_recipe::Backend;
    let cpu = matches!(
        crate::backend::resolve(session.recipe.run.backend),
        Backend::Cpu | Backend::Ndarray | Backend::Flex | Backend::Tch
    );
    let indices = session.recipe.rank_devices();
    (0..world)
        .map(|r| {
            if cpu {
                return session.device.clone();
            }
            let index = indices[r];
            let mut id = session.device.to_id();
            id.index_id = index as u16;
            B::Device::from_id(id)
        })
        .collect()
}

/// A rank's panic (outside every recovery boundary: a bug), as an error.
fn panicked(rank: usize, payload: Box<dyn std::any::Any + Send>) -> TrainError {
    let msg = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into());
    TrainError::Failed(format!("rank {rank} panicked: {msg}"))
}

/// Rank `rank`'s error, named as that rank's, with its exit code.
#[cfg(feature = "distributed")]
fn on_rank(rank: usize, e: TrainError) -> TrainError {
    let named = |m: String| if m.starts_with("rank ") { m } else { format!("rank {rank}: {m}") };
    match e {
        TrainError::BadInput(m) => TrainError::BadInput(named(m)),
        TrainError::DoesNotFit(m) => TrainError::DoesNotFit(named(m)),
        TrainError::Checkpoint(m) => TrainError::Checkpoint(named(m)),
        TrainError::MemoryDeath { micro, message } => TrainError::MemoryDeath { micro, message: named(message) },
        TrainError::Diverged(m) => TrainError::Diverged(named(m)),
        TrainError::Interrupted { step } => TrainError::Interrupted { step },
        TrainError::Failed(m) => TrainError::Failed(named(m)),
        TrainError::Gang(m) => TrainError::Gang(named(m)),
    }
}
