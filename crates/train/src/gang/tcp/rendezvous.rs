//! The rendezvous of the star ([`super`]): rank 0 listens ([`Listening`]) and welcomes the
//! ranks of its launch, each identified by a token (the whole recipe and the launch's
//! attempt); the other ranks join ([`Star::join`]). A stray of another launch is refused and
//! rank 0 waits on; a rank of this launch that cannot join stops it. A rank that fails before
//! its gang forms tells the others ([`tell_gang`]): rank 0 listens before it prepares anything
//! ([`listen_early`]) and answers every hello with its failure; another rank says a "failed"
//! hello with its message.

use super::{
    read_exact_by, read_frame, write_frame_bytes, Frame, Links, Star, FAILURE, HELLO, MAGIC, MAX_MESSAGE, PEER_GRACE,
    RETRY, VALUES, VERSION,
};
use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The token every rank of one launch shares: a 32-bit hash of the whole recipe (`recipe`:
/// its resolved text, less what may differ between machines) and one of the launch's attempt
/// ([`oomph_rundir::Launch::attempt`]). A rank of another recipe, or of another launch or
/// restart still alive, is refused by name.
pub fn token(recipe: &str, attempt: &str) -> u64 {
    (crate::gang::fnv1a(recipe.as_bytes()) << 32) | (crate::gang::fnv1a(attempt.as_bytes()) & 0xffff_ffff)
}

/// The token of `recipe`'s ranks in the launch whose attempt is `attempt`: the resolved recipe
/// less `data.path` (machines may hold the same data at other paths; the data itself is
/// compared after joining, [`crate::gang::Link::check_same_data`]).
pub fn launch_token(recipe: &oomph_recipe::Recipe, attempt: &str) -> u64 {
    let mut r = recipe.clone();
    r.data.path = None;
    token(&oomph_recipe::to_toml_string(&r), attempt)
}

/// Rank 0's socket, bound as soon as the process knows it is rank 0 of a launch
/// ([`listen_early`]), until the training takes it ([`take_early`]).
static EARLY: std::sync::Mutex<Option<Listening>> = std::sync::Mutex::new(None);
/// Whether this process has been in touch with its gang: it joined (then the gang's links
/// tell a failure) or tried to (then rank 0 knows, or cannot be told).
static JOINED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Rank 0 of a launch listens on `port` at once, before it prepares anything: a port in use
/// is said at once, and a failure while preparing can be told to the ranks that connect
/// ([`tell_gang`]).
pub fn listen_early(launch: &oomph_rundir::Launch) -> Result<(), crate::error::TrainError> {
    let listening = listen_for(launch)?;
    *EARLY.lock().unwrap_or_else(|p| p.into_inner()) = Some(listening);
    Ok(())
}

/// Rank 0's socket for the other ranks of `launch`, or why it cannot listen.
pub fn listen_for(launch: &oomph_rundir::Launch) -> Result<Listening, crate::error::TrainError> {
    use oomph_rundir::launch::Launcher;
    let from = match launch.launcher {
        Launcher::Torchrun => "MASTER_PORT, plus one when torchrun's own store holds it",
        Launcher::Slurm => "MASTER_PORT, or 29500 plus the job and step ids modulo 2000",
    };
    Listening::bind_any(launch.port).map_err(|e| {
        crate::error::TrainError::Gang(format!(
            "rank 0 {e} on port {} ({from}). Fix: give the launch a free port (torchrun --master-port, or export \
             MASTER_PORT for srun), or end the run that holds it.",
            launch.port
        ))
    })
}

/// The socket [`listen_early`] bound, if any (once).
pub fn take_early() -> Option<Listening> {
    EARLY.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Records that this process has been in touch with its gang (joined or tried to).
pub fn set_joined() {
    JOINED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// This process failed with `message` as rank `rank` of a launch before its gang formed:
/// rank 0 tells every rank that connects within `linger`, another rank tells rank 0 at
/// `master`, so that no rank waits for its deadline to learn it. Nothing once the gang formed
/// (its links told it). `token`: 0 when the recipe did not load.
pub fn tell_gang(rank: usize, world: usize, master: &str, token: u64, message: &str, linger: Duration) {
    if JOINED.load(std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    if rank == 0 {
        if let Some(listening) = take_early() {
            listening.tell_failure(world, message, linger);
        }
    } else {
        tell_rank_0(master, rank, world, token, message, linger);
    }
}

/// How long a rank that failed before its gang formed keeps telling the others: the deadline
/// `timeout_s`, within 5 to 60 seconds.
pub fn linger(timeout_s: f64) -> Duration {
    Duration::try_from_secs_f64(timeout_s)
        .unwrap_or(Duration::MAX)
        .clamp(Duration::from_secs(5), Duration::from_secs(60))
}

/// The length of a hello: `OOMPHGNG`, then the version, the rank, the world size and the kind
/// (u32 each), then the token (u64).
const HELLO_LEN: usize = 32;
/// A hello's kind: a rank that joins.
const JOINS: u32 = 0;
/// A hello's kind: a rank that failed before it could join; a failure frame follows.
const FAILED: u32 = 1;

/// `start + d`, or `None` past what an `Instant` holds (a deadline that never comes).
fn after(start: Instant, d: Duration) -> Option<Instant> {
    start.checked_add(d)
}

/// Rank 0's socket before every rank has joined.
pub struct Listening {
    listener: TcpListener,
    /// The ranks rank 0 has heard from (joined, failed, or told why it failed).
    heard: std::sync::Mutex<Vec<usize>>,
}

impl Listening {
    /// Listens on `addr` (e.g. `0.0.0.0:29500`; port 0 picks a free one).
    pub fn bind(addr: impl ToSocketAddrs) -> Result<Self, String> {
        let listener = TcpListener::bind(addr).map_err(|e| format!("cannot listen for the other ranks: {e}"))?;
        Ok(Self { listener, heard: Default::default() })
    }

    /// Listens on `port` of every address of this machine: IPv6 and IPv4 where the system
    /// has IPv6, IPv4 alone where it has not.
    pub fn bind_any(port: u16) -> Result<Self, String> {
        Self::bind(("::", port)).or_else(|_| Self::bind(("0.0.0.0", port)))
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Waits at most `deadline` for ranks 1 to `world - 1` of the run whose ranks share
    /// `token`. A connection that is not one of them (another run's rank, another world size,
    /// a second process claiming a rank, not oomph at all) is refused by name and the wait
    /// goes on; a rank that failed before it could join ends the wait with its message, which
    /// the ranks that joined are told too.
    pub fn accept(&self, world: usize, token: u64, deadline: Duration) -> Result<Star, String> {
        let started = Instant::now();
        let mut peers: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
        let mut refused: Vec<String> = Vec::new();
        self.listener.set_nonblocking(true).map_err(|e| format!("cannot poll the listening socket: {e}"))?;
        while peers.iter().any(Option::is_none) {
            match self.listener.accept() {
                Ok((stream, from)) => {
                    if stream.set_nonblocking(false).is_err() {
                        continue;
                    }
                    let hello_by = Instant::now() + HELLO;
                    let until = after(started, deadline).map_or(hello_by, |d| d.min(hello_by));
                    match welcome(stream, from, world, token, until, &peers) {
                        Welcome::Joined(rank, stream) => peers[rank - 1] = Some(stream),
                        Welcome::Ignored => {}
                        Welcome::Refused(why) => {
                            tracing::warn!("rank 0 refused a connection: {why}");
                            refused.push(why);
                        }
                        Welcome::Failed(rank, why) => {
                            self.heard.lock().unwrap_or_else(|p| p.into_inner()).push(rank);
                            return Err(self.give_up(peers, why));
                        }
                    }
                }
                // Linux passes on errors pending on a new connection (its peer gone, the
                // network down): that connection is dropped, the others are still awaited.
                Err(e) => {
                    if started.elapsed() > deadline {
                        let missing: Vec<usize> =
                            peers.iter().enumerate().filter(|(_, p)| p.is_none()).map(|(i, _)| i + 1).collect();
                        let also = if refused.is_empty() {
                            String::new()
                        } else {
                            format!(" (rank 0 refused meanwhile: {})", refused.join("; "))
                        };
                        let why = format!(
                            "ranks {missing:?} did not join within {} s (distributed.timeout_s){also}. Fix: start \
                             every rank in one launch with the same recipe and overrides, and read the missing ranks' \
                             own messages; if they need longer to load their data, raise distributed.timeout_s",
                            deadline.as_secs_f64()
                        );
                        return Err(self.give_up(peers, why));
                    }
                    if e.kind() != ErrorKind::WouldBlock {
                        tracing::debug!("a connection to rank 0 failed before its hello: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let peers: Vec<TcpStream> = peers.into_iter().flatten().collect();
        for p in &peers {
            let _ = p.set_write_timeout(Some(deadline));
        }
        Ok(Star { rank: 0, world, deadline, links: Links::Root(peers) })
    }

    /// Rank 0 stops waiting for the ranks because of `why`: the ranks that joined are told.
    fn give_up(&self, peers: Vec<Option<TcpStream>>, why: String) -> String {
        for (i, p) in peers.into_iter().enumerate() {
            if let Some(mut p) = p {
                let _ = p.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = write_frame_bytes(&mut p, FAILURE, cut(&why).as_bytes());
                self.heard.lock().unwrap_or_else(|p| p.into_inner()).push(i + 1);
            }
        }
        why
    }

    /// Rank 0 failed before the ranks joined: for at most `linger`, every rank of `world` that
    /// says hello is told `message` instead of being welcomed (so that it stops at once, with
    /// rank 0's cause, instead of waiting for its deadline). Returns once every rank was told.
    pub fn tell_failure(&self, world: usize, message: &str, linger: Duration) {
        let started = Instant::now();
        let mut told = vec![false; world];
        told[0] = true;
        for &r in self.heard.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if let Some(t) = told.get_mut(r) {
                *t = true;
            }
        }
        if self.listener.set_nonblocking(true).is_err() {
            return;
        }
        while told.iter().any(|t| !t) && started.elapsed() < linger {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let mut hello = [0u8; HELLO_LEN];
                    if stream.set_nonblocking(false).is_err()
                        || read_exact_by(&mut stream, &mut hello, Instant::now() + HELLO).is_err()
                        || &hello[..8] != MAGIC
                    {
                        continue;
                    }
                    let rank = u32::from_le_bytes(hello[12..16].try_into().unwrap_or_default()) as usize;
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = write_frame_bytes(&mut stream, FAILURE, cut(message).as_bytes());
                    if let Some(t) = told.get_mut(rank) {
                        *t = true;
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

/// What rank 0 makes of a connection.
enum Welcome {
    /// Rank `.0` of this run joined.
    Joined(usize, TcpStream),
    /// Not oomph's (no hello in time): dropped.
    Ignored,
    /// A connection that does not belong to this launch (another launch's, a second process
    /// claiming a rank): told why, and dropped; rank 0 waits on.
    Refused(String),
    /// Rank `.0` of this launch failed before it could join, or cannot join (another recipe,
    /// another world size, another build): the launch stops with this message.
    Failed(usize, String),
}

/// Reads a peer's hello (by `until`) and answers it. A rank sends its hello as soon as it
/// connects: a connection that says nothing whole by then (not oomph's) is dropped, not waited
/// for until the deadline.
fn welcome(
    mut stream: TcpStream,
    from: SocketAddr,
    world: usize,
    token: u64,
    until: Instant,
    peers: &[Option<TcpStream>],
) -> Welcome {
    let mut hello = [0u8; HELLO_LEN];
    if read_exact_by(&mut stream, &mut hello, until).is_err() || &hello[..8] != MAGIC {
        return Welcome::Ignored;
    }
    let word = |i: usize| u32::from_le_bytes(hello[i..i + 4].try_into().unwrap_or_default()) as usize;
    let (version, rank, their_world, kind) = (word(8), word(12), word(16), word(20));
    let their_token = u64::from_le_bytes(hello[24..32].try_into().unwrap_or_default());
    let (same_recipe, same_launch) = (their_token >> 32 == token >> 32, their_token << 32 == token << 32);
    if version == VERSION as usize
        && their_world == world
        && kind == FAILED as usize
        && (same_launch || their_token == 0)
    {
        let _ = stream.set_read_timeout(Some(HELLO));
        return match read_frame(&mut stream, 0) {
            Ok(Frame::Failure(m)) => Welcome::Failed(rank, m),
            _ => Welcome::Failed(rank, format!("rank {rank} at {from} failed before it could join")),
        };
    }
    let refusal = if version != VERSION as usize {
        Some(format!(
            "the rank at {from} speaks protocol {version}, rank 0 speaks {VERSION}. Fix: run the same oomph build on \
             every machine"
        ))
    } else if their_world != world {
        Some(format!(
            "the rank at {from} was started for {their_world} ranks, rank 0 for {world}. Fix: start every rank in one \
             launch"
        ))
    } else if !same_recipe {
        Some(format!(
            "rank {rank} at {from} runs another recipe than rank 0 (a key or an override differs). Fix: give every \
             rank the same recipe file and --set overrides"
        ))
    } else if !same_launch {
        Some(format!(
            "rank {rank} at {from} belongs to another launch of this recipe than rank 0 (another torchrun or srun, or \
             an earlier restart still running). Fix: end the other launch, or give each launch its own port \
             (MASTER_PORT)"
        ))
    } else if rank == 0 || rank >= world {
        Some(format!("the rank at {from} says it is rank {rank}, and the ranks of {world} are 0 to {}", world - 1))
    } else if peers[rank - 1].is_some() {
        Some(format!("two processes say they are rank {rank} (the second at {from}). Fix: start every rank once"))
    } else {
        None
    };
    let answer = refusal.as_deref().map_or((VALUES, ""), |m| (FAILURE, m));
    let _ = write_frame_bytes(&mut stream, answer.0, answer.1.as_bytes());
    let duplicate = rank > 0 && rank < world && peers[rank - 1].is_some();
    match refusal {
        // A rank of this very launch that cannot join stops it (waiting would not help);
        // anything else is a stray.
        Some(m) if same_launch && !duplicate => Welcome::Failed(rank, m),
        Some(m) => Welcome::Refused(m),
        None => {
            let _ = stream.set_nodelay(true);
            Welcome::Joined(rank, stream)
        }
    }
}

/// `message`, cut to the longest failure message sent.
fn cut(message: &str) -> String {
    message.chars().take(MAX_MESSAGE).collect()
}

/// A hello of `kind`.
fn hello(rank: usize, world: usize, kind: u32, token: u64) -> Vec<u8> {
    let mut hello = Vec::with_capacity(HELLO_LEN);
    hello.extend_from_slice(MAGIC);
    for w in [VERSION, rank as u32, world as u32, kind] {
        hello.extend_from_slice(&w.to_le_bytes());
    }
    hello.extend_from_slice(&token.to_le_bytes());
    hello
}

/// Connects to rank 0 at `addr`, retrying until it listens, for at most `deadline`.
fn connect(addr: &str, deadline: Duration) -> Result<TcpStream, String> {
    let started = Instant::now();
    loop {
        let addrs: Vec<SocketAddr> = match addr.to_socket_addrs() {
            Ok(a) => a.collect(),
            // Resolving may fail for a while (a machine's name not yet known): retried too.
            Err(e) if started.elapsed() > deadline => {
                return Err(format!(
                    "cannot resolve rank 0's address {addr}: {e}. Fix: MASTER_ADDR must name rank 0's machine as \
                     every machine of the launch resolves it"
                ))
            }
            Err(_) => Vec::new(),
        };
        let connected = addrs.iter().find_map(|a| TcpStream::connect_timeout(a, RETRY.max(deadline / 100)).ok());
        if let Some(s) = connected {
            return Ok(s);
        }
        if started.elapsed() > deadline {
            return Err(format!(
                "rank 0 did not answer at {addr} within {} s (distributed.timeout_s): it is not running (it failed, \
                 or is still loading its data), or MASTER_ADDR:MASTER_PORT is not its address. Fix: read rank 0's own \
                 messages; raise distributed.timeout_s if it needs longer to start",
                deadline.as_secs_f64()
            ));
        }
        std::thread::sleep(RETRY);
    }
}

/// A rank other than 0 failed before it could join: tells rank 0 at `addr` why (best effort,
/// trying for at most `linger`), so that rank 0 stops the launch at once with this message
/// instead of waiting for its deadline. `token` is 0 when the rank could not tell it (its
/// recipe did not load).
pub fn tell_rank_0(addr: &str, rank: usize, world: usize, token: u64, message: &str, linger: Duration) {
    let Ok(mut stream) = connect(addr, linger) else { return };
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = stream.write_all(&hello(rank, world, FAILED, token));
    let _ = write_frame_bytes(&mut stream, FAILURE, cut(message).as_bytes());
}

impl Star {
    /// Joins as rank `rank` (1 or more) of `world` the run of rank 0 at `addr`, retrying until
    /// rank 0 listens, for at most `deadline`.
    pub fn join(addr: &str, rank: usize, world: usize, token: u64, deadline: Duration) -> Result<Star, String> {
        // Whatever comes of it, rank 0 learns of this rank from this call (or cannot be told).
        set_joined();
        let started = Instant::now();
        let mut stream = connect(addr, deadline)?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(deadline));
        let left = deadline.saturating_sub(started.elapsed()).saturating_add(PEER_GRACE);
        let _ = stream.set_read_timeout(Some(left));
        stream.write_all(&hello(rank, world, JOINS, token)).map_err(|e| format!("greeting rank 0 at {addr}: {e}"))?;
        match read_frame(&mut stream, 0) {
            Ok(Frame::Values(_)) => Ok(Star { rank, world, deadline, links: Links::Peer(stream) }),
            Ok(Frame::Failure(m)) => Err(format!("rank 0 refused this rank: {m}")),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(format!(
                "rank 0 at {addr} took the connection but did not answer within {} s (distributed.timeout_s): it \
                 is still preparing (loading its data, starting its device), stuck, or waiting for another rank. \
                 Fix: read rank 0's own output; raise distributed.timeout_s if it needs longer to prepare",
                deadline.as_secs_f64()
            )),
            Err(e) if e.kind() == ErrorKind::InvalidData => Err(format!(
                "what answers at {addr} is not oomph's rank 0 ({e}). Fix: give the launch a port no other program \
                 uses (MASTER_PORT)"
            )),
            Err(e) => Err(format!(
                "rank 0 at {addr} closed the connection before it answered ({e}): it failed or died while this rank \
                 waited. Fix: read rank 0's own output"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn a_stray_of_another_launch_is_refused_by_name_and_the_gang_still_forms() {
        let ours = token("recipe", "launch a");
        for (world, theirs, expected) in [
            (2, token("recipe", "launch b"), "belongs to another launch of this recipe"),
            (3, token("another recipe", "launch b"), "was started for 3 ranks, rank 0 for 2"),
        ] {
            let listening = Listening::bind("127.0.0.1:0").unwrap();
            let addr = format!("127.0.0.1:{}", listening.port());
            let root = std::thread::spawn(move || {
                let mut root = listening.accept(2, ours, LONG).unwrap();
                let mut v = [1.0];
                root.sum(&mut v).unwrap();
                v
            });
            // The stray first, then the gang's own rank 1: the stray is refused, the gang forms.
            let e = Star::join(&addr, 1, world, theirs, LONG).map(|_| ()).unwrap_err();
            assert!(e.starts_with("rank 0 refused this rank: ") && e.contains(expected) && e.contains("Fix:"), "{e}");
            let mut peer = Star::join(&addr, 1, 2, ours, LONG).unwrap();
            let mut v = [2.0];
            peer.sum(&mut v).unwrap();
            assert_eq!((v, root.join().unwrap()), ([3.0], [3.0]));
        }
        // With no rank of its own coming, rank 0 names the refusals when it gives up.
        let listening = Listening::bind("127.0.0.1:0").unwrap();
        let addr = format!("127.0.0.1:{}", listening.port());
        let stray = std::thread::spawn(move || Star::join(&addr, 1, 2, token("recipe", "b"), LONG).map(|_| ()));
        let e = listening.accept(2, ours, Duration::from_millis(500)).map(|_| ()).unwrap_err();
        assert!(e.contains("ranks [1] did not join") && e.contains("refused meanwhile: rank 1 at"), "{e}");
        stray.join().unwrap().unwrap_err();
    }

    #[test]
    fn a_rank_of_this_launch_that_cannot_join_stops_it_at_once_by_name() {
        let ours = token("recipe", "launch a");
        for (world, theirs, expected) in [
            (3, ours, "was started for 3 ranks, rank 0 for 2"),
            (2, token("another recipe", "launch a"), "runs another recipe than rank 0"),
        ] {
            let listening = Listening::bind("127.0.0.1:0").unwrap();
            let addr = format!("127.0.0.1:{}", listening.port());
            let peer = std::thread::spawn(move || Star::join(&addr, 1, world, theirs, LONG).map(|_| ()));
            let e = listening.accept(2, ours, LONG).map(|_| ()).unwrap_err();
            assert!(e.contains(expected) && e.contains("Fix:"), "{e}");
            let theirs = peer.join().unwrap().unwrap_err();
            assert!(theirs.starts_with("rank 0 refused this rank: ") && theirs.contains(expected), "{theirs}");
        }
    }

    #[test]
    fn a_rank_that_fails_before_joining_stops_rank_0_at_once_with_its_message() {
        let listening = Listening::bind("127.0.0.1:0").unwrap();
        let addr = format!("127.0.0.1:{}", listening.port());
        // Rank 1 joins; rank 2 fails while loading its data.
        let joined = {
            let addr = addr.clone();
            std::thread::spawn(move || Star::join(&addr, 1, 3, 7, LONG).map(|mut s| s.sum(&mut [1.0])))
        };
        std::thread::sleep(Duration::from_millis(50));
        let failed = std::thread::spawn(move || tell_rank_0(&addr, 2, 3, 0, "rank 2: the data file is damaged", LONG));
        let e = listening.accept(3, 7, LONG).map(|_| ()).unwrap_err();
        assert_eq!(e, "rank 2: the data file is damaged");
        failed.join().unwrap();
        // The rank that had joined is told too.
        let told = joined.join().unwrap().unwrap().unwrap_err();
        assert_eq!(told, "rank 2: the data file is damaged");
    }

    #[test]
    fn rank_0_that_fails_before_the_ranks_join_tells_each_of_them() {
        let listening = Listening::bind("127.0.0.1:0").unwrap();
        let addr = format!("127.0.0.1:{}", listening.port());
        let ranks: Vec<_> = (1..3)
            .map(|r| {
                let addr = addr.clone();
                std::thread::spawn(move || Star::join(&addr, r, 3, 7, LONG).map(|_| ()))
            })
            .collect();
        listening.tell_failure(3, "rank 0: another oomph train holds the run directory", LONG);
        for r in ranks {
            let e = r.join().unwrap().unwrap_err();
            assert_eq!(e, "rank 0 refused this rank: rank 0: another oomph train holds the run directory");
        }
    }

    #[test]
    fn a_connection_that_is_not_a_rank_is_ignored() {
        let listening = Listening::bind("127.0.0.1:0").unwrap();
        let addr = format!("127.0.0.1:{}", listening.port());
        // Something else knocks first (a port scanner, a health check): it says no hello.
        let mut other = TcpStream::connect(&addr).unwrap();
        other.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        drop(other);
        // And something that answers a joining rank with a frame it never asked for: refused,
        // not read (a size of 2^40 values would be an allocation the rank cannot survive).
        let stranger = TcpListener::bind("127.0.0.1:0").unwrap();
        let stranger_addr = format!("127.0.0.1:{}", stranger.local_addr().unwrap().port());
        let answer = std::thread::spawn(move || {
            let (mut s, _) = stranger.accept().unwrap();
            let mut hello = [0u8; HELLO_LEN];
            s.read_exact(&mut hello).unwrap();
            let mut frame = vec![VALUES];
            frame.extend_from_slice(&(1u64 << 40).to_le_bytes());
            s.write_all(&frame).unwrap();
        });
        let e = Star::join(&stranger_addr, 1, 2, 7, LONG).map(|_| ()).unwrap_err();
        assert!(e.contains("is not oomph's rank 0") && e.contains("MASTER_PORT"), "{e}");
        answer.join().unwrap();
        let peer = std::thread::spawn(move || Star::join(&addr, 1, 2, 7, LONG).map(|mut s| s.sum(&mut [2.0])));
        let mut root = listening.accept(2, 7, LONG).unwrap();
        let mut v = [1.0];
        root.sum(&mut v).unwrap();
        assert_eq!(v, [3.0]);
        peer.join().unwrap().unwrap().unwrap();
    }

    #[test]
    fn a_rank_that_cannot_reach_rank_0_says_where_it_looked() {
        // A port nothing listens on (bound, then closed).
        let port = Listening::bind("127.0.0.1:0").unwrap().port();
        let e = Star::join(&format!("127.0.0.1:{port}"), 1, 2, 7, Duration::from_millis(200)).map(|_| ()).unwrap_err();
        assert!(e.contains(&format!("127.0.0.1:{port}")) && e.contains("MASTER_ADDR"), "{e}");
    }
}
