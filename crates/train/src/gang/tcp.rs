//! [`Collective`] across processes and machines, over TCP: the ranks form a star around
//! rank 0, which reads every rank's tensor, adds them in rank order and sends the sum back.
//!
//! Why oomph's own transport rather than burn-collective's global mode (ARCHITECTURE.md,
//! "Decisions"): in burn 0.21.0 every global all-reduce after the first deadlocks, its calls
//! have no deadline and a pending one cannot be abandoned, and burn removed the crate after
//! 0.21. This one is std only (no feature, no async runtime), every read and write has a
//! deadline, a rank that dies closes its socket so every other rank learns it at once, a rank
//! that fails tells the others why ([`Star::fail`]), and the sum is the same bits on every run
//! (rank order). Its cost: rank 0 moves `world - 1` times the tensor each way, which suits the
//! few processes of one node or a few nodes; a ring would scale further.
//!
//! The wire: a peer opens with a hello (`OOMPHGNG`, the protocol version, its rank, the world
//! size, whether it joins or failed before it could, and the launch's token: the whole recipe
//! and the launch's attempt; [`rendezvous`]), rank 0 answers with an empty values frame or a
//! failure and why. Then frames: a tag byte (`0` values, `1` a failure), a `u64` count, and the
//! count's `f32` values or UTF-8 bytes, little-endian.

use super::Collective;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

mod rendezvous;
pub use rendezvous::{
    launch_token, linger, listen_early, listen_for, set_joined, take_early, tell_gang, tell_rank_0, token, Listening,
};

const MAGIC: &[u8; 8] = b"OOMPHGNG";
const VERSION: u32 = 2;
const VALUES: u8 = 0;
const FAILURE: u8 = 1;
/// How often a rank that waits for rank 0 to listen tries again.
const RETRY: Duration = Duration::from_millis(50);
/// How long rank 0 waits for the hello of a connection.
const HELLO: Duration = Duration::from_secs(5);
/// The longest failure message sent.
const MAX_MESSAGE: usize = 4096;

/// The extra time a rank other than 0 waits for rank 0's answer beyond the deadline: rank 0
/// waits for every rank with the deadline, so that it is rank 0 that names a rank that does
/// not answer, and tells everyone.
pub const PEER_GRACE: Duration = Duration::from_secs(5);

/// The links of one rank.
enum Links {
    /// Rank 0: ranks 1 to `world - 1`, in order.
    Root(Vec<TcpStream>),
    /// Any other rank: rank 0.
    Peer(TcpStream),
}

/// One rank's end of the star: sums `f32` values across ranks.
pub struct Star {
    rank: usize,
    world: usize,
    deadline: Duration,
    links: Links,
}

impl Star {
    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The element-wise sum of every rank's `values`, added in rank order (the same bits on
    /// every rank and every run).
    pub fn sum(&mut self, values: &mut [f32]) -> Result<(), String> {
        let started = Instant::now();
        let deadline = self.deadline;
        let left = || deadline.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
        match &mut self.links {
            Links::Peer(root) => {
                if let Err(e) = write_frame(root, values) {
                    // Rank 0 may have told this rank why before it closed: that is the cause.
                    let _ = root.set_read_timeout(Some(Duration::from_secs(1)));
                    return Err(match read_frame(root, values.len()) {
                        Ok(Frame::Failure(m)) => m,
                        _ => lost(0, &e),
                    });
                }
                let _ = root.set_read_timeout(Some(left().saturating_add(PEER_GRACE)));
                match read_frame(root, values.len()).map_err(|e| lost(0, &e))? {
                    Frame::Values(sum) if sum.len() == values.len() => {
                        values.copy_from_slice(&sum);
                        Ok(())
                    }
                    Frame::Values(sum) => Err(format!(
                        "rank 0 answered {} values for {}: the ranks are out of step, a bug in oomph (their recipes \
                         were checked the same); please report it",
                        sum.len(),
                        values.len()
                    )),
                    Frame::Failure(m) => Err(m),
                }
            }
            Links::Root(peers) => {
                let mut failure = None;
                for (i, peer) in peers.iter_mut().enumerate() {
                    let rank = i + 1;
                    let _ = peer.set_read_timeout(Some(left()));
                    match read_frame(peer, values.len()) {
                        Ok(Frame::Values(theirs)) if theirs.len() == values.len() => {
                            for (v, t) in values.iter_mut().zip(theirs) {
                                *v += t;
                            }
                        }
                        Ok(Frame::Values(theirs)) => {
                            failure = Some(format!(
                                "rank {rank} sent {} values where rank 0 has {}: the ranks are out of step, a bug in \
                                 oomph (their recipes were checked the same); please report it",
                                theirs.len(),
                                values.len()
                            ));
                            break;
                        }
                        Ok(Frame::Failure(m)) => {
                            failure = Some(m);
                            break;
                        }
                        Err(e) => {
                            failure = Some(lost(rank, &e));
                            break;
                        }
                    }
                }
                match failure {
                    Some(m) => {
                        self.fail(&m);
                        Err(m)
                    }
                    None => {
                        let sent = peers
                            .iter_mut()
                            .enumerate()
                            .try_for_each(|(i, peer)| write_frame(peer, values).map_err(|e| lost(i + 1, &e)));
                        if let Err(m) = &sent {
                            self.fail(m);
                        }
                        sent
                    }
                }
            }
        }
    }

    /// Tells the other ranks why this rank stops (`message` names the rank); rank 0 passes a
    /// rank's failure on to every other rank. Best effort: a rank that is gone is not told.
    pub fn fail(&mut self, message: &str) {
        let cut: String = message.chars().take(MAX_MESSAGE).collect();
        match &mut self.links {
            Links::Peer(root) => {
                let _ = write_frame_bytes(root, FAILURE, cut.as_bytes());
            }
            Links::Root(peers) => {
                for peer in peers.iter_mut() {
                    let _ = peer.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = write_frame_bytes(peer, FAILURE, cut.as_bytes());
                    let _ = peer.shutdown(std::net::Shutdown::Write);
                }
                // A socket closed with data unread (a rank's frame of the call that failed)
                // resets the connection, and a reset discards what the other end has not read
                // yet: the failure. So what the ranks send is read and dropped until they close
                // (they stop once told), for at most a second.
                let until = Instant::now() + Duration::from_secs(1);
                let mut sink = [0u8; 4096];
                for peer in peers.iter_mut() {
                    loop {
                        let left = until.saturating_duration_since(Instant::now());
                        if left.is_zero() || peer.set_read_timeout(Some(left)).is_err() {
                            break;
                        }
                        match peer.read(&mut sink) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                }
            }
        }
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }
}

/// `read_exact` that gives up at `until` however slowly the bytes come (a socket's own
/// timeout applies to each read).
fn read_exact_by(stream: &mut TcpStream, buf: &mut [u8], until: Instant) -> std::io::Result<()> {
    let mut read = 0;
    while read < buf.len() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[read..]) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => read += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A connection to `rank` that failed, in words.
fn lost(rank: usize, e: &std::io::Error) -> String {
    let resumes = "the run resumes from its newest checkpoint when the launcher restarts the gang (torchrun \
                   --max-restarts) or the same command runs again";
    match e.kind() {
        // Rank 0 answers once every rank has sent, and names a rank it waited for in vain: past
        // that (and a grace), rank 0 is the one that is stuck.
        ErrorKind::WouldBlock | ErrorKind::TimedOut if rank == 0 => format!(
            "rank 0 did not answer within distributed.timeout_s and a grace of {} s: rank 0 itself is stuck \
             (stopped, or working longer than that between two steps: then raise distributed.timeout_s); {resumes}",
            PEER_GRACE.as_secs()
        ),
        ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
            "rank {rank} did not answer within distributed.timeout_s: it is stuck (stopped, or working longer than \
             that between two steps: then raise distributed.timeout_s); {resumes}"
        ),
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::BrokenPipe
        | ErrorKind::ConnectionAborted => {
            format!(
                "rank {rank} is gone (its connection closed: it stopped or died; its own output says why); {resumes}"
            )
        }
        _ => format!("rank {rank} is gone (its connection failed: {e}; its own output says why); {resumes}"),
    }
}

enum Frame {
    Values(Vec<f32>),
    Failure(String),
}

fn write_frame(stream: &mut TcpStream, values: &[f32]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    write_frame_bytes(stream, VALUES, &bytes)
}

fn write_frame_bytes(stream: &mut TcpStream, tag: u8, payload: &[u8]) -> std::io::Result<()> {
    let count = if tag == VALUES { payload.len() / 4 } else { payload.len() };
    let mut head = [0u8; 9];
    head[0] = tag;
    head[1..].copy_from_slice(&(count as u64).to_le_bytes());
    stream.write_all(&head)?;
    stream.write_all(payload)?;
    stream.flush()
}

/// Reads one frame; a values frame longer than `limit` values is refused (a peer out of step
/// or not oomph).
fn read_frame(stream: &mut TcpStream, limit: usize) -> std::io::Result<Frame> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head)?;
    let count = u64::from_le_bytes(head[1..].try_into().unwrap_or_default()) as usize;
    let bad = |what: &str| std::io::Error::new(ErrorKind::InvalidData, what.to_string());
    match head[0] {
        VALUES => {
            if count > limit {
                return Err(bad("a frame longer than the call's tensor"));
            }
            let mut bytes = vec![0u8; count * 4];
            stream.read_exact(&mut bytes)?;
            Ok(Frame::Values(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
        }
        FAILURE => {
            if count > MAX_MESSAGE * 4 {
                return Err(bad("a failure message too long"));
            }
            let mut bytes = vec![0u8; count];
            stream.read_exact(&mut bytes)?;
            Ok(Frame::Failure(String::from_utf8_lossy(&bytes).into_owned()))
        }
        _ => Err(bad("a frame of an unknown kind")),
    }
}

/// [`Collective`] of one process's rank over a [`Star`].
pub struct TcpCollective<I: Backend> {
    star: Star,
    device: I::Device,
}

impl<I: Backend> TcpCollective<I> {
    /// This process's rank on `device`, joined through `star`.
    pub fn new(star: Star, device: I::Device) -> Self {
        Self { star, device }
    }
}

impl<I: Backend> Collective<I> for TcpCollective<I> {
    fn sum(&mut self, tensor: Tensor<I, 1>) -> Result<Tensor<I, 1>, String> {
        let n = tensor.dims()[0];
        let mut values: Vec<f32> = tensor.into_data().iter::<f32>().collect();
        self.star.sum(&mut values)?;
        Ok(Tensor::from_data(TensorData::new(values, [n]), &self.device))
    }

    fn fail(&mut self, message: &str) {
        self.star.fail(message);
    }

    fn finish(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    const LONG: Duration = Duration::from_secs(30);

    /// A star of `world` ranks on localhost, each rank on its own thread running `f`.
    fn gang<T: Send + 'static>(
        world: usize,
        deadline: Duration,
        f: impl Fn(Star) -> T + Send + Sync + Clone + 'static,
    ) -> Vec<std::thread::Result<T>> {
        let listening = Listening::bind("127.0.0.1:0").unwrap();
        let addr = format!("127.0.0.1:{}", listening.port());
        let mut handles = Vec::new();
        for rank in 1..world {
            let (addr, f) = (addr.clone(), f.clone());
            handles.push(std::thread::spawn(move || f(Star::join(&addr, rank, world, 7, deadline).unwrap())));
        }
        let root = {
            let f = f.clone();
            std::thread::spawn(move || f(listening.accept(world, 7, deadline).unwrap()))
        };
        std::iter::once(root).chain(handles).map(|h| h.join()).collect()
    }

    #[test]
    fn every_rank_gets_the_sum_added_in_rank_order() {
        let results = gang(3, LONG, |mut star| {
            let r = star.rank() as f32;
            let mut sums = Vec::new();
            for call in 0..50 {
                // The first value's sum depends on the order of addition in f32: (1 + 1e8) - 1e8
                // is 0, 1 + (1e8 - 1e8) is 1.
                let mut v = vec![[1.0, 1e8, -1e8][star.rank()], 1.0 + r, call as f32 + 0.1 * r];
                star.sum(&mut v).unwrap();
                sums.push(v);
            }
            sums
        });
        let sums: Vec<Vec<Vec<f32>>> = results.into_iter().map(|r| r.unwrap()).collect();
        for call in 0..50 {
            let c = call as f32;
            let expected = [0.0, 6.0, (c + (c + 0.1)) + (c + 0.2)];
            for (rank, s) in sums.iter().enumerate() {
                assert_eq!(s[call], expected, "rank {rank}, call {call}");
            }
        }
    }

    #[test]
    fn a_rank_that_dies_ends_every_other_ranks_call_with_its_name() {
        let results = gang(3, LONG, |mut star| {
            let mut v = vec![1.0f32; 4];
            star.sum(&mut v).unwrap();
            if star.rank() == 2 {
                // Dies: its socket closes.
                return Ok(());
            }
            star.sum(&mut v)
        });
        for (rank, r) in results.into_iter().enumerate().take(2) {
            let e = r.unwrap().unwrap_err();
            assert!(e.contains("rank 2 is gone"), "rank {rank}: {e}");
        }
    }

    #[test]
    fn a_rank_that_fails_tells_every_other_rank_why() {
        let results = gang(3, LONG, |mut star| {
            let mut v = vec![1.0f32; 4];
            if star.rank() == 1 {
                star.fail("rank 1 failed: the data file is damaged");
                return Ok(());
            }
            star.sum(&mut v)
        });
        for rank in [0, 2] {
            let e = results[rank].as_ref().unwrap().as_ref().unwrap_err();
            assert_eq!(e, "rank 1 failed: the data file is damaged", "rank {rank}");
        }
    }

    #[test]
    fn a_silent_rank_ends_the_call_at_the_deadline() {
        let (done, wait) = mpsc::channel::<()>();
        let wait = std::sync::Arc::new(std::sync::Mutex::new(wait));
        let results = gang(2, Duration::from_millis(300), move |mut star| {
            if star.rank() == 1 {
                // Alive but never calls: rank 0 waits for it until the deadline.
                let _ = wait.lock().unwrap().recv_timeout(LONG);
                return Ok(());
            }
            let r = star.sum(&mut [1.0]);
            let _ = done.send(());
            r
        });
        let e = results[0].as_ref().unwrap().as_ref().unwrap_err();
        assert!(e.contains("rank 1 did not answer within distributed.timeout_s"), "{e}");
    }
}
