//! Several ranks of one run (`[distributed]`): data parallelism through a collective, with
//! one decision for every rank and no rank waiting forever.
//!
//! The loop sees only [`Link`]: each rank's end of the gang. A [`Link`] sums small tensors
//! across ranks through a [`Collective`], oomph's own one-method interface to a collective
//! library (burn's `burn-collective` under the `distributed` feature: [`burn_collective`]).
//! Every call the loop makes through a link is made by every rank in the same order: after
//! the accumulation ([`Link::agree`]: out of memory or not, in which phase, the loss), the
//! gradients ([`Link::sum_grads`]), after the update, after an evaluation and every
//! `distributed.check_every` steps (a checksum of the parameters). So an out-of-memory on
//! one rank is every rank's out-of-memory, the policy sees the same events on every rank, and
//! every rank retries the same step at the same micro-batch.
//!
//! **No rank waits forever.** The collective's calls block without a deadline, so a link
//! runs them on a thread of its own and waits for the answer at most
//! `distributed.timeout_s`, watching the gang's [`Board`]: a rank that fails (an error that
//! is not an out-of-memory, a panic, a memory death) posts its error there, and every rank
//! waiting on the collective returns at once; past the deadline the waiting rank posts a
//! deadline error and abandons the collective's calls in progress.
//!
//! **Invariant:** every rank holds the same parameters after every step; the checksum
//! compares them every `distributed.check_every` steps and a mismatch stops the run.

use crate::error::TrainError;
use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[cfg(feature = "distributed")]
pub mod burn_collective;
pub mod tcp;

thread_local! {
    /// The rank whose training runs on this thread (several ranks in one process).
    static THREAD_RANK: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Makes this thread rank `rank`'s training thread (`None`: no longer one): the out-of-memory
/// panics raised on it ([`crate::recovery`]) and the allocation failures it notes
/// ([`crate::alloc`]) are that rank's, never taken for another rank's.
pub fn set_thread_rank(rank: Option<usize>) {
    let _ = THREAD_RANK.try_with(|r| r.set(rank));
}

/// This thread's rank, if it is a rank's training thread. Allocates nothing (the allocator's
/// failure note reads it).
pub fn thread_rank() -> Option<usize> {
    THREAD_RANK.try_with(Cell::get).ok().flatten()
}

/// What oomph needs from a collective library. Every rank makes the same calls, in the same
/// order; a call returns once every rank made it.
pub trait Collective<I: Backend>: Send {
    /// The element-wise sum of every rank's `tensor` (same shape on every rank); every rank
    /// gets the same values.
    fn sum(&mut self, tensor: Tensor<I, 1>) -> Result<Tensor<I, 1>, String>;
    /// Tells the other ranks why this rank stops, where they cannot see it otherwise (ranks in
    /// other processes); ranks of one process see it on their [`Board`].
    fn fail(&mut self, _message: &str) {}
    /// This rank leaves the collective (after its last call).
    fn finish(&mut self);
}

/// What a rank asks of its collective thread.
enum Call<I: Backend> {
    Sum(Tensor<I, 1>),
    Fail(String),
}

/// Abandons every collective call in progress in this process (after a failure or a
/// deadline), so the threads blocked in them return.
pub type Abandon = fn();

/// What the ranks of one process share: the first failure, posted by the rank it happened
/// on. Ranks waiting on the collective return as soon as one is posted.
#[derive(Default)]
pub struct Board {
    first: Mutex<Option<(usize, TrainError)>>,
    failed: AtomicBool,
}

impl Board {
    /// Posts rank `rank`'s failure (the first one posted is kept: it is the cause).
    pub fn fail(&self, rank: usize, error: TrainError) {
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some((rank, error));
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Whether a rank failed.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Takes the first failure posted, with its rank.
    pub fn take(&self) -> Option<(usize, TrainError)> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The first failure, in words, with its rank.
    fn describe(&self) -> String {
        match &*self.first.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((rank, e)) => format!("rank {rank} failed: {e}"),
            None => "another rank failed".into(),
        }
    }
}

/// How often a waiting rank looks at the board.
const POLL: Duration = Duration::from_millis(10);

/// One rank's end of the gang.
pub struct Link<I: Backend> {
    rank: usize,
    world: usize,
    device: I::Device,
    calls: Option<mpsc::Sender<Call<I>>>,
    answers: mpsc::Receiver<Result<Tensor<I, 1>, String>>,
    board: Arc<Board>,
    deadline: Duration,
    abandon: Abandon,
    /// The thread that makes the collective's calls.
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set by the round after an update when any rank was asked to stop.
    stop: bool,
    /// Gradients are gathered and added in rank order ([`Link::in_rank_order`]).
    ordered: bool,
}

impl<I: Backend> Link<I> {
    /// Rank `rank` of `world`, on `device`, calling `collective` on a thread of its own;
    /// every call waits at most `deadline`.
    pub fn new(
        rank: usize,
        world: usize,
        device: I::Device,
        collective: Box<dyn Collective<I>>,
        board: Arc<Board>,
        deadline: Duration,
        abandon: Abandon,
    ) -> Self {
        let (calls, inbox) = mpsc::channel::<Call<I>>();
        let (reply, answers) = mpsc::channel();
        let mut collective = collective;
        let thread = std::thread::Builder::new()
            .name(format!("oomph-collective-{rank}"))
            .spawn(move || {
                while let Ok(call) = inbox.recv() {
                    match call {
                        Call::Sum(t) => {
                            if reply.send(collective.sum(t)).is_err() {
                                return;
                            }
                        }
                        Call::Fail(message) => collective.fail(&message),
                    }
                }
                collective.finish();
            })
            .expect("oomph: cannot start a collective thread");
        Self {
            rank,
            world,
            device,
            calls: Some(calls),
            answers,
            board,
            deadline,
            abandon,
            thread: Some(thread),
            stop: false,
            ordered: false,
        }
    }

    /// Leaves the gang: the collective thread makes the calls queued (a failure to tell the
    /// other ranks) and ends, waited for at most `wait` (it may be blocked in a call that a
    /// rank that is gone never answers). A process that exits right after a failure calls it,
    /// so that the other processes learn why, not only that it is gone.
    pub fn close(mut self, wait: Duration) {
        self.calls.take();
        let started = Instant::now();
        if let Some(thread) = self.thread.take() {
            while !thread.is_finished() && started.elapsed() < wait {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }

    /// With `ordered`, [`Link::sum_grads`] gathers every rank's gradients (each in its own slot
    /// of a zero tensor, which travels exactly) and adds them in rank order: the same numbers
    /// on every run, where the collective's own order of summation is not fixed (ranks that
    /// share a device). It costs `world` times the gradients' size in that call.
    pub fn in_rank_order(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// This rank (0 writes the run directory).
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Whether any rank was asked to stop (a signal), as agreed after the last update.
    pub fn stop_agreed(&self) -> bool {
        self.stop
    }

    /// Posts this rank's failure, so the other ranks stop waiting for it (and tells the
    /// ranks of other processes, through the collective).
    pub fn fail(&self, error: TrainError) {
        if let Some(calls) = &self.calls {
            let _ = calls.send(Call::Fail(format!("rank {} failed: {error}", self.rank)));
        }
        self.board.fail(self.rank, error);
    }

    /// Sums `t` across ranks, within the deadline; returns early when another rank failed.
    pub fn sum(&mut self, t: Tensor<I, 1>) -> Result<Tensor<I, 1>, TrainError> {
        let started = Instant::now();
        if self.board.failed() {
            return Err(self.peer_failed());
        }
        let sent = self.calls.as_ref().is_some_and(|c| c.send(Call::Sum(t)).is_ok());
        if !sent {
            return Err(self.broken("its collective thread has ended".into()));
        }
        loop {
            let left = self.deadline.saturating_sub(started.elapsed()).max(Duration::from_micros(100));
            match self.answers.recv_timeout(POLL.min(left)) {
                Ok(Ok(t)) => return Ok(t),
                Ok(Err(e)) => return Err(self.broken(e)),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.broken("its collective thread has ended".into()))
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.board.failed() {
                        return Err(self.peer_failed());
                    }
                    if started.elapsed() > self.deadline {
                        let e = TrainError::Gang(format!(
                            "rank {} waited {} s (distributed.timeout_s) for the other ranks in a collective call \
                             and gave up: a rank is stuck or gone. Fix: look at the other ranks' messages; if a rank \
                             only works longer than that between two steps (a long evaluation or checkpoint), raise \
                             distributed.timeout_s. The run resumes from its newest checkpoint with the same command.",
                            self.rank,
                            self.deadline.as_secs_f64()
                        ));
                        self.board.fail(self.rank, TrainError::Gang(e.to_string()));
                        (self.abandon)();
                        return Err(e);
                    }
                }
            }
        }
    }

    /// A failed collective call: posted, and every call in progress abandoned.
    fn broken(&self, why: String) -> TrainError {
        let e = TrainError::Gang(format!("rank {}: a collective call failed: {why}", self.rank));
        self.board.fail(self.rank, TrainError::Gang(e.to_string()));
        (self.abandon)();
        e
    }

    fn peer_failed(&self) -> TrainError {
        TrainError::Gang(format!("rank {} stopped because {}", self.rank, self.board.describe()))
    }

    /// Every rank's `row` (the same length on every rank), in rank order. The rows travel
    /// exactly (each rank's values are added to zeros only), so every rank reads the same
    /// numbers; values must be exact in `f32` (flags, sizes, 16-bit pieces) or may be rounded
    /// to it (a loss).
    pub fn agree(&mut self, row: &[f64]) -> Result<Vec<Vec<f64>>, TrainError> {
        let k = row.len();
        let mut all = vec![0f32; k * self.world];
        for (i, v) in row.iter().enumerate() {
            all[self.rank * k + i] = *v as f32;
        }
        let t = Tensor::<I, 1>::from_data(TensorData::new(all, [k * self.world]), &self.device);
        let summed = self.sum(t)?;
        let values: Vec<f64> = summed.into_data().iter::<f64>().collect();
        Ok(values.chunks(k.max(1)).map(|c| c.to_vec()).collect())
    }

    /// Records whether any rank asked to stop (from a round's rows).
    pub fn set_stop(&mut self, stop: bool) {
        self.stop = stop;
    }

    /// Sums the gradients of `model` across ranks, in one call: every gradient flattened into
    /// one tensor in the model's parameter order, summed, and put back.
    pub fn sum_grads<B, M>(&mut self, model: &M, grads: GradientsParams) -> Result<GradientsParams, TrainError>
    where
        B: AutodiffBackend<InnerBackend = I>,
        M: AutodiffModule<B>,
    {
        let mut grads = grads;
        let mut flat = Flatten::<I> { grads: &mut grads, parts: Vec::new(), shapes: Vec::new() };
        model.visit(&mut flat);
        let Flatten { parts, shapes, .. } = flat;
        if parts.is_empty() {
            return Ok(grads);
        }
        let flat = Tensor::cat(parts, 0);
        let summed = if self.ordered {
            let n = flat.dims()[0];
            let zeros = |k: usize| Tensor::<I, 1>::zeros([k * n], &self.device);
            let mut parts = vec![flat];
            if self.rank > 0 {
                parts.insert(0, zeros(self.rank));
            }
            if self.rank + 1 < self.world {
                parts.push(zeros(self.world - self.rank - 1));
            }
            let slots = Tensor::cat(parts, 0);
            let rows: Tensor<I, 2> = self.sum(slots)?.reshape([self.world, n]);
            let first = rows.clone().narrow(0, 0, 1);
            (1..self.world).fold(first, |acc, r| acc + rows.clone().narrow(0, r, 1)).reshape([n])
        } else {
            self.sum(flat)?
        };
        let mut put = PutBack::<I> { grads: &mut grads, summed, shapes: shapes.into_iter(), offset: 0 };
        model.visit(&mut put);
        Ok(grads)
    }

    /// Compares a checksum of `model`'s parameters across ranks; a mismatch is an error that
    /// names the ranks.
    pub fn check_same<B: Backend, M: burn::module::Module<B>>(
        &mut self,
        model: &M,
        step: usize,
    ) -> Result<(), TrainError> {
        let differ = self.differ_from_rank_0(checksum::<B, M>(model))?;
        if differ.is_empty() {
            return Ok(());
        }
        Err(TrainError::Gang(format!(
            "after step {step} the parameters of rank(s) {differ:?} differ from rank 0's (distributed.check_every \
             compares them): the ranks no longer train one model. This is a bug in oomph or in the backend, not in \
             the recipe; please report it with the recipe. The newest checkpoint holds rank 0's parameters of an \
             earlier step."
        )))
    }
}

impl<I: Backend> Drop for Link<I> {
    fn drop(&mut self) {
        // Ends the collective thread once its call in progress (if any) returns.
        self.calls.take();
    }
}

impl<I: Backend> Link<I> {
    /// The ranks whose `value` differs from rank 0's (one round: the value in 16-bit pieces).
    fn differ_from_rank_0(&mut self, value: u64) -> Result<Vec<usize>, TrainError> {
        let row: Vec<f64> = (0..4).map(|i| ((value >> (16 * i)) & 0xffff) as f64).collect();
        let rows = self.agree(&row)?;
        Ok((0..rows.len()).filter(|&r| rows[r] != rows[0]).collect())
    }

    /// Checks that every rank loaded the same data as rank 0 (ranks of other processes load
    /// their own, perhaps on other machines): `identity` is a rank's whole description of it
    /// (kind, sizes, classes, vocabulary, the content's hash), `described` its summary for the
    /// message. A rank with other data is an error that names it.
    pub fn check_same_data(&mut self, identity: &str, described: &str) -> Result<(), TrainError> {
        let differ = self.differ_from_rank_0(fnv1a(identity.as_bytes()))?;
        if differ.is_empty() {
            return Ok(());
        }
        Err(TrainError::BadInput(format!(
            "rank(s) {differ:?} loaded other data than rank 0 (its kind, its sizes or its content differ), and every \
             rank must train on the same data. Fix: give every machine the same data files at the same path \
             relative to the recipe; this rank's data: {described}."
        )))
    }
}

/// A 64-bit FNV-1a hash of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// A 64-bit FNV-1a hash of every float parameter's bytes, in visiting order.
pub fn checksum<B: Backend, M: burn::module::Module<B>>(model: &M) -> u64 {
    struct Hash(u64);
    impl<B: Backend> ModuleVisitor<B> for Hash {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            // Trained parameters only: state such as batch-norm running statistics follows each
            // rank's own shard.
            if !param.is_require_grad() {
                return;
            }
            for b in param.val().into_data().as_bytes() {
                self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Hash(0xcbf2_9ce4_8422_2325);
    model.visit(&mut h);
    h.0
}

/// Takes every gradient out of `grads`, flattened, in visiting order.
struct Flatten<'g, I: Backend> {
    grads: &'g mut GradientsParams,
    parts: Vec<Tensor<I, 1>>,
    /// Each taken gradient's id and shape.
    shapes: Vec<(ParamId, Vec<usize>)>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let dims = g.dims().to_vec();
            let n = dims.iter().product::<usize>();
            self.parts.push(g.reshape([n]));
            self.shapes.push((param.id, dims));
        }
    }
}

/// Puts the summed gradients back, in the same order.
struct PutBack<'g, I: Backend> {
    grads: &'g mut GradientsParams,
    summed: Tensor<I, 1>,
    shapes: std::vec::IntoIter<(ParamId, Vec<usize>)>,
    offset: usize,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for PutBack<'_, B::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let next = self.shapes.as_slice().first().map(|(id, _)| *id);
        if next != Some(param.id) {
            return;
        }
        let (id, dims) = self.shapes.next().expect("a shape per gradient");
        let n = dims.iter().product::<usize>();
        let part = self.summed.clone().narrow(0, self.offset, n);
        self.offset += n;
        let shape: [usize; D] = dims.try_into().expect("a gradient keeps its rank");
        self.grads.register::<B::InnerBackend, D>(id, part.reshape(shape));
    }
}

/// Rank `rank`'s share of `indices` when `world` ranks split them: contiguous shards whose
/// sizes differ by at most one, the larger ones first.
pub fn shard(indices: &[usize], rank: usize, world: usize) -> &[usize] {
    let n = indices.len();
    let (base, extra) = (n / world, n % world);
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    &indices[start..start + len]
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};

    type I = Flex;

    /// A collective of rank 0 whose other ranks are `others`: a function of this rank's values.
    struct Fake<F>(F);

    impl<F: FnMut(Vec<f32>) -> Result<Vec<f32>, String> + Send> Collective<I> for Fake<F> {
        fn sum(&mut self, t: Tensor<I, 1>) -> Result<Tensor<I, 1>, String> {
            let mine: Vec<f32> = t.into_data().iter::<f32>().collect();
            let n = mine.len();
            let out = (self.0)(mine)?;
            Ok(Tensor::from_data(TensorData::new(out, [n]), &Default::default()))
        }
        fn finish(&mut self) {}
    }

    static ABANDONED: AtomicBool = AtomicBool::new(false);

    fn link(f: impl FnMut(Vec<f32>) -> Result<Vec<f32>, String> + Send + 'static, deadline: Duration) -> Link<I> {
        let board = Arc::new(Board::default());
        Link::new(0, 2, Default::default(), Box::new(Fake(f)), board, deadline, || {
            ABANDONED.store(true, Ordering::SeqCst)
        })
    }

    #[test]
    fn rows_come_back_in_rank_order() {
        // Rank 1 sends (7, 8): its slot of the sum.
        let mut l = link(
            |mut v| {
                v[2] += 7.0;
                v[3] += 8.0;
                Ok(v)
            },
            Duration::from_secs(60),
        );
        assert_eq!(l.agree(&[1.0, 2.0]).unwrap(), vec![vec![1.0, 2.0], vec![7.0, 8.0]]);
    }

    #[test]
    fn parameters_that_differ_between_ranks_stop_the_run() {
        let model: Linear<I> = LinearConfig::new(3, 2).init(&Default::default());
        let sum = checksum::<I, _>(&model);
        let pieces = |s: u64| (0..4).map(move |i| ((s >> (16 * i)) & 0xffff) as f32);
        // The same parameters on rank 1: no error.
        let mut same = link(
            move |mut v| {
                v[4..].iter_mut().zip(pieces(sum)).for_each(|(x, p)| *x += p);
                Ok(v)
            },
            Duration::from_secs(60),
        );
        same.check_same::<I, _>(&model, 3).unwrap();
        // Rank 1's checksum differs in one bit.
        let mut other = link(
            move |mut v| {
                v[4..].iter_mut().zip(pieces(sum ^ 1)).for_each(|(x, p)| *x += p);
                Ok(v)
            },
            Duration::from_secs(60),
        );
        let e = other.check_same::<I, _>(&model.clone().no_grad(), 3).unwrap_err();
        assert!(matches!(&e, TrainError::Gang(m) if m.contains("rank(s) [1]") && m.contains("step 3")), "{e}");
    }

    #[test]
    fn a_call_that_never_returns_ends_at_the_deadline_and_abandons_the_collective() {
        let mut l = link(
            |_| {
                std::thread::park();
                Err("unparked".into())
            },
            Duration::from_millis(50),
        );
        let e = l.agree(&[1.0]).unwrap_err();
        assert!(matches!(&e, TrainError::Gang(m) if m.contains("distributed.timeout_s")), "{e}");
        assert!(ABANDONED.load(Ordering::SeqCst));
        assert!(l.board.failed(), "the deadline is posted for the other ranks");
    }

    #[test]
    fn a_waiting_rank_returns_when_another_rank_fails() {
        let mut l = link(
            |_| {
                std::thread::park();
                Err("unparked".into())
            },
            Duration::from_secs(3600),
        );
        let board = l.board.clone();
        let poster = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            board.fail(1, TrainError::Failed("simulated model bug in forward of step 4".into()));
        });
        let e = l.agree(&[1.0]).unwrap_err();
        poster.join().unwrap();
        assert!(matches!(&e, TrainError::Gang(m) if m.contains("rank 1 failed") && m.contains("model bug")), "{e}");
    }

    #[test]
    fn shards_cover_the_batch_in_order_and_differ_by_at_most_one() {
        let idx: Vec<usize> = (100..164).collect();
        for world in 1..=7 {
            let parts: Vec<&[usize]> = (0..world).map(|r| shard(&idx, r, world)).collect();
            assert_eq!(parts.concat(), idx, "world {world}");
            let sizes: Vec<usize> = parts.iter().map(|p| p.len()).collect();
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "world {world}: {sizes:?}");
        }
        assert_eq!(shard(&idx, 0, 3).len(), 22);
        assert_eq!(shard(&idx, 2, 3).len(), 21);
    }
}
